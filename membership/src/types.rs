//! Public value types shared by the core, the driver and the agent.

use std::net::{IpAddr, SocketAddr};

/// Longest table name accepted, so a broadcast item always fits a datagram.
pub const MAX_TABLE_LEN: usize = 64;
/// Longest entry key accepted, for the same reason.
pub const MAX_KEY_LEN: usize = 128;
/// Longest node id accepted (node ids travel in every packet header).
pub const MAX_NODE_ID_LEN: usize = 64;
/// Largest entry value accepted: a table update must ride one datagram.
pub const MAX_VALUE_LEN: usize = 512;

/// What other members need to know about a node: who it is and where to
/// reach it on the control and the data plane.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct MemberInfo {
    /// Cluster-wide node id (the same one the Raft store uses).
    pub node_id: String,
    /// Where this node's gossip listens (UDP and TCP, normally port 7946).
    pub gossip_addr: SocketAddr,
    /// The node's advertise address (control plane).
    pub advertise_addr: IpAddr,
    /// The node's data-path address (VXLAN VTEP).
    pub data_path_addr: IpAddr,
}

/// Liveness of a member as seen locally, for `shoal node ls` / `gossip members`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum MemberState {
    /// Answers probes.
    Alive,
    /// Missed a probe; will be declared down unless it refutes in time.
    Suspect,
    /// Declared down (crashed, partitioned away or left); its entries are dropped.
    Down,
}

/// One row of the local membership view.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberView {
    /// Identity and addresses.
    pub info: MemberInfo,
    /// Local opinion on liveness.
    pub state: MemberState,
    /// Generation of this member's identity: grows on every restart and on
    /// every rejoin after being declared down, so stale news about an older
    /// life can be told apart.
    pub incarnation: u64,
}

/// A replicated table entry as the agent sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// Table name, e.g. `ep/<network id>`.
    pub table: String,
    /// Key inside the table, e.g. an endpoint id.
    pub key: String,
    /// Opaque value (see [`crate::EndpointRecord`] for the endpoint tables).
    pub value: Vec<u8>,
    /// Node id of the only node allowed to write this entry.
    pub owner: String,
    /// Hybrid logical clock version: larger wins; ties broken by owner.
    pub version: u64,
    /// True for a deletion (a tombstone kept until it is reaped).
    pub deleted: bool,
}

/// Something the agent (netdriver, DNS, node list) reacts to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A member became reachable (joined, or came back with a new generation).
    MemberUp(MemberInfo),
    /// A member was declared down; its entries have been dropped already.
    MemberDown(MemberInfo),
    /// An entry appeared, changed or went away. `deleted` is true for
    /// deletions and for entries dropped because their owner went down.
    EntryChanged(Entry),
}

/// Everything that can go wrong at the API boundary.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// Socket trouble while binding or sending.
    #[error("gossip i/o on {addr}: {source}")]
    Io {
        /// The address involved.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The key ring given is unusable.
    #[error("key ring: {0}")]
    KeyRing(#[from] crate::crypto::KeyRingError),
    /// A name or value is over the limits that keep an update in one datagram.
    #[error("{what} is {len} bytes, the limit is {max}: shorten it")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The configuration cannot work (e.g. max_packet too small).
    #[error("invalid gossip config: {0}")]
    Config(String),
    /// foca refused an operation.
    #[error("swim: {0}")]
    Swim(String),
    /// A TCP sync exchange failed.
    #[error("sync with {peer}: {reason}")]
    Sync {
        /// The other side.
        peer: SocketAddr,
        /// What went wrong.
        reason: String,
    },
}

pub(crate) fn check_len(what: &'static str, s: &[u8], max: usize) -> Result<(), GossipError> {
    if s.len() > max {
        Err(GossipError::TooLong {
            what,
            len: s.len(),
            max,
        })
    } else {
        Ok(())
    }
}
