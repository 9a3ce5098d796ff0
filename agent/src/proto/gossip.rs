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
