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

use serde::{Deserialize, Serialize};
use shoal_membership::{EndpointRecord, Gossip};
use shoal_netdriver::{Desired, Driver, NetworkSpec, RemoteEndpoint};
use shoal_raft_store::network::{Endpoint, Network};
use tracing::{info, warn};

/// A workload this node runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workload {
    /// Endpoint id (also the workload id).
    pub id: String,
    /// Name given with `--name` (or the id).
    pub name: String,
    /// The network as allocated in the store.
    pub network: Network,
    /// Its endpoint (IP, MAC).
    pub endpoint: Endpoint,
    /// Its network namespace (bind mount under the run dir).
    pub netns: PathBuf,
    /// Host side of its veth (inside the network namespace).
    pub host_veth: String,
    /// Process id of the workload.
    pub pid: u32,
    /// The command.
    pub argv: Vec<String>,
}

/// Workloads and the netdriver of this node.
pub struct Overlay {
    run_dir: PathBuf,
    driver: tokio::sync::Mutex<Option<Driver>>,
    workloads: Mutex<BTreeMap<String, Workload>>,
    /// Wakes the reconciler.
    pub kick: tokio::sync::Notify,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay").finish_non_exhaustive()
    }
}

impl Overlay {
    /// Workload records live in `<run_dir>/workloads/`.
    pub fn new(run_dir: &Path) -> Overlay {
        let overlay = Overlay {
            run_dir: run_dir.to_owned(),
            driver: tokio::sync::Mutex::new(None),
            workloads: Mutex::new(BTreeMap::new()),
            kick: tokio::sync::Notify::new(),
        };
        // Adopt workloads that survived a daemon restart.
        if let Ok(dir) = std::fs::read_dir(overlay.dir()) {
            for e in dir.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "json") {
                    if let Some(w) = std::fs::read(&p)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Workload>(&b).ok())
                    {
                        if let Ok(mut m) = overlay.workloads.lock() {
                            m.insert(w.id.clone(), w);
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

    async fn with_driver<R>(
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

    /// Start a workload: its namespace, a veth into the network (which is
    /// created first), the process itself, and its gossip record.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        &self,
        network: Network,
        endpoint: Endpoint,
        name: String,
        argv: Vec<String>,
        me: &str,
        vtep: Ipv4Addr,
        port: u16,
        gossip: Option<&Gossip>,
    ) -> anyhow::Result<Workload> {
        let id = endpoint.id.clone();
        std::fs::create_dir_all(self.dir())?;
        let netns = self.dir().join(&id);
        // The network must exist in the kernel before a veth can join it.
        let mut nets = self.desired_networks();
        if !nets.iter().any(|n| n.id == network.id) {
            nets.push(network.clone());
        }
        let desired = desired(&nets, vtep, port, gossip, me);
        let prefix = network.subnet.prefix_len();
        let (ip, mac, gw) = (endpoint.ip, endpoint.mac, network.gateway);
        let netns2 = netns.clone();
        let nid = network.id.clone();
        let host_veth = self
            .with_driver(async move |d: &mut Driver| {
                d.reconcile(&desired).await?;
                shoal_netdriver::create_netns(&netns2)?;
                let ipnet = ipnet::Ipv4Net::new(ip, prefix)?;
                Ok(d.attach(&nid, &netns2, ipnet, mac, gw).await?)
            })
            .await?;
        let log = std::fs::File::create(self.dir().join(format!("{id}.log")))?;
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .arg("--")
            .args(&argv)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let w = Workload {
            id: id.clone(),
            name,
            network,
            endpoint,
            netns,
            host_veth,
            pid: child.id(),
            argv,
        };
        std::fs::write(
            self.dir().join(format!("{id}.json")),
            serde_json::to_vec_pretty(&w)?,
        )?;
        if let Ok(mut m) = self.workloads.lock() {
            m.insert(id.clone(), w.clone());
        }
        if let Some(g) = gossip {
            publish(g, &w, me, vtep);
        }
        // Reap the child when it exits (the exit watcher cleans up).
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        info!(workload = %id, ip = %w.endpoint.ip, network = %w.network.name, "workload started");
        self.kick.notify_one();
        Ok(w)
    }

    /// Remove a workload whose process is gone (or that was stopped):
    /// gossip record, veth, namespace, record file. Returns it.
    pub async fn cleanup(&self, id: &str, gossip: Option<&Gossip>) -> Option<Workload> {
        let w = self.workloads.lock().ok()?.remove(id)?;
        if let Some(g) = gossip {
            g.delete(&EndpointRecord::table(&w.network.id), &w.id);
        }
        let (nid, veth, ns) = (w.network.id.clone(), w.host_veth.clone(), w.netns.clone());
        let r = self
            .with_driver(async move |d: &mut Driver| {
                let _ = d.detach(&nid, &veth).await;
                shoal_netdriver::remove_netns(&ns)?;
                Ok(())
            })
            .await;
        if let Err(e) = r {
            warn!(workload = %id, "cleanup: {e:#}");
        }
        let _ = std::fs::remove_file(self.dir().join(format!("{id}.json")));
        info!(workload = %id, "workload removed");
        self.kick.notify_one();
        Some(w)
    }

    /// Workloads whose process has exited.
    pub fn exited(&self) -> Vec<String> {
        self.list()
            .into_iter()
            .filter(|w| !alive(w.pid))
            .map(|w| w.id)
            .collect()
    }

    fn desired_networks(&self) -> Vec<Network> {
        let mut nets: BTreeMap<String, Network> = BTreeMap::new();
        for w in self.list() {
            nets.insert(w.network.id.clone(), w.network);
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
            for w in self.list() {
                let table = EndpointRecord::table(&w.network.id);
                if !g.entries(&table).iter().any(|e| e.key == w.id) {
                    publish(g, &w, me, vtep);
                }
            }
        }
        let desired = desired(&nets, vtep, port, gossip, me);
        let report = self
            .with_driver(async move |d: &mut Driver| Ok(d.reconcile(&desired).await?))
            .await?;
        if !report.is_noop() {
            info!(?report, "overlay reconciled");
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

fn publish(g: &Gossip, w: &Workload, me: &str, vtep: Ipv4Addr) {
    let rec = EndpointRecord {
        network: w.network.id.clone(),
        ip: w.endpoint.ip,
        mac: w.endpoint.mac,
        vtep,
        owner: me.to_string(),
    };
    g.put(&EndpointRecord::table(&w.network.id), &w.id, rec.encode());
}

fn desired(
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
