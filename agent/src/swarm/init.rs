//! Becoming a member: `swarm init` (a new cluster, this node its first
//! manager), `swarm join` (a certificate from a manager, then worker or
//! manager), and resuming the membership on disk after a restart.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use shoal_api::{ApiError, SwarmInitArgs, SwarmJoinArgs};
use shoal_model::network::NetworkSpec;
use shoal_model::now_ms;
use shoal_model::state::{Availability, CaState, Cluster, Command, Node, NodeStatus};
use shoal_raft_store::{RaftConfig, RaftError, RaftNode, TlsTransport, Transport};
use shoal_tls::{
    ClusterCa, JoinSecret, JoinToken, NodeId, NodeIdentity, NodeKey, Role, DEFAULT_CERT_VALIDITY,
};
use tokio::net::TcpListener;

use super::file::{self, SwarmFile};
use super::{RestartTx, Swarm, DEFAULT_PORT};
use crate::addr;
use crate::config::Config;
use crate::manager::new_raft_id;
use crate::manager::store::{Store, StoreMachine};
use crate::proto::rpc::{self, JoinRequest, JoinResponse};

fn raft_config(config: &Config, raft_id: u64) -> RaftConfig {
    RaftConfig {
        id: raft_id,
        data_dir: file::swarm_dir(&config.data_dir),
        tick: Duration::from_millis(config.raft.tick_ms),
        election_ticks: config.raft.election_ticks,
        heartbeat_ticks: config.raft.heartbeat_ticks,
        snapshot_every: config.raft.snapshot_every,
        compact_keep: config.raft.compact_keep,
        ..RaftConfig::default()
    }
}

fn hostname(config: &Config) -> String {
    config.hostname.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    })
}

/// How a manager's Raft node starts.
pub enum StartRaft {
    /// Not a manager.
    None,
    /// `swarm init`: a new log.
    Bootstrap,
    /// Joining (or promoted): an empty log, learnt from these managers.
    Join(Vec<(u64, SocketAddr)>),
    /// From the log on disk.
    Restart,
}

/// Start the Raft node of a manager as `start` says.
pub async fn start_raft(
    config: &Config,
    raft_id: u64,
    addr: SocketAddr,
    start: &StartRaft,
    transport: Arc<TlsTransport>,
) -> Result<Store> {
    let rcfg = raft_config(config, raft_id);
    let sm = StoreMachine::default();
    let node = match start {
        StartRaft::Bootstrap => RaftNode::bootstrap(rcfg, addr, sm, transport).await,
        StartRaft::Join(managers) => {
            for (id, a) in managers {
                transport.set_peer(*id, *a);
            }
            RaftNode::join(rcfg, sm, transport).await
        }
        StartRaft::Restart => RaftNode::restart(rcfg, sm, transport).await,
        StartRaft::None => Err(RaftError::Stopped),
    };
    Ok(Store::new(node.map_err(|e| anyhow!("{e}"))?))
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
        file::save(&config.data_dir, &sf, &identity).map_err(|e| internal(&format!("{e:#}")))?;
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
            let _ = file::wipe(&config.data_dir);
            internal(&format!("{e:#}"))
        })?;
        let store = swarm.manager()?.store();
        store
            .propose(Command::InitCluster {
                cluster: Box::new(cluster),
                node,
            })
            .await?;
        // Like docker: the routing-mesh network exists from the start.
        store
            .propose(Command::CreateNetwork {
                spec: NetworkSpec {
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
        let resp: Result<JoinResponse, String> = rpc::call(tls, remote, &req).await?;
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
        file::save(&config.data_dir, &sf, &identity).map_err(|e| internal(&format!("{e:#}")))?;
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
                } else if !Store::exists(&rcfg.data_dir) {
                    bail!(
                        "{}: this node is a manager of swarm {} but its Raft log at {} is missing; \
                         refusing to start an empty cluster (restore the data dir, or run \
                         `shoal swarm leave --force` to forget the swarm)",
                        file::swarm_dir(&config.data_dir).display(),
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
