//! Swarm membership of this node: `init`, `join`, restart from disk,
//! `leave`, and (on managers) the Raft store, the TCP 2377 listener and the
//! cluster commands (`node ls`, `node update`, join tokens...).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use shoal_raft_store::state::{
    ApplyError, Availability, CaState, Cluster, Command, GossipKey, Node, NodeStatus, NodeUpdate,
    State,
};
use shoal_raft_store::{RaftConfig, RaftError, RaftNode, TlsTransport};
use shoal_tls::{
    ClusterCa, JoinSecret, JoinToken, NodeId, NodeIdentity, NodeKey, Role, DEFAULT_CERT_VALIDITY,
    MANAGER_SERVER_NAME,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, info, warn};

use crate::addr;
use crate::api::{
    self, ApiError, ErrorCode, NodeRow, RaftInfo, SwarmInfo, SwarmInitArgs, SwarmJoinArgs,
    SwarmState,
};
use crate::config::Config;
use crate::membership_file::{self, SwarmFile};
use crate::rpc::{self, JoinRequest, JoinResponse, NodeRequest, NodeResponse};
use crate::session;

/// Default control port.
pub const DEFAULT_PORT: u16 = 2377;
/// How long a join waits for the manager to answer at each step.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS handshake on 2377 may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Unix milliseconds now (stamped into commands by the proposer, so `apply`
/// stays deterministic).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn raft_config(config: &Config, raft_id: u64) -> RaftConfig {
    RaftConfig {
        id: raft_id,
        data_dir: membership_file::swarm_dir(&config.data_dir),
        tick: Duration::from_millis(config.raft.tick_ms),
        election_ticks: config.raft.election_ticks,
        heartbeat_ticks: config.raft.heartbeat_ticks,
        snapshot_every: config.raft.snapshot_every,
        compact_keep: config.raft.compact_keep,
        ..RaftConfig::default()
    }
}

fn new_raft_id() -> u64 {
    use rand::Rng;
    rand::rngs::OsRng.gen_range(1..=u64::MAX >> 1)
}

fn hostname(config: &Config) -> String {
    config.hostname.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    })
}

/// Errors from the store as the user should read them.
fn raft_err(e: RaftError) -> ApiError {
    let code = match e {
        RaftError::NoQuorum { .. }
        | RaftError::NoLeader(_)
        | RaftError::Timeout(_)
        | RaftError::Dropped(_)
        | RaftError::NotMember(_) => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    ApiError::new(code, e.to_string())
}

fn apply_err(e: ApplyError) -> ApiError {
    let code = match e {
        ApplyError::NoSuchNode(_) => ErrorCode::NotFound,
        _ => ErrorCode::Invalid,
    };
    ApiError::new(code, e.to_string())
}

fn not_manager() -> ApiError {
    ApiError::invalid(
        "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster \
         state. Please run this command on a manager node or promote the current node to a manager.",
    )
}

/// TLS material that changes on renewal, shared with the listener and the
/// Raft transport.
struct Tls {
    server: RwLock<Arc<rustls::ServerConfig>>,
    raft_client: watch::Sender<Arc<rustls::ClientConfig>>,
    node_client: RwLock<Arc<rustls::ClientConfig>>,
}

impl Tls {
    fn new(id: &NodeIdentity) -> Result<Tls> {
        let (raft_client, _) = watch::channel(id.client_config(&[rpc::ALPN_RAFT])?);
        Ok(Tls {
            server: RwLock::new(id.server_config(&[
                rpc::ALPN_RAFT,
                rpc::ALPN_JOIN,
                rpc::ALPN_NODE,
            ])?),
            raft_client,
            node_client: RwLock::new(id.client_config(&[rpc::ALPN_NODE])?),
        })
    }
}

/// Asks the daemon to stop this membership and start it again from disk
/// (after a promotion or demotion changed what the node runs).
pub type RestartTx = tokio::sync::mpsc::UnboundedSender<()>;

/// An active swarm membership.
pub struct Swarm {
    config: Config,
    restart: RestartTx,
    file: Mutex<SwarmFile>,
    identity: RwLock<NodeIdentity>,
    tls: Tls,
    raft: Option<RaftNode<State>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Leader's record of node heartbeats.
    liveness: session::Liveness,
    /// QUIC endpoint of the session server (managers).
    quic: Option<quinn::Endpoint>,
    /// This node's side of the session.
    session: Arc<session::Client>,
    /// Gossip key ring as last assigned.
    keys: RwLock<Vec<GossipKey>>,
    /// Heartbeat period as last assigned.
    heartbeat: Mutex<Duration>,
    /// A certificate renewal is running (do not start another).
    renewing: std::sync::atomic::AtomicBool,
    /// SWIM gossip, once the key ring is known.
    gossip: RwLock<Option<shoal_membership::Gossip>>,
    /// Gossip is being started (do not start twice).
    gossip_starting: std::sync::atomic::AtomicBool,
    /// Workloads and the netdriver.
    pub overlay: crate::overlay::Overlay,
    /// Service tasks on this node.
    pub executor: crate::executor::Executor,
    /// Cluster events as this manager saw them.
    events: crate::events::EventLog,
    /// VXLAN port of the cluster, as last assigned.
    data_path_port: std::sync::atomic::AtomicU16,
}

impl session::SessionHost for Swarm {
    fn raft(&self) -> Option<&RaftNode<State>> {
        self.raft.as_ref()
    }
    fn liveness(&self) -> &session::Liveness {
        &self.liveness
    }
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

impl Swarm {
    /// `swarm init`: a new cluster with this node as its only manager.
    pub async fn init(
        config: &Config,
        restart: RestartTx,
        args: SwarmInitArgs,
    ) -> Result<(Arc<Swarm>, String), ApiError> {
        let listen = match &args.listen_addr {
            Some(l) => addr::resolve_socket("--listen-addr", l, DEFAULT_PORT),
            None => Ok(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                DEFAULT_PORT,
            )),
        }
        .map_err(ApiError::invalid)?;
        let advertise =
            addr::resolve_socket("--advertise-addr", &args.advertise_addr, listen.port())
                .map_err(ApiError::invalid)?;
        addr::check_advertisable("--advertise-addr", advertise.ip()).map_err(ApiError::invalid)?;
        let data_path = match &args.data_path_addr {
            Some(d) => addr::resolve_ip("--data-path-addr", d).map_err(ApiError::invalid)?,
            None => advertise.ip(),
        };
        addr::check_advertisable("--data-path-addr", data_path).map_err(ApiError::invalid)?;
        let pools = if args.default_addr_pool.is_empty() {
            vec!["10.0.0.0/8".to_string()]
        } else {
            args.default_addr_pool.clone()
        };
        for p in &pools {
            let net: ipnet::Ipv4Net = p.parse().map_err(|e| {
                ApiError::invalid(format!(
                    "--default-addr-pool {p}: {e} (expected an IPv4 CIDR like 10.0.0.0/8)"
                ))
            })?;
            if net.trunc() != net {
                return Err(ApiError::invalid(format!(
                    "--default-addr-pool {p}: host bits are set (did you mean {}?)",
                    net.trunc()
                )));
            }
            let mask = args.default_addr_pool_mask_length;
            if mask < net.prefix_len() || mask > 29 {
                return Err(ApiError::invalid(format!(
                    "--default-addr-pool-mask-length {mask}: must be between the pool's prefix \
                     length {} and 29",
                    net.prefix_len()
                )));
            }
        }
        if args.data_path_port < 1024 {
            return Err(ApiError::invalid(format!(
                "--data-path-port {}: must be 1024-49151",
                args.data_path_port
            )));
        }

        let internal = |e: &dyn std::fmt::Display| ApiError::internal(e.to_string());
        let cluster_id = NodeId::generate().to_string();
        let ca = ClusterCa::generate(&cluster_id).map_err(|e| internal(&e))?;
        let node_id = NodeId::generate();
        let key = NodeKey::generate().map_err(|e| internal(&e))?;
        let csr = key.csr_der().map_err(|e| internal(&e))?;
        let cert = ca
            .sign_csr(&csr, &node_id, Role::Manager, DEFAULT_CERT_VALIDITY)
            .map_err(|e| internal(&e))?;
        let identity =
            NodeIdentity::new(cert, key, vec![ca.cert_der()]).map_err(|e| internal(&e))?;
        let raft_id = new_raft_id();
        let now = now_ms();
        let cluster = Cluster {
            id: cluster_id.clone(),
            created_at: now,
            ca: CaState {
                cert_pem: ca.cert_pem(),
                key_pem: ca.key_pem(),
                previous_roots: vec![],
            },
            worker_secret: JoinSecret::generate().as_str().to_string(),
            manager_secret: JoinSecret::generate().as_str().to_string(),
            default_addr_pools: pools,
            default_addr_pool_mask_len: args.default_addr_pool_mask_length,
            data_path_port: args.data_path_port,
            heartbeat_period_ms: args
                .dispatcher_heartbeat_ms
                .unwrap_or(config.heartbeat_ms)
                .max(100),
            key_rotation_ms: args
                .key_rotation_interval_ms
                .unwrap_or(12 * 3600 * 1000)
                .max(100),
        };
        let worker_token = JoinToken {
            digest: ca.digest(),
            secret: cluster.worker_secret.clone(),
        };
        let node = Node {
            id: node_id.clone(),
            hostname: hostname(config),
            role: Role::Manager,
            availability: Availability::Active,
            status: NodeStatus::Ready,
            addr: advertise,
            data_path_addr: data_path,
            raft_id: Some(raft_id),
            created_at: now,
            updated_at: now,
            version: 0,
        };
        let sf = SwarmFile {
            cluster_id,
            node_id: node_id.clone(),
            role: Role::Manager,
            raft_id: Some(raft_id),
            addr: advertise,
            listen_addr: listen,
            data_path_addr: data_path,
            managers: vec![(raft_id, advertise)],
            raft_join_pending: false,
        };
        // Bind before writing anything, so a busy port fails cleanly.
        let listener = bind(listen)
            .await
            .map_err(|e| internal(&format!("{e:#}")))?;
        membership_file::save(&config.data_dir, &sf, &identity)
            .map_err(|e| internal(&format!("{e:#}")))?;
        let swarm = Swarm::start_with(
            config.clone(),
            restart,
            sf,
            identity,
            Some(listener),
            StartRaft::Bootstrap,
        )
        .await
        .map_err(|e| {
            let _ = membership_file::wipe(&config.data_dir);
            internal(&format!("{e:#}"))
        })?;
        swarm
            .propose(Command::InitCluster {
                cluster: Box::new(cluster),
                node,
            })
            .await?;
        // Like docker: the routing-mesh network exists from the start.
        swarm
            .propose(Command::CreateNetwork {
                spec: shoal_raft_store::network::NetworkSpec {
                    id: NodeId::generate().to_string(),
                    name: "ingress".into(),
                    ingress: true,
                    ..Default::default()
                },
                at: now_ms(),
            })
            .await?;
        let msg = format!(
            "Swarm initialized: current node ({node_id}) is now a manager.\n\n\
             To add a worker to this swarm, run the following command:\n\n    \
             shoal swarm join --token {worker_token} {advertise}\n\n\
             To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions.\n"
        );
        Ok((swarm, msg))
    }

    /// `swarm join`: ask a manager for a certificate, then run as worker or
    /// manager.
    pub async fn join(
        config: &Config,
        restart: RestartTx,
        args: SwarmJoinArgs,
    ) -> Result<(Arc<Swarm>, String), ApiError> {
        let token: JoinToken = args
            .token
            .trim()
            .parse()
            .map_err(|e: shoal_tls::TokenError| ApiError::invalid(e.to_string()))?;
        let remote = resolve_remote(&args.remote).await?;
        let listen = match &args.listen_addr {
            Some(l) => addr::resolve_socket("--listen-addr", l, DEFAULT_PORT),
            None => Ok(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                DEFAULT_PORT,
            )),
        }
        .map_err(ApiError::invalid)?;
        let advertise = match &args.advertise_addr {
            Some(a) => addr::resolve_socket("--advertise-addr", a, listen.port())
                .map_err(ApiError::invalid)?,
            None => SocketAddr::new(local_addr_towards(remote).await?, listen.port()),
        };
        addr::check_advertisable("--advertise-addr", advertise.ip()).map_err(ApiError::invalid)?;
        let data_path = match &args.data_path_addr {
            Some(d) => addr::resolve_ip("--data-path-addr", d).map_err(ApiError::invalid)?,
            None => advertise.ip(),
        };
        let internal = |e: &dyn std::fmt::Display| ApiError::internal(e.to_string());
        let key = NodeKey::generate().map_err(|e| internal(&e))?;
        let csr_der = key.csr_der().map_err(|e| internal(&e))?;
        let req = JoinRequest {
            secret: token.secret.clone(),
            csr_der,
            hostname: hostname(config),
            addr: advertise,
            data_path_addr: data_path,
        };
        let tls = shoal_tls::pinned_client_config(&token.digest, &[rpc::ALPN_JOIN])
            .map_err(|e| internal(&e))?;
        let resp: Result<JoinResponse, String> = call(tls, remote, &req).await?;
        let resp = resp.map_err(ApiError::invalid)?;

        let roots = resp
            .roots_pem
            .iter()
            .map(|p| shoal_tls::certs_from_pem(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| internal(&e))?
            .into_iter()
            .flatten()
            .collect();
        let identity =
            NodeIdentity::new(resp.cert_der.clone().into(), key, roots).map_err(|e| {
                ApiError::internal(format!("the manager issued an unusable certificate: {e}"))
            })?;
        if identity.info.role != resp.role || identity.info.node_id != resp.node_id {
            return Err(ApiError::internal(
                "the manager issued a certificate for another node or role",
            ));
        }
        let sf = SwarmFile {
            cluster_id: resp.cluster_id.clone(),
            node_id: resp.node_id.clone(),
            role: resp.role,
            raft_id: resp.raft_id,
            addr: advertise,
            listen_addr: listen,
            data_path_addr: data_path,
            managers: resp.managers.clone(),
            raft_join_pending: false,
        };
        let listener = match resp.role {
            Role::Manager => Some(
                bind(listen)
                    .await
                    .map_err(|e| internal(&format!("{e:#}")))?,
            ),
            Role::Worker => None,
        };
        membership_file::save(&config.data_dir, &sf, &identity)
            .map_err(|e| internal(&format!("{e:#}")))?;
        let start = match resp.role {
            Role::Manager => StartRaft::Join(resp.managers.clone()),
            Role::Worker => StartRaft::None,
        };
        let swarm = Swarm::start_with(config.clone(), restart, sf, identity, listener, start)
            .await
            .map_err(|e| internal(&format!("{e:#}")))?;
        let msg = format!("This node joined a swarm as a {}.", resp.role);
        Ok((swarm, msg))
    }

    /// Resume the membership recorded in the data dir after a restart.
    pub async fn resume(
        config: &Config,
        restart: RestartTx,
        sf: SwarmFile,
        identity: NodeIdentity,
    ) -> Result<Arc<Swarm>> {
        let (listener, start) = match sf.role {
            Role::Manager => {
                let rcfg = raft_config(config, sf.raft_id.unwrap_or(0));
                if sf.raft_join_pending {
                    // Promoted: the leader added us as a voter; start empty
                    // and learn the log from it.
                    (
                        Some(bind(sf.listen_addr).await?),
                        StartRaft::Join(sf.managers.clone()),
                    )
                } else if !RaftNode::<State>::exists(&rcfg.data_dir) {
                    bail!(
                        "{}: this node is a manager of swarm {} but its Raft log at {} is missing; \
                         refusing to start an empty cluster (restore the data dir, or run \
                         `shoal swarm leave --force` to forget the swarm)",
                        membership_file::swarm_dir(&config.data_dir).display(),
                        sf.cluster_id,
                        rcfg.data_dir.display()
                    );
                } else {
                    (Some(bind(sf.listen_addr).await?), StartRaft::Restart)
                }
            }
            Role::Worker => (None, StartRaft::None),
        };
        Swarm::start_with(config.clone(), restart, sf, identity, listener, start).await
    }

    async fn start_with(
        config: Config,
        restart: RestartTx,
        mut sf: SwarmFile,
        identity: NodeIdentity,
        listener: Option<TcpListener>,
        start: StartRaft,
    ) -> Result<Arc<Swarm>> {
        let tls = Tls::new(&identity)?;
        let raft = match (&start, sf.raft_id) {
            (StartRaft::None, _) => None,
            (_, None) => bail!("swarm.json: manager without a raft id"),
            (start, Some(rid)) => {
                let transport = TlsTransport::new(tls.raft_client.subscribe());
                let rcfg = raft_config(&config, rid);
                let node = match start {
                    StartRaft::Bootstrap => {
                        RaftNode::bootstrap(rcfg, sf.addr, State::default(), transport).await
                    }
                    StartRaft::Join(managers) => {
                        use shoal_raft_store::Transport;
                        for (id, a) in managers {
                            transport.set_peer(*id, *a);
                        }
                        RaftNode::join(rcfg, State::default(), transport).await
                    }
                    StartRaft::Restart => {
                        RaftNode::restart(rcfg, State::default(), transport).await
                    }
                    StartRaft::None => unreachable_none(),
                };
                let node = node.map_err(|e| anyhow!("{e}"))?;
                if sf.raft_join_pending {
                    sf.raft_join_pending = false;
                    membership_file::save_file(&config.data_dir, &sf)?;
                }
                Some(node)
            }
        };
        let quic = match (&raft, &listener) {
            (Some(_), Some(_)) => Some(
                session::server_endpoint(&identity, sf.listen_addr)
                    .with_context(|| format!("cannot listen on UDP {}", sf.listen_addr))?,
            ),
            _ => None,
        };
        let me = sf.node_id.clone();
        let me_str = me.to_string();
        let heartbeat = Duration::from_millis(config.heartbeat_ms.max(50));
        let config_run_dir = config.run_dir.clone();
        let upstreams = config.upstreams().map_err(|e| anyhow!("{e}"))?;
        let swarm = Arc::new(Swarm {
            config,
            restart,
            file: Mutex::new(sf),
            identity: RwLock::new(identity),
            tls,
            raft,
            tasks: Mutex::new(Vec::new()),
            liveness: session::Liveness::default(),
            quic,
            session: Arc::new(session::Client::new()?),
            keys: RwLock::new(Vec::new()),
            heartbeat: Mutex::new(heartbeat),
            renewing: std::sync::atomic::AtomicBool::new(false),
            gossip: RwLock::new(None),
            gossip_starting: std::sync::atomic::AtomicBool::new(false),
            overlay: crate::overlay::Overlay::new(&config_run_dir),
            executor: crate::executor::Executor::new(upstreams),
            events: crate::events::EventLog::default(),
            data_path_port: std::sync::atomic::AtomicU16::new(4789),
        });
        let weak = Arc::downgrade(&swarm);
        if let Some(l) = listener {
            swarm.add_task(tokio::spawn(serve_listener(l, weak.clone())));
        }
        if let Some(ep) = &swarm.quic {
            swarm.add_task(tokio::spawn(session::serve(ep.clone(), weak.clone())));
            swarm.add_task(tokio::spawn(session::watch_liveness(weak.clone(), me)));
            swarm.add_task(tokio::spawn(key_manager(weak.clone())));
            swarm.add_task(tokio::spawn(manager_loop(weak.clone())));
            swarm.add_task(tokio::spawn(scheduler_loop(weak.clone())));
            swarm.add_task(tokio::spawn(events_loop(weak.clone())));
        }
        // A restarted daemon rejoins gossip at once, as the same member,
        // before its session delivers the key ring again.
        if let Some(r) = crate::gossip::Resume::load(&swarm.config.run_dir, me_str.as_str()) {
            swarm.ensure_gossip(&r.keys);
        }
        swarm.add_task(tokio::spawn(overlay_loop(weak.clone())));
        swarm.add_task(tokio::spawn(executor_loop(weak.clone())));
        swarm.add_task(tokio::spawn(session_loop(weak)));
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

    fn raft(&self) -> Result<&RaftNode<State>, ApiError> {
        self.raft.as_ref().ok_or_else(not_manager)
    }

    /// Propose a command and wait until it is applied here.
    pub async fn propose(&self, cmd: Command) -> Result<(), ApiError> {
        self.raft()?
            .propose(cmd)
            .await
            .map_err(raft_err)?
            .map_err(apply_err)
    }

    /// Change a node's record (stamped with the time now).
    async fn update_node(&self, id: &NodeId, update: NodeUpdate) -> Result<(), ApiError> {
        self.propose(Command::UpdateNode {
            id: id.clone(),
            update,
            at: now_ms(),
        })
        .await
    }

    /// A fresh (ReadIndex) read of the store.
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&State) -> R + Send + 'static,
    ) -> Result<R, ApiError> {
        let raft = self.raft()?;
        raft.read_barrier().await.map_err(raft_err)?;
        raft.read(f).await.map_err(raft_err)
    }

    /// A local read of the applied state, for resolving names before a
    /// write (the write itself is checked again when applied).
    async fn read_local<R: Send + 'static>(
        &self,
        f: impl FnOnce(&State) -> R + Send + 'static,
    ) -> Result<R, ApiError> {
        self.raft()?.read(f).await.map_err(raft_err)
    }

    /// The swarm part of `info`.
    pub fn info(&self) -> SwarmInfo {
        let sf = self.file();
        let raft = self.raft.as_ref().map(|r| {
            let st = r.status();
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
        });
        let keys = match self.keys.read() {
            Ok(k) => k
                .iter()
                .map(|k| api::KeyInfo {
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
            state: SwarmState::Active,
            cluster_id: Some(sf.cluster_id),
            role: Some(sf.role),
            node_addr: Some(sf.addr.to_string()),
            data_path_addr: Some(sf.data_path_addr.to_string()),
            managers: sf.managers.iter().map(|(_, a)| a.to_string()).collect(),
            raft,
        }
    }

    /// `node ls`, or `node inspect` of the nodes matching `filter`.
    pub async fn nodes(&self, filter: Option<String>) -> Result<Vec<NodeRow>, ApiError> {
        let raft = self.raft()?;
        let status = raft.status();
        let me = self.node_id();
        let state_nodes = self
            .read(|s| s.nodes.values().cloned().collect::<Vec<_>>())
            .await?;
        let gossip_view = self.gossip().map(|g| g.members()).unwrap_or_default();
        let nodes = match filter {
            None => state_nodes,
            Some(f) => vec![resolve_node(&state_nodes, &f, &me)?.clone()],
        };
        Ok(nodes
            .into_iter()
            .map(|n| {
                let manager_status = match n.raft_id {
                    None => String::new(),
                    Some(rid) if status.leader == Some(rid) => "Leader".into(),
                    Some(rid) if rid == status.id => "Reachable".into(),
                    Some(rid) => {
                        if status.voters.iter().any(|v| v.id == rid && v.reachable) {
                            "Reachable".into()
                        } else {
                            "Unreachable".into()
                        }
                    }
                };
                let gossip = gossip_view
                    .iter()
                    .find(|m| m.info.node_id == n.id.as_str())
                    .map(|m| format!("{:?}", m.state).to_lowercase())
                    .unwrap_or_default();
                NodeRow {
                    gossip,
                    is_self: n.id == me,
                    node: n,
                    manager_status,
                }
            })
            .collect())
    }

    /// `network create`: allocation happens in Raft apply.
    pub async fn network_create(
        &self,
        mut spec: shoal_raft_store::network::NetworkSpec,
    ) -> Result<String, ApiError> {
        self.raft()?;
        spec.id = NodeId::generate().to_string();
        let id = spec.id.clone();
        self.propose(Command::CreateNetwork { spec, at: now_ms() })
            .await?;
        Ok(id)
    }

    /// Allocate an endpoint for a workload of `node` on an attachable
    /// network (manager side).
    async fn allocate_endpoint(
        &self,
        network: &str,
        name: String,
        node: String,
        ip: Option<std::net::Ipv4Addr>,
    ) -> Result<
        (
            shoal_raft_store::network::Network,
            shoal_raft_store::network::Endpoint,
        ),
        ApiError,
    > {
        let key = network.to_string();
        let net = self
            .read(move |s| shoal_raft_store::network::find(&s.networks, &key).cloned())
            .await?
            .ok_or_else(|| {
                ApiError::new(ErrorCode::NotFound, format!("network {network} not found"))
            })?;
        if !net.attachable {
            return Err(ApiError::invalid(format!(
                "network {} is not attachable: create it with --attachable to run standalone workloads on it",
                net.name
            )));
        }
        let id = NodeId::generate().to_string();
        self.propose(Command::AttachEndpoint {
            network: net.id.clone(),
            id: id.clone(),
            name,
            node,
            ip,
        })
        .await?;
        let nid = net.id.clone();
        let net = self
            .read_local(move |s| s.networks.get(&nid).cloned())
            .await?
            .ok_or_else(|| ApiError::internal("network vanished"))?;
        let ep = net
            .endpoints
            .get(&id)
            .cloned()
            .ok_or_else(|| ApiError::internal("endpoint vanished"))?;
        Ok((net, ep))
    }

    /// `shoal run`: allocate an endpoint (through a manager when this node
    /// is a worker), then start the workload here.
    pub async fn run(
        &self,
        network: &str,
        name: Option<String>,
        ip: Option<std::net::Ipv4Addr>,
        argv: Vec<String>,
    ) -> Result<crate::overlay::Workload, ApiError> {
        if argv.is_empty() {
            return Err(ApiError::invalid(
                "shoal run: no command given (shoal run --network NET -- CMD ...)",
            ));
        }
        let sf = self.file();
        let IpAddr::V4(vtep) = sf.data_path_addr else {
            return Err(ApiError::invalid(
                "overlay networks need an IPv4 data-path address",
            ));
        };
        let me = sf.node_id.to_string();
        let name = name.unwrap_or_default();
        let (net, ep) = if self.raft.is_some() {
            self.allocate_endpoint(network, name.clone(), me.clone(), ip)
                .await?
        } else {
            match self
                .node_call(NodeRequest::Attach {
                    network: network.to_string(),
                    name: name.clone(),
                    ip,
                })
                .await?
            {
                NodeResponse::Attached { network, endpoint } => (*network, endpoint),
                _ => return Err(ApiError::internal("unexpected answer to attach")),
            }
        };
        if net.encrypted {
            // Fail closed: IPsec for overlays is not implemented (and this
            // kernel class has no ESP); never carry the traffic in clear.
            let _ = self.release_endpoint(&net.id, &ep.id).await;
            return Err(ApiError::invalid(format!(
                "network {} is encrypted (--opt encrypted) but this node cannot encrypt overlay \
                 traffic (no IPsec ESP support here): refusing to attach rather than send plaintext",
                net.name
            )));
        }
        let name = if name.is_empty() {
            ep.id.chars().take(12).collect()
        } else {
            name
        };
        let port = self
            .data_path_port
            .load(std::sync::atomic::Ordering::Relaxed);
        let gossip = self.gossip();
        let spec = crate::overlay::StartSpec {
            id: ep.id.clone(),
            name,
            networks: vec![(net.clone(), ep.clone())],
            argv,
            ..Default::default()
        };
        match self
            .overlay
            .start(spec, &me, vtep, port, gossip.as_ref())
            .await
        {
            Ok(w) => Ok(w),
            Err(e) => {
                let _ = self.release_endpoint(&net.id, &ep.id).await;
                Err(ApiError::internal(format!(
                    "cannot start the workload: {e:#}"
                )))
            }
        }
    }

    /// Free an endpoint in the store.
    async fn release_endpoint(&self, network: &str, endpoint: &str) -> Result<(), ApiError> {
        if self.raft.is_some() {
            self.propose(Command::DetachEndpoint {
                network: network.to_string(),
                id: endpoint.to_string(),
            })
            .await
        } else {
            self.node_call(NodeRequest::Detach {
                network: network.to_string(),
                endpoint: endpoint.to_string(),
            })
            .await
            .map(|_| ())
        }
    }

    /// `shoal stop`: SIGTERM the workload; the overlay loop cleans up.
    pub fn stop(&self, key: &str) -> Result<String, ApiError> {
        let w = self.overlay.find(key).ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, format!("workload {key} not found"))
        })?;
        let pid = nix::unistd::Pid::from_raw(w.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.overlay.kick.notify_one();
        Ok(w.id)
    }

    /// `network rm`.
    pub async fn network_remove(&self, network: &str) -> Result<String, ApiError> {
        self.propose(Command::RemoveNetwork {
            network: network.to_string(),
        })
        .await?;
        Ok(network.to_string())
    }

    /// `network ls` (no names) / `network inspect NAME...`: docker-like
    /// documents, with the data-path addresses of nodes that have
    /// endpoints as peers.
    pub async fn networks(&self, names: &[String]) -> Result<Vec<serde_json::Value>, ApiError> {
        let (nets, nodes) = self.read(|s| (s.networks.clone(), s.nodes.clone())).await?;
        let selected: Vec<_> = if names.is_empty() {
            nets.values().cloned().collect()
        } else {
            names
                .iter()
                .map(|k| {
                    shoal_raft_store::network::find(&nets, k)
                        .cloned()
                        .ok_or_else(|| {
                            ApiError::new(ErrorCode::NotFound, format!("network {k} not found"))
                        })
                })
                .collect::<Result<_, _>>()?
        };
        Ok(selected.iter().map(|n| network_doc(n, &nodes)).collect())
    }

    /// The event log (managers only).
    pub fn events(&self) -> Result<&crate::events::EventLog, ApiError> {
        self.raft()?;
        Ok(&self.events)
    }

    /// `network inspect --verbose`: each node's view of each network from
    /// the `netstatus` gossip table ("Nodes": per host name, its VTEP,
    /// peers, and kernel-vs-desired differences).
    pub async fn add_node_views(&self, docs: &mut [serde_json::Value]) -> Result<(), ApiError> {
        let nodes = self.read(|s| s.nodes.clone()).await?;
        let statuses: Vec<crate::overlay::NetStatus> = self
            .gossip()
            .map(|g| g.entries(crate::overlay::STATUS_TABLE))
            .unwrap_or_default()
            .iter()
            .filter_map(|e| serde_json::from_slice(&e.value).ok())
            .collect();
        for d in docs.iter_mut() {
            let id = d["Id"].as_str().unwrap_or_default().to_string();
            let mut views = serde_json::Map::new();
            for st in statuses.iter().filter(|s| s.network == id) {
                let name = nodes
                    .values()
                    .find(|n| n.id.as_str() == st.node)
                    .map(|n| n.hostname.clone())
                    .unwrap_or_else(|| st.node.clone());
                views.insert(
                    name,
                    serde_json::json!({
                        "NodeId": st.node,
                        "VTEP": st.vtep,
                        "Peers": st.peers,
                        "InSync": st.in_sync,
                        "Differences": st.differences,
                        "TotalDifferences": st.total_differences,
                    }),
                );
            }
            d["Nodes"] = serde_json::Value::Object(views);
        }
        Ok(())
    }

    /// `node update --availability`.
    pub async fn node_update(
        &self,
        node: &str,
        availability: Option<Availability>,
    ) -> Result<String, ApiError> {
        let me = self.node_id();
        let nodes = self
            .read_local(|s| s.nodes.values().cloned().collect::<Vec<_>>())
            .await?;
        let id = resolve_node(&nodes, node, &me)?.id.clone();
        self.update_node(
            &id,
            NodeUpdate {
                availability,
                ..Default::default()
            },
        )
        .await?;
        Ok(id.to_string())
    }

    /// `node rm`.
    pub async fn node_remove(&self, node: &str, force: bool) -> Result<String, ApiError> {
        let me = self.node_id();
        let nodes = self
            .read(|s| s.nodes.values().cloned().collect::<Vec<_>>())
            .await?;
        let n = resolve_node(&nodes, node, &me)?.clone();
        if n.role == Role::Manager {
            return Err(ApiError::invalid(format!(
                "node {} is a cluster manager and is a member of the raft cluster. It must be \
                 demoted to worker before removal",
                n.id
            )));
        }
        if n.status != NodeStatus::Down && !force {
            return Err(ApiError::invalid(format!(
                "node {} is not down and can't be removed; use --force to remove it anyway",
                n.id
            )));
        }
        self.propose(Command::RemoveNode { id: n.id.clone() })
            .await?;
        Ok(n.id.to_string())
    }

    /// `node promote` / `node demote` of one node. Promotion adds the node
    /// as a Raft voter; the node picks up its new role on its next
    /// heartbeat.
    pub async fn node_set_role(&self, node: &str, role: Role) -> Result<String, ApiError> {
        let me = self.node_id();
        let (nodes, status) = (
            self.read(|s| s.nodes.values().cloned().collect::<Vec<_>>())
                .await?,
            self.raft()?.status(),
        );
        let n = resolve_node(&nodes, node, &me)?.clone();
        if n.role == role {
            return Ok(format!("Node {} is already a {role}.", n.id));
        }
        match role {
            Role::Manager => {
                // Only the desired role here: the node itself asks to join
                // the Raft group (JoinRaft) once it holds a manager
                // certificate, so the group never counts a voter that is
                // not running yet.
                self.update_node(
                    &n.id,
                    NodeUpdate {
                        role: Some(Role::Manager),
                        ..Default::default()
                    },
                )
                .await?;
                Ok(format!("Node {} promoted to a manager in the swarm.", n.id))
            }
            Role::Worker => {
                let voters = status.voters.len();
                let reachable = status.voters.iter().filter(|v| v.reachable).count();
                if voters <= 1 {
                    return Err(ApiError::invalid(format!(
                        "node {} is the last manager of the swarm and cannot be demoted",
                        n.id
                    )));
                }
                check_quorum_after_removal(voters, reachable, n.raft_id, &status)?;
                // The role change first, while the node still receives the
                // log: seeing it, the node steps down by itself.
                self.update_node(
                    &n.id,
                    NodeUpdate {
                        role: Some(Role::Worker),
                        ..Default::default()
                    },
                )
                .await?;
                if let Some(rid) = n.raft_id {
                    self.raft()?.remove_voter(rid).await.map_err(raft_err)?;
                }
                self.update_node(
                    &n.id,
                    NodeUpdate {
                        raft_id: Some(None),
                        ..Default::default()
                    },
                )
                .await?;
                Ok(format!("Manager {} demoted in the swarm.", n.id))
            }
        }
    }

    /// `swarm join-token worker|manager [--rotate]`.
    pub async fn join_token(&self, role: Role, rotate: bool) -> Result<(String, String), ApiError> {
        if rotate {
            self.propose(Command::SetJoinSecret {
                role,
                secret: JoinSecret::generate().as_str().to_string(),
            })
            .await?;
        }
        let cluster = self
            .read(|s| s.cluster.clone())
            .await?
            .ok_or_else(|| ApiError::internal("the store holds no cluster"))?;
        let ca_der = shoal_tls::certs_from_pem(&cluster.ca.cert_pem)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let digest = shoal_tls::CaDigest::of(ca_der.first().map(|c| c.as_ref()).unwrap_or(&[]));
        let secret = match role {
            Role::Worker => cluster.worker_secret,
            Role::Manager => cluster.manager_secret,
        };
        let token = JoinToken { digest, secret }.to_string();
        Ok((token, self.file().addr.to_string()))
    }

    /// `swarm ca --rotate`: a new root CA; the old one stays trusted until
    /// every node has renewed.
    pub async fn ca_rotate(&self) -> Result<String, ApiError> {
        let cluster = self
            .read(|s| s.cluster.clone())
            .await?
            .ok_or_else(|| ApiError::internal("the store holds no cluster"))?;
        let new_ca = ClusterCa::generate(&format!("{}-{}", cluster.id, now_ms()))
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let mut previous = vec![cluster.ca.cert_pem.clone()];
        previous.extend(cluster.ca.previous_roots.iter().cloned());
        previous.truncate(2);
        self.propose(Command::SetCa {
            ca: CaState {
                cert_pem: new_ca.cert_pem(),
                key_pem: new_ca.key_pem(),
                previous_roots: previous,
            },
        })
        .await?;
        Ok(format!(
            "Root CA rotated; new CA digest {}. Nodes renew their certificates on their next heartbeat.",
            new_ca.digest()
        ))
    }

    /// `swarm leave`: refuse when it would break quorum (unless forced),
    /// leave the Raft group, then forget everything.
    pub async fn leave(&self, force: bool) -> Result<(), ApiError> {
        if let Some(raft) = &self.raft {
            let st = raft.status();
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
                    .node_call_excluding(NodeRequest::Leave, Some(self.file().addr))
                    .await;
                if let Err(e) = removed {
                    if !force {
                        return Err(e);
                    }
                    warn!("leaving without removing this manager from the raft group: {e}");
                }
            }
        } else if let Err(e) = self.node_call(NodeRequest::Leave).await {
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
        if let Some(ep) = &self.quic {
            ep.close(0u32.into(), b"shutdown");
        }
        let gossip = self.gossip.write().ok().and_then(|mut g| g.take());
        if let Some(g) = gossip {
            if leave_gossip {
                crate::gossip::Resume::remove(&self.config.run_dir);
                if let Err(e) = g.leave().await {
                    warn!("gossip leave: {e}");
                }
            }
        }
        if let Some(r) = &self.raft {
            if let Err(e) = r.clone().shutdown().await {
                warn!("raft shutdown: {e}");
            }
        }
    }

    /// The data dir this membership lives in.
    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    /// Call a manager (trying each known one) over `shoal-node/1`.
    async fn node_call(&self, req: NodeRequest) -> Result<NodeResponse, ApiError> {
        self.node_call_excluding(req, None).await
    }

    /// [`Swarm::node_call`], skipping the manager at `exclude`.
    async fn node_call_excluding(
        &self,
        req: NodeRequest,
        exclude: Option<SocketAddr>,
    ) -> Result<NodeResponse, ApiError> {
        let tls = match self.tls.node_client.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let mut last = ApiError::new(ErrorCode::Unavailable, "no other manager reachable");
        for (_, addr) in self.file().managers {
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

    // ---- manager side of TCP 2377 ----

    async fn handle_join(&self, req: JoinRequest) -> Result<JoinResponse, String> {
        let raft = self.raft.as_ref().ok_or("this node is not a manager")?;
        raft.read_barrier().await.map_err(|e| e.to_string())?;
        let cluster = raft
            .read(|s| s.cluster.clone())
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the swarm is not initialized")?;
        let role = if secret_matches(&cluster.manager_secret, &req.secret) {
            Role::Manager
        } else if secret_matches(&cluster.worker_secret, &req.secret) {
            Role::Worker
        } else {
            return Err(
                "invalid join token: the secret matches neither this swarm's worker nor manager token"
                    .into(),
            );
        };
        addr::check_advertisable("advertise address", req.addr.ip())?;
        let ca = ClusterCa::from_pem(&cluster.ca.cert_pem, &cluster.ca.key_pem)
            .map_err(|e| e.to_string())?;
        let node_id = NodeId::generate();
        let cert = ca
            .sign_csr(&req.csr_der, &node_id, role, DEFAULT_CERT_VALIDITY)
            .map_err(|e| e.to_string())?;
        let raft_id = (role == Role::Manager).then(new_raft_id);
        let now = now_ms();
        let node = Node {
            id: node_id.clone(),
            hostname: req.hostname.chars().take(64).collect(),
            role,
            availability: Availability::Active,
            status: NodeStatus::Ready,
            addr: req.addr,
            data_path_addr: req.data_path_addr,
            raft_id,
            created_at: now,
            updated_at: now,
            version: 0,
        };
        self.propose(Command::AddNode { node })
            .await
            .map_err(|e| e.message)?;
        if let Some(rid) = raft_id {
            if let Err(e) = raft.add_voter(rid, req.addr).await {
                let _ = self
                    .propose(Command::RemoveNode {
                        id: node_id.clone(),
                    })
                    .await;
                return Err(format!("cannot add the new manager to the raft group: {e}"));
            }
        }
        let managers = raft
            .read(|s| {
                s.managers()
                    .filter_map(|n| n.raft_id.map(|r| (r, n.addr)))
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| e.to_string())?;
        info!(node = %node_id, %role, addr = %req.addr, "node joined");
        Ok(JoinResponse {
            node_id,
            role,
            cert_der: cert.as_ref().to_vec(),
            roots_pem: cluster.ca.trusted_roots(),
            cluster_id: cluster.id,
            raft_id,
            managers,
        })
    }

    async fn handle_node_request(
        &self,
        peer: &NodeId,
        req: NodeRequest,
    ) -> Result<NodeResponse, String> {
        let raft = self.raft.as_ref().ok_or("this node is not a manager")?;
        match req {
            NodeRequest::Leave => {
                let p2 = peer.clone();
                let raft_id = raft
                    .read(move |s| s.nodes.get(&p2).and_then(|n| n.raft_id))
                    .await
                    .map_err(|e| e.to_string())?;
                if let Some(rid) = raft_id {
                    // A manager leaves: out of the store, then out of the
                    // Raft group (done here, where the outcome is seen).
                    self.propose(Command::RemoveNode { id: peer.clone() })
                        .await
                        .map_err(|e| e.message)?;
                    raft.remove_voter(rid)
                        .await
                        .map_err(|e| format!("cannot remove {peer} from the raft group: {e}"))?;
                    return Ok(NodeResponse::Ok);
                }
                self.update_node(
                    peer,
                    NodeUpdate {
                        status: Some(NodeStatus::Down),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| e.message)?;
                Ok(NodeResponse::Ok)
            }
            NodeRequest::Attach { network, name, ip } => {
                let (network, endpoint) = self
                    .allocate_endpoint(&network, name, peer.to_string(), ip)
                    .await
                    .map_err(|e| e.message)?;
                Ok(NodeResponse::Attached {
                    network: Box::new(network),
                    endpoint,
                })
            }
            NodeRequest::Detach { network, endpoint } => {
                self.propose(Command::DetachEndpoint {
                    network,
                    id: endpoint,
                })
                .await
                .map_err(|e| e.message)?;
                Ok(NodeResponse::Ok)
            }
            NodeRequest::JoinRaft => {
                let peer2 = peer.clone();
                let node = raft
                    .read(move |s| s.nodes.get(&peer2).cloned())
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("node {peer} is not part of this swarm"))?;
                if node.role != Role::Manager {
                    return Err(format!("node {peer} is not a manager (promote it first)"));
                }
                let raft_id = match node.raft_id {
                    Some(r) if raft.status().voters.iter().any(|v| v.id == r) => r,
                    _ => {
                        let rid = new_raft_id();
                        self.update_node(
                            peer,
                            NodeUpdate {
                                raft_id: Some(Some(rid)),
                                ..Default::default()
                            },
                        )
                        .await
                        .map_err(|e| e.message)?;
                        raft.add_voter(rid, node.addr)
                            .await
                            .map_err(|e| format!("cannot add {peer} to the raft group: {e}"))?;
                        rid
                    }
                };
                let managers = raft.read(managers_of).await.map_err(|e| e.to_string())?;
                info!(node = %peer, raft_id, "promoted node joined the raft group");
                Ok(NodeResponse::Raft { raft_id, managers })
            }
            NodeRequest::Renew { csr_der } => {
                let (cluster, node) = raft
                    .read({
                        let peer = peer.clone();
                        move |s| (s.cluster.clone(), s.nodes.get(&peer).cloned())
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                let cluster = cluster.ok_or("the swarm is not initialized")?;
                let node = node.ok_or_else(|| format!("node {peer} is not part of this swarm"))?;
                let ca = ClusterCa::from_pem(&cluster.ca.cert_pem, &cluster.ca.key_pem)
                    .map_err(|e| e.to_string())?;
                let cert = ca
                    .sign_csr(&csr_der, peer, node.role, DEFAULT_CERT_VALIDITY)
                    .map_err(|e| e.to_string())?;
                Ok(NodeResponse::Cert {
                    cert_der: cert.as_ref().to_vec(),
                    roots_pem: cluster.ca.trusted_roots(),
                })
            }
        }
    }
}

/// A network as `network inspect` shows it (docker's field names).
fn network_doc(
    n: &shoal_raft_store::network::Network,
    nodes: &std::collections::BTreeMap<NodeId, Node>,
) -> serde_json::Value {
    let mut options = serde_json::Map::new();
    options.insert(
        "com.docker.network.driver.overlay.vxlanid_list".into(),
        n.vni.to_string().into(),
    );
    if n.encrypted {
        options.insert("encrypted".into(), "".into());
    }
    if let Some(m) = n.mtu {
        options.insert("com.docker.network.driver.mtu".into(), m.to_string().into());
    }
    let containers: serde_json::Map<String, serde_json::Value> = n
        .endpoints
        .values()
        .map(|e| {
            (
                e.id.clone(),
                serde_json::json!({
                    "Name": e.name,
                    "Node": e.node,
                    "IPv4Address": format!("{}/{}", e.ip, n.subnet.prefix_len()),
                    "MacAddress": e.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
                }),
            )
        })
        .collect();
    let mut peer_nodes: Vec<&str> = n.endpoints.values().map(|e| e.node.as_str()).collect();
    peer_nodes.sort_unstable();
    peer_nodes.dedup();
    let peers: Vec<serde_json::Value> = peer_nodes
        .iter()
        .filter_map(|id| nodes.values().find(|x| x.id.as_str() == *id))
        .map(|x| serde_json::json!({"Name": x.hostname, "IP": x.data_path_addr.to_string()}))
        .collect();
    serde_json::json!({
        "Name": n.name,
        "Id": n.id,
        "Created": n.created_at,
        "Scope": "swarm",
        "Driver": n.driver,
        "IPAM": {"Driver": "default", "Config": [{"Subnet": n.subnet.to_string(), "Gateway": n.gateway.to_string()}]},
        "Internal": n.internal,
        "Attachable": n.attachable,
        "Ingress": n.ingress,
        "Options": options,
        "Labels": n.labels,
        "Containers": containers,
        "Peers": peers,
        "Version": n.version,
        "Encryption": if n.encrypted {
            serde_json::json!({
                "State": "unavailable",
                "Reason": "IPsec ESP for overlay traffic is not available on these nodes: \
                           workloads and tasks are refused on this network (fail closed, no plaintext)",
            })
        } else {
            serde_json::Value::Null
        },
    })
}

/// Refuse an operation that removes voter `removing` when the remaining
/// voters could not form a quorum.
fn check_quorum_after_removal(
    voters: usize,
    reachable: usize,
    removing: Option<u64>,
    status: &shoal_raft_store::RaftStatus,
) -> Result<(), ApiError> {
    let removing_reachable = removing
        .map(|r| r == status.id || status.voters.iter().any(|v| v.id == r && v.reachable))
        .unwrap_or(false);
    let remaining = voters - 1;
    let remaining_reachable = reachable - usize::from(removing_reachable);
    if remaining_reachable < remaining / 2 + 1 {
        return Err(ApiError::invalid(format!(
            "Removing this node leaves {remaining_reachable} managers out of {remaining}. Without a \
             Raft quorum your swarm will be inaccessible. The only way to restore a swarm that has \
             lost consensus is to reinitialize it with `--force-new-cluster`. Use `--force` to \
             suppress this message."
        )));
    }
    Ok(())
}

fn secret_matches(stored: &str, presented: &str) -> bool {
    stored
        .parse::<JoinSecret>()
        .map(|s| s.matches(presented))
        .unwrap_or(false)
}

enum StartRaft {
    None,
    Bootstrap,
    Join(Vec<(u64, SocketAddr)>),
    Restart,
}

fn unreachable_none() -> Result<RaftNode<State>, RaftError> {
    Err(RaftError::Stopped)
}

/// Find a node by exact id, unique id prefix, host name, or `self`.
fn resolve_node<'a>(nodes: &'a [Node], key: &str, me: &NodeId) -> Result<&'a Node, ApiError> {
    let key = if key == "self" { me.as_str() } else { key };
    if let Some(n) = nodes.iter().find(|n| n.id.as_str() == key) {
        return Ok(n);
    }
    let by_prefix: Vec<_> = nodes
        .iter()
        .filter(|n| n.id.as_str().starts_with(key))
        .collect();
    let by_name: Vec<_> = nodes.iter().filter(|n| n.hostname == key).collect();
    match (by_prefix.as_slice(), by_name.as_slice()) {
        ([n], _) if !key.is_empty() => Ok(n),
        ([], [n]) => Ok(n),
        ([], []) => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("node {key} not found"),
        )),
        _ => Err(ApiError::invalid(format!(
            "node {key} is ambiguous: more than one node matches"
        ))),
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--listen-addr)"))
}

async fn resolve_remote(remote: &str) -> Result<SocketAddr, ApiError> {
    let with_port = if remote.parse::<SocketAddr>().is_ok()
        || remote
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        remote.to_string()
    } else {
        format!("{remote}:{DEFAULT_PORT}")
    };
    let mut addrs = tokio::net::lookup_host(with_port.as_str())
        .await
        .map_err(|e| ApiError::invalid(format!("manager address {remote}: {e}")))?;
    addrs
        .next()
        .ok_or_else(|| ApiError::invalid(format!("manager address {remote}: no address")))
}

/// The local address the kernel would use to reach `remote`.
async fn local_addr_towards(remote: SocketAddr) -> Result<IpAddr, ApiError> {
    let sock = tokio::net::UdpSocket::bind(("0.0.0.0", 0))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    sock.connect(remote).await.map_err(|e| {
        ApiError::invalid(format!(
            "no route to manager {remote} ({e}); pass --advertise-addr"
        ))
    })?;
    Ok(sock
        .local_addr()
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ip())
}

/// One request/response exchange with a manager over TLS on 2377.
async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
    tls: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    req: &Req,
) -> Result<Resp, ApiError> {
    let unavailable = |m: String| ApiError::new(ErrorCode::Unavailable, m);
    let tcp = match tokio::time::timeout(JOIN_TIMEOUT, TcpStream::connect(addr)).await {
        Err(_) => {
            return Err(unavailable(format!(
                "cannot reach manager at {addr}: timed out after {}s",
                JOIN_TIMEOUT.as_secs()
            )))
        }
        Ok(Err(e)) => return Err(unavailable(format!("cannot reach manager at {addr}: {e}"))),
        Ok(Ok(s)) => s,
    };
    let name = rustls_pki_types::ServerName::try_from(MANAGER_SERVER_NAME)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut stream = match tokio::time::timeout(
        JOIN_TIMEOUT,
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
    match tokio::time::timeout(JOIN_TIMEOUT * 3, api::read_frame(&mut stream)).await {
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

async fn serve_listener(listener: TcpListener, swarm: std::sync::Weak<Swarm>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("2377 accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(s) = swarm.upgrade() else { return };
        tokio::spawn(async move {
            if let Err(e) = serve_conn(s, tcp).await {
                debug!(%peer, "2377 connection: {e:#}");
            }
        });
    }
}

async fn serve_conn(swarm: Arc<Swarm>, tcp: TcpStream) -> Result<()> {
    let peer_addr = tcp.peer_addr().ok();
    let cfg = match swarm.tls.server.read() {
        Ok(c) => c.clone(),
        Err(p) => p.into_inner().clone(),
    };
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
            let raft = swarm
                .raft
                .as_ref()
                .context("raft connection to a non-manager")?;
            raft.serve_peer(stream).await.map_err(|e| anyhow!("{e}"))
        }
        Some(rpc::ALPN_JOIN) => {
            let req: JoinRequest = api::read_frame(&mut stream).await?;
            let resp = swarm.handle_join(req).await;
            if let Err(e) = &resp {
                info!(peer = ?peer_addr, "join refused: {e}");
            }
            api::write_frame(&mut stream, &resp).await?;
            Ok(())
        }
        Some(rpc::ALPN_NODE) => {
            let info = peer.context("node call without a client certificate")?;
            serve_node_calls(&swarm, &info.node_id, &mut stream).await
        }
        other => bail!("unknown ALPN {other:?}"),
    }
}

async fn serve_node_calls<S: AsyncRead + AsyncWrite + Unpin>(
    swarm: &Swarm,
    peer: &NodeId,
    stream: &mut S,
) -> Result<()> {
    loop {
        let req: NodeRequest = match api::read_frame(stream).await {
            Ok(r) => r,
            Err(api::FrameError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let resp = swarm.handle_node_request(peer, req).await;
        api::write_frame(stream, &resp).await?;
    }
}

/// How often a node checks its certificate and role.
fn heartbeat_every(swarm: &Swarm) -> Duration {
    Duration::from_millis(swarm.config.heartbeat_ms.max(100))
}

fn managers_of(st: &State) -> Vec<(u64, SocketAddr)> {
    st.managers()
        .filter_map(|n| n.raft_id.map(|r| (r, n.addr)))
        .collect()
}

impl Swarm {
    /// Persist a new manager list if it changed.
    fn update_managers(&self, managers: Vec<(u64, SocketAddr)>) {
        if managers.is_empty() {
            return;
        }
        let changed = match self.file.lock() {
            Ok(mut f) if f.managers != managers => {
                f.managers = managers;
                Some(f.clone())
            }
            _ => None,
        };
        if let Some(f) = changed {
            if let Err(e) = membership_file::save_file(&self.config.data_dir, &f) {
                warn!("cannot persist manager list: {e:#}");
            }
        }
    }

    fn identity(&self) -> NodeIdentity {
        match self.identity.read() {
            Ok(i) => i.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Whether our certificate must be replaced: role changed, CA rotated,
    /// or close to expiry.
    fn needs_new_cert(&self, role: Role, roots_pem: &[String]) -> bool {
        let id = self.identity();
        let current_root = roots_pem
            .first()
            .and_then(|p| shoal_tls::certs_from_pem(p).ok())
            .and_then(|v| v.into_iter().next());
        let rotated =
            current_root.is_some_and(|r| id.roots.first() != Some(&r) || !issued_by(&id.cert, &r));
        id.info.role != role || rotated || shoal_tls::needs_renewal(&id.info, SystemTime::now())
    }

    /// Trust exactly the roots the cluster lists (after a CA rotation ends
    /// the old root is dropped), keeping the current certificate.
    fn refresh_roots(&self, roots_pem: &[String]) {
        let Ok(roots) = roots_from_pem(roots_pem) else {
            return;
        };
        let id = self.identity();
        if roots.is_empty() || roots == id.roots {
            return;
        }
        match NodeIdentity::new(id.cert.clone(), id.key.clone(), roots) {
            Ok(new) => {
                if let Err(e) = self.install_identity(new) {
                    warn!("cannot install the new trusted roots: {e:#}");
                }
            }
            // The certificate does not chain to the new roots yet: the
            // renewal that follows fixes that.
            Err(e) => debug!("trusted roots not updated yet: {e}"),
        }
    }

    /// Install a new certificate (and roots): persist, then swap the TLS
    /// configurations used by new connections.
    fn install_identity(&self, id: NodeIdentity) -> Result<()> {
        membership_file::save_identity(&self.config.data_dir, &id)?;
        let server = id.server_config(&[rpc::ALPN_RAFT, rpc::ALPN_JOIN, rpc::ALPN_NODE])?;
        let raft_client = id.client_config(&[rpc::ALPN_RAFT])?;
        let node_client = id.client_config(&[rpc::ALPN_NODE])?;
        if let Ok(mut s) = self.tls.server.write() {
            *s = server;
        }
        if let Ok(mut c) = self.tls.node_client.write() {
            *c = node_client;
        }
        self.tls.raft_client.send_replace(raft_client);
        if let Some(ep) = &self.quic {
            ep.set_server_config(Some(session::server_config(&id)?));
        }
        info!(role = %id.info.role, "installed a new node certificate");
        if let Ok(mut i) = self.identity.write() {
            *i = id;
        }
        Ok(())
    }

    /// A manager signs its own new certificate with the CA in the store.
    fn renew_locally(&self, cluster: &Cluster, role: Role) -> Result<()> {
        let ca = ClusterCa::from_pem(&cluster.ca.cert_pem, &cluster.ca.key_pem)?;
        let key = NodeKey::generate()?;
        let cert = ca.sign_csr(
            &key.csr_der()?,
            &self.node_id(),
            role,
            DEFAULT_CERT_VALIDITY,
        )?;
        let roots = roots_from_pem(&cluster.ca.trusted_roots())?;
        self.install_identity(NodeIdentity::new(cert, key, roots)?)
    }

    /// A worker asks a manager for a new certificate.
    async fn renew_remotely(&self) -> Result<()> {
        let key = NodeKey::generate()?;
        let resp = self
            .node_call(NodeRequest::Renew {
                csr_der: key.csr_der()?,
            })
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let NodeResponse::Cert {
            cert_der,
            roots_pem,
        } = resp
        else {
            bail!("unexpected answer to a renewal");
        };
        let id = NodeIdentity::new(cert_der.into(), key, roots_from_pem(&roots_pem)?)?;
        self.install_identity(id)
    }

    /// Become a manager (promotion) or a worker (demotion) by restarting
    /// the membership from disk with the new role.
    fn change_role(
        &self,
        role: Role,
        raft_id: Option<u64>,
        managers: Option<Vec<(u64, SocketAddr)>>,
    ) -> Result<()> {
        let f = match self.file.lock() {
            Ok(mut f) => {
                f.role = role;
                f.raft_id = raft_id;
                if let Some(m) = managers {
                    f.managers = m;
                }
                f.raft_join_pending = role == Role::Manager;
                f.clone()
            }
            Err(_) => bail!("membership state lock poisoned"),
        };
        if role == Role::Worker {
            // The Raft log of a demoted manager is stale the moment it
            // leaves the group; a later promotion starts from the leader.
            let dir = membership_file::swarm_dir(&self.config.data_dir).join("raft");
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!("cannot remove {}: {e}", dir.display());
                }
            }
        }
        membership_file::save_file(&self.config.data_dir, &f)?;
        info!(%role, "role changed: restarting the swarm membership");
        let _ = self.restart.send(());
        Ok(())
    }
}

fn roots_from_pem(pems: &[String]) -> Result<Vec<shoal_tls::CertificateDer<'static>>> {
    let mut out = Vec::new();
    for p in pems {
        out.extend(shoal_tls::certs_from_pem(p)?);
    }
    Ok(out)
}

/// Whether `cert` was issued by `root` (issuer name equals root subject;
/// every root CA of a cluster gets a distinct name, see `ca_rotate`).
fn issued_by(cert: &[u8], root: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    let (Ok((_, c)), Ok((_, r))) = (
        x509_parser::certificate::X509Certificate::from_der(cert),
        x509_parser::certificate::X509Certificate::from_der(root),
    ) else {
        return false;
    };
    c.issuer().as_raw() == r.subject().as_raw()
}

/// A manager keeps its persisted manager list in step with the store,
/// renews its own certificate, and steps down when demoted.
async fn manager_loop(swarm: std::sync::Weak<Swarm>) {
    let Some(mut rx) = swarm
        .upgrade()
        .and_then(|s| s.raft.as_ref().map(|r| r.subscribe()))
    else {
        return;
    };
    let mut last_check = tokio::time::Instant::now() - Duration::from_secs(3600);
    loop {
        let every = match swarm.upgrade() {
            Some(s) => heartbeat_every(&s),
            None => return,
        };
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(every) => {}
        }
        let Some(s) = swarm.upgrade() else { return };
        let Some(raft) = s.raft.as_ref() else { return };
        let me = s.node_id();
        let Ok((managers, mine, cluster)) = raft
            .read(move |st| {
                (
                    managers_of(st),
                    st.nodes.get(&me).cloned(),
                    st.cluster.clone(),
                )
            })
            .await
        else {
            continue;
        };
        s.update_managers(managers);
        let (Some(mine), Some(cluster)) = (mine, cluster) else {
            continue;
        };
        if mine.role == Role::Worker {
            if let Err(e) = s
                .renew_locally(&cluster, Role::Worker)
                .and_then(|_| s.change_role(Role::Worker, None, None))
            {
                warn!("cannot step down after demotion: {e:#}");
            }
            return;
        }
        s.refresh_roots(&cluster.ca.trusted_roots());
        if last_check.elapsed() >= every
            && s.needs_new_cert(Role::Manager, &cluster.ca.trusted_roots())
        {
            last_check = tokio::time::Instant::now();
            if let Err(e) = s.renew_locally(&cluster, Role::Manager) {
                warn!("certificate renewal failed: {e:#}");
            }
        }
        drop(s);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Swarm {
    /// Take in what the leader assigned: manager list, key ring; on a
    /// worker also certificate renewal and promotion.
    fn apply_assignments(self: &Arc<Self>, a: session::Assignments) {
        self.executor.set(&a);
        self.update_managers(a.managers.clone());
        if a.data_path_port != 0 {
            self.data_path_port
                .store(a.data_path_port, std::sync::atomic::Ordering::Relaxed);
        }
        if let Ok(mut k) = self.keys.write() {
            if *k != a.keys {
                info!(keys = ?a.keys, "gossip key ring updated");
                *k = a.keys.clone();
                if let Some(ring) = crate::gossip::key_ring(&a.keys) {
                    if let Some(g) = self.gossip() {
                        g.set_key_ring(ring);
                        let r = crate::gossip::Resume {
                            node_id: self.node_id().to_string(),
                            generation: g.generation(),
                            keys: a.keys.clone(),
                        };
                        if let Err(e) = r.save(&self.config.run_dir) {
                            warn!("cannot keep the gossip state for a restart: {e:#}");
                        }
                    }
                }
            }
        }
        self.ensure_gossip(&a.keys);
        if self.raft.is_some() {
            return; // managers follow the store directly (manager_loop)
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
                match s.node_call(NodeRequest::JoinRaft).await {
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
    pub fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        let raft = self.raft.as_ref().map(|r| r.stats());
        let session_connected_nodes = match &raft {
            Some(r) if r.is_leader => Some(
                self.liveness
                    .live_count(heartbeat_every(self) * session::MISSED_HEARTBEATS),
            ),
            _ => None,
        };
        let dns = self.executor.dns_stats();
        crate::metrics::Snapshot {
            raft,
            gossip: self
                .gossip()
                .map(|g| crate::metrics::GossipStats::from_gossip(&g)),
            session_connected_nodes,
            dns: Some(crate::metrics::DnsStats {
                queries_total: dns.queries,
                forwarded_total: dns.forwarded,
                failures_total: dns.failures,
            }),
            tasks_running: Some(
                self.overlay
                    .list()
                    .iter()
                    .filter(|w| w.task.is_some() && crate::overlay::alive(w.pid))
                    .count() as u64,
            ),
        }
    }

    /// The running gossip agent, if started.
    pub fn gossip(&self) -> Option<shoal_membership::Gossip> {
        self.gossip.read().ok().and_then(|g| g.clone())
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
            let managers: Vec<SocketAddr> = f.managers.iter().map(|(_, a)| *a).collect();
            let resume = crate::gossip::Resume::load(&s.config.run_dir, f.node_id.as_str());
            match crate::gossip::start(
                &s.config,
                f.node_id.as_str(),
                f.addr.ip(),
                f.data_path_addr,
                &managers,
                &keys,
                resume.map(|r| r.generation),
            )
            .await
            {
                Ok(g) => {
                    if let IpAddr::V4(vtep) = f.data_path_addr {
                        s.overlay.publish_all(&g, f.node_id.as_str(), vtep);
                    }
                    info!(
                        port = s.config.gossip_port,
                        generation = g.generation(),
                        "gossip started"
                    );
                    let r = crate::gossip::Resume {
                        node_id: f.node_id.to_string(),
                        generation: g.generation(),
                        keys: keys.clone(),
                    };
                    if let Err(e) = r.save(&s.config.run_dir) {
                        warn!("cannot keep the gossip state for a restart: {e:#}");
                    }
                    if let Ok(mut slot) = s.gossip.write() {
                        *slot = Some(g);
                    }
                }
                Err(e) => warn!("cannot start gossip: {e:#}"),
            }
            s.gossip_starting.store(false, Ordering::SeqCst);
        });
    }

    /// Digest of the root that issued this node's certificate.
    fn issuer_digest(&self) -> Option<String> {
        let id = self.identity();
        id.roots
            .iter()
            .find(|r| issued_by(&id.cert, r))
            .map(|r| shoal_tls::CaDigest::of(r).to_string())
    }

    /// `swarm rotate-keys`: a new gossip key now.
    pub async fn rotate_keys(&self) -> Result<String, ApiError> {
        let key = new_gossip_key();
        let id = key.id;
        self.propose(Command::AddKey { key }).await?;
        Ok(format!(
            "Added gossip key {id}; the ring keeps the 3 newest."
        ))
    }
}

impl Swarm {
    /// On the leader: once every node that is not down reports a
    /// certificate from the current root, stop trusting the old roots.
    async fn finish_ca_rotation(&self, raft: &RaftNode<State>) {
        let Ok(Some((ca, nodes))) = raft
            .read(|st| {
                st.cluster
                    .as_ref()
                    .map(|c| (c.ca.clone(), st.nodes.values().cloned().collect::<Vec<_>>()))
            })
            .await
        else {
            return;
        };
        if ca.previous_roots.is_empty() {
            return;
        }
        let Some(current) = shoal_tls::certs_from_pem(&ca.cert_pem)
            .ok()
            .and_then(|v| v.into_iter().next())
        else {
            return;
        };
        let digest = shoal_tls::CaDigest::of(&current).to_string();
        let done = nodes
            .iter()
            .filter(|n| n.status != NodeStatus::Down)
            .all(|n| {
                self.liveness
                    .report(&n.id)
                    .is_some_and(|r| r.ca_digest == digest)
            });
        if !done {
            return;
        }
        let finished = CaState {
            previous_roots: Vec::new(),
            ..ca
        };
        match self.propose(Command::SetCa { ca: finished }).await {
            Ok(()) => {
                info!("root CA rotation complete: every node holds a certificate from the new root")
            }
            Err(e) => warn!("cannot complete the CA rotation: {e}"),
        }
    }
}

fn new_gossip_key() -> GossipKey {
    use rand::RngCore;
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    GossipKey {
        id: rand::rngs::OsRng.next_u32(),
        lamport: 0,
        key,
    }
}

/// Every node keeps one session with the leader (see `session`), failing
/// over across the known managers with capped backoff.
async fn session_loop(swarm: std::sync::Weak<Swarm>) {
    let kernel = session::probe_kernel();
    let w = swarm.clone();
    let report = move || {
        let mut r = kernel.clone();
        if let Some(s) = w.upgrade() {
            r.ca_digest = s.issuer_digest().unwrap_or_default();
            r.tasks = s.executor.reports();
        }
        r
    };
    let mut redirect: Option<SocketAddr> = None;
    let mut turn = 0usize;
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(s) = swarm.upgrade() else { return };
        let target = match redirect.take() {
            Some(t) => t,
            None => {
                let managers = s.file().managers;
                if managers.is_empty() {
                    drop(s);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                turn = turn.wrapping_add(1);
                managers[turn % managers.len()].1
            }
        };
        let identity = s.identity();
        let client = s.session.clone();
        drop(s);
        let w = swarm.clone();
        let apply = move |a: session::Assignments| {
            if let Some(s) = w.upgrade() {
                s.apply_assignments(a);
            }
        };
        let heartbeat = match swarm.upgrade() {
            Some(s) => s,
            None => return,
        };
        let result = client
            .run_once(
                &identity,
                target,
                &report,
                &heartbeat.heartbeat,
                &apply,
                &heartbeat.executor.report_now,
            )
            .await;
        drop(heartbeat);
        client.connected.lock().map(|mut c| *c = None).ok();
        match result {
            Ok(Some(to)) => {
                debug!(from = %target, %to, "session redirected to the leader");
                redirect = Some(to);
                backoff = Duration::from_millis(100);
                continue;
            }
            Ok(None) => {}
            Err(e) => debug!(manager = %target, "session: {e:#}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Keep workloads and the kernel in step: clean up exited workloads (and
/// free their endpoints), then reconcile — on a timer, when kicked, and on
/// every endpoint-table change from gossip.
async fn overlay_loop(swarm: std::sync::Weak<Swarm>) {
    let mut events: Option<tokio::sync::broadcast::Receiver<shoal_membership::Event>> = None;
    loop {
        let Some(s) = swarm.upgrade() else { return };
        if events.is_none() {
            events = s.gossip().map(|g| g.subscribe());
        }
        for id in s.overlay.exited() {
            let gossip = s.gossip();
            if let Some(w) = s.overlay.cleanup(&id, gossip.as_ref()).await {
                if w.task.is_some() {
                    continue; // tasks: the store frees endpoints on the final state
                }
                for a in &w.attachments {
                    if let Err(e) = s.release_endpoint(&a.network.id, &w.id).await {
                        warn!(workload = %w.id, "cannot free the endpoint: {}", e.message);
                    }
                }
            }
        }
        let sf = s.file();
        if let IpAddr::V4(vtep) = sf.data_path_addr {
            let port = s.data_path_port.load(std::sync::atomic::Ordering::Relaxed);
            let gossip = s.gossip();
            if let Err(e) = s
                .overlay
                .reconcile(sf.node_id.as_str(), vtep, port, gossip.as_ref())
                .await
            {
                warn!("overlay reconcile: {e:#}");
            }
        }
        let kicked = async {
            match events.as_mut() {
                Some(rx) => loop {
                    match rx.recv().await {
                        Ok(shoal_membership::Event::EntryChanged(e))
                            if e.table.starts_with("ep/") =>
                        {
                            return
                        }
                        Ok(_) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(_) => std::future::pending::<()>().await,
                    }
                },
                None => std::future::pending::<()>().await,
            }
        };
        let s2 = s.clone();
        drop(s);
        tokio::select! {
            _ = kicked => {}
            _ = s2.overlay.kick.notified() => {}
            _ = tokio::time::sleep(crate::overlay::RECONCILE_EVERY) => {}
        }
    }
}

/// Every node: run the executor on assignment changes, process exits
/// (polled) and a timer.
async fn executor_loop(swarm: std::sync::Weak<Swarm>) {
    loop {
        let Some(s) = swarm.upgrade() else { return };
        let sf = s.file();
        if let IpAddr::V4(vtep) = sf.data_path_addr {
            let ctx = crate::executor::NodeCtx {
                me: sf.node_id.to_string(),
                vtep,
                port: s.data_path_port.load(std::sync::atomic::Ordering::Relaxed),
                gossip: s.gossip(),
            };
            s.executor.run_once(&s.overlay, &ctx).await;
        }
        let s2 = s.clone();
        drop(s);
        tokio::select! {
            _ = s2.executor.kick.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// On the leader: run the scheduler on every store change (and every
/// second), propose what it says, and give every live node a routing-mesh
/// endpoint on the ingress network while ports are published there.
async fn scheduler_loop(swarm: std::sync::Weak<Swarm>) {
    let Some(mut rx) = swarm
        .upgrade()
        .and_then(|s| s.raft.as_ref().map(|r| r.subscribe()))
    else {
        return;
    };
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let Some(s) = swarm.upgrade() else { return };
        let Some(raft) = s.raft.clone() else { return };
        drop(s);
        if !raft.status().is_leader {
            continue;
        }
        let now = now_ms();
        let Ok(cmds) = raft
            .read(move |st| {
                let mut cmds =
                    crate::scheduler::plan(st, now, &mut || NodeId::generate().to_string());
                cmds.extend(mesh_endpoints(st));
                cmds
            })
            .await
        else {
            continue;
        };
        for cmd in cmds {
            if let Err(e) = raft.propose(cmd).await {
                debug!("scheduler: {e}");
            }
        }
        // Let the applied changes arrive before planning again.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Managers: turn every applied change into events.
async fn events_loop(swarm: std::sync::Weak<Swarm>) {
    let Some(mut rx) = swarm
        .upgrade()
        .and_then(|s| s.raft.as_ref().map(|r| r.subscribe()))
    else {
        return;
    };
    loop {
        let Some(s) = swarm.upgrade() else { return };
        let Some(raft) = s.raft.clone() else { return };
        if let Ok(sum) = raft.read(crate::events::Summary::of).await {
            s.events.observe(sum, now_ms());
        }
        drop(s);
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Routing-mesh endpoints: one per node that is up while any service
/// publishes a port in ingress mode; none otherwise.
fn mesh_endpoints(st: &State) -> Vec<Command> {
    use shoal_raft_store::service::PublishMode;
    let Some(ingress) = st.networks.values().find(|n| n.ingress) else {
        return Vec::new();
    };
    let wanted = st
        .services
        .values()
        .any(|s| s.spec.ports.iter().any(|p| p.mode == PublishMode::Ingress));
    let mut out = Vec::new();
    for n in st.nodes.values() {
        let id = session::ingress_endpoint_id(&n.id);
        let has = ingress.endpoints.contains_key(&id);
        if wanted && !has && n.status != NodeStatus::Down {
            out.push(Command::AttachEndpoint {
                network: ingress.id.clone(),
                id,
                name: format!("ingress-sbox.{}", n.hostname),
                node: n.id.to_string(),
                ip: None,
            });
        } else if !wanted && has {
            out.push(Command::DetachEndpoint {
                network: ingress.id.clone(),
                id,
            });
        }
    }
    out
}

/// On the leader: a new gossip key every `key_rotation_ms` (and one at
/// once if the ring is empty). A new leader waits a full interval.
async fn key_manager(swarm: std::sync::Weak<Swarm>) {
    let mut leader_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(s) = swarm.upgrade() else { return };
        let Some(raft) = s.raft.clone() else { return };
        drop(s);
        if !raft.status().is_leader {
            leader_since = None;
            continue;
        }
        let Ok((interval, empty)) = raft
            .read(|st| {
                (
                    st.cluster.as_ref().map(|c| c.key_rotation_ms),
                    st.keys.is_empty(),
                )
            })
            .await
        else {
            continue;
        };
        let Some(interval) = interval else { continue };
        if let Some(s) = swarm.upgrade() {
            s.finish_ca_rotation(&raft).await;
        }
        let since = *leader_since.get_or_insert_with(tokio::time::Instant::now);
        if empty || since.elapsed() >= Duration::from_millis(interval.max(100)) {
            match raft
                .propose(Command::AddKey {
                    key: new_gossip_key(),
                })
                .await
            {
                Ok(_) => {
                    info!("gossip key rotated");
                    leader_since = Some(tokio::time::Instant::now());
                }
                Err(e) => warn!("key rotation failed: {e}"),
            }
        }
    }
}
