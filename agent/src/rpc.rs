//! Messages on TCP 2377 besides Raft, chosen by TLS ALPN:
//!
//! - `shoal-join/1`: a node without a certificate joins. It trusts the
//!   manager only if the manager's CA matches the digest in the join token
//!   (pinning), then sends its secret and a CSR and gets a certificate.
//! - `shoal-node/1`: a member (mutual TLS) talks to a manager: heartbeat,
//!   certificate renewal, leave.
//! - `shoal-raft/1`: Raft messages between managers (raft-store's framing).
//!
//! Frames are the local API's: 4-byte length + JSON.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use shoal_tls::{NodeId, Role};

/// ALPN of Raft streams.
pub const ALPN_RAFT: &[u8] = b"shoal-raft/1";
/// ALPN of join requests.
pub const ALPN_JOIN: &[u8] = b"shoal-join/1";
/// ALPN of member-to-manager calls.
pub const ALPN_NODE: &[u8] = b"shoal-node/1";

/// Sent by a joining node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Secret part of the token.
    pub secret: String,
    /// Certificate signing request (DER) for the node's own key.
    pub csr_der: Vec<u8>,
    /// Host name to show in `node ls`.
    pub hostname: String,
    /// Control address (`--advertise-addr` with the listen port).
    pub addr: SocketAddr,
    /// VXLAN address.
    pub data_path_addr: IpAddr,
}

/// What a joined node needs to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    /// The id the cluster gave the node.
    pub node_id: NodeId,
    /// Role decided by the token.
    pub role: Role,
    /// The node's certificate (DER).
    pub cert_der: Vec<u8>,
    /// Trusted root certificates (PEM), the current one first.
    pub roots_pem: Vec<String>,
    /// Cluster id.
    pub cluster_id: String,
    /// Raft id when joining as a manager.
    pub raft_id: Option<u64>,
    /// Manager control addresses (raft id, address).
    pub managers: Vec<(u64, SocketAddr)>,
}

/// Calls of a member to a manager.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum NodeRequest {
    /// The node leaves the swarm: mark it down.
    Leave,
    /// A promoted node (holding a manager certificate) asks to be added
    /// to the Raft group.
    JoinRaft,
    /// `shoal run` on this node: allocate an endpoint on an attachable
    /// network.
    Attach {
        /// Network name or id.
        network: String,
        /// Workload name.
        name: String,
        /// Address asked for.
        ip: Option<std::net::Ipv4Addr>,
    },
    /// A workload of this node ended: free its endpoint.
    Detach {
        /// Network id.
        network: String,
        /// Endpoint id.
        endpoint: String,
    },
    /// A new certificate for the node's key (renewal, CA rotation, role
    /// change).
    Renew {
        /// CSR (DER).
        csr_der: Vec<u8>,
    },
}

/// Answers to [`NodeRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum NodeResponse {
    /// An endpoint was allocated.
    Attached {
        /// The network.
        network: Box<shoal_raft_store::network::Network>,
        /// The endpoint.
        endpoint: shoal_raft_store::network::Endpoint,
    },
    /// Added to the Raft group.
    Raft {
        /// The node's raft id.
        raft_id: u64,
        /// Managers (raft id, control address), the node itself included.
        managers: Vec<(u64, SocketAddr)>,
    },
    /// Done.
    Ok,
    /// A renewed certificate.
    Cert {
        /// Certificate (DER).
        cert_der: Vec<u8>,
        /// Trusted roots (PEM).
        roots_pem: Vec<String>,
    },
}
