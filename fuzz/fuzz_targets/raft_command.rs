//! Committed raft entries (from disk and from the leader), decoded as
//! raft-store's apply loop does (`raft-store/src/node/core.rs`):
//! `bincode::serde::decode_from_slice::<Command>` with
//! `config::standard().with_limit::<COMMAND_LIMIT>()`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_model::state::Command;

/// `COMMAND_LIMIT` of raft-store's node.
const COMMAND_LIMIT: usize = 64 << 20;

fuzz_target!(init: shoal_fuzz::seed_hook("raft_command"), |data: &[u8]| {
    let cfg = bincode::config::standard().with_limit::<COMMAND_LIMIT>();
    let _ = bincode::serde::decode_from_slice::<Command, _>(data, cfg);
});
