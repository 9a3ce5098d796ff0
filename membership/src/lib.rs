//! SWIM membership for Shoal: a runtime around `foca` that gossips on UDP/TCP
//! 7946, encrypts every packet with AES-256-GCM under the cluster key ring, and
//! replicates the peer table and the per-network endpoint tables that the
//! netdriver turns into kernel state.
//!
//! Layout, from the wire up:
//! - [`crypto`]: the key ring and the sealed packet format (every UDP
//!   datagram and every TCP frame).
//! - `codec`: bounded decoders for table entries and sync frames.
//! - `store`: the replicated tables (owner, Lamport/HLC version, tombstones)
//!   and the digest-first push/pull anti-entropy.
//! - [`node`]: the sans-IO core: foca + store, driven with explicit time; it
//!   returns datagrams, timers and events for a driver to execute.
//! - [`Gossip`]: the thin tokio driver (sockets, timers, TCP sync).
//! - [`sim`]: a deterministic simulation of many nodes over a fake network.
//!
//! ```no_run
//! # async fn demo() -> Result<(), shoal_membership::GossipError> {
//! use shoal_membership::{EndpointRecord, Gossip, GossipConfig, KeyRing, MemberInfo};
//! let bind = "10.0.0.2:7946".parse().unwrap();
//! let me = MemberInfo {
//!     node_id: "k2x9".into(),
//!     gossip_addr: bind,
//!     advertise_addr: bind.ip(),
//!     data_path_addr: bind.ip(),
//! };
//! let ring = KeyRing::new(vec![(1, [7u8; 32])])?;
//! let gossip = Gossip::start(GossipConfig::lan(bind), me, ring, vec!["10.0.0.1:7946".parse().unwrap()]).await?;
//! let rec = EndpointRecord {
//!     network: "n1".into(),
//!     ip: "10.0.9.2".parse().unwrap(),
//!     mac: [2, 0x42, 10, 0, 9, 2],
//!     vtep: "10.0.0.2".parse().unwrap(),
//!     owner: "k2x9".into(),
//! };
//! gossip.put(&EndpointRecord::table("n1"), "ep-1", rec.encode());
//! let mut events = gossip.subscribe(); // EntryChanged, MemberUp, MemberDown
//! # let _ = events.recv().await;
//! gossip.leave().await
//! # }
//! ```

#![warn(missing_docs)]

pub mod auth;
mod codec;
mod config;
pub mod crypto;
mod driver;
mod endpoint;
pub mod fresh;
mod ident;
pub mod node;
pub mod sim;
mod store;
mod types;

pub use auth::{AuthVerdict, Ed25519Auth, EntryAuth};
pub use config::GossipConfig;
pub use crypto::KeyRing;
pub use driver::{Gossip, Metrics};
pub use endpoint::EndpointRecord;
pub use types::{
    Entry, Event, GossipError, MemberInfo, MemberState, MemberView, MAX_KEY_LEN, MAX_NODE_ID_LEN,
    MAX_TABLE_LEN, MAX_VALUE_LEN,
};
