//! Overlay networks on this node: workloads started with `shoal run`, and
//! the reconciler that keeps the kernel (netdriver) in step with the
//! networks those workloads use and the endpoint tables gossip replicates.
//!
//! Data flow: `shoal run` -> endpoint allocated in the store (IP, MAC) ->
//! workload namespace + veth into the network's bridge -> endpoint record
//! published in gossip (`ep/<network id>`) -> every node with a workload on
//! that network programs FDB (MAC -> VTEP) and neighbour (IP -> MAC)
//! entries for it. A node that dies takes its gossip entries with it, so
//! its endpoints vanish from the other nodes' kernels.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use shoal_api::{Attachment, Workload};
use shoal_membership::{EndpointRecord, Gossip};
use shoal_model::network::{Endpoint, Network};
use shoal_netdriver::GwBridge;
use shoal_netdriver::{Desired, Driver, NetworkSpec, RemoteEndpoint};

use tracing::{info, warn};

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct StartSpec {
    /// Workload id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Networks and endpoints, in device order.
    pub networks: Vec<(Network, Endpoint)>,
    /// Command; empty for a sandbox (no process).
    pub argv: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Host name (own UTS namespace) and resolv.conf (own mount namespace).
    pub sandbox: Option<(String, PathBuf)>,
    /// The service task it is.
    pub task: Option<String>,
}

/// Workloads and the netdriver of this node.
pub struct Overlay {
    run_dir: PathBuf,
    /// Where the egress bridge's local network record is (see `gwnet`).
    data_dir: PathBuf,
    driver: tokio::sync::Mutex<Option<Driver>>,
    gw: tokio::sync::Mutex<Option<GwBridge>>,
    workloads: Mutex<BTreeMap<String, Workload>>,
    /// Networks of workloads being started (not yet in their record): the
    /// reconciler must not remove them meanwhile.
    pending: Mutex<BTreeMap<String, Vec<Network>>>,
    /// Exit codes of children that ended (by pid).
    exits: std::sync::Arc<Mutex<BTreeMap<u32, i32>>>,
    /// Wakes the reconciler.
    pub kick: tokio::sync::Notify,
    /// The userspace data path of encrypted networks.
    pub encrypted: super::encrypted::Encrypted,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay").finish_non_exhaustive()
    }
}

impl Overlay {
    /// Workload records live in `<run_dir>/workloads/`.
    pub fn new(run_dir: &Path, data_dir: &Path, encrypted: super::encrypted::Encrypted) -> Overlay {
        let overlay = Overlay {
            encrypted,
            run_dir: run_dir.to_owned(),
            data_dir: data_dir.to_owned(),
            driver: tokio::sync::Mutex::new(None),
            gw: tokio::sync::Mutex::new(None),
            workloads: Mutex::new(BTreeMap::new()),
            pending: Mutex::new(BTreeMap::new()),
            exits: Default::default(),
            kick: tokio::sync::Notify::new(),
        };
        // Adopt workloads that survived a daemon restart.
        if let Ok(dir) = std::fs::read_dir(overlay.dir()) {
            for e in dir.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "json") {
                    match std::fs::read(&p)
                        .map_err(anyhow::Error::from)
                        .and_then(|b| Ok(serde_json::from_slice::<Workload>(&b)?))
                    {
                        Ok(w) => {
                            if let Ok(mut m) = overlay.workloads.lock() {
                                m.insert(w.id.clone(), w);
                            }
                        }
                        Err(e) => {
                            warn!(path = %p.display(), "ignoring unreadable workload record: {e:#}")
                        }
                    }
                }
            }
        }
        overlay
    }

    fn dir(&self) -> PathBuf {
        self.run_dir.join("workloads")
    }

    /// Workloads running here.
    pub fn list(&self) -> Vec<Workload> {
        self.workloads
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// A workload by exact id.
    pub fn get(&self, id: &str) -> Option<Workload> {
        self.workloads.lock().ok()?.get(id).cloned()
    }

    /// Find a workload by id, id prefix or name.
    pub fn find(&self, key: &str) -> Option<Workload> {
        let all = self.list();
        all.iter()
            .find(|w| w.id == key || w.name == key)
            .or_else(|| {
                let mut m = all.iter().filter(|w| w.id.starts_with(key));
                match (m.next(), m.next()) {
                    (Some(w), None) => Some(w),
                    _ => None,
                }
            })
            .cloned()
    }

    pub(super) async fn with_driver<R>(
        &self,
        f: impl AsyncFnOnce(&mut Driver) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        let mut guard = self.driver.lock().await;
        if guard.is_none() {
            *guard = Some(Driver::new(&self.run_dir.join("overlay")).await?);
        }
        match guard.as_mut() {
            Some(d) => f(d).await,
            None => anyhow::bail!("netdriver unavailable"),
        }
    }

    /// Run `f` with the egress bridge (created on first use).
    pub async fn with_gw<R>(
        &self,
        f: impl AsyncFnOnce(&mut GwBridge) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        let mut guard = self.gw.lock().await;
        if guard.is_none() {
            let spec =
                super::gwnet::spec(&self.data_dir).map_err(|e| anyhow::anyhow!(e.message))?;
            *guard = Some(GwBridge::ensure(&self.run_dir, &spec).await?);
        }
        match guard.as_mut() {
            Some(g) => f(g).await,
            None => anyhow::bail!("gwbridge unavailable"),
        }
    }

    /// Path of a workload's namespace.
    pub fn netns_of(&self, id: &str) -> PathBuf {
        self.dir().join(id)
    }

    /// Start a workload: its namespace, a veth into each network (created
    /// first), one into `shoal_gwbridge` unless every network is
    /// `--internal`, the process itself, and its gossip records. On error
    /// everything made so far is removed again.
    pub async fn start(
        &self,
        spec: StartSpec,
        me: &str,
        vtep: Ipv4Addr,
        port: u16,
        gossip: Option<&Gossip>,
    ) -> anyhow::Result<Workload> {
        let mut spec = spec;
        // The record needs the network's data-path fields, not its
        // (cluster-wide, growing) endpoint list.
        for (n, _) in spec.networks.iter_mut() {
            n.endpoints.clear();
        }
        let id = spec.id.clone();
        std::fs::create_dir_all(self.dir())?;
        let netns = self.netns_of(&id);
        let mut w = Workload {
            id: id.clone(),
            name: spec.name.clone(),
            attachments: Vec::new(),
            network: spec.networks.first().map(|(n, _)| n.clone()),
            endpoint: spec.networks.first().map(|(_, e)| e.clone()),
            gw_ip: None,
            netns: netns.clone(),
            pid: 0,
            argv: spec.argv.clone(),
            task: spec.task.clone(),
            container: None,
            image: None,
            state: String::new(),
        };
        if let Ok(mut m) = self.workloads.lock() {
            m.insert(id.clone(), w.clone());
        }
        if let Ok(mut p) = self.pending.lock() {
            p.insert(
                id.clone(),
                spec.networks.iter().map(|(n, _)| n.clone()).collect(),
            );
        }
        let result = self
            .start_inner(&mut w, &spec, me, vtep, port, gossip)
            .await;
        // The record (with its attachments) first, then the pending entry
        // goes: the networks are never unclaimed in between.
        if let Ok(mut m) = self.workloads.lock() {
            m.insert(id.clone(), w.clone());
        }
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&id);
        }
        match result {
            Ok(()) => {
                self.kick.notify_one();
                Ok(w)
            }
            Err(e) => {
                if w.pid != 0 {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(w.pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                self.cleanup(&id, gossip).await;
                Err(e)
            }
        }
    }

    async fn start_inner(
        &self,
        w: &mut Workload,
        spec: &StartSpec,
        me: &str,
        vtep: Ipv4Addr,
        port: u16,
        gossip: Option<&Gossip>,
    ) -> anyhow::Result<()> {
        // The networks must exist in the kernel before veths can join them;
        // wait (bounded) for the gossip view so that reconcile does not
        // remove the remote entries running workloads use.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !gossip.is_some_and(gossip_ready) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut nets = self.desired_networks();
        for (n, _) in &spec.networks {
            if !nets.iter().any(|x| x.id == n.id) {
                nets.push(n.clone());
            }
        }
        let desired = desired(&nets, vtep, port, gossip, me);
        shoal_netdriver::create_netns(&w.netns)?;
        let egress = spec.networks.iter().any(|(n, _)| !n.internal);
        let ns = w.netns.clone();
        let wanted = spec.networks.clone();
        let attachments = self
            .with_driver(async move |d: &mut Driver| {
                let started = std::time::Instant::now();
                match d.reconcile(&desired).await {
                    Ok(r) => crate::metrics::global().observe_report(&r),
                    Err(e) => {
                        crate::metrics::global().observe_reconcile(started.elapsed(), 0, false);
                        return Err(e.into());
                    }
                }
                // An encrypted network's `dp0` before the workload's veth,
                // which takes its offload limit from the bridge.
                if self.encrypted.sync(d, &nets, vtep, port, gossip).await {
                    d.reconcile(&desired).await?;
                }
                let mut out = Vec::new();
                for (i, (net, ep)) in wanted.into_iter().enumerate() {
                    let ifname = format!("eth{i}");
                    let ipnet = ipnet::Ipv4Net::new(ep.ip, net.subnet.prefix_len())?;
                    // With egress the default route goes via the gwbridge;
                    // an internal-only workload has none (as in Docker).
                    let host_veth = d
                        .attach_as(&net.id, &ns, &ifname, ipnet, ep.mac, net.gateway, false)
                        .await?;
                    out.push(Attachment {
                        network: net,
                        endpoint: ep,
                        host_veth,
                        ifname,
                    });
                }
                Ok(out)
            })
            .await;
        match attachments {
            Ok(a) => w.attachments = a,
            Err(e) => return Err(e),
        }
        if let Ok(mut m) = self.workloads.lock() {
            m.insert(w.id.clone(), w.clone());
        }
        if egress {
            let (ns, key) = (w.netns.clone(), w.id.clone());
            let gw = self
                .with_gw(async move |g: &mut GwBridge| Ok(g.attach(&ns, &key).await?))
                .await?;
            w.gw_ip = Some(gw.ip.addr());
        }
        if let Some(g) = gossip {
            publish(g, w, me, vtep);
        }
        if !spec.argv.is_empty() {
            w.pid = self.spawn(w, spec)?;
        }
        self.save(w)?;
        info!(workload = %w.id, name = %w.name, pid = w.pid, "workload started");
        Ok(())
    }

    /// Start the process of a workload started without one (`start` with
    /// an empty `argv`, then whatever must be ready first): spawn it and
    /// record its pid. On error the caller cleans up.
    pub fn launch(&self, id: &str, spec: &StartSpec) -> anyhow::Result<Workload> {
        let mut w = self
            .get(id)
            .ok_or_else(|| anyhow::anyhow!("workload {id} is not here"))?;
        w.argv = spec.argv.clone();
        w.pid = self.spawn(&w, spec)?;
        self.save(&w)?;
        if let Ok(mut m) = self.workloads.lock() {
            m.insert(id.to_string(), w.clone());
        }
        info!(workload = %id, name = %w.name, pid = w.pid, "process started");
        Ok(w)
    }

    /// Record the container a workload's process runs in (started by the
    /// executor through containerd) and persist it.
    pub fn set_container(
        &self,
        id: &str,
        pid: u32,
        argv: Vec<String>,
        image: String,
    ) -> anyhow::Result<Workload> {
        let mut w = self
            .get(id)
            .ok_or_else(|| anyhow::anyhow!("workload {id} is not here"))?;
        w.pid = pid;
        w.argv = argv;
        w.container = Some(id.to_string());
        w.image = Some(image);
        self.save(&w)?;
        if let Ok(mut m) = self.workloads.lock() {
            m.insert(id.to_string(), w.clone());
        }
        info!(workload = %id, pid, "container started");
        Ok(w)
    }

    /// A container's exit status, from its waiter.
    pub fn record_exit(&self, pid: u32, code: i32) {
        if let Ok(mut m) = self.exits.lock() {
            m.insert(pid, code);
        }
        self.kick.notify_one();
    }

    /// Records exit statuses into this overlay from a waiter that may
    /// outlive a borrow of it (standalone containers).
    pub fn exit_recorder(&self) -> impl Fn(u32, i32) + Send + 'static {
        let exits = self.exits.clone();
        move |pid, code| {
            if let Ok(mut m) = exits.lock() {
                m.insert(pid, code);
            }
        }
    }

    /// Where a workload's stdout and stderr go.
    pub fn log_of(&self, id: &str) -> PathBuf {
        self.dir().join(format!("{id}.log"))
    }

    /// Persist a workload's record (a restarted daemon adopts it).
    fn save(&self, w: &Workload) -> anyhow::Result<()> {
        std::fs::write(
            self.dir().join(format!("{}.json", w.id)),
            serde_json::to_vec_pretty(w)?,
        )?;
        Ok(())
    }

    /// Start a host process for the workload (see [`super::host`]); a
    /// reaper thread records its exit code.
    fn spawn(&self, w: &Workload, spec: &StartSpec) -> anyhow::Result<u32> {
        super::host::spawn(w, spec, &self.log_of(&w.id), self.exits.clone())
    }

    /// Remove a workload whose process is gone (or that was stopped):
    /// gossip records, veths, gwbridge lease, namespace, record file.
    pub async fn cleanup(&self, id: &str, gossip: Option<&Gossip>) -> Option<Workload> {
        let w = self.workloads.lock().ok()?.remove(id)?;
        if let Some(g) = gossip {
            for a in &w.attachments {
                g.delete(&EndpointRecord::table(&a.network.id), &w.id);
            }
        }
        let (atts, ns) = (w.attachments.clone(), w.netns.clone());
        let r = self
            .with_driver(async move |d: &mut Driver| {
                for a in &atts {
                    let _ = d.detach(&a.network.id, &a.host_veth).await;
                }
                shoal_netdriver::remove_netns(&ns)?;
                Ok(())
            })
            .await;
        if let Err(e) = r {
            warn!(workload = %id, "cleanup: {e:#}");
        }
        if w.gw_ip.is_some() {
            let key = w.id.clone();
            if let Err(e) = self
                .with_gw(async move |g: &mut GwBridge| Ok(g.detach(&key).await?))
                .await
            {
                warn!(workload = %id, "cleanup gwbridge: {e:#}");
            }
        }
        let _ = std::fs::remove_file(self.dir().join(format!("{id}.json")));
        shoal_runtime::logfile::remove(&self.log_of(id));
        // The container's /etc files (see `Containers::run`).
        for f in [
            "resolv.conf",
            "resolv.hosts",
            "resolv.hostname",
            "resolv.health",
        ] {
            let _ = std::fs::remove_file(self.netns_of(id).with_extension(f));
        }
        // Its configs and secrets.
        let _ = std::fs::remove_dir_all(self.netns_of(id).with_extension("resolv.files"));
        info!(workload = %id, "workload removed");
        self.kick.notify_one();
        Some(w)
    }

    /// Publish every workload's endpoints (right after gossip starts, so a
    /// restarted daemon re-announces before peers echo its old entries).
    pub fn publish_all(&self, g: &Gossip, me: &str, vtep: Ipv4Addr) {
        for w in self.list() {
            publish(g, &w, me, vtep);
        }
        self.kick.notify_one();
    }

    /// Exit code of a workload's process once it ended (`None`: still
    /// running, or not our child).
    pub fn exit_code(&self, pid: u32) -> Option<i32> {
        self.exits.lock().ok()?.get(&pid).copied()
    }

    /// The workloads as `shoal ps` shows them, with their state.
    pub fn ps(&self) -> Vec<Workload> {
        let mut list = self.list();
        for w in &mut list {
            w.state = if w.pid == 0 && w.container.is_none() {
                "sandbox".into()
            } else if let Some(code) = self.exit_code(w.pid) {
                format!("exited ({code})")
            } else if self.ended(w) {
                "exited".into()
            } else {
                "running".into()
            };
        }
        list
    }

    /// Whether a workload's process has ended: a container once its
    /// waiter recorded the exit status, a host process once its pid is gone.
    pub fn ended(&self, w: &Workload) -> bool {
        match w.container {
            Some(_) => self.exit_code(w.pid).is_some(),
            None => w.pid == 0 || !alive(w.pid),
        }
    }

    /// Workloads whose process has exited.
    /// (Service tasks are the executor's business, not listed here.)
    pub fn exited(&self) -> Vec<String> {
        self.list()
            .into_iter()
            .filter(|w| w.task.is_none() && w.pid != 0 && self.ended(w))
            .map(|w| w.id)
            .collect()
    }

    pub(super) fn desired_networks(&self) -> Vec<Network> {
        let mut nets: BTreeMap<String, Network> = BTreeMap::new();
        for w in self.list() {
            for a in w.attachments {
                nets.insert(a.network.id.clone(), a.network);
            }
        }
        if let Ok(p) = self.pending.lock() {
            for n in p.values().flatten() {
                nets.entry(n.id.clone()).or_insert_with(|| n.clone());
            }
        }
        nets.into_values().collect()
    }

    /// Make the kernel match the workloads' networks and the gossip
    /// endpoint tables; also (re)publish this node's endpoint records.
    pub async fn reconcile(
        &self,
        me: &str,
        vtep: Ipv4Addr,
        port: u16,
        gossip: Option<&Gossip>,
    ) -> anyhow::Result<()> {
        let nets = self.desired_networks();
        if nets.is_empty() && self.driver.lock().await.is_none() {
            return Ok(()); // nothing here, nothing to clean either
        }
        if let Some(g) = gossip {
            // Our own entries without a workload here (it ended while the
            // daemon was down) go.
            let ours: std::collections::BTreeSet<String> =
                self.list().into_iter().map(|w| w.id).collect();
            for table in g.tables().into_iter().filter(|t| t.starts_with("ep/")) {
                for e in g.entries(&table) {
                    if e.owner == me && !ours.contains(&e.key) {
                        g.delete(&table, &e.key);
                    }
                }
            }
            for w in self.list() {
                let missing = w.attachments.iter().any(|a| {
                    !g.entries(&EndpointRecord::table(&a.network.id))
                        .iter()
                        .any(|e| e.key == w.id)
                });
                if missing {
                    publish(g, &w, me, vtep);
                }
            }
        }
        // Right after a daemon restart the gossip view is empty until the
        // first exchange with a peer: reconciling then would delete every
        // remote entry and cut running workloads off. Wait for it.
        if !gossip.is_some_and(gossip_ready) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        // Desired state is read under the driver lock: a workload started
        // meanwhile (which holds the lock while it creates its networks)
        // is then always part of it.
        let report = self
            .with_driver(async |d: &mut Driver| {
                let nets = self.desired_networks();
                let desired = desired(&nets, vtep, port, gossip, me);
                let report = d.reconcile(&desired).await?;
                // A TAP just attached gets its MTU and link state now.
                if self.encrypted.sync(d, &nets, vtep, port, gossip).await {
                    d.reconcile(&desired).await?;
                }
                Ok(report)
            })
            .await;
        let metrics = crate::metrics::global();
        let report = match report {
            Ok(r) => {
                metrics.observe_report(&r);
                r
            }
            Err(e) => {
                metrics.observe_reconcile(started.elapsed(), 0, false);
                return Err(e);
            }
        };
        if !report.is_noop() {
            info!(?report, "overlay reconciled");
        }
        if let Some(g) = gossip {
            super::netstatus::publish(self, g, me, vtep, port).await;
        }
        Ok(())
    }

    /// Kernel vs desired differences, for `network inspect --verbose`.
    pub async fn diff(
        &self,
        me: &str,
        vtep: Ipv4Addr,
        port: u16,
        gossip: Option<&Gossip>,
    ) -> anyhow::Result<Vec<(String, Vec<String>)>> {
        let desired = desired(&self.desired_networks(), vtep, port, gossip, me);
        self.with_driver(async move |d: &mut Driver| Ok(d.diff(&desired).await?))
            .await
    }
}

/// How long a gossip view without any exchange with a peer is distrusted
/// (a lone node never has one).
const GOSSIP_TRUST_AFTER: Duration = Duration::from_secs(10);

/// Whether this node's gossip view can be trusted for deletions: it has
/// completed an exchange with a peer, or has been up a while.
fn gossip_ready(g: &Gossip) -> bool {
    if g.metrics().syncs_total > 0 {
        return true;
    }
    static SEEN: Mutex<Option<(u64, std::time::Instant)>> = Mutex::new(None);
    let Ok(mut seen) = SEEN.lock() else {
        return true;
    };
    let gen = g.generation();
    match *seen {
        Some((g0, since)) if g0 == gen => since.elapsed() >= GOSSIP_TRUST_AFTER,
        _ => {
            *seen = Some((gen, std::time::Instant::now()));
            false
        }
    }
}

fn publish(g: &Gossip, w: &Workload, me: &str, vtep: Ipv4Addr) {
    for a in &w.attachments {
        let rec = EndpointRecord {
            network: a.network.id.clone(),
            ip: a.endpoint.ip,
            mac: a.endpoint.mac,
            vtep,
            owner: me.to_string(),
        };
        g.put(&EndpointRecord::table(&a.network.id), &w.id, rec.encode());
    }
}

pub(super) fn desired(
    nets: &[Network],
    vtep: Ipv4Addr,
    port: u16,
    gossip: Option<&Gossip>,
    me: &str,
) -> Desired {
    Desired {
        networks: nets
            .iter()
            .map(|n| {
                let remote = gossip
                    .map(|g| {
                        g.entries(&EndpointRecord::table(&n.id))
                            .iter()
                            .filter(|e| e.owner != me)
                            .filter_map(|e| EndpointRecord::decode(&e.value).ok())
                            .map(|r| RemoteEndpoint {
                                ip: r.ip,
                                mac: r.mac,
                                vtep: r.vtep,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    NetworkSpec {
                        id: n.id.clone(),
                        vni: n.vni,
                        subnet: n.subnet,
                        gateway: n.gateway,
                        mtu: n.mtu,
                        local_vtep: vtep,
                        port,
                        encrypted: n.encrypted,
                    },
                    remote,
                )
            })
            .collect(),
    }
}

/// Whether process `pid` exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// How often the reconciler runs without a trigger (a hand-deleted kernel
/// entry comes back within this).
pub const RECONCILE_EVERY: Duration = Duration::from_secs(2);
