//! What nodes publish to each other through gossip besides endpoints,
//! and the handle to this node's gossip agent that the manager and worker
//! sides share (gossip starts once the session delivers the key ring).

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use shoal_membership::Gossip;

/// Gossip table of per-node network status (`network inspect --verbose`).
pub const STATUS_TABLE: &str = "netstatus";
/// One node's view of one network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetStatus {
    /// Network id.
    pub network: String,
    /// Node id.
    pub node: String,
    /// Its VTEP (data-path address).
    pub vtep: String,
    /// VTEPs of the remote endpoints it programs.
    pub peers: Vec<String>,
    /// Kernel state equals the desired state.
    pub in_sync: bool,
    /// What differs (first few), in `bridge`/`ip` words.
    pub differences: Vec<String>,
    /// How many differences in all.
    pub total_differences: usize,
    /// An encrypted network's data path on this node.
    #[serde(default)]
    pub encryption: Option<EncryptionStatus>,
}

/// This node's gossip agent, once started; shared by the worker (endpoint
/// tables, network status) and the manager (`node ls`, `network inspect
/// --verbose`).
#[derive(Clone, Default)]
pub struct GossipSlot(Arc<RwLock<Option<Gossip>>>);

impl std::fmt::Debug for GossipSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipSlot").finish_non_exhaustive()
    }
}

impl GossipSlot {
    /// The running agent, if started.
    pub fn get(&self) -> Option<Gossip> {
        self.0.read().ok().and_then(|g| g.clone())
    }

    /// Install the started agent.
    pub fn set(&self, g: Gossip) {
        if let Ok(mut slot) = self.0.write() {
            *slot = Some(g);
        }
    }

    /// Remove the agent (shutdown).
    pub fn take(&self) -> Option<Gossip> {
        self.0.write().ok().and_then(|mut g| g.take())
    }
}

/// Gossip table where each node advertises its encrypted data path (key
/// = node id): the UDP port it receives on and the data-plane key ids it
/// holds, so that peers send only with a key it can open.
pub const DATAPLANE_TABLE: &str = "dpkeys";

/// The mode of encrypted overlays: AES-256-GCM in the daemon, over UDP
/// (kernel ESP is not offered: no kernel here has it).
pub const ENCRYPTION_MODE: &str = "userspace";

/// One node's data-path advertisement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneAdvert {
    /// UDP port of its encrypted data path.
    pub port: u16,
    /// Data-plane key ids it holds, newest first.
    pub keys: Vec<u32>,
}

/// What `network inspect --verbose` shows of an encrypted network on one
/// node: the mode, the key ids in use (never key material) and per-peer
/// counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EncryptionStatus {
    /// `userspace` (AES-256-GCM over UDP), the only mode.
    pub mode: String,
    /// Data-plane key ids this node holds, newest first.
    pub key_ids: Vec<u32>,
    /// UDP port it receives on.
    pub port: u16,
    /// This start's epoch.
    pub epoch: u32,
    /// Per peer: node id and counters.
    pub peers: Vec<shoal_dataplane::PeerStats>,
    /// Datagrams from addresses that are no peer (node-wide).
    pub unknown_peer: u64,
    /// Broadcast/multicast frames dropped (node-wide; ARP for remote
    /// endpoints is answered locally instead).
    pub broadcast_dropped: u64,
}
