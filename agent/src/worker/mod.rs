//! The worker side: what every node runs, managers included (swarmkit's
//! `agent/`). It never imports `manager/`: it calls the managers through
//! [`NodeRpc`] and receives its assignments through the session.
//!
//! - [`session`]: the session client (heartbeats up, assignments down);
//! - [`overlay`]: workloads (`shoal run`) and the reconciler that keeps the
//!   kernel in step with the endpoint tables;
//! - [`executor`]: service tasks, the routing mesh, VIPs;
//! - [`dns`]: the embedded DNS server of tasks.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use shoal_api::{ApiError, ErrorCode, ImageRow, Workload};
use shoal_model::NodeId;
use shoal_runtime::logfile::{self, Record};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::proto::gossip::GossipSlot;
use crate::proto::rpc::{NodeRequest, NodeResponse, NodeRpc};
use crate::proto::session::Assignments;
use crate::worker::containers::Containers;

pub mod containers;
mod directory;
pub mod dns;
pub mod encrypted;
pub mod exec;
pub mod executor;
pub mod gwnet;
mod health;
mod host;
mod netstatus;
pub mod overlay;
pub mod session;

use crate::config::Config;
use encrypted::Encrypted;
use executor::Executor;
use overlay::{Overlay, StartSpec};

/// Workloads, tasks and the netdriver of this node.
pub struct Worker {
    me: NodeId,
    data_path_addr: IpAddr,
    /// VXLAN port of the cluster, as last assigned.
    data_path_port: AtomicU16,
    /// Workloads and the netdriver.
    pub overlay: Overlay,
    /// Service tasks on this node.
    pub executor: Executor,
    gossip: GossipSlot,
    rpc: Arc<dyn NodeRpc>,
    /// The container runtime (containerd).
    pub containers: Arc<Containers>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker for node `me` whose data path is `data_path_addr`;
    /// `rpc` reaches the managers, `upstreams` are the DNS forwarders.
    pub fn new(
        me: NodeId,
        data_path_addr: IpAddr,
        config: &Config,
        upstreams: Vec<SocketAddr>,
        gossip: GossipSlot,
        rpc: Arc<dyn NodeRpc>,
        containers: Arc<Containers>,
    ) -> Worker {
        Worker {
            me: me.clone(),
            data_path_addr,
            data_path_port: AtomicU16::new(4789),
            containers,
            overlay: Overlay::new(
                &config.run_dir,
                &config.data_dir,
                Encrypted::new(
                    me.to_string(),
                    config.data_dir.clone(),
                    config.encrypted_port,
                ),
            ),
            executor: Executor::new(upstreams),
            gossip,
            rpc,
        }
    }

    /// Start the reconciler and executor loops; the handles are the
    /// caller's to abort.
    pub fn start(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let weak = Arc::downgrade(self);
        self.adopt_containers();
        vec![
            tokio::spawn(overlay_loop(weak.clone())),
            tokio::spawn(executor_loop(weak)),
        ]
    }

    /// After a restart: wait again for the containers of the adopted
    /// workloads, and remove any container no workload record names.
    fn adopt_containers(self: &Arc<Self>) {
        let adopted: Vec<(String, u32)> = self
            .overlay
            .list()
            .into_iter()
            .filter_map(|w| w.container.map(|c| (c, w.pid)))
            .collect();
        if adopted.is_empty() && !self.containers.socket_exists() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let keep: Vec<String> = adopted.iter().map(|(c, _)| c.clone()).collect();
            me.containers.remove_unknown(&keep).await;
            for (id, pid) in adopted {
                let weak = Arc::downgrade(&me);
                me.containers.watch(id, move |code| {
                    if let Some(w) = weak.upgrade() {
                        w.overlay.record_exit(pid, code);
                        w.executor.kick.notify_one();
                    }
                });
            }
        });
    }

    fn data_path_port(&self) -> u16 {
        self.data_path_port.load(Ordering::Relaxed)
    }

    /// Take in what the leader assigned: tasks, services, the data-path
    /// port.
    /// Returns whether the data-plane key ring changed.
    pub fn apply(&self, a: &Assignments) -> bool {
        self.executor.set(a);
        if a.data_path_port != 0 {
            self.data_path_port
                .store(a.data_path_port, Ordering::Relaxed);
        }
        let changed = self.overlay.encrypted.set_ring(&a.dataplane_keys);
        if changed {
            self.overlay.kick.notify_one();
        }
        changed
    }

    /// Gossip just started: announce this node's endpoints.
    pub fn gossip_started(&self, g: &shoal_membership::Gossip) {
        if let IpAddr::V4(vtep) = self.data_path_addr {
            self.overlay.publish_all(g, self.me.as_str(), vtep);
        }
    }

    /// Service tasks whose process runs.
    pub fn tasks_running(&self) -> u64 {
        self.overlay
            .list()
            .iter()
            .filter(|w| w.task.is_some() && overlay::alive(w.pid))
            .count() as u64
    }

    /// Stop every task and the routing-mesh sandbox (`swarm leave`).
    pub async fn stop_all(&self) {
        self.executor
            .stop_all(&self.overlay, self.gossip.get().as_ref())
            .await;
    }

    /// `shoal run`: allocate an endpoint (through a manager when this node
    /// is a worker), then start the workload here.
    pub async fn run(&self, run: Run) -> Result<Workload, ApiError> {
        let Run {
            network,
            name,
            ip,
            argv,
            image,
            container,
            env,
        } = run;
        let network = network.as_str();
        if argv.is_empty() && container.is_none() {
            return Err(ApiError::invalid(
                "shoal run: no command given (shoal run --runtime host --network NET -- CMD ...)",
            ));
        }
        // A container's image first: nothing is allocated for one that
        // cannot be had.
        let image = match &container {
            Some(_) => Some(
                self.containers
                    .image(&image)
                    .await
                    .map_err(|e| ApiError::new(ErrorCode::NotFound, e.to_string()))?,
            ),
            None => None,
        };
        let IpAddr::V4(vtep) = self.data_path_addr else {
            return Err(ApiError::invalid(
                "overlay networks need an IPv4 data-path address",
            ));
        };
        let me = self.me.to_string();
        let name = name.unwrap_or_default();
        let (net, ep) = match self
            .rpc
            .call(NodeRequest::Attach {
                network: network.to_string(),
                name: name.clone(),
                ip,
            })
            .await?
        {
            NodeResponse::Attached { network, endpoint } => (*network, endpoint),
            _ => return Err(ApiError::internal("unexpected answer to attach")),
        };
        // Fail closed: never carry an encrypted network's traffic in
        // clear; without keys or a data path, no attach.
        if let Err(why) = self
            .overlay
            .encrypted
            .check_attach(&net, vtep, self.data_path_port())
        {
            let _ = self.release_endpoint(&net.id, &ep.id).await;
            return Err(ApiError::invalid(why));
        }
        let name = if name.is_empty() {
            ep.id.chars().take(12).collect()
        } else {
            name
        };
        let port = self.data_path_port();
        let gossip = self.gossip.get();
        let spec = StartSpec {
            id: ep.id.clone(),
            name: name.clone(),
            networks: vec![(net.clone(), ep.clone())],
            argv: if container.is_some() {
                Vec::new()
            } else {
                argv.clone()
            },
            ..Default::default()
        };
        let started = self
            .overlay
            .start(spec, &me, vtep, port, gossip.as_ref())
            .await;
        let started = match (started, container, image) {
            (Ok(w), Some(settings), Some(image)) => {
                match self
                    .run_container(&w, &name, image, &settings, &argv, env)
                    .await
                {
                    Ok(w) => Ok(w),
                    Err(e) => {
                        self.overlay.cleanup(&w.id, gossip.as_ref()).await;
                        Err(e)
                    }
                }
            }
            (other, _, _) => other,
        };
        match started {
            Ok(w) => Ok(w),
            Err(e) => {
                let _ = self.release_endpoint(&net.id, &ep.id).await;
                Err(ApiError::internal(format!(
                    "cannot start the workload: {e:#}"
                )))
            }
        }
    }

    /// The container of a standalone workload, in the namespace `w` has.
    async fn run_container(
        &self,
        w: &Workload,
        hostname: &str,
        image: shoal_runtime::ImageInfo,
        settings: &shoal_model::service::ContainerSpec,
        argv: &[String],
        env: Vec<String>,
    ) -> anyhow::Result<Workload> {
        // No embedded DNS outside tasks: the host's resolvers.
        let resolv = self.overlay.netns_of(&w.id).with_extension("resolv.conf");
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        std::fs::write(&resolv, host_resolv)?;
        let launch = containers::Launch {
            hostname,
            image,
            settings,
            command: argv,
            env,
            resolv_conf: resolv,
            files: &[],
        };
        self.containers
            .launch(&self.overlay, w, launch, self.overlay.exit_recorder())
            .await
    }

    /// Free an endpoint in the store.
    async fn release_endpoint(&self, network: &str, endpoint: &str) -> Result<(), ApiError> {
        self.rpc
            .call(NodeRequest::Detach {
                network: network.to_string(),
                endpoint: endpoint.to_string(),
            })
            .await
            .map(|_| ())
    }

    /// `shoal stop`: SIGTERM the workload; the overlay loop cleans up.
    pub fn stop(&self, key: &str) -> Result<String, ApiError> {
        let w = self.overlay.find(key).ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, format!("workload {key} not found"))
        })?;
        let pid = nix::unistd::Pid::from_raw(w.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if w.container.is_some() {
            // PID 1 of a container ignores SIGTERM unless it handles it:
            // SIGKILL after the grace period, as `docker stop` does.
            let (id, containers) = (w.id.clone(), self.containers.clone());
            tokio::spawn(async move {
                tokio::time::sleep(executor::STOP_GRACE).await;
                if let Ok(rt) = containers.runtime().await {
                    let _ = rt.kill(&id, nix::sys::signal::Signal::SIGKILL as i32).await;
                }
            });
        }
        self.overlay.kick.notify_one();
        Ok(w.id)
    }
}

/// `registry:5000/app:1` -> (`registry:5000/app`, `1`); a digest-only
/// name has tag `<none>`.
fn split_name(name: &str) -> (String, String) {
    let base = name.split('@').next().unwrap_or(name);
    let slash = base.rfind('/').map_or(0, |i| i + 1);
    match base[slash..].rfind(':') {
        Some(i) => (
            base[..slash + i].to_string(),
            base[slash + i + 1..].to_string(),
        ),
        None => (base.to_string(), "<none>".to_string()),
    }
}

/// `shoal run`, as the daemon got it.
#[derive(Debug)]
pub struct Run {
    /// Network name or id (attachable).
    pub network: String,
    /// Workload name.
    pub name: Option<String>,
    /// Address asked for.
    pub ip: Option<std::net::Ipv4Addr>,
    /// Command (after the image's entrypoint), or the host program.
    pub argv: Vec<String>,
    /// Image reference (containers).
    pub image: String,
    /// Container settings; `None`: a host process.
    pub container: Option<shoal_model::service::ContainerSpec>,
    /// `K=V` on top of the image's env.
    pub env: Vec<String>,
}

/// Most output `service logs` hands back in one answer.
const MAX_OUTPUT: u64 = 4 << 20;

impl Worker {
    fn container_of(&self, key: &str) -> Result<(Workload, String), ApiError> {
        let w = self.overlay.find(key).ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, format!("No such container: {key}"))
        })?;
        let c = w.container.clone().ok_or_else(|| {
            ApiError::invalid(format!(
                "workload {} is a host process (--runtime host), not a container",
                w.name
            ))
        })?;
        Ok((w, c))
    }

    /// Starts `argv` in a workload's container (its namespaces, user,
    /// capabilities, env and cwd): the running exec, whose stdio the
    /// caller relays ([`exec::Exec::relay`]).
    pub async fn exec(
        &self,
        key: &str,
        argv: &[String],
        interactive: bool,
        tty: bool,
    ) -> Result<exec::Exec, ApiError> {
        if argv.is_empty() {
            return Err(ApiError::invalid("exec needs a command".to_string()));
        }
        let (w, c) = self.container_of(key)?;
        let rt = self.runtime().await?;
        let dir = self
            .overlay
            .log_of(&w.id)
            .with_extension(format!("exec-{}", rand::random::<u32>()));
        exec::Exec::start(rt, c, argv, dir, interactive, tty).await
    }

    async fn runtime(&self) -> Result<Arc<shoal_runtime::Runtime>, ApiError> {
        self.containers
            .runtime()
            .await
            .map_err(|e| ApiError::new(ErrorCode::Unavailable, e.to_string()))
    }

    /// The images on this node.
    pub async fn images(&self) -> Result<Vec<ImageRow>, ApiError> {
        let list = self
            .runtime()
            .await?
            .images()
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(list
            .into_iter()
            .map(|i| {
                let (repository, tag) = split_name(&i.name);
                ImageRow {
                    repository,
                    tag,
                    digest: i.digest,
                    id: i.id,
                    created: i.created,
                    size: i.size,
                }
            })
            .collect())
    }

    /// `image pull`: `<name>: <digest>` once pulled.
    pub async fn pull(&self, reference: &str) -> Result<String, ApiError> {
        let rt = self.runtime().await?;
        let i = rt.pull(reference).await.map_err(|e| match e {
            shoal_runtime::RuntimeError::Reference(_) => ApiError::invalid(e.to_string()),
            other => ApiError::new(ErrorCode::NotFound, other.to_string()),
        })?;
        Ok(format!("{}: {}", i.name, i.digest))
    }

    /// `image import`: an image from an archive on this node.
    pub async fn import(&self, file: &Path, name: Option<&str>) -> Result<String, ApiError> {
        let rt = self.runtime().await?;
        let i = rt.import(file, name).await.map_err(|e| match e {
            shoal_runtime::RuntimeError::Containerd { .. } => ApiError::internal(e.to_string()),
            other => ApiError::invalid(other.to_string()),
        })?;
        Ok(format!("Loaded image: {}", i.name))
    }

    /// `image rm`: refused while a container here uses the image.
    pub async fn remove_image(&self, reference: &str) -> Result<String, ApiError> {
        let rt = self.runtime().await?;
        let name = shoal_runtime::parse_reference(reference)
            .map_err(|e| ApiError::invalid(e.to_string()))?
            .whole();
        if let Some(w) = self
            .overlay
            .list()
            .into_iter()
            .find(|w| w.image.as_deref() == Some(name.as_str()))
        {
            return Err(ApiError::new(
                ErrorCode::Invalid,
                format!(
                    "conflict: unable to remove repository reference \"{reference}\" \
                     (must force) - container {} is using its referenced image",
                    w.id
                ),
            ));
        }
        rt.remove_image(&name).await.map_err(|e| match e {
            shoal_runtime::RuntimeError::NoSuchImage(_) => {
                ApiError::new(ErrorCode::NotFound, e.to_string())
            }
            other => ApiError::internal(other.to_string()),
        })?;
        Ok(format!("Untagged: {name}"))
    }

    /// `service logs` on this node, per task of `tasks` that is here: its
    /// lines after its cursor in `after` (if named there) and its new
    /// cursor; at most [`MAX_OUTPUT`] bytes in all (the cursor of a cut
    /// task is its last line sent, so the rest comes next time).
    pub fn task_logs(
        &self,
        tasks: &[String],
        tail: Option<usize>,
        after: &BTreeMap<String, i64>,
    ) -> Vec<(String, Vec<Record>, i64)> {
        let mut total = 0u64;
        let mut out = Vec::new();
        for t in tasks {
            if self.overlay.get(t).is_none() {
                continue;
            }
            let Ok((mut records, mut cursor)) = self.logs(t, tail, after.get(t).copied()) else {
                continue;
            };
            let mut keep = 0;
            for r in &records {
                total += r.line.len() as u64 + 40;
                if total > MAX_OUTPUT {
                    cursor = records[..keep].last().map_or(cursor, |r| r.time);
                    break;
                }
                keep += 1;
            }
            records.truncate(keep);
            out.push((t.clone(), records, cursor));
            if total > MAX_OUTPUT {
                break;
            }
        }
        out
    }

    /// What a workload wrote after time `after` (the last `tail` lines, if
    /// given), and the time of its newest line (shown or not; `after`, or
    /// 0, when there is none): where to continue from.
    pub fn logs(
        &self,
        key: &str,
        tail: Option<usize>,
        after: Option<i64>,
    ) -> Result<(Vec<Record>, i64), ApiError> {
        let w = self.overlay.find(key).ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, format!("No such container: {key}"))
        })?;
        let path = self.overlay.log_of(&w.id);
        let records = logfile::read(&path, after, tail);
        let newest = match (records.last(), tail) {
            (Some(r), _) => Some(r.time),
            // Only `--tail 0` hides lines there are: look up the newest.
            (None, Some(0)) => logfile::read(&path, after, Some(1)).last().map(|r| r.time),
            (None, _) => None,
        };
        Ok((records, newest.or(after).unwrap_or(0)))
    }
}

/// Keep workloads and the kernel in step: clean up exited workloads (and
/// free their endpoints), then reconcile — on a timer, when kicked, and on
/// every endpoint-table change from gossip.
async fn overlay_loop(worker: Weak<Worker>) {
    let mut events: Option<tokio::sync::broadcast::Receiver<shoal_membership::Event>> = None;
    loop {
        let Some(s) = worker.upgrade() else { return };
        if events.is_none() {
            events = s.gossip.get().map(|g| g.subscribe());
        }
        for id in s.overlay.exited() {
            let gossip = s.gossip.get();
            if s.overlay.get(&id).is_some_and(|w| w.container.is_some()) {
                s.containers.remove(&id).await;
            }
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
        if let IpAddr::V4(vtep) = s.data_path_addr {
            let port = s.data_path_port();
            let gossip = s.gossip.get();
            if let Err(e) = s
                .overlay
                .reconcile(s.me.as_str(), vtep, port, gossip.as_ref())
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
                            if e.table.starts_with("ep/")
                                || e.table == crate::proto::gossip::DATAPLANE_TABLE =>
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
            // An endpoint came or went: the VIP and routing-mesh tables
            // (which keep only endpoints present in gossip) follow at once.
            _ = kicked => s2.executor.kick.notify_one(),
            _ = s2.overlay.kick.notified() => {}
            _ = tokio::time::sleep(overlay::RECONCILE_EVERY) => {}
        }
    }
}

/// Every node: run the executor on assignment changes, process exits
/// (polled) and a timer.
async fn executor_loop(worker: Weak<Worker>) {
    loop {
        let Some(s) = worker.upgrade() else { return };
        if let IpAddr::V4(vtep) = s.data_path_addr {
            let weak = worker.clone();
            let ctx = executor::NodeCtx {
                me: s.me.to_string(),
                vtep,
                port: s.data_path_port(),
                gossip: s.gossip.get(),
                containers: s.containers.clone(),
                on_exit: Arc::new(move |pid, code| {
                    if let Some(w) = weak.upgrade() {
                        w.overlay.record_exit(pid, code);
                        w.executor.kick.notify_one();
                    }
                }),
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

#[cfg(test)]
mod tests {
    use super::split_name;

    #[test]
    fn image_names_split_into_repository_and_tag() {
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            split_name("10.0.0.1:5000/app:1"),
            s("10.0.0.1:5000/app", "1")
        );
        assert_eq!(
            split_name("10.0.0.1:5000/app:1@sha256:ab"),
            s("10.0.0.1:5000/app", "1")
        );
        assert_eq!(
            split_name("10.0.0.1:5000/app@sha256:ab"),
            s("10.0.0.1:5000/app", "<none>")
        );
        assert_eq!(
            split_name("docker.io/library/busybox:latest"),
            s("docker.io/library/busybox", "latest")
        );
    }
}
