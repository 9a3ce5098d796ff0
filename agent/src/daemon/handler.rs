//! The daemon's answer to each local API request: dispatch to the swarm
//! membership — the manager side for cluster commands, the worker side for
//! workloads, gossip for the debugging commands.

use std::collections::BTreeMap;
use std::sync::Arc;

use shoal_api::{
    ApiError, ErrorCode, GossipEntry, GossipMember, GossipMemberInfo, GossipMemberState, NodeInfo,
    Request, Response, SwarmInfo, SwarmState, VersionInfo,
};

use super::lock::{new_node_id, NODE_ID_FILE};
use crate::config::Config;
use crate::manager::controlapi::{cluster, files, networks, nodes, services};
use crate::manager::events::POLL_WAIT;
use crate::manager::Manager;
use crate::swarm::file::write_atomically;
use crate::swarm::Swarm;
use crate::worker::gwnet;
use shoal_model::service::Runtime;

/// State shared by every API connection.
#[derive(Debug)]
pub struct Daemon {
    pub(super) config: Config,
    /// Local id while not in a swarm; the cluster's id for this node once
    /// joined.
    pub(super) node_id: std::sync::Mutex<String>,
    /// The active membership, if any.
    pub(super) swarm: tokio::sync::RwLock<Option<Arc<Swarm>>>,
    /// Serialises init/join/leave.
    pub(super) membership_op: tokio::sync::Mutex<()>,
    /// Given to the membership so it can ask to be restarted from disk.
    pub(super) restart: crate::swarm::RestartTx,
}

/// How long `service create` waits for the registry to pin an image.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Daemon {
    /// `shoal exec`: starts the command; the caller relays its stdio.
    pub(super) async fn start_exec(
        &self,
        workload: &str,
        argv: &[String],
        interactive: bool,
        tty: bool,
    ) -> Result<crate::worker::exec::Exec, ApiError> {
        self.swarm()
            .await?
            .worker
            .exec(workload, argv, interactive, tty)
            .await
    }

    /// The image pinned to the digest its registry names now (as docker
    /// does at create, so every task runs the same image); when the
    /// registry cannot be asked, the warning docker prints instead.
    async fn pin_image(&self, image: &str) -> Result<Result<String, String>, ApiError> {
        let registries = self.config.registries();
        match tokio::time::timeout(RESOLVE_TIMEOUT, shoal_runtime::resolve(image, &registries))
            .await
        {
            Ok(Ok(pinned)) => Ok(Ok(pinned)),
            Ok(Err(e @ shoal_runtime::RuntimeError::Reference(_))) => {
                Err(ApiError::invalid(e.to_string()))
            }
            outcome => {
                let why = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "the registry did not answer in time".into(),
                };
                Ok(Err(format!(
                    "image {image} could not be accessed on a registry to record its digest ({why}). \
                     Each node will access {image} independently, possibly leading to different nodes \
                     running different versions of the image."
                )))
            }
        }
    }

    /// Answer one request.
    pub async fn handle(&self, req: Request) -> Result<Response, ApiError> {
        match req {
            Request::Version => Ok(Response::Version(VersionInfo::current())),
            Request::Info => Ok(Response::Info(Box::new(self.info().await))),
            Request::SwarmInit(mut args) => {
                let _op = self.membership_op.lock().await;
                self.check_inactive().await?;
                if args.advertise_addr.is_empty() {
                    args.advertise_addr = choose_advertise_addr(super::local_ipv4_addrs())?;
                }
                let (swarm, msg) = Swarm::init(&self.config, self.restart.clone(), args).await?;
                self.set_swarm(swarm).await;
                Ok(Response::Message(msg))
            }
            Request::SwarmJoin(args) => {
                let _op = self.membership_op.lock().await;
                self.check_inactive().await?;
                let (swarm, msg) = Swarm::join(&self.config, self.restart.clone(), args).await?;
                self.set_swarm(swarm).await;
                Ok(Response::Message(msg))
            }
            Request::SwarmLeave { force } => {
                let _op = self.membership_op.lock().await;
                let swarm = self.swarm().await?;
                swarm.leave(force).await?;
                swarm.worker.stop_all().await;
                drop(swarm);
                let taken = self.swarm.write().await.take();
                if let Some(s) = taken {
                    s.shutdown(true).await;
                }
                crate::swarm::file::wipe(&self.config.data_dir)
                    .map_err(|e| ApiError::internal(format!("{e:#}")))?;
                let id = new_node_id();
                write_atomically(&self.config.data_dir.join(NODE_ID_FILE), id.as_bytes())
                    .map_err(|e| ApiError::internal(format!("{e:#}")))?;
                self.set_node_id(id);
                Ok(Response::Message("Node left the swarm.".into()))
            }
            Request::JoinToken { role, rotate } => {
                let (token, addr) =
                    cluster::join_token(self.manager().await?.as_ref(), role, rotate).await?;
                let mut msg = String::new();
                if rotate {
                    msg.push_str(&format!("Successfully rotated {role} join token.\n\n"));
                }
                msg.push_str(&format!(
                    "To add a {role} to this swarm, run the following command:\n\n    shoal swarm join --token {token} {addr}\n"
                ));
                Ok(Response::Token {
                    token,
                    message: msg,
                })
            }
            Request::CaRotate => Ok(Response::Message(
                cluster::ca_rotate(self.manager().await?.as_ref()).await?,
            )),
            Request::RotateKeys => Ok(Response::Message(
                cluster::rotate_keys(self.manager().await?.as_ref()).await?,
            )),
            Request::NetworkCreate(spec) => Ok(Response::Message(
                networks::create(self.manager().await?.as_ref(), spec).await?,
            )),
            Request::Run {
                network,
                name,
                ip,
                argv,
                image,
                container,
                env,
            } => {
                let run = crate::worker::Run {
                    network,
                    name,
                    ip,
                    argv,
                    image,
                    container: container.map(|c| *c),
                    env,
                };
                Ok(Response::Workloads(vec![
                    self.swarm().await?.worker.run(run).await?,
                ]))
            }
            Request::Ps => Ok(Response::Workloads(self.swarm().await?.worker.overlay.ps())),
            Request::Stop { workload } => Ok(Response::Message(
                self.swarm().await?.worker.stop(&workload)?,
            )),
            Request::Exec { .. } => Err(ApiError::invalid(
                "exec needs its own connection (serve_connection relays it)",
            )),
            Request::ServiceLogs {
                service,
                tail,
                after,
            } => services::logs(self.manager().await?.as_ref(), &service, tail, after).await,
            Request::ImageList => Ok(Response::Images(self.swarm().await?.worker.images().await?)),
            Request::ImagePull { reference } => Ok(Response::Message(
                self.swarm().await?.worker.pull(&reference).await?,
            )),
            Request::ImageImport { file, name } => Ok(Response::Message(
                self.swarm()
                    .await?
                    .worker
                    .import(&file, name.as_deref())
                    .await?,
            )),
            Request::ImageRemove { images } => {
                let w = self.swarm().await?;
                let mut out = Vec::new();
                for i in images {
                    out.push(w.worker.remove_image(&i).await?);
                }
                Ok(Response::Message(out.join("\n")))
            }
            Request::Logs {
                workload,
                tail,
                after,
            } => {
                let (records, cursor) = self.swarm().await?.worker.logs(&workload, tail, after)?;
                let cursors = BTreeMap::from([(workload.clone(), cursor)]);
                let lines = records
                    .into_iter()
                    .map(|r| crate::proto::session::log_line(String::new(), r))
                    .collect();
                Ok(Response::Logs {
                    lines,
                    cursors,
                    errors: Vec::new(),
                })
            }
            Request::ServiceCreate {
                mut spec,
                resolve_image,
            } => {
                let m = self.manager().await?;
                let mut warnings = Vec::new();
                if spec.container.runtime == Runtime::Container {
                    shoal_runtime::parse_reference(&spec.image)
                        .map_err(|e| ApiError::invalid(e.to_string()))?;
                    if resolve_image {
                        match self.pin_image(&spec.image).await? {
                            Ok(pinned) => spec.image = pinned,
                            Err(warning) => warnings.push(warning),
                        }
                    }
                }
                let id = services::create(m.as_ref(), *spec).await?;
                Ok(Response::Created { id, warnings })
            }
            Request::ServiceUpdate { service, update } => Ok(Response::Message(
                services::update(self.manager().await?.as_ref(), &service, *update).await?,
            )),
            Request::ServiceRollback { service } => Ok(Response::Message(
                services::rollback(self.manager().await?.as_ref(), &service).await?,
            )),
            Request::ServiceRemove { services: keys } => {
                let m = self.manager().await?;
                let mut out = Vec::new();
                for s in keys {
                    out.push(services::remove(&m, &s).await?);
                }
                Ok(Response::Message(out.join("\n")))
            }
            Request::ServiceList { services: keys } => Ok(Response::Services(
                services::list(self.manager().await?.as_ref(), &keys).await?,
            )),
            Request::ServicePs { services: keys } => Ok(Response::Tasks(
                services::tasks(self.manager().await?.as_ref(), &keys).await?,
            )),
            Request::Events { after, since_ms } => {
                let m = self.manager().await?;
                let log = m.events();
                let deadline = tokio::time::Instant::now() + POLL_WAIT;
                loop {
                    let notified = log.notify.notified();
                    let events = log.after(after, since_ms);
                    let last_seq = log.last_seq();
                    if !events.is_empty() || tokio::time::Instant::now() >= deadline {
                        return Ok(Response::Events { events, last_seq });
                    }
                    if after.is_none() {
                        // First poll: only the backlog; follow from here.
                        return Ok(Response::Events { events, last_seq });
                    }
                    let _ = tokio::time::timeout_at(deadline, notified).await;
                }
            }
            Request::NetworkList => {
                // The swarm's networks (on a manager), then this node's own.
                let mut docs = match self.manager().await {
                    Ok(m) => networks::inspect(&m, &[]).await?,
                    Err(_) => Vec::new(),
                };
                docs.extend(self.local_network(None)?);
                Ok(Response::Networks(docs))
            }
            Request::NetworkInspect {
                networks: keys,
                verbose,
            } => {
                let mut docs = Vec::new();
                for k in keys {
                    if let Some(doc) = self.local_network(Some(&k))? {
                        docs.push(doc);
                        continue;
                    }
                    let m = self.manager().await?;
                    let mut one = networks::inspect(&m, &[k]).await?;
                    if verbose {
                        networks::add_node_views(&m, &mut one).await?;
                    }
                    docs.extend(one);
                }
                Ok(Response::Networks(docs))
            }
            Request::NetworkRemove { networks: keys } => {
                let mut out = Vec::new();
                for n in keys {
                    if self.local_network(Some(&n))?.is_some() {
                        let in_swarm = self.swarm.read().await.is_some();
                        gwnet::remove(&self.config.data_dir, &self.config.run_dir, in_swarm)
                            .await?;
                        out.push(n);
                        continue;
                    }
                    out.push(networks::remove(self.manager().await?.as_ref(), &n).await?);
                }
                Ok(Response::Message(out.join("\n")))
            }
            Request::LocalNetworkCreate(spec) => {
                let in_swarm = self.swarm.read().await.is_some();
                Ok(Response::Message(gwnet::create(
                    &self.config.data_dir,
                    &spec,
                    in_swarm,
                )?))
            }
            Request::GossipMembers => Ok(Response::Members(
                self.gossip()
                    .await?
                    .members()
                    .into_iter()
                    .map(member_row)
                    .collect(),
            )),
            Request::GossipTables { table } => {
                let g = self.gossip().await?;
                let tables = match table {
                    Some(t) => vec![t],
                    None => g.tables(),
                };
                let mut out = Vec::new();
                for t in tables {
                    for e in g.entries(&t) {
                        out.push(GossipEntry {
                            value: display_value(&e.table, &e.value),
                            table: e.table,
                            key: e.key,
                            owner: e.owner,
                            version: e.version,
                        });
                    }
                }
                Ok(Response::Entries(out))
            }
            Request::GossipPut { table, key, value } => {
                self.gossip()
                    .await?
                    .try_put(&table, &key, value.into_bytes())
                    .map_err(|e| ApiError::invalid(e.to_string()))?;
                Ok(Response::Message(format!("{table}/{key}")))
            }
            Request::GossipDelete { table, key } => {
                self.gossip().await?.delete(&table, &key);
                Ok(Response::Message(format!("{table}/{key}")))
            }
            Request::GossipMetrics => Ok(Response::Metrics(
                serde_json::to_value(self.gossip().await?.metrics())
                    .map_err(|e| ApiError::internal(e.to_string()))?,
            )),
            Request::NodeList => Ok(Response::Nodes(
                nodes::list(self.manager().await?.as_ref(), None).await?,
            )),
            Request::NodeInspect { node } => Ok(Response::Nodes(
                nodes::list(self.manager().await?.as_ref(), Some(node)).await?,
            )),
            Request::NodeSetRole { nodes: keys, role } => {
                let m = self.manager().await?;
                let mut out = Vec::new();
                for n in keys {
                    out.push(nodes::set_role(&m, &n, role).await?);
                }
                Ok(Response::Message(out.join("\n")))
            }
            Request::NodeUpdate {
                node,
                availability,
                label_add,
                label_rm,
            } => Ok(Response::Message(
                nodes::update(
                    self.manager().await?.as_ref(),
                    &node,
                    availability,
                    label_add,
                    &label_rm,
                )
                .await?,
            )),
            Request::SwarmInspect => Ok(Response::Swarm(Box::new(
                cluster::inspect(self.manager().await?.as_ref()).await?,
            ))),
            // A malformed reference is refused by pin_image (Invalid).
            Request::ImageResolve { reference } => match self.pin_image(&reference).await? {
                Ok(pinned) => Ok(Response::Message(pinned)),
                Err(why) => Err(ApiError::new(ErrorCode::NotFound, why)),
            },
            Request::FileCreate {
                kind,
                name,
                labels,
                data,
            } => Ok(Response::Created {
                id: files::create(self.manager().await?.as_ref(), kind, name, labels, data).await?,
                warnings: Vec::new(),
            }),
            Request::FileList { kind, keys } => Ok(Response::Files(
                files::list(self.manager().await?.as_ref(), kind, &keys).await?,
            )),
            Request::FileUpdate {
                kind,
                key,
                version,
                labels,
                data,
            } => Ok(Response::Message(
                files::update(
                    self.manager().await?.as_ref(),
                    kind,
                    &key,
                    version,
                    labels,
                    data,
                )
                .await?,
            )),
            Request::FileRemove { kind, keys } => {
                let m = self.manager().await?;
                let mut out = Vec::new();
                for k in keys {
                    out.push(files::remove(&m, kind, &k).await?);
                }
                Ok(Response::Message(out.join("\n")))
            }
            Request::NodeRemove { nodes: keys, force } => {
                let m = self.manager().await?;
                let mut out = Vec::new();
                let mut failed = None;
                for n in keys {
                    match nodes::remove(&m, &n, force).await {
                        Ok(id) => out.push(id),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                // Removed nodes keep the keys they had: rotate them out.
                if !out.is_empty() {
                    crate::manager::keymanager::shut_out(&m).await;
                }
                match failed {
                    Some(e) => Err(e),
                    None => Ok(Response::Message(out.join("\n"))),
                }
            }
        }
    }

    /// Stop the membership and start it again from what is on disk (after
    /// a promotion or demotion).
    pub(super) async fn restart_swarm(&self) -> anyhow::Result<()> {
        let _op = self.membership_op.lock().await;
        let taken = self.swarm.write().await.take();
        if let Some(s) = taken {
            s.shutdown(false).await;
        }
        if let Some((sf, identity)) = crate::swarm::file::load(&self.config.data_dir)? {
            let swarm = Swarm::resume(&self.config, self.restart.clone(), sf, identity).await?;
            *self.swarm.write().await = Some(swarm);
        }
        Ok(())
    }

    async fn gossip(&self) -> Result<shoal_membership::Gossip, ApiError> {
        self.swarm().await?.gossip().ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unavailable,
                "gossip is not running yet on this node (it starts once the node's session delivers the key ring)",
            )
        })
    }

    /// This node's local network (`shoal_gwbridge`) as docker shows it,
    /// if it exists and `key` (if any) names it.
    fn local_network(&self, key: Option<&str>) -> Result<Option<serde_json::Value>, ApiError> {
        let Some(n) = gwnet::load(&self.config.data_dir)? else {
            return Ok(None);
        };
        if key.is_some_and(|k| !gwnet::names(&n, k)) {
            return Ok(None);
        }
        let leases = shoal_netdriver::GwBridge::leases_in(&self.config.run_dir).unwrap_or_default();
        Ok(Some(gwnet::doc(&n, &leases)))
    }

    async fn manager(&self) -> Result<Arc<Manager>, ApiError> {
        self.swarm().await?.manager().cloned()
    }

    async fn swarm(&self) -> Result<Arc<Swarm>, ApiError> {
        self.swarm.read().await.clone().ok_or_else(|| {
            ApiError::invalid(
                "This node is not part of a swarm: run `shoal swarm init` or `shoal swarm join` first",
            )
        })
    }

    async fn check_inactive(&self) -> Result<(), ApiError> {
        if self.swarm.read().await.is_some() {
            return Err(ApiError::invalid(
                "This node is already part of a swarm. Use \"shoal swarm leave\" to leave this swarm and join another one.",
            ));
        }
        Ok(())
    }

    async fn set_swarm(&self, swarm: Arc<Swarm>) {
        self.set_node_id(swarm.node_id().to_string());
        *self.swarm.write().await = Some(swarm);
    }

    fn set_node_id(&self, id: String) {
        match self.node_id.lock() {
            Ok(mut g) => *g = id,
            Err(p) => *p.into_inner() = id,
        }
    }

    async fn info(&self) -> NodeInfo {
        let hostname = self.config.hostname.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let swarm = match self.swarm.read().await.as_ref() {
            Some(s) => s.info(),
            None => SwarmInfo {
                state: SwarmState::Inactive,
                ..Default::default()
            },
        };
        let node_id = match self.node_id.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        NodeInfo {
            node_id,
            hostname,
            addresses: super::local_ipv4_addrs(),
            data_dir: self.config.data_dir.display().to_string(),
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
            swarm,
        }
    }
}

/// The address to advertise when none is given: the only one there is
/// (as docker chooses; several are ambiguous).
fn choose_advertise_addr(addrs: Vec<String>) -> Result<String, ApiError> {
    match addrs.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ApiError::invalid(
            "could not find an IP address to advertise: this node has no IPv4 address besides loopback; use --advertise-addr",
        )),
        many => Err(ApiError::invalid(format!(
            "could not choose an IP address to advertise since this system has multiple addresses ({}); use --advertise-addr",
            many.join(", ")
        ))),
    }
}

/// A gossip value for people: endpoint records decoded, UTF-8 as text,
/// anything else as hex.
fn display_value(table: &str, value: &[u8]) -> String {
    if table.starts_with("ep/") {
        if let Ok(r) = shoal_membership::EndpointRecord::decode(value) {
            return format!("{:?}", r);
        }
    }
    match std::str::from_utf8(value) {
        Ok(s) => s.to_string(),
        Err(_) => value.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// A gossip member as the API shows it.
fn member_row(m: shoal_membership::MemberView) -> GossipMember {
    GossipMember {
        info: GossipMemberInfo {
            node_id: m.info.node_id,
            gossip_addr: m.info.gossip_addr,
            advertise_addr: m.info.advertise_addr,
            data_path_addr: m.info.data_path_addr,
        },
        state: match m.state {
            shoal_membership::MemberState::Alive => GossipMemberState::Alive,
            shoal_membership::MemberState::Suspect => GossipMemberState::Suspect,
            shoal_membership::MemberState::Down => GossipMemberState::Down,
        },
        incarnation: m.incarnation,
    }
}
