//! The executor (every node): turns the tasks the leader assigned into
//! running processes, and the service directory into per-task VIP rules,
//! per-task DNS and this node's part of the routing mesh.
//!
//! Data flow: session assignments -> [`Executor::set`] -> the loop in
//! [`Executor::run_once`] compares them with the local workloads:
//! - an assigned task not here is started: namespace, one veth per network
//!   (endpoints allocated in the store), gwbridge egress, embedded DNS on
//!   127.0.0.11 inside the namespace, VIP rules (nftables), the process
//!   (own mount and UTS namespaces: resolv.conf, host name);
//! - a started task of a service with TCP ports is reported `running`
//!   once its first target port accepts connections (at most
//!   [`LISTEN_WAIT`]), so it joins load balancing when it can answer; a
//!   container with a health check once its check passes, and it fails
//!   when the check says unhealthy (see `health`);
//! - a task whose process ended is reported `Complete`/`Failed` with its
//!   exit code and cleaned up; one no longer assigned, or told to shut
//!   down, leaves load balancing for [`STOP_DRAIN`], is stopped (SIGTERM,
//!   SIGKILL after [`STOP_GRACE`]) and reported `Shutdown`;
//! - routing mesh: with a port published in ingress mode anywhere, this
//!   node runs an ingress sandbox (namespace on the ingress network and the
//!   gwbridge): the host DNATs published ports to the sandbox, the sandbox
//!   balances them over the tasks' ingress addresses. `mode=host` ports
//!   DNAT straight to the local task.
//!
//! Task states go back to the leader in the heartbeat report (see
//! `session`), sent at once when one changes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use shoal_membership::{EndpointRecord, Gossip};
use shoal_model::service::{Protocol, Runtime, TaskState};
use shoal_netdriver::nft;

use super::directory::{lookup, vip_rules};
use tracing::{info, warn};

mod mesh;

use crate::worker::containers::{Containers, Launch};
use crate::worker::dns::{self, DnsServer};
use crate::worker::health::{self, Monitor};
use shoal_api::Workload;

use crate::proto::session::{Assignments, ServiceView, TaskReport};
use crate::worker::overlay::{alive, Overlay, StartSpec};

/// Time a task gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// Longest a started task of a service with TCP ports stays `starting`
/// waiting for its first port to accept connections.
pub const LISTEN_WAIT: Duration = Duration::from_secs(5);
/// Time between a task being told to shut down and its SIGTERM: the leader
/// drops it from the services' backends as it says so, and every node's
/// load balancing (VIPs, routing mesh, DNS) follows within this, so no new
/// connection reaches a process that is exiting (in-flight ones finish).
pub const STOP_DRAIN: Duration = Duration::from_secs(1);
/// Name of the routing-mesh sandbox workload (its id is its endpoint id,
/// unique in the cluster, as gossip keys must be).
pub const INGRESS_SANDBOX: &str = "ingress-sbox";
/// nftables table (in each task) sending 127.0.0.11:53 to its DNS server.
pub const DNS_TABLE: &str = "shoal-dns";
/// Address the embedded DNS answers on inside every task.
pub const DNS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11)), 53);

/// This node's executor.
pub struct Executor {
    latest: Mutex<Option<Assignments>>,
    reports: Mutex<BTreeMap<String, TaskReport>>,
    /// Tasks being stopped: when it was decided, and whether SIGTERM went.
    stopping: Mutex<BTreeMap<String, (Instant, bool)>>,
    dns: Mutex<BTreeMap<String, DnsServer>>,
    directory: Arc<RwLock<Vec<ServiceView>>>,
    applied: Mutex<BTreeMap<String, String>>,
    upstreams: Vec<SocketAddr>,
    closed: std::sync::atomic::AtomicBool,
    /// Wakes the executor loop.
    pub kick: Arc<tokio::sync::Notify>,
    /// Started tasks of services with TCP ports, until their first port
    /// accepts a connection (`true`) — only then are they reported
    /// `running`, and so become backends.
    listening: Arc<Mutex<BTreeMap<String, bool>>>,
    /// Health checks of the container tasks here (`None`: it has none).
    health: Mutex<BTreeMap<String, Option<Monitor>>>,
    /// Wakes the session, to report a state change at once.
    pub report_now: tokio::sync::Notify,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").finish_non_exhaustive()
    }
}

/// Where the executor runs tasks and how it reaches the data path.
#[derive(Clone)]
pub struct NodeCtx {
    /// This node's id.
    pub me: String,
    /// Data-path address.
    pub vtep: Ipv4Addr,
    /// VXLAN port.
    pub port: u16,
    /// The gossip agent, once running.
    pub gossip: Option<Gossip>,
    /// The container runtime.
    pub containers: Arc<Containers>,
    /// Where a container's exit status goes (pid, status).
    pub on_exit: Arc<dyn Fn(u32, i32) + Send + Sync>,
}

impl Executor {
    /// `upstreams`: resolvers for names that are not services.
    pub fn new(upstreams: Vec<SocketAddr>) -> Executor {
        Executor {
            latest: Mutex::new(None),
            reports: Mutex::new(BTreeMap::new()),
            stopping: Mutex::new(BTreeMap::new()),
            dns: Mutex::new(BTreeMap::new()),
            directory: Arc::new(RwLock::new(Vec::new())),
            applied: Mutex::new(BTreeMap::new()),
            upstreams,
            closed: std::sync::atomic::AtomicBool::new(false),
            kick: Arc::new(tokio::sync::Notify::new()),
            listening: Arc::new(Mutex::new(BTreeMap::new())),
            health: Mutex::new(BTreeMap::new()),
            report_now: tokio::sync::Notify::new(),
        }
    }

    /// New assignments from the leader.
    pub fn set(&self, a: &Assignments) {
        if let Ok(mut l) = self.latest.lock() {
            let changed = l.as_ref().is_none_or(|old| {
                old.tasks != a.tasks
                    || old.services != a.services
                    || old.networks != a.networks
                    || old.ingress_endpoint != a.ingress_endpoint
            });
            *l = Some(a.clone());
            if changed {
                self.kick.notify_one();
            }
        }
    }

    /// Task states for the heartbeat.
    pub fn reports(&self) -> Vec<TaskReport> {
        self.reports
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default()
    }

    /// DNS statistics summed over the task servers.
    pub fn dns_stats(&self) -> dns::DnsStats {
        let mut total = dns::DnsStats::default();
        if let Ok(m) = self.dns.lock() {
            for s in m.values() {
                let st = s.stats();
                total.queries += st.queries;
                total.local_answers += st.local_answers;
                total.forwarded += st.forwarded;
                total.failures += st.failures;
            }
        }
        total
    }

    fn report(&self, id: &str, state: TaskState, exit_code: Option<i32>, message: String) {
        let changed = self.reports.lock().is_ok_and(|mut r| {
            let new = TaskReport {
                id: id.to_string(),
                state,
                exit_code,
                message,
            };
            let changed = r.get(id) != Some(&new);
            r.insert(id.to_string(), new);
            changed
        });
        if changed {
            info!(task = %id, state = %state, ?exit_code, "task state");
            self.report_now.notify_one();
        }
    }

    fn reported(&self, id: &str) -> Option<TaskState> {
        self.reports.lock().ok()?.get(id).map(|r| r.state)
    }

    /// One pass: converge local tasks, DNS, VIP rules and the mesh.
    pub async fn run_once(&self, overlay: &Overlay, ctx: &NodeCtx) {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let Some(mut a) = self.latest.lock().ok().and_then(|l| l.clone()) else {
            return; // nothing known yet: keep what runs (adopted after a restart)
        };
        reachable_backends(&mut a.services, ctx.gossip.as_ref());
        if let Ok(mut d) = self.directory.write() {
            *d = a.services.clone();
        }
        let assigned: BTreeMap<&str, &crate::proto::session::AssignedTask> =
            a.tasks.iter().map(|t| (t.task.id.as_str(), t)).collect();
        // 1. Local tasks: ended, unwanted, or running.
        for w in overlay.list().into_iter().filter(|w| w.task.is_some()) {
            let id = w.id.clone();
            let want = assigned
                .get(id.as_str())
                .is_some_and(|t| t.task.desired == TaskState::Running);
            if overlay.ended(&w) {
                let stopping = self
                    .stopping
                    .lock()
                    .is_ok_and(|mut s| s.remove(&id).is_some());
                let code = overlay.exit_code(w.pid);
                let (state, msg) = if stopping || !want {
                    (TaskState::Shutdown, "shutdown".to_string())
                } else {
                    match code {
                        Some(0) => (TaskState::Complete, "finished".to_string()),
                        Some(c) => (TaskState::Failed, format!("task: non-zero exit ({c})")),
                        None => (TaskState::Failed, "task exited".to_string()),
                    }
                };
                self.finish(overlay, ctx, &w).await;
                // Failed already (unhealthy): that stays what it ended as.
                if !self.reported(&id).is_some_and(|s| s.is_terminal()) {
                    self.report(&id, state, code, msg);
                }
                continue;
            }
            if !want || self.reported(&id) == Some(TaskState::Failed) {
                self.stop(&w);
                continue;
            }
            if w.container.is_some() {
                if let Some(t) = assigned.get(id.as_str()) {
                    self.adopt_health(overlay, ctx, t).await;
                }
            }
            // Still waiting for its port (see `await_listening`)?
            let waiting = self.listening.lock().is_ok_and(|mut l| match l.get(&id) {
                Some(false) => true,
                Some(true) => {
                    l.remove(&id);
                    false
                }
                None => false,
            });
            match self.health_gate(&id) {
                Err(why) => {
                    warn!(task = %id, "unhealthy: {why}");
                    let msg = format!("{}: {why}", shoal_model::health::MSG_UNHEALTHY);
                    self.report(&id, TaskState::Failed, None, msg);
                    self.stop(&w);
                }
                Ok(Some(msg)) if !waiting && self.reported(&id) != Some(TaskState::Running) => {
                    self.report(&id, TaskState::Running, None, msg.into());
                }
                Ok(_) => {}
            }
        }
        // 2. Assigned tasks not here yet.
        let local: BTreeSet<String> = overlay.list().into_iter().map(|w| w.id).collect();
        for t in a
            .tasks
            .iter()
            .filter(|t| t.task.desired == TaskState::Running)
        {
            let id = &t.task.id;
            if local.contains(id) || self.reported(id).is_some_and(|s| s.is_terminal()) {
                continue;
            }
            if t.task.state.is_terminal() || t.task.state == TaskState::Running {
                // Running in the store but not here (lost in a restart of
                // the host): report it gone so it is replaced.
                if t.task.state == TaskState::Running {
                    self.report(
                        id,
                        TaskState::Failed,
                        None,
                        "task is gone from its node".into(),
                    );
                }
                continue;
            }
            self.report(id, TaskState::Starting, None, "starting".into());
            match self.start(overlay, ctx, &a, t).await {
                Ok(w) => {
                    info!(task = %id, name = %w.name, pid = w.pid, "task started");
                    let port = a
                        .services
                        .iter()
                        .find(|s| s.id == t.task.service)
                        .and_then(|s| s.ports.iter().find(|p| p.protocol == Protocol::Tcp))
                        .map(|p| p.target);
                    match (port, w.gw_ip) {
                        // A health check decides when it can answer.
                        _ if !matches!(self.health_gate(id), Ok(Some("running"))) => {}
                        (Some(port), Some(ip)) => self.await_listening(id, (ip, port).into()),
                        _ => self.report(id, TaskState::Running, None, "running".into()),
                    }
                }
                Err((state, e)) => {
                    warn!(task = %id, "task did not start: {e:#}");
                    self.report(id, state, None, format!("{e:#}"));
                }
            }
        }
        // 3. Forget reports the store no longer needs (task ended there).
        if let Ok(mut r) = self.reports.lock() {
            r.retain(|id, _| assigned.contains_key(id.as_str()) || local.contains(id));
        }
        // 4. DNS servers and VIP rules of the tasks here.
        for w in overlay
            .list()
            .into_iter()
            .filter(|w| w.task.is_some() && w.pid != 0)
        {
            self.prepare(&w, &a.services).await;
        }
        if let Ok(mut d) = self.dns.lock() {
            let here: BTreeSet<String> = overlay.list().into_iter().map(|w| w.id).collect();
            d.retain(|id, _| here.contains(id));
        }
        // 5. Routing mesh.
        if let Err(e) = self.mesh(overlay, ctx, &a).await {
            warn!("routing mesh: {e:#}");
        }
    }

    /// `swarm leave`: stop every task and the mesh sandbox here and
    /// remove what they had (the node no longer belongs to the cluster).
    pub async fn stop_all(&self, overlay: &Overlay, gossip: Option<&Gossip>) {
        use nix::sys::signal::{kill, Signal};
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let tasks: Vec<Workload> = overlay
            .list()
            .into_iter()
            .filter(|w| w.task.is_some() || w.name == INGRESS_SANDBOX)
            .collect();
        for w in &tasks {
            if w.pid != 0 {
                let _ = kill(nix::unistd::Pid::from_raw(w.pid as i32), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        while tasks.iter().any(|w| w.pid != 0 && alive(w.pid)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for w in &tasks {
            if w.pid != 0 && alive(w.pid) {
                let _ = kill(nix::unistd::Pid::from_raw(w.pid as i32), Signal::SIGKILL);
            }
            if let Ok(mut d) = self.dns.lock() {
                d.remove(&w.id);
            }
            overlay.cleanup(&w.id, gossip).await;
        }
        let _ = nft::delete_table(None, nft::PUBLISH_TABLE).await;
    }

    async fn start(
        &self,
        overlay: &Overlay,
        ctx: &NodeCtx,
        a: &Assignments,
        t: &crate::proto::session::AssignedTask,
    ) -> Result<Workload, (TaskState, anyhow::Error)> {
        let mut networks = Vec::new();
        for (nid, ep) in &t.task.endpoints {
            let Some(net) = a.networks.get(nid) else {
                return Err((
                    TaskState::Rejected,
                    anyhow::anyhow!("network {nid} of the task is unknown here"),
                ));
            };
            if let Err(why) = overlay.encrypted.check_attach(net, ctx.vtep, ctx.port) {
                return Err((TaskState::Rejected, anyhow::anyhow!(why)));
            }
            networks.push((net.clone(), ep.clone()));
        }
        // The service's own networks first (eth0), the ingress network last.
        networks.sort_by_key(|(n, _)| n.ingress);
        let task = &t.task;
        // A container's image first: a task whose image cannot be had is
        // rejected with the registry's reason, before anything is made.
        let settings = t
            .container
            .clone()
            .filter(|c| c.runtime == Runtime::Container);
        let image = match &settings {
            Some(_) => Some(
                ctx.containers
                    .image(&t.image)
                    .await
                    .map_err(|e| (TaskState::Rejected, anyhow::Error::from(e)))?,
            ),
            None => None,
        };
        let resolv = overlay.netns_of(&task.id).with_extension("resolv.conf");
        if let Some(dir) = resolv.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                (
                    TaskState::Failed,
                    anyhow::anyhow!("create {}: {e}", dir.display()),
                )
            })?;
        }
        std::fs::write(&resolv, dns::task_resolv_conf(&[])).map_err(|e| {
            (
                TaskState::Failed,
                anyhow::anyhow!("write {}: {e}", resolv.display()),
            )
        })?;
        let mut env: Vec<(String, String)> = t
            .env
            .iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        env.extend([
            ("SHOAL_TASK_ID".to_string(), task.id.clone()),
            ("SHOAL_TASK_NAME".to_string(), task.name()),
            ("SHOAL_SERVICE_NAME".to_string(), task.service_name.clone()),
            ("SHOAL_TASK_SLOT".to_string(), task.slot.to_string()),
            ("SHOAL_NODE_ID".to_string(), ctx.me.clone()),
        ]);
        let mut spec = StartSpec {
            id: task.id.clone(),
            name: task.name(),
            networks,
            argv: t.command.clone(),
            env,
            sandbox: Some((task.id.chars().take(12).collect(), resolv.clone())),
            task: Some(task.id.clone()),
        };
        // Namespace and networks first, then DNS and VIP rules, then the
        // process: it can resolve and connect from its first instruction.
        let argv = std::mem::take(&mut spec.argv);
        let w = overlay
            .start(
                spec.clone(),
                &ctx.me,
                ctx.vtep,
                ctx.port,
                ctx.gossip.as_ref(),
            )
            .await
            .map_err(|e| (TaskState::Failed, e))?;
        self.prepare(&w, &a.services).await;
        spec.argv = argv;
        let launched = match (settings, image) {
            (Some(settings), Some(image)) => {
                let launch = Launch {
                    hostname: &task.id,
                    image,
                    settings: &settings,
                    command: &t.command,
                    env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                    resolv_conf: resolv.clone(),
                    files: &t.files,
                };
                let on_exit = ctx.on_exit.clone();
                ctx.containers
                    .launch(overlay, &w, launch, move |pid, code| on_exit(pid, code))
                    .await
            }
            _ => overlay.launch(&w.id, &spec),
        };
        if launched.is_ok() {
            self.watch_health(overlay, ctx, t, health::Status::Starting)
                .await;
        }
        match launched {
            Ok(w) => Ok(w),
            Err(e) => {
                self.finish(overlay, ctx, &w).await;
                Err((TaskState::Failed, e))
            }
        }
    }

    /// A task's embedded DNS (and the rule that sends 127.0.0.11:53 to it)
    /// and its VIP rules, in its namespace.
    async fn prepare(&self, w: &Workload, services: &[ServiceView]) {
        if let Some(port) = self.ensure_dns(w) {
            // The server listens on a free port so the task keeps :53 for
            // itself (a DNS service); 127.0.0.11:53 is DNATed to it.
            let body = format!(
                "chain output {{\n  type nat hook output priority -100; policy accept;\n  \
                 ip daddr {ip} udp dport 53 dnat to {ip}:{port}\n  \
                 ip daddr {ip} tcp dport 53 dnat to {ip}:{port}\n}}\n",
                ip = DNS_ADDR.ip(),
            );
            self.apply_table(Some(&w.netns), DNS_TABLE, &body, &w.id)
                .await;
        }
        let body = nft::vip_table(&vip_rules(w, services));
        self.apply_table(Some(&w.netns), nft::VIP_TABLE, &body, &w.id)
            .await;
    }

    /// The task's DNS server (started if needed): its port.
    fn ensure_dns(&self, w: &Workload) -> Option<u16> {
        let Ok(mut servers) = self.dns.lock() else {
            return None;
        };
        if let Some(s) = servers.get(&w.id) {
            return Some(s.udp_addr().port());
        }
        let dir = self.directory.clone();
        // Service discovery on the task's own networks; the ingress network
        // only carries the routing mesh (as in Docker).
        let nets: Vec<String> = w
            .attachments
            .iter()
            .filter(|a| !a.network.ingress)
            .map(|a| a.network.id.clone())
            .collect();
        let names = move |name: &str| lookup(&dir, &nets, name);
        let listen = SocketAddr::new(DNS_ADDR.ip(), 0);
        match dns::bind_in_netns(Some(&w.netns), listen)
            .and_then(|(u, t)| dns::spawn(u, t, Arc::new(names), self.upstreams.clone()))
        {
            Ok(s) => {
                let port = s.udp_addr().port();
                servers.insert(w.id.clone(), s);
                Some(port)
            }
            Err(e) => {
                warn!(task = %w.id, "cannot start the embedded DNS: {e}");
                None
            }
        }
    }

    /// The health gate of a task that runs: `Err(why)` once its check
    /// says unhealthy, `Ok(None)` until it first passes, else the message
    /// of its `running` report.
    fn health_gate(&self, id: &str) -> Result<Option<&'static str>, String> {
        let h = self.health.lock().map_err(|_| "health lock".to_string())?;
        match h.get(id) {
            Some(Some(m)) => match m.status() {
                health::Status::Starting => Ok(None),
                health::Status::Healthy => Ok(Some(shoal_model::health::MSG_HEALTHY)),
                health::Status::Unhealthy => Err(m.last_failure()),
            },
            _ => Ok(Some("running")),
        }
    }

    /// Starts the health check of container task `t` (if it has one).
    async fn watch_health(
        &self,
        overlay: &Overlay,
        ctx: &NodeCtx,
        t: &crate::proto::session::AssignedTask,
        status: health::Status,
    ) {
        let id = &t.task.id;
        // Host processes have no check: containerd is not asked for them
        // (connecting to a missing socket would stall this loop).
        let settings = t
            .container
            .as_ref()
            .filter(|c| c.runtime == Runtime::Container);
        let rt = match settings {
            Some(_) => ctx.containers.runtime().await.ok(),
            None => None,
        };
        let monitor = match (settings, rt) {
            (Some(settings), Some(rt)) => match rt.image(&t.image).await {
                Ok(image) => health::resolve(settings, &image).map(|check| {
                    let out = overlay.netns_of(id).with_extension("resolv.health");
                    Monitor::spawn(rt, id.clone(), check, status, out, self.kick.clone())
                }),
                Err(e) => {
                    warn!(task = %id, "no health check: its image: {e}");
                    None
                }
            },
            _ => None,
        };
        if let Ok(mut h) = self.health.lock() {
            h.insert(id.clone(), monitor);
        }
    }

    /// A container adopted after a restart gets its health check again; a
    /// task already running starts healthy (it stays in load balancing).
    async fn adopt_health(
        &self,
        overlay: &Overlay,
        ctx: &NodeCtx,
        t: &crate::proto::session::AssignedTask,
    ) {
        if self.health.lock().is_ok_and(|h| h.contains_key(&t.task.id)) {
            return;
        }
        let status = match t.task.state {
            TaskState::Running => health::Status::Healthy,
            _ => health::Status::Starting,
        };
        self.watch_health(overlay, ctx, t, status).await;
    }

    /// Waits (in the background) until the task at `addr` accepts TCP
    /// connections, at most [`LISTEN_WAIT`], then lets the next pass report
    /// it running: a replacement joins load balancing once it can answer.
    fn await_listening(&self, id: &str, addr: SocketAddr) {
        if let Ok(mut l) = self.listening.lock() {
            l.insert(id.to_string(), false);
        }
        let (id, listening, kick) = (id.to_string(), self.listening.clone(), self.kick.clone());
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + LISTEN_WAIT;
            while tokio::time::Instant::now() < deadline {
                let attempt = tokio::time::timeout(
                    Duration::from_millis(200),
                    tokio::net::TcpStream::connect(addr),
                );
                if matches!(attempt.await, Ok(Ok(_))) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if let Ok(mut l) = listening.lock() {
                if let Some(v) = l.get_mut(&id) {
                    *v = true;
                }
            }
            kick.notify_one();
        });
    }

    fn stop(&self, w: &Workload) {
        let Ok(mut s) = self.stopping.lock() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(w.pid as i32);
        use nix::sys::signal::{kill, Signal};
        match s.get(&w.id).copied() {
            None => {
                info!(task = %w.id, "stopping task: out of load balancing first");
                s.insert(w.id.clone(), (Instant::now(), false));
            }
            Some((t, false)) if t.elapsed() >= STOP_DRAIN => {
                info!(task = %w.id, "stopping task: SIGTERM");
                let _ = kill(pid, Signal::SIGTERM);
                s.insert(w.id.clone(), (t, true));
            }
            Some((t, true)) if t.elapsed() > STOP_DRAIN + STOP_GRACE => {
                if alive(w.pid) {
                    info!(task = %w.id, pid = w.pid, "task did not stop in time: SIGKILL");
                    let _ = kill(pid, Signal::SIGKILL);
                }
            }
            Some(_) => {}
        }
    }

    async fn finish(&self, overlay: &Overlay, ctx: &NodeCtx, w: &Workload) {
        if let Ok(mut d) = self.dns.lock() {
            d.remove(&w.id);
        }
        if let Ok(mut h) = self.health.lock() {
            h.remove(&w.id);
        }
        if w.container.is_some() || w.task.is_some() {
            // A container started but not yet recorded is removed too.
            if ctx.containers.socket_exists() {
                ctx.containers.remove(&w.id).await;
            }
        }
        if let Ok(mut a) = self.applied.lock() {
            a.remove(&w.id);
        }
        overlay.cleanup(&w.id, ctx.gossip.as_ref()).await;
    }

    /// Apply an nft table unless the same body is already in place.
    async fn apply_table(
        &self,
        netns: Option<&std::path::Path>,
        table: &str,
        body: &str,
        key: &str,
    ) {
        let key = format!("{key}/{table}");
        if self
            .applied
            .lock()
            .is_ok_and(|a| a.get(&key).is_some_and(|b| b == body))
        {
            return;
        }
        match nft::apply_table(netns, table, body).await {
            Ok(()) => {
                if let Ok(mut a) = self.applied.lock() {
                    a.insert(key, body.to_string());
                }
            }
            Err(e) => warn!(table, "cannot apply nftables rules: {e}"),
        }
    }
}

/// Keeps only the backends this node can reach: those whose endpoint its
/// gossip already holds (so the overlay here knows their MAC and host). A
/// new task the leader lists before its endpoint arrives would otherwise
/// get connections whose ARP fails, lost for seconds.
fn reachable_backends(services: &mut [ServiceView], gossip: Option<&Gossip>) {
    let Some(g) = gossip else { return };
    let mut known: BTreeMap<String, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for s in services.iter_mut() {
        s.backends.retain(|(net, ip)| {
            known
                .entry(net.clone())
                .or_insert_with(|| {
                    g.entries(&EndpointRecord::table(net))
                        .iter()
                        .filter_map(|e| EndpointRecord::decode(&e.value).ok())
                        .map(|r| r.ip)
                        .collect()
                })
                .contains(ip)
        });
    }
}
