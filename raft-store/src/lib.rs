//! The replicated store of Shoal managers: a raft-rs `RawNode` over a
//! sled-backed log with snapshots, a mutual-TLS transport on TCP 2377, and a
//! typed state machine (`Command` -> deterministic `apply` -> `State`).
