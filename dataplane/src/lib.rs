//! Shoal's userspace encrypted data path, for overlay networks created
//! with `--opt encrypted` on kernels without IPsec ESP (or where protocol
//! 50 is blocked): each Ethernet frame a workload sends to another node
//! is sealed with AES-256-GCM and sent over UDP; nothing leaves in clear.
//!
//! Where it sits: the netdriver builds the network's namespace and bridge
//! as for any overlay, but with no VXLAN device; the agent opens a TAP
//! device with [`Engine::open_tap`], moves it into the namespace as the
//! bridge's uplink, and feeds [`Engine::update`] with the data-plane key
//! ring (from the leader, over the session), the peers (node id,
//! data-path address, the key ids each advertises in gossip) and each
//! network's remote endpoints (from the gossip endpoint tables).
//!
//! The pure core, unit-tested without I/O:
//! - [`wire`]: the datagram format (VNI, key id, epoch, counter; the
//!   header authenticated as associated data);
//! - [`keys`]: per node-pair, per-direction keys (HKDF-SHA256) and which
//!   ring key to send with;
//! - [`replay`]: the per (peer, key) epoch and sliding window;
//! - [`frame`]: what to do with a frame (send, answer ARP, drop);
//! - [`vnet`]: the TAP's virtio-net header (TSO and checksum offload:
//!   up to 60 KB per datagram), checked on receive;
//! - [`epoch`]: the per-start epoch, persisted and fsynced before use.
//!
//! The shell, [`Engine`], is one UDP socket and blocking threads (one per
//! TAP, one for the socket), with per-peer counters ([`Engine::stats`]).

pub mod engine;
pub mod frame;
pub mod keys;
pub use shoal_replay::window as replay;
pub mod vnet;
pub mod wire;

pub use engine::{Engine, EngineError, Inputs, Peer, PeerStats, Remote, Stats};
pub use shoal_replay::EpochError;

/// The data path's epoch file in the node's data dir.
pub const EPOCH_FILE: &str = "dataplane-epoch";

/// Take this start's data-path epoch from `<dir>/dataplane-epoch` (see
/// [`shoal_replay::next_epoch`]).
pub fn next_epoch(dir: &std::path::Path) -> Result<u32, EpochError> {
    shoal_replay::next_epoch(dir, EPOCH_FILE)
}
pub use keys::RingKey;
pub use wire::UNDERLAY_OVERHEAD;
