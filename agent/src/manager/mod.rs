//! The manager side: what runs only on managers, modelled on swarmkit's
//! `manager/`. Every component is built from the [`store::Store`] handle
//! (the only door to Raft) and meets the rest of the node only through
//! `proto/` types:
//!
//! - [`server`]: the TCP 2377 listener (Raft, join, node calls by ALPN);
//! - [`ca`]: the CA server (joins, renewals, root rotation);
//! - [`controlapi`]: the cluster commands, one file per object;
//! - [`dispatcher`]: node sessions, assignments, liveness, node calls;
//! - [`scheduler`], [`keymanager`], [`events`]: leader loops and the
//!   event log.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use shoal_api::{ApiError, RaftInfo};
use shoal_model::state::State;
use shoal_model::NodeId;
use shoal_raft_store::RaftStats;
use shoal_tls::NodeIdentity;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::proto::gossip::GossipSlot;
use crate::proto::rpc;

pub mod ca;
pub mod controlapi;
pub mod dispatcher;
pub mod events;
pub mod keymanager;
pub mod rolling;
pub mod scheduler;
pub mod server;
pub mod store;
#[cfg(test)]
pub(crate) mod testkit;

use dispatcher::liveness::Liveness;
use store::Store;

/// What a manager runs, besides what every node runs.
pub struct Manager {
    store: Store,
    /// This node.
    me: NodeId,
    /// This manager's control address (what join commands point at).
    addr: SocketAddr,
    /// The node heartbeat period this daemon was configured with.
    heartbeat: Duration,
    liveness: Liveness,
    quic: quinn::Endpoint,
    /// TLS of the 2377 listener; replaced on renewal.
    server_tls: RwLock<Arc<rustls::ServerConfig>>,
    events: events::EventLog,
    gossip: GossipSlot,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager").finish_non_exhaustive()
    }
}

/// How a manager is started.
#[derive(Debug)]
pub struct ManagerParams {
    /// The started Raft node.
    pub store: Store,
    /// This node.
    pub me: NodeId,
    /// Control address (advertised).
    pub addr: SocketAddr,
    /// TCP 2377, bound.
    pub listener: TcpListener,
    /// Where the QUIC session server listens (UDP, same address).
    pub listen_addr: SocketAddr,
    /// The daemon's heartbeat period (`heartbeat_ms`, at least 100 ms).
    pub heartbeat: Duration,
    /// This node's gossip agent, once it runs.
    pub gossip: GossipSlot,
}

/// ALPNs the 2377 listener offers.
const SERVER_ALPN: &[&[u8]] = &[rpc::ALPN_RAFT, rpc::ALPN_JOIN, rpc::ALPN_NODE];

impl Manager {
    /// Start the manager's servers and loops. The handles are the caller's
    /// to abort.
    pub fn start(
        p: ManagerParams,
        identity: &NodeIdentity,
    ) -> Result<(Arc<Manager>, Vec<JoinHandle<()>>)> {
        let quic = dispatcher::server_endpoint(identity, p.listen_addr)
            .with_context(|| format!("cannot listen on UDP {}", p.listen_addr))?;
        let m = Arc::new(Manager {
            store: p.store,
            me: p.me.clone(),
            addr: p.addr,
            heartbeat: p.heartbeat,
            liveness: Liveness::default(),
            quic: quic.clone(),
            server_tls: RwLock::new(identity.server_config(SERVER_ALPN)?),
            events: events::EventLog::default(),
            gossip: p.gossip,
        });
        let weak = Arc::downgrade(&m);
        let tasks = vec![
            tokio::spawn(server::serve(p.listener, weak.clone())),
            tokio::spawn(dispatcher::serve(quic, weak.clone())),
            tokio::spawn(dispatcher::liveness::watch(weak.clone(), p.me)),
            tokio::spawn(keymanager::run(weak.clone())),
            tokio::spawn(scheduler::run(weak.clone())),
            tokio::spawn(events::run(weak)),
            tokio::spawn(exit_on_fatal(m.store.clone())),
        ];
        Ok((m, tasks))
    }

    /// The store handle.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.me
    }

    /// The event log.
    pub fn events(&self) -> &events::EventLog {
        &self.events
    }

    /// Use a renewed certificate for new 2377 connections and sessions.
    pub fn set_identity(&self, id: &NodeIdentity) -> Result<()> {
        let server = id.server_config(SERVER_ALPN)?;
        if let Ok(mut s) = self.server_tls.write() {
            *s = server;
        }
        self.quic
            .set_server_config(Some(dispatcher::server_config(id)?));
        Ok(())
    }

    fn server_tls(&self) -> Arc<rustls::ServerConfig> {
        match self.server_tls.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The Raft part of `info`.
    pub fn raft_info(&self) -> RaftInfo {
        let st = self.store.status();
        RaftInfo {
            id: st.id,
            leader: st.leader,
            term: st.term,
            commit: st.commit,
            applied: st.applied,
            voters: st.voters.len(),
            reachable: st.voters.iter().filter(|v| v.reachable).count(),
            snapshot_index: st.snapshot_index,
        }
    }

    /// Raft counters and, on the leader, the nodes with a live session.
    pub fn metrics(&self) -> (RaftStats, Option<u64>) {
        let raft = self.store.stats();
        let live = raft.is_leader.then(|| {
            self.liveness
                .live_count(self.heartbeat * crate::proto::session::MISSED_HEARTBEATS)
        });
        (raft, live)
    }

    /// Close every node session (they fail over to another manager).
    pub fn close_sessions(&self) {
        self.quic.close(0u32.into(), b"shutdown");
    }

    /// Stop serving sessions and stop Raft (the log is flushed).
    pub async fn shutdown(&self) {
        self.close_sessions();
        if let Err(e) = self.store.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
    }

    /// Refused: the caller is not allowed here as a worker.
    pub fn not_manager() -> ApiError {
        ApiError::invalid(
            "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster \
             state. Please run this command on a manager node or promote the current node to a manager.",
        )
    }
}

/// A Raft node that stopped on a fatal error (storage failure, a panic in
/// its loop) never commits again: end the process so that its supervisor
/// (systemd: `Restart=on-failure`) starts it afresh from the log on disk,
/// rather than leave a manager that answers but never commits.
async fn exit_on_fatal(store: Store) {
    let mut rx = store.subscribe();
    loop {
        if let Some(why) = rx.borrow_and_update().fatal.clone() {
            tracing::error!("raft stopped on a fatal error, exiting: {why}");
            eprintln!("Error: raft stopped on a fatal error: {why}");
            std::process::exit(1);
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Managers (raft id, control address) as the store lists them.
pub fn managers_of(st: &State) -> Vec<(u64, SocketAddr)> {
    st.managers()
        .filter_map(|n| n.raft_id.map(|r| (r, n.addr)))
        .collect()
}

/// A fresh Raft id (nonzero, below 2^63).
pub fn new_raft_id() -> u64 {
    use rand::Rng;
    rand::rngs::OsRng.gen_range(1..=u64::MAX >> 1)
}
