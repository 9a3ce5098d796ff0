//! The node session: one QUIC connection (UDP 2377, mutual TLS with the
//! node certificates) from every node to the Raft leader.
//!
//! The node sends heartbeats with its status report; the leader answers
//! with its assignments — what the node must have: its own record, the
//! manager list, the trusted roots, the gossip key ring, and (later) its
//! networks and tasks — in full on connect and then as changes, each with
//! the store version it was computed at. A manager that is not the leader
//! redirects the node to the leader. The leader marks a node `Down` after 3
//! missed heartbeats and `Ready` when it is back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shoal_raft_store::network::{Endpoint, Network};
use shoal_raft_store::service::{EndpointMode, PortConfig, PublishMode, Task, TaskState};
use shoal_raft_store::state::{Command, GossipKey, Node, NodeStatus, State};
use shoal_tls::{NodeId, NodeIdentity, MANAGER_SERVER_NAME};
use tracing::{debug, info, warn};

use crate::api;

/// ALPN of the node session.
pub const ALPN_SESSION: &[u8] = b"shoal-session/1";
/// Missed heartbeats before the leader marks a node down.
pub const MISSED_HEARTBEATS: u32 = 3;

/// What a node reports with every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The kernel can create VXLAN devices.
    pub vxlan: bool,
    /// The kernel has IPsec ESP (xfrm + esp4) for encrypted overlays.
    pub esp: bool,
    /// Digest of the root CA that issued the node's certificate (the leader
    /// ends a CA rotation once every live node reports the new one).
    #[serde(default)]
    pub ca_digest: String,
    /// State of every service task this node holds.
    #[serde(default)]
    pub tasks: Vec<TaskReport>,
}

/// A task's state as its node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    /// Task id.
    pub id: String,
    /// Its state.
    pub state: TaskState,
    /// Exit code once exited.
    pub exit_code: Option<i32>,
    /// Why (errors).
    pub message: String,
}

/// A task to run (or stop) on the node, with what it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignedTask {
    /// The task as stored.
    pub task: Task,
    /// Its command.
    pub command: Vec<String>,
    /// `K=V` environment.
    pub env: Vec<String>,
}

/// What a node needs to know of a service its tasks can reach (VIP load
/// balancing, DNS) or that publishes ports (routing mesh).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    /// Id.
    pub id: String,
    /// Name (the DNS name).
    pub name: String,
    /// VIP or DNS round robin.
    pub endpoint_mode: EndpointMode,
    /// VIP per network id.
    pub vips: BTreeMap<String, Ipv4Addr>,
    /// Published ports.
    pub ports: Vec<PortConfig>,
    /// Running tasks' addresses: (network id, ip), on nodes that are up.
    pub backends: Vec<(String, Ipv4Addr)>,
}

impl ServiceView {
    /// Views of the services visible on `nets` (sharing a network), and of
    /// every service publishing ports through the routing mesh.
    fn of(state: &State, nets: &BTreeSet<String>) -> Vec<ServiceView> {
        let up = |node: &str| {
            state
                .nodes
                .values()
                .any(|n| n.id.as_str() == node && n.status != NodeStatus::Down)
        };
        let ingress = state.networks.values().find(|n| n.ingress);
        state
            .services
            .values()
            .filter(|s| {
                s.task_networks(ingress).iter().any(|n| nets.contains(n))
                    || s.spec.ports.iter().any(|p| p.mode == PublishMode::Ingress)
            })
            .map(|s| ServiceView {
                id: s.id.clone(),
                name: s.spec.name.clone(),
                endpoint_mode: s.spec.endpoint_mode,
                vips: s.vips.clone(),
                ports: s.spec.ports.clone(),
                backends: state
                    .tasks
                    .values()
                    .filter(|t| t.service == s.id && t.state == TaskState::Running)
                    .filter(|t| t.desired == TaskState::Running && up(&t.node))
                    .flat_map(|t| t.endpoints.iter().map(|(n, e)| (n.clone(), e.ip)))
                    .collect(),
            })
            .collect()
    }
}

/// What the leader wants a node to have.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignments {
    /// Store index it was computed at.
    pub version: u64,
    /// The node's own record.
    pub node: Option<Node>,
    /// Managers (raft id, control address).
    pub managers: Vec<(u64, SocketAddr)>,
    /// Trusted roots (PEM), the current one first.
    pub roots_pem: Vec<String>,
    /// Gossip key ring, newest first.
    pub keys: Vec<GossipKey>,
    /// Heartbeat period the leader expects, in milliseconds.
    pub heartbeat_ms: u64,
    /// VXLAN UDP port of the cluster.
    #[serde(default)]
    pub data_path_port: u16,
    /// Service tasks this node must run, or stop (not yet ended).
    #[serde(default)]
    pub tasks: Vec<AssignedTask>,
    /// The networks of those tasks (and the ingress network), without
    /// their endpoint lists.
    #[serde(default)]
    pub networks: BTreeMap<String, Network>,
    /// Services those tasks can reach, and those publishing ports.
    #[serde(default)]
    pub services: Vec<ServiceView>,
    /// This node's routing-mesh endpoint on the ingress network.
    #[serde(default)]
    pub ingress_endpoint: Option<Endpoint>,
}

impl std::fmt::Debug for Assignments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assignments")
            .field("version", &self.version)
            .field("managers", &self.managers.len())
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Assignments {
    /// Compute a node's assignments from the store.
    pub fn of(state: &State, node: &NodeId) -> Assignments {
        let cluster = state.cluster.as_ref();
        Assignments {
            version: state.index,
            node: state.nodes.get(node).cloned(),
            managers: state
                .managers()
                .filter_map(|n| n.raft_id.map(|r| (r, n.addr)))
                .collect(),
            roots_pem: cluster.map(|c| c.ca.trusted_roots()).unwrap_or_default(),
            keys: state.keys.clone(),
            heartbeat_ms: cluster.map(|c| c.heartbeat_period_ms).unwrap_or(5000),
            data_path_port: cluster.map(|c| c.data_path_port).unwrap_or(4789),
            tasks: Vec::new(),
            networks: BTreeMap::new(),
            services: Vec::new(),
            ingress_endpoint: None,
        }
        .with_tasks(state, node)
    }

    fn with_tasks(mut self, state: &State, node: &NodeId) -> Assignments {
        let ingress = state.networks.values().find(|n| n.ingress);
        self.tasks = state
            .tasks
            .values()
            .filter(|t| t.node == node.as_str() && !t.state.is_terminal())
            .map(|t| {
                let spec = state.services.get(&t.service).map(|s| &s.spec);
                AssignedTask {
                    task: t.clone(),
                    command: spec.map(|s| s.command.clone()).unwrap_or_default(),
                    env: spec.map(|s| s.env.clone()).unwrap_or_default(),
                }
            })
            .collect();
        let mut nets: BTreeSet<String> = self
            .tasks
            .iter()
            .flat_map(|t| t.task.endpoints.keys().cloned())
            .collect();
        self.ingress_endpoint =
            ingress.and_then(|i| i.endpoints.get(&ingress_endpoint_id(node)).cloned());
        if let (Some(i), Some(_)) = (ingress, &self.ingress_endpoint) {
            nets.insert(i.id.clone());
        }
        self.services = ServiceView::of(state, &nets);
        self.networks = nets
            .iter()
            .filter_map(|n| state.networks.get(n))
            .map(|n| {
                let mut n = n.clone();
                n.endpoints.clear();
                (n.id.clone(), n)
            })
            .collect();
        self
    }

    /// Same content, ignoring the version.
    fn same_as(&self, other: &Assignments) -> bool {
        self.node == other.node
            && self.managers == other.managers
            && self.roots_pem == other.roots_pem
            && self.keys == other.keys
            && self.heartbeat_ms == other.heartbeat_ms
            && self.data_path_port == other.data_path_port
            && self.tasks == other.tasks
            && self.networks == other.networks
            && self.services == other.services
            && self.ingress_endpoint == other.ingress_endpoint
    }
}

/// Id of a node's routing-mesh endpoint on the ingress network.
pub fn ingress_endpoint_id(node: &NodeId) -> String {
    format!("ingress-sbox-{node}")
}

/// On the leader: record the task states a node reported, where they move
/// a task of that node forward (a node cannot report others' tasks).
async fn record_task_states(
    raft: shoal_raft_store::RaftNode<State>,
    node: NodeId,
    reports: Vec<TaskReport>,
) {
    let ids: Vec<String> = reports.iter().map(|r| r.id.clone()).collect();
    let Ok(stored) = raft
        .read(move |s| {
            ids.iter()
                .map(|id| s.tasks.get(id).map(|t| (t.node.clone(), t.state)))
                .collect::<Vec<_>>()
        })
        .await
    else {
        return;
    };
    for (r, stored) in reports.iter().zip(stored) {
        let Some((owner, state)) = stored else {
            continue;
        };
        if owner != node.as_str() || state.is_terminal() || r.state <= state {
            continue;
        }
        let cmd = Command::TaskStatus {
            id: r.id.clone(),
            state: r.state,
            exit_code: r.exit_code,
            message: r.message.clone(),
            at: crate::swarm::now_ms(),
        };
        if let Err(e) = raft.propose(cmd).await {
            debug!(task = %r.id, "cannot record task state: {e}");
        }
    }
}

/// Node -> leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToManager {
    /// A heartbeat with the node's report.
    Heartbeat(NodeReport),
}

/// Leader -> node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToNode {
    /// Not the leader: go there (if known).
    Redirect(Option<SocketAddr>),
    /// Assignments, in full.
    Assign(Box<Assignments>),
}

/// Liveness bookkeeping on the leader.
#[derive(Debug, Default)]
pub struct Liveness {
    last_seen: Mutex<HashMap<NodeId, Instant>>,
    reports: Mutex<HashMap<NodeId, NodeReport>>,
}

impl Liveness {
    fn seen(&self, node: &NodeId, report: NodeReport) {
        if let Ok(mut m) = self.last_seen.lock() {
            m.insert(node.clone(), Instant::now());
        }
        if let Ok(mut m) = self.reports.lock() {
            m.insert(node.clone(), report);
        }
    }

    /// Nodes that sent a heartbeat within `within`.
    pub fn live_count(&self, within: Duration) -> u64 {
        self.last_seen
            .lock()
            .map(|m| m.values().filter(|t| t.elapsed() <= within).count() as u64)
            .unwrap_or(0)
    }

    /// When the node last sent a heartbeat to this leader.
    pub fn last_seen(&self, node: &NodeId) -> Option<Instant> {
        self.last_seen
            .lock()
            .ok()
            .and_then(|m| m.get(node).copied())
    }

    /// The node's last report.
    pub fn report(&self, node: &NodeId) -> Option<NodeReport> {
        self.reports.lock().ok().and_then(|m| m.get(node).cloned())
    }
}

/// What the managers need from the rest of the agent.
pub trait SessionHost: Send + Sync + 'static {
    /// The Raft node, on managers.
    fn raft(&self) -> Option<&shoal_raft_store::RaftNode<State>>;
    /// Leader bookkeeping.
    fn liveness(&self) -> &Liveness;
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

fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // A dead manager is noticed within the idle timeout (QUIC keep-alives
    // keep a live session busy), so the node fails over in seconds.
    t.keep_alive_interval(Some(Duration::from_millis(500)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(3)) {
        t.max_idle_timeout(Some(idle));
    }
    t.max_concurrent_uni_streams(0u8.into());
    t.max_concurrent_bidi_streams(4u8.into());
    t
}

/// Accept sessions until the endpoint closes.
pub async fn serve<H: SessionHost>(endpoint: quinn::Endpoint, host: Weak<H>) {
    while let Some(incoming) = endpoint.accept().await {
        let host = host.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    if let Err(e) = serve_session(conn, host).await {
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

async fn serve_session<H: SessionHost>(
    conn: quinn::Connection,
    host: Weak<H>,
) -> anyhow::Result<()> {
    let node = peer_node(&conn)?;
    let (mut send, mut recv) = conn.accept_bi().await?;
    let Some(h) = host.upgrade() else {
        return Ok(());
    };
    let Some(raft) = h.raft().cloned() else {
        anyhow::bail!("session on a non-manager");
    };
    drop(h);
    let status = raft.status();
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
    let mut changes = raft.subscribe();
    let mut sent: Option<Assignments> = None;
    let mut check = tokio::time::interval(Duration::from_millis(250));
    loop {
        // Push when the node's assignments changed (or first time).
        let n = node.clone();
        let now = raft.read(move |s| Assignments::of(s, &n)).await?;
        if sent.as_ref().is_none_or(|s| !s.same_as(&now)) {
            api::write_frame(&mut send, &ToNode::Assign(Box::new(now.clone()))).await?;
            sent = Some(now);
        }
        tokio::select! {
            msg = api::read_frame::<_, ToManager>(&mut recv) => {
                match msg? {
                    ToManager::Heartbeat(report) => {
                        let Some(h) = host.upgrade() else { return Ok(()) };
                        if !report.tasks.is_empty() {
                            tokio::spawn(record_task_states(
                                raft.clone(),
                                node.clone(),
                                report.tasks.clone(),
                            ));
                        }
                        h.liveness().seen(&node, report);
                    }
                }
            }
            r = changes.changed() => { r?; }
            _ = check.tick() => {
                if !raft.status().is_leader {
                    // Lost leadership: send the node to the new leader.
                    api::write_frame(&mut send, &ToNode::Redirect(None)).await?;
                    let _ = send.finish();
                    return Ok(());
                }
            }
        }
    }
}

/// On the leader: mark nodes `Down` after [`MISSED_HEARTBEATS`] periods
/// without a heartbeat, and `Ready` again when they come back. Each change
/// is proposed once (the next check sees the applied status).
pub async fn watch_liveness<H: SessionHost>(host: Weak<H>, me: NodeId) {
    let mut leader_since: Option<Instant> = None;
    loop {
        let period = {
            let Some(h) = host.upgrade() else { return };
            let Some(raft) = h.raft().cloned() else {
                return;
            };
            drop(h);
            let Ok(ms) = raft
                .read(|s| {
                    s.cluster
                        .as_ref()
                        .map(|c| c.heartbeat_period_ms)
                        .unwrap_or(5000)
                })
                .await
            else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            Duration::from_millis(ms.max(50))
        };
        tokio::time::sleep(period / 2).await;
        let Some(h) = host.upgrade() else { return };
        let Some(raft) = h.raft().cloned() else {
            return;
        };
        if !raft.status().is_leader {
            leader_since = None;
            continue;
        }
        let since = *leader_since.get_or_insert_with(Instant::now);
        let Ok(nodes) = raft
            .read(|s| s.nodes.values().cloned().collect::<Vec<_>>())
            .await
        else {
            continue;
        };
        let limit = period * MISSED_HEARTBEATS;
        for n in nodes {
            if n.id == me {
                // The leader is alive by definition (it may have been
                // marked down by an earlier leader while paused).
                if n.status != NodeStatus::Ready {
                    info!(node = %n.id, "leader marks itself ready");
                    let cmd = shoal_raft_store::state::Command::UpdateNode {
                        id: n.id.clone(),
                        update: shoal_raft_store::state::NodeUpdate {
                            status: Some(NodeStatus::Ready),
                            ..Default::default()
                        },
                        at: crate::swarm::now_ms(),
                    };
                    if let Err(e) = raft.propose(cmd).await {
                        warn!("cannot mark the leader ready: {e}");
                    }
                }
                continue;
            }
            // A new leader gives every node a full grace period first.
            let last = h.liveness().last_seen(&n.id).unwrap_or(since).max(since);
            let silent = last.elapsed();
            let want = if silent > limit && since.elapsed() > limit {
                NodeStatus::Down
            } else if h
                .liveness()
                .last_seen(&n.id)
                .is_some_and(|t| t.elapsed() <= limit)
            {
                NodeStatus::Ready
            } else {
                continue;
            };
            if n.status == want {
                continue;
            }
            info!(node = %n.id, status = %want, silent_ms = silent.as_millis() as u64, "node status change");
            let cmd = shoal_raft_store::state::Command::UpdateNode {
                id: n.id.clone(),
                update: shoal_raft_store::state::NodeUpdate {
                    status: Some(want),
                    ..Default::default()
                },
                at: crate::swarm::now_ms(),
            };
            if let Err(e) = raft.propose(cmd).await {
                warn!(node = %n.id, "cannot record node status: {e}");
            }
        }
    }
}

/// The node side: one session at a time, to the leader; fails over to the
/// next manager with backoff. `apply` is called with every assignment.
pub struct Client {
    endpoint: quinn::Endpoint,
    /// Manager the session is connected to, for `info`.
    pub connected: Mutex<Option<SocketAddr>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// A client endpoint on an ephemeral UDP port.
    pub fn new() -> anyhow::Result<Client> {
        let endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))?;
        Ok(Client {
            endpoint,
            connected: Mutex::new(None),
        })
    }

    /// The manager the session is on.
    pub fn connected(&self) -> Option<SocketAddr> {
        self.connected.lock().ok().and_then(|c| *c)
    }

    fn set_connected(&self, a: Option<SocketAddr>) {
        if let Ok(mut c) = self.connected.lock() {
            *c = a;
        }
    }

    /// Run one session against `addr` until it ends. Returns a redirect
    /// target if the manager sent one.
    pub async fn run_once(
        &self,
        identity: &NodeIdentity,
        addr: SocketAddr,
        report: &(dyn Fn() -> NodeReport + Send + Sync),
        heartbeat: &Mutex<Duration>,
        apply: &(dyn Fn(Assignments) + Send + Sync),
        wake: &tokio::sync::Notify,
    ) -> anyhow::Result<Option<SocketAddr>> {
        let tls = identity.client_config(&[ALPN_SESSION])?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
        cfg.transport_config(Arc::new(transport()));
        let conn = tokio::time::timeout(
            Duration::from_secs(1),
            self.endpoint.connect_with(cfg, addr, MANAGER_SERVER_NAME)?,
        )
        .await
        .map_err(|_| anyhow::anyhow!("session to {addr}: timed out"))??;
        let (mut send, mut recv) = conn.open_bi().await?;
        // The stream exists for the peer only once something is sent.
        api::write_frame(&mut send, &ToManager::Heartbeat(report())).await?;
        let mut first = true;
        let mut last: Option<Assignments> = None;
        let mut next_beat = tokio::time::Instant::now();
        loop {
            let period = heartbeat
                .lock()
                .map(|p| *p)
                .unwrap_or(Duration::from_secs(5));
            tokio::select! {
                msg = api::read_frame::<_, ToNode>(&mut recv) => {
                    match msg? {
                        ToNode::Redirect(to) => {
                            self.set_connected(None);
                            return Ok(to.filter(|t| *t != addr));
                        }
                        ToNode::Assign(a) => {
                            if first {
                                info!(manager = %addr, "node session established");
                                self.set_connected(Some(addr));
                                first = false;
                            }
                            if let Ok(mut p) = heartbeat.lock() {
                                *p = Duration::from_millis(a.heartbeat_ms.max(50));
                            }
                            last = Some((*a).clone());
                            apply(*a);
                        }
                    }
                }
                // A task changed state: report it now, not at the next beat.
                _ = wake.notified() => {
                    api::write_frame(&mut send, &ToManager::Heartbeat(report())).await?;
                }
                _ = tokio::time::sleep_until(next_beat + period) => {
                    next_beat = tokio::time::Instant::now();
                    api::write_frame(&mut send, &ToManager::Heartbeat(report())).await?;
                    // Re-apply, so a step that failed (renewal, raft join)
                    // is retried without waiting for a change.
                    if let Some(a) = &last {
                        apply(a.clone());
                    }
                }
            }
        }
    }
}

/// What this kernel can do, for the status report.
pub fn probe_kernel() -> NodeReport {
    let has = |m: &str| {
        std::fs::read_to_string("/proc/modules")
            .map(|s| s.lines().any(|l| l.starts_with(&format!("{m} "))))
            .unwrap_or(false)
            || std::path::Path::new(&format!("/sys/module/{m}")).exists()
    };
    NodeReport {
        vxlan: has("vxlan"),
        esp: has("esp4"),
        ca_digest: String::new(),
        tasks: Vec::new(),
    }
}
