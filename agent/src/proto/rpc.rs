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
//!
//! [`NodeRpc`] is how a node calls the managers: a manager answers its own
//! calls in process, a worker sends them over `shoal-node/1`
//! ([`RemoteRpc`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use shoal_api::{self as api, ApiError, ErrorCode};
use shoal_tls::{NodeId, Role, MANAGER_SERVER_NAME};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long a call waits for the manager at each step.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Register the node's gossip signing key (Ed25519 public key): the
    /// store binds it to the node of the calling certificate.
    SetGossipKey {
        /// The public key.
        key: Vec<u8>,
    },
}

/// Answers to [`NodeRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum NodeResponse {
    /// An endpoint was allocated.
    Attached {
        /// The network.
        network: Box<shoal_model::network::Network>,
        /// The endpoint.
        endpoint: shoal_model::network::Endpoint,
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

/// How a node calls the managers: the same requests whether it is a
/// manager (answered in process, with the node as caller) or a worker
/// (sent over TCP 2377).
pub trait NodeRpc: Send + Sync + 'static {
    /// Send `req` as this node and wait for the answer.
    fn call(&self, req: NodeRequest) -> BoxFuture<'_, Result<NodeResponse, ApiError>>;
}

/// Calls over `shoal-node/1` to the known managers, trying each in turn.
pub struct RemoteRpc {
    tls: RwLock<Arc<rustls::ClientConfig>>,
    managers: Box<dyn Fn() -> Vec<SocketAddr> + Send + Sync>,
}

impl std::fmt::Debug for RemoteRpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteRpc").finish_non_exhaustive()
    }
}

impl RemoteRpc {
    /// `tls`: the node's client configuration for [`ALPN_NODE`];
    /// `managers`: where the managers are now.
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        managers: impl Fn() -> Vec<SocketAddr> + Send + Sync + 'static,
    ) -> RemoteRpc {
        RemoteRpc {
            tls: RwLock::new(tls),
            managers: Box::new(managers),
        }
    }

    /// Use a renewed certificate for the next calls.
    pub fn set_tls(&self, tls: Arc<rustls::ClientConfig>) {
        if let Ok(mut c) = self.tls.write() {
            *c = tls;
        }
    }

    /// [`NodeRpc::call`], skipping the manager at `exclude`.
    pub async fn call_excluding(
        &self,
        req: NodeRequest,
        exclude: Option<SocketAddr>,
    ) -> Result<NodeResponse, ApiError> {
        let tls = match self.tls.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let mut last = ApiError::new(ErrorCode::Unavailable, "no other manager reachable");
        for addr in (self.managers)() {
            if Some(addr) == exclude {
                continue;
            }
            match call::<_, Result<NodeResponse, String>>(tls.clone(), addr, &req).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) => return Err(ApiError::invalid(e)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

impl NodeRpc for RemoteRpc {
    fn call(&self, req: NodeRequest) -> BoxFuture<'_, Result<NodeResponse, ApiError>> {
        Box::pin(self.call_excluding(req, None))
    }
}

/// One request/response exchange with a manager over TLS on 2377.
pub async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
    tls: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    req: &Req,
) -> Result<Resp, ApiError> {
    let unavailable = |m: String| ApiError::new(ErrorCode::Unavailable, m);
    let tcp = match tokio::time::timeout(CALL_TIMEOUT, TcpStream::connect(addr)).await {
        Err(_) => {
            return Err(unavailable(format!(
                "cannot reach manager at {addr}: timed out after {}s",
                CALL_TIMEOUT.as_secs()
            )))
        }
        Ok(Err(e)) => return Err(unavailable(format!("cannot reach manager at {addr}: {e}"))),
        Ok(Ok(s)) => s,
    };
    let name = rustls_pki_types::ServerName::try_from(MANAGER_SERVER_NAME)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut stream = match tokio::time::timeout(
        CALL_TIMEOUT,
        TlsConnector::from(tls).connect(name, tcp),
    )
    .await
    {
        Err(_) => return Err(unavailable(format!("TLS handshake with {addr} timed out"))),
        Ok(Err(e)) => return Err(tls_error(addr, &e)),
        Ok(Ok(s)) => s,
    };
    api::write_frame(&mut stream, req)
        .await
        .map_err(|e| unavailable(format!("sending to manager at {addr}: {e}")))?;
    match tokio::time::timeout(CALL_TIMEOUT * 3, api::read_frame(&mut stream)).await {
        Err(_) => Err(unavailable(format!(
            "manager at {addr} did not answer in time"
        ))),
        Ok(Ok(r)) => Ok(r),
        Ok(Err(api::FrameError::Io(e))) => Err(tls_error(addr, &e)),
        Ok(Err(e)) => Err(unavailable(format!("manager at {addr}: {e}"))),
    }
}

fn tls_error(addr: SocketAddr, e: &std::io::Error) -> ApiError {
    if let Some(inner) = e.get_ref() {
        if shoal_tls::is_digest_mismatch(inner) {
            return ApiError::invalid(format!(
                "the manager at {addr} presented a CA that does not match the join token (digest \
                 mismatch): the token belongs to another swarm"
            ));
        }
    }
    ApiError::new(
        ErrorCode::Unavailable,
        format!("TLS with manager at {addr} failed: {e}"),
    )
}
