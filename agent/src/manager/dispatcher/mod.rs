//! The dispatcher (managers): node sessions over QUIC (UDP 2377) and the
//! node calls that arrive over TCP 2377.
//!
//! A session is served only by the leader (others redirect it there): the
//! node's heartbeats feed [`liveness`]; its task reports move tasks
//! forward in the store; on connect and after every applied change the
//! node's [`assignments`] are recomputed and pushed when they differ.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use shoal_api as api;
use shoal_model::state::Command;
use shoal_model::{now_ms, NodeId};
use shoal_tls::NodeIdentity;
use tracing::{debug, warn};

use super::store::Store;
use super::Manager;
use crate::proto::session::{
    transport, Assignments, FrameReader, TaskReport, ToManager, ToNode, ALPN_SESSION,
};

pub mod assignments;
pub mod liveness;
pub mod rpc;

use assignments::assignments_of;

/// How long a node may take to answer a call (`service logs`).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Call `node` over its session with this (leader) manager: one stream,
/// one call, one reply.
pub async fn call_node(
    conn: &quinn::Connection,
    call: &crate::proto::session::ManagerCall,
) -> anyhow::Result<crate::proto::session::CallReply> {
    tokio::time::timeout(CALL_TIMEOUT, async {
        let (mut send, mut recv) = conn.open_bi().await?;
        api::write_frame(&mut send, call).await?;
        let _ = send.finish();
        Ok(api::read_frame(&mut recv).await?)
    })
    .await
    .map_err(|_| anyhow::anyhow!("the node did not answer within {CALL_TIMEOUT:?}"))?
}

/// Build the QUIC server endpoint for UDP `bind`.
pub fn server_endpoint(
    identity: &NodeIdentity,
    bind: SocketAddr,
) -> anyhow::Result<quinn::Endpoint> {
    let tls = identity.server_config_mtls(&[ALPN_SESSION])?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport()));
    Ok(quinn::Endpoint::server(cfg, bind)?)
}

/// Server config for a renewed identity (`Endpoint::set_server_config`).
pub fn server_config(identity: &NodeIdentity) -> anyhow::Result<quinn::ServerConfig> {
    let tls = identity.server_config_mtls(&[ALPN_SESSION])?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport()));
    Ok(cfg)
}

/// Accept sessions until the endpoint closes.
pub async fn serve(endpoint: quinn::Endpoint, manager: Weak<Manager>) {
    while let Some(incoming) = endpoint.accept().await {
        let manager = manager.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    if let Err(e) = serve_session(conn, manager).await {
                        debug!(%remote, "session ended: {e:#}");
                    }
                }
                Err(e) => debug!(%remote, "session handshake failed: {e}"),
            }
        });
    }
}

fn peer_node(conn: &quinn::Connection) -> anyhow::Result<NodeId> {
    let certs = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or_else(|| anyhow::anyhow!("session without a client certificate"))?;
    Ok(shoal_tls::peer_info(Some(&certs))?.node_id)
}

async fn serve_session(conn: quinn::Connection, manager: Weak<Manager>) -> anyhow::Result<()> {
    let node = peer_node(&conn)?;
    let (mut send, recv) = conn.accept_bi().await?;
    let Some(store) = manager.upgrade().map(|m| m.store().clone()) else {
        return Ok(());
    };
    let status = store.status();
    if !status.is_leader {
        let leader = status.leader.and_then(|l| {
            status
                .voters
                .iter()
                .find(|v| v.id == l)
                .and_then(|v| v.addr)
        });
        api::write_frame(&mut send, &ToNode::Redirect(leader)).await?;
        let _ = send.finish();
        // Give the redirect time to arrive before the connection closes.
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        return Ok(());
    }
    debug!(node = %node, "session opened");
    let Some(m) = manager.upgrade() else {
        return Ok(());
    };
    let _open = m.liveness.session(&node, Some(&conn));
    // Frames are read on a task of their own: the change and check
    // branches below can win while a frame is half read.
    let mut frames = FrameReader::<ToManager>::spawn(recv);
    let mut changes = store.subscribe();
    let mut sent: Option<Assignments> = None;
    let mut check = tokio::time::interval(Duration::from_millis(250));
    loop {
        // Push when the node's assignments changed (or first time).
        let n = node.clone();
        let now = store.read_local(move |s| assignments_of(s, &n)).await?;
        if now.node.is_none() {
            // Not (or no longer) a member: a removed node's certificate
            // gets no assignments, and so no new keys.
            warn!(node = %node, "session refused: the node is not part of this swarm (removed)");
            conn.close(1u32.into(), b"not part of this swarm");
            anyhow::bail!("node {node} is not part of this swarm");
        }
        if sent.as_ref().is_none_or(|s| !s.same_as(&now)) {
            api::write_frame(&mut send, &ToNode::Assign(Box::new(now.clone()))).await?;
            sent = Some(now);
        }
        tokio::select! {
            msg = frames.recv() => {
                match msg? {
                    ToManager::Heartbeat(report) => {
                        let Some(m) = manager.upgrade() else { return Ok(()) };
                        if let Some(r) = report.resources {
                            tokio::spawn(record_resources(store.clone(), node.clone(), r));
                        }
                        if !report.tasks.is_empty() {
                            tokio::spawn(record_task_states(
                                store.clone(),
                                node.clone(),
                                report.tasks.clone(),
                            ));
                        }
                        m.liveness.seen(&node, report);
                    }
                }
            }
            r = changes.changed() => { r?; }
            _ = check.tick() => {
                if !store.status().is_leader {
                    // Lost leadership: send the node to the new leader.
                    api::write_frame(&mut send, &ToNode::Redirect(None)).await?;
                    let _ = send.finish();
                    return Ok(());
                }
            }
        }
    }
}

/// On the leader: record a node's CPUs and memory when they changed.
async fn record_resources(store: Store, node: NodeId, r: shoal_model::state::NodeResources) {
    let n = node.clone();
    let known = store
        .read_local(move |s| s.node_resources.get(&n).copied())
        .await
        .ok()
        .flatten();
    if known != Some(r) {
        if let Err(e) = store
            .propose(Command::SetNodeResources {
                id: node.clone(),
                resources: r,
            })
            .await
        {
            debug!(node = %node, "cannot record the node's resources: {}", e.message);
        }
    }
}

/// On the leader: record the task states a node reported, where they move
/// a task of that node forward (a node cannot report others' tasks).
async fn record_task_states(store: Store, node: NodeId, reports: Vec<TaskReport>) {
    let ids: Vec<String> = reports.iter().map(|r| r.id.clone()).collect();
    let Ok(stored) = store
        .read_local(move |s| {
            ids.iter()
                .map(|id| s.tasks.get(id).map(|t| (t.node.clone(), t.state)))
                .collect::<Vec<_>>()
        })
        .await
    else {
        return;
    };
    let cmds: Vec<Command> = reports
        .iter()
        .zip(stored)
        .filter_map(|(r, stored)| {
            let (owner, state) = stored?;
            (owner == node.as_str() && !state.is_terminal() && r.state > state).then(|| {
                Command::TaskStatus {
                    id: r.id.clone(),
                    state: r.state,
                    exit_code: r.exit_code,
                    message: r.message.clone(),
                    at: now_ms(),
                }
            })
        })
        .collect();
    // One Raft batch for a node's whole report.
    for e in store.propose_all(cmds).await {
        debug!(node = %node, "cannot record task state: {e}");
    }
}
