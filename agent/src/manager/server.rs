//! TCP 2377 on a manager: one listener, three protocols chosen by TLS
//! ALPN — Raft between managers (manager certificates only), joins (no
//! client certificate yet), and node calls (mutual TLS).
//!
//! Abuse limits: connections that have not finished their TLS handshake
//! (and joins, which never present a certificate) are capped per source
//! address and in all, and each has a deadline for its handshake and its
//! first frame; a member's certificate is checked against the store on
//! every connection (a removed node, or a node that is no longer a Raft
//! voter, is refused), and a Raft stream may only carry messages from the
//! raft id its certificate's node holds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use shoal_api::{self as api, ApiError};
use shoal_tls::{NodeId, Role};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::{ca, dispatcher, Manager};
use shoal_model::state::Node;

use crate::proto::rpc::{self, JoinRequest, NodeRequest, NodeResponse};

/// How long a TLS handshake on 2377 may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send a request frame.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node-call connection may stay idle between requests.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Unauthenticated connections (handshaking, or joining) per source address.
pub const MAX_PENDING_PER_ADDR: usize = 64;
/// Unauthenticated connections in all.
pub const MAX_PENDING: usize = 1024;

/// Counts unauthenticated connections per source address.
#[derive(Debug, Default)]
struct Pending {
    by_addr: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; uncounted when dropped.
struct Slot {
    pending: Arc<Pending>,
    addr: IpAddr,
}

impl Pending {
    /// A slot for a new connection from `addr`, or `None` over a limit.
    fn take(self: &Arc<Self>, addr: IpAddr) -> Option<Slot> {
        let mut m = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = m.values().sum();
        let n = m.entry(addr).or_insert(0);
        if *n >= MAX_PENDING_PER_ADDR || total >= MAX_PENDING {
            return None;
        }
        *n += 1;
        Some(Slot {
            pending: self.clone(),
            addr,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self
            .pending
            .by_addr
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.addr);
            }
        }
    }
}

/// Accept 2377 connections until the manager goes away.
pub async fn serve(listener: TcpListener, manager: Weak<Manager>) {
    let pending = Arc::new(Pending::default());
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("2377 accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = pending.take(peer.ip()) else {
            debug!(%peer, "2377: too many unauthenticated connections, closing");
            continue;
        };
        let Some(m) = manager.upgrade() else { return };
        tokio::spawn(async move {
            if let Err(e) = serve_conn(m, tcp, slot).await {
                debug!(%peer, "2377 connection: {e:#}");
            }
        });
    }
}

async fn serve_conn(m: Arc<Manager>, tcp: TcpStream, slot: Slot) -> Result<()> {
    let peer_addr = tcp.peer_addr().ok();
    let cfg = m.server_tls();
    let mut stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(cfg).accept(tcp))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake failed")?;
    let (_, conn) = stream.get_ref();
    let alpn = conn.alpn_protocol().map(|a| a.to_vec());
    let peer = shoal_tls::peer_info(conn.peer_certificates());
    match alpn.as_deref() {
        Some(rpc::ALPN_RAFT) => {
            let info = peer.context("raft connection without a client certificate")?;
            if info.role != Role::Manager {
                warn!(
                    peer = ?peer_addr,
                    node = %info.node_id,
                    "rejected raft connection: the peer's certificate is a {} certificate, only managers speak raft",
                    info.role
                );
                bail!("raft from a non-manager certificate");
            }
            let rid = match raft_peer(&m, &info.node_id).await {
                Ok(rid) => rid,
                Err(e) => {
                    warn!(peer = ?peer_addr, node = %info.node_id, "rejected raft connection: {e}");
                    bail!("raft from {}: {e}", info.node_id);
                }
            };
            drop(slot);
            match rid {
                Some(rid) => m.store().serve_peer_as(stream, rid).await,
                None => m.store().serve_peer(stream).await,
            }
            .map_err(|e| anyhow!("{e}"))
        }
        Some(rpc::ALPN_JOIN) => {
            let req: JoinRequest =
                tokio::time::timeout(FRAME_TIMEOUT, api::read_frame(&mut stream))
                    .await
                    .context("join request not received in time")??;
            let resp = ca::handle_join(&m, req).await;
            if let Err(e) = &resp {
                info!(peer = ?peer_addr, "join refused: {e}");
            }
            api::write_frame(&mut stream, &resp).await?;
            Ok(())
        }
        Some(rpc::ALPN_NODE) => {
            let info = peer.context("node call without a client certificate")?;
            if let Err(e) = member(&m, &info.node_id).await {
                warn!(peer = ?peer_addr, node = %info.node_id, "rejected node call: {e}");
                let refused: Result<NodeResponse, String> = Err(e.message);
                let _ = api::write_frame(&mut stream, &refused).await;
                bail!("node call from {}: refused", info.node_id);
            }
            drop(slot);
            serve_node_calls(&m, &info.node_id, &mut stream).await
        }
        other => bail!("unknown ALPN {other:?}"),
    }
}

async fn serve_node_calls<S: AsyncRead + AsyncWrite + Unpin>(
    m: &Manager,
    peer: &NodeId,
    stream: &mut S,
) -> Result<()> {
    loop {
        let req: NodeRequest =
            match tokio::time::timeout(IDLE_TIMEOUT, api::read_frame(stream)).await {
                Err(_) => return Ok(()), // idle: the caller reconnects per call
                Ok(Ok(r)) => r,
                Ok(Err(api::FrameError::Closed)) => return Ok(()),
                Ok(Err(e)) => return Err(e.into()),
            };
        // The wire carries the message only, as it always has.
        let resp = dispatcher::rpc::handle(m, peer, req)
            .await
            .map_err(|e| e.message);
        api::write_frame(stream, &resp).await?;
    }
}

/// The node of a certificate must still be in the store: a removed node's
/// certificate is worth nothing, whatever its expiry.
pub async fn member(m: &Manager, node: &NodeId) -> Result<Node, ApiError> {
    let n = node.clone();
    m.store()
        .read_local(move |s| s.nodes.get(&n).cloned())
        .await?
        .ok_or_else(|| {
            ApiError::invalid(format!("node {node} is not part of this swarm (removed)"))
        })
}

/// The raft id a manager's stream may speak as: its node must be in the
/// store with a raft id that is still a voter (a demoted manager keeps
/// acking until it is out of the group; a removed one is refused).
/// `None`: this manager does not know the cluster yet (it is joining and
/// learns the log from the very peers it must accept): any sender.
async fn raft_peer(m: &Manager, node: &NodeId) -> Result<Option<u64>, ApiError> {
    let n = node.clone();
    let me = m.node_id().clone();
    let (record, behind) = m
        .store()
        .read_local(move |s| (s.nodes.get(&n).cloned(), !s.nodes.contains_key(&me)))
        .await?;
    let n = match record {
        Some(n) => n,
        None if behind => return Ok(None),
        None => {
            return Err(ApiError::invalid(format!(
                "node {node} is not part of this swarm (removed)"
            )))
        }
    };
    let rid = n
        .raft_id
        .ok_or_else(|| ApiError::invalid(format!("node {node} is not a raft member")))?;
    let voter = m.store().status().voters.iter().any(|v| v.id == rid);
    if n.role != Role::Manager && !voter {
        return Err(ApiError::invalid(format!(
            "node {node} is no longer a manager"
        )));
    }
    Ok(Some(rid))
}
