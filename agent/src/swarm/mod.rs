//! One swarm membership of this node, and the only place where the
//! manager and worker sides meet (as swarmkit's `node/node.go`): it builds
//! the Raft store and the [`Manager`] on managers, the [`Worker`] on every
//! node, the session and gossip, and wires them together. Its submodules:
//! [`init`] (init, join, resume), [`roles`] (certificates, promotion and
//! demotion), [`file`] (what is on disk), [`gossip`] (starting SWIM).
//!
//! A manager answers its own node calls in process; a worker sends them
//! over TCP 2377 ([`crate::proto::rpc::NodeRpc`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{bail, Result};
use shoal_api::{ApiError, KeyInfo, SwarmInfo, SwarmState};
use shoal_membership::Ed25519Auth;
use shoal_model::state::GossipKey;
use shoal_model::NodeId;
use shoal_raft_store::TlsTransport;
use shoal_tls::{NodeIdentity, Role};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::Config;
use crate::manager::controlapi::nodes::check_quorum_after_removal;
use crate::manager::{Manager, ManagerParams};
use crate::metrics;
use crate::proto::gossip::GossipSlot;
use crate::proto::rpc::{self, NodeRequest, NodeResponse, NodeRpc, RemoteRpc};
use crate::proto::session::{Assignments, CallReply, ManagerCall, NodeReport};
use crate::worker::session::{self, SessionOwner};
use crate::worker::Worker;

pub mod file;
pub mod gossip;
pub mod init;
pub mod roles;

use file::SwarmFile;
use init::StartRaft;

/// Default control port.
pub const DEFAULT_PORT: u16 = 2377;

/// Asks the daemon to stop this membership and start it again from disk
/// (after a promotion or demotion changed what the node runs).
pub type RestartTx = tokio::sync::mpsc::UnboundedSender<()>;

/// An active swarm membership.
pub struct Swarm {
    config: Config,
    restart: RestartTx,
    file: Arc<Mutex<SwarmFile>>,
    identity: RwLock<NodeIdentity>,
    /// Client TLS of outbound Raft connections (replaced on renewal).
    raft_client: watch::Sender<Arc<rustls::ClientConfig>>,
    /// Node calls to the managers over 2377.
    remote: Arc<RemoteRpc>,
    /// The manager side, on managers.
    manager: Option<Arc<Manager>>,
    /// The worker side (every node).
    pub worker: Arc<Worker>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// This node's side of the session.
    session: Arc<session::Client>,
    /// Gossip key ring as last assigned.
    keys: RwLock<Vec<GossipKey>>,
    /// Heartbeat period as last assigned.
    heartbeat: Mutex<Duration>,
    /// A certificate renewal is running (do not start another).
    renewing: AtomicBool,
    /// SWIM gossip, once the key ring is known.
    gossip: GossipSlot,
    /// Gossip is being started (do not start twice).
    gossip_starting: AtomicBool,
    /// This node's gossip signing key and the members' public keys.
    auth: Arc<Ed25519Auth>,
    /// The signing key is being registered (do not call twice).
    registering: AtomicBool,
    /// Node calls to the managers (in process on a manager).
    rpc: Arc<dyn NodeRpc>,
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
}

impl std::fmt::Debug for Swarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swarm").finish_non_exhaustive()
    }
}

impl SessionOwner for Swarm {
    fn managers(&self) -> Vec<SocketAddr> {
        manager_addrs(&self.file)
    }
    fn identity(&self) -> NodeIdentity {
        Swarm::identity(self)
    }
    fn fill_report(&self, r: &mut NodeReport) {
        r.ca_digest = self.issuer_digest().unwrap_or_default();
        r.tasks = self.worker.executor.reports();
    }
    fn apply(self: Arc<Self>, a: Assignments) {
        self.apply_assignments(a);
    }
    fn client(&self) -> Arc<session::Client> {
        self.session.clone()
    }
    fn heartbeat(&self) -> &Mutex<Duration> {
        &self.heartbeat
    }
    fn report_now(&self) -> &tokio::sync::Notify {
        &self.worker.executor.report_now
    }
    fn answer(
        self: Arc<Self>,
        call: ManagerCall,
    ) -> futures::future::BoxFuture<'static, CallReply> {
        Box::pin(async move {
            match call {
                ManagerCall::Logs { tasks, tail, after } => {
                    CallReply::Logs(self.worker.task_logs(&tasks, tail, &after))
                }
            }
        })
    }
}

impl Swarm {
    async fn start_with(
        config: Config,
        restart: RestartTx,
        mut sf: SwarmFile,
        identity: NodeIdentity,
        listener: Option<TcpListener>,
        start: StartRaft,
    ) -> Result<Arc<Swarm>> {
        let (raft_client, _) = watch::channel(identity.client_config(&[rpc::ALPN_RAFT])?);
        let store = match (&start, sf.raft_id) {
            (StartRaft::None, _) => None,
            (_, None) => bail!("swarm.json: manager without a raft id"),
            (start, Some(rid)) => {
                let transport = TlsTransport::new(raft_client.subscribe());
                let store = init::start_raft(&config, rid, sf.addr, start, transport).await?;
                if sf.raft_join_pending {
                    sf.raft_join_pending = false;
                    file::save_file(&config.data_dir, &sf)?;
                }
                Some(store)
            }
        };
        let me = sf.node_id.clone();
        let heartbeat = Duration::from_millis(config.heartbeat_ms.max(50));
        let upstreams = config.upstreams().map_err(|e| anyhow::anyhow!("{e}"))?;
        let file = Arc::new(Mutex::new(sf.clone()));
        let managers = {
            let file = file.clone();
            move || manager_addrs(&file)
        };
        let remote = Arc::new(RemoteRpc::new(
            identity.client_config(&[rpc::ALPN_NODE])?,
            managers,
        ));
        let gossip = GossipSlot::default();
        let mut tasks = Vec::new();
        let manager = match (store, listener) {
            (None, _) => None,
            (Some(store), Some(listener)) => {
                let (m, t) = Manager::start(
                    ManagerParams {
                        store,
                        me: me.clone(),
                        addr: sf.addr,
                        listener,
                        listen_addr: sf.listen_addr,
                        heartbeat: heartbeat_every(&config),
                        gossip: gossip.clone(),
                    },
                    &identity,
                )?;
                tasks.extend(t);
                Some(m)
            }
            (Some(_), None) => bail!("a manager needs its 2377 listener"),
        };
        let rpc: Arc<dyn NodeRpc> = match &manager {
            Some(m) => m.clone(),
            None => remote.clone(),
        };
        let worker = Arc::new(Worker::new(
            me.clone(),
            sf.data_path_addr,
            &config,
            upstreams,
            gossip.clone(),
            rpc.clone(),
            Arc::new(crate::worker::containers::Containers::new(
                &config.containerd_socket,
                config.registries(),
                &config.data_dir,
                &config.seccomp_profile,
            )),
        ));
        let auth = Arc::new(gossip::signing_key(&config.data_dir)?);
        tasks.extend(worker.start());
        let swarm = Arc::new(Swarm {
            config,
            restart,
            file,
            identity: RwLock::new(identity),
            raft_client,
            remote,
            manager,
            worker,
            tasks: Mutex::new(tasks),
            session: Arc::new(session::Client::new()?),
            keys: RwLock::new(Vec::new()),
            heartbeat: Mutex::new(heartbeat),
            renewing: AtomicBool::new(false),
            gossip,
            gossip_starting: AtomicBool::new(false),
            auth,
            registering: AtomicBool::new(false),
            rpc,
        });
        let weak = Arc::downgrade(&swarm);
        if swarm.manager.is_some() {
            swarm.add_task(tokio::spawn(roles::follow_store(weak.clone())));
        }
        // A restarted daemon rejoins gossip at once, as the same member,
        // before its session delivers the key ring again.
        if let Some(r) = gossip::Resume::load(&swarm.config.run_dir, me.as_str()) {
            swarm.worker.overlay.encrypted.set_ring(&r.dataplane_keys);
            swarm.auth.set_peers(r.peer_keys.into_iter().collect());
            swarm.ensure_gossip(&r.keys);
        }
        swarm.add_task(tokio::spawn(session::run(weak)));
        Ok(swarm)
    }

    fn add_task(&self, t: JoinHandle<()>) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.push(t);
        }
    }

    fn file(&self) -> SwarmFile {
        match self.file.lock() {
            Ok(f) => f.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// This node's id in the cluster.
    pub fn node_id(&self) -> NodeId {
        self.file().node_id
    }

    /// The manager side, or the error a worker gives for cluster commands.
    pub fn manager(&self) -> Result<&Arc<Manager>, ApiError> {
        self.manager.as_ref().ok_or_else(Manager::not_manager)
    }

    /// The data dir this membership lives in.
    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    /// The swarm part of `info`.
    pub fn info(&self) -> SwarmInfo {
        let sf = self.file();
        let raft = self.manager.as_ref().map(|m| m.raft_info());
        let keys = match self.keys.read() {
            Ok(k) => k
                .iter()
                .map(|k| KeyInfo {
                    id: k.id,
                    lamport: k.lamport,
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        SwarmInfo {
            ca_digest: self.issuer_digest(),
            trusted_roots: self.identity().roots.len(),
            session_manager: self.session.connected().map(|a| a.to_string()),
            keys,
            dataplane_keys: self.worker.overlay.encrypted.key_infos(),
            state: SwarmState::Active,
            cluster_id: Some(sf.cluster_id),
            role: Some(sf.role),
            node_addr: Some(sf.addr.to_string()),
            data_path_addr: Some(sf.data_path_addr.to_string()),
            managers: sf.managers.iter().map(|(_, a)| a.to_string()).collect(),
            raft,
        }
    }

    /// `swarm leave`: refuse when it would break quorum (unless forced),
    /// leave the Raft group, then forget everything.
    pub async fn leave(&self, force: bool) -> Result<(), ApiError> {
        if let Some(m) = &self.manager {
            let st = m.store().status();
            let voters = st.voters.len();
            let reachable = st.voters.iter().filter(|v| v.reachable).count();
            if !force {
                if voters <= 1 {
                    return Err(ApiError::invalid(
                        "You are attempting to leave the swarm on a node that is participating as a \
                         manager. Removing the last manager erases all current state of the swarm. \
                         Use `--force` to ignore this message.",
                    ));
                }
                check_quorum_after_removal(voters, reachable, Some(st.id), &st)?;
            }
            if voters > 1 {
                // Another manager removes us: a node removing itself from
                // the group may never learn that its removal committed.
                let removed = self
                    .remote
                    .call_excluding(NodeRequest::Leave, Some(self.file().addr))
                    .await;
                if let Err(e) = removed {
                    if !force {
                        return Err(e);
                    }
                    warn!("leaving without removing this manager from the raft group: {e}");
                }
            }
        } else if let Err(e) = self.remote.call(NodeRequest::Leave).await {
            if !force {
                return Err(ApiError::new(
                    e.code,
                    format!("{}; use --force to leave anyway", e.message),
                ));
            }
        }
        Ok(())
    }

    /// Stop everything this membership runs (before wiping or exiting):
    /// its tasks and the Raft loop, whose log is flushed and closed.
    ///
    /// `leave_gossip`: tell gossip peers we are gone (their copies of our
    /// entries go at once) — for `swarm leave`. A daemon that stops to
    /// restart stays silent instead: it comes back as the same member and
    /// its workloads' entries never leave the peers' kernels.
    pub async fn shutdown(&self, leave_gossip: bool) {
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
        if let Some(m) = &self.manager {
            m.close_sessions();
        }
        if let Some(g) = self.gossip.take() {
            if leave_gossip {
                gossip::Resume::remove(&self.config.run_dir);
                if let Err(e) = g.leave().await {
                    warn!("gossip leave: {e}");
                }
            }
        }
        if let Some(m) = &self.manager {
            m.shutdown().await;
        }
    }

    /// Take in what the leader assigned: manager list, key ring; on a
    /// worker also certificate renewal and promotion.
    fn apply_assignments(self: &Arc<Self>, a: Assignments) {
        // A new data-plane ring goes into the restart file too.
        let mut resume_changed = self.worker.apply(&a);
        self.update_managers(a.managers.clone());
        if let Ok(mut k) = self.keys.write() {
            if *k != a.keys {
                info!(keys = ?a.keys, "gossip key ring updated");
                *k = a.keys.clone();
                if let Some(ring) = gossip::key_ring(&a.keys) {
                    if let Some(g) = self.gossip() {
                        g.set_key_ring(ring);
                        resume_changed = true;
                    }
                }
            }
        }
        // The members' signing keys: entries held for an owner whose key
        // was unknown are checked again.
        let peers = a.gossip_keys.clone().into_iter().collect();
        if self.auth.set_peers(peers) {
            if let Some(g) = self.gossip() {
                g.keys_changed();
                resume_changed = true;
            }
        }
        if resume_changed {
            if let Some(g) = self.gossip() {
                self.save_resume(&g, &a.keys);
            }
        }
        // Gossip starts once this node's own signing key is registered, so
        // that its entries count on every node from the first one.
        let me = self.node_id().to_string();
        if a.gossip_keys.get(&me) == Some(&self.auth.public_key()) {
            self.ensure_gossip(&a.keys);
        } else {
            self.register_gossip_key();
        }
        if self.manager.is_some() {
            return; // managers follow the store directly (roles::follow_store)
        }
        self.refresh_roots(&a.roots_pem);
        let Some(node) = a.node else { return };
        use std::sync::atomic::Ordering;
        let needs_cert = self.needs_new_cert(node.role, &a.roots_pem);
        let promoted = node.role == Role::Manager;
        if !(needs_cert || promoted) || self.renewing.swap(true, Ordering::SeqCst) {
            return;
        }
        let s = self.clone();
        tokio::spawn(async move {
            if needs_cert {
                if let Err(e) = s.renew_remotely().await {
                    warn!("certificate renewal failed: {e:#}");
                    s.renewing.store(false, Ordering::SeqCst);
                    return;
                }
            }
            // Promoted and now holding a manager certificate: join Raft.
            if promoted && s.identity().info.role == Role::Manager {
                match s.remote.call(NodeRequest::JoinRaft).await {
                    Ok(NodeResponse::Raft { raft_id, managers }) => {
                        if let Err(e) = s.change_role(Role::Manager, Some(raft_id), Some(managers))
                        {
                            warn!("cannot become a manager: {e:#}");
                        }
                    }
                    Ok(_) => warn!("unexpected answer to a raft join"),
                    Err(e) => warn!("cannot join the raft group: {e}"),
                }
            }
            s.renewing.store(false, Ordering::SeqCst);
        });
    }

    /// What `/metrics` shows of this membership.
    pub fn metrics_snapshot(&self) -> metrics::Snapshot {
        let (raft, session_connected_nodes) = match &self.manager {
            Some(m) => {
                let (raft, live) = m.metrics();
                (Some(raft), live)
            }
            None => (None, None),
        };
        let dns = self.worker.executor.dns_stats();
        metrics::Snapshot {
            raft,
            gossip: self.gossip().map(|g| metrics::GossipStats::from_gossip(&g)),
            session_connected_nodes,
            dns: Some(metrics::DnsStats {
                queries_total: dns.queries,
                forwarded_total: dns.forwarded,
                failures_total: dns.failures,
            }),
            tasks_running: Some(self.worker.tasks_running()),
            dataplane: self.worker.overlay.encrypted.status(),
        }
    }

    /// The running gossip agent, if started.
    pub fn gossip(&self) -> Option<shoal_membership::Gossip> {
        self.gossip.get()
    }

    /// Start gossip once the key ring is known.
    fn ensure_gossip(self: &Arc<Self>, keys: &[GossipKey]) {
        use std::sync::atomic::Ordering;
        if keys.is_empty()
            || self.gossip().is_some()
            || self.gossip_starting.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let s = self.clone();
        let keys = keys.to_vec();
        tokio::spawn(async move {
            let f = s.file();
            let resume = gossip::Resume::load(&s.config.run_dir, f.node_id.as_str());
            match gossip::start(
                &s.config,
                &f,
                &keys,
                resume.map(|r| r.generation),
                s.auth.clone(),
            )
            .await
            {
                Ok(g) => {
                    s.worker.gossip_started(&g);
                    info!(
                        port = s.config.gossip_port,
                        generation = g.generation(),
                        "gossip started"
                    );
                    s.save_resume(&g, &keys);
                    s.gossip.set(g);
                }
                Err(e) => warn!("cannot start gossip: {e:#}"),
            }
            s.gossip_starting.store(false, Ordering::SeqCst);
        });
    }

    /// What a restarted daemon needs to rejoin gossip at once (generation,
    /// key ring, the members' signing keys).
    fn save_resume(&self, g: &shoal_membership::Gossip, keys: &[GossipKey]) {
        let r = gossip::Resume {
            node_id: self.node_id().to_string(),
            generation: g.generation(),
            keys: keys.to_vec(),
            peer_keys: self.auth.peers().into_iter().collect(),
            dataplane_keys: self.worker.overlay.encrypted.ring(),
        };
        if let Err(e) = r.save(&self.config.run_dir) {
            warn!("cannot keep the gossip state for a restart: {e:#}");
        }
    }

    /// Register this node's gossip signing key with the managers (once at
    /// a time; the next assignment retries if it did not take).
    fn register_gossip_key(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.registering.swap(true, Ordering::SeqCst) {
            return;
        }
        let s = self.clone();
        tokio::spawn(async move {
            let req = NodeRequest::SetGossipKey {
                key: s.auth.public_key(),
            };
            match s.rpc.call(req).await {
                Ok(_) => info!("gossip signing key registered"),
                Err(e) => warn!("cannot register the gossip signing key: {e}"),
            }
            s.registering.store(false, Ordering::SeqCst);
        });
    }

    /// Digest of the root that issued this node's certificate.
    fn issuer_digest(&self) -> Option<String> {
        let id = self.identity();
        id.roots
            .iter()
            .find(|r| roles::issued_by(&id.cert, r))
            .map(|r| shoal_tls::CaDigest::of(r).to_string())
    }
}

/// Control addresses of the managers as the membership file lists them.
fn manager_addrs(file: &Mutex<SwarmFile>) -> Vec<SocketAddr> {
    let f = file.lock().unwrap_or_else(|p| p.into_inner());
    f.managers.iter().map(|(_, a)| *a).collect()
}

/// How often a node checks its certificate and role.
fn heartbeat_every(config: &Config) -> Duration {
    Duration::from_millis(config.heartbeat_ms.max(100))
}
