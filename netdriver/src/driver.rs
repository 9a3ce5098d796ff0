//! The async shell around the planner: owns one netlink connection per
//! network namespace (plus one in the daemon's own namespace, where VXLAN
//! devices are born), dumps, plans, applies. Short and boring on purpose;
//! decisions live in `plan`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ipnet::Ipv4Net;
use tracing::{debug, info, warn};

use crate::kernel::{self, Applied, Target};
use crate::netns::{self, NsConn};
use crate::plan::{
    self, KernelState, NetworkDesired, Op, ENCRYPTED_OVERHEAD, TAP, VXLAN, VXLAN_OVERHEAD,
};
use crate::{Desired, NetError, ReconcileReport};

/// MTU assumed for the underlay when the interface holding the local VTEP
/// cannot be found.
const FALLBACK_UNDERLAY_MTU: u32 = 1500;

/// The reconciler for one node. Holds the namespaces it created or adopted;
/// everything it knows is also in the kernel and the run dir, so dropping it
/// and calling [`Driver::new`] again (a daemon restart) loses nothing.
pub struct Driver {
    run_dir: PathBuf,
    own: NsConn,
    networks: BTreeMap<String, NsConn>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("run_dir", &self.run_dir)
            .field("networks", &self.networks.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn netns_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("netns")
}

impl Driver {
    /// Open the driver on `run_dir`. Namespaces are bind-mounted at
    /// `<run_dir>/netns/<network id>` (never `/run/netns`); those already
    /// there are adopted, so a restarted daemon converges without
    /// recreating anything. Files there that are not live namespace mounts
    /// (left by a crash between creating the file and mounting) are removed.
    /// Must run inside a tokio runtime, in the daemon's network namespace.
    pub async fn new(run_dir: &Path) -> Result<Driver, NetError> {
        let dir = netns_dir(run_dir);
        std::fs::create_dir_all(&dir).map_err(|source| NetError::Io {
            path: dir.clone(),
            op: "create run dir",
            source,
        })?;
        let own = netns::connect_here()?;
        let mut networks = BTreeMap::new();
        let entries = std::fs::read_dir(&dir).map_err(|source| NetError::Io {
            path: dir.clone(),
            op: "list namespaces",
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| NetError::Io {
                path: dir.clone(),
                op: "list namespaces",
                source,
            })?;
            let path = entry.path();
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                warn!(path = %path.display(), "ignoring non-UTF-8 file in the namespace dir");
                continue;
            };
            match netns::connect(&path).await {
                Ok(conn) => {
                    debug!(network = %id, "adopted namespace");
                    networks.insert(id, conn);
                }
                Err(NetError::Namespace {
                    op: "setns",
                    source: nix::Error::EINVAL,
                    ..
                }) => {
                    warn!(path = %path.display(), "not a namespace mount; removing stale file");
                    netns::remove_netns(&path)?;
                }
                Err(e) => return Err(e),
            }
        }
        info!(run_dir = %run_dir.display(), adopted = networks.len(), "netdriver started");
        Ok(Driver {
            run_dir: run_dir.to_path_buf(),
            own,
            networks,
        })
    }

    /// Path of a network's namespace, for attaching workloads (a veth into
    /// its `br0`) and for `nsenter --net=`.
    pub fn netns_path(&self, network_id: &str) -> PathBuf {
        netns_dir(&self.run_dir).join(network_id)
    }

    /// Ids of the networks whose namespaces this driver holds (created or
    /// adopted), for status output.
    pub fn networks(&self) -> Vec<String> {
        self.networks.keys().cloned().collect()
    }

    /// The MTU of the underlay interface holding `local`.
    async fn underlay_mtu(&self, cache: &mut BTreeMap<Ipv4Addr, u32>, local: Ipv4Addr) -> u32 {
        if let Some(m) = cache.get(&local) {
            return *m;
        }
        let underlay = match kernel::underlay_mtu(&self.own.handle, local).await {
            Some(m) => m,
            None => {
                warn!(%local, "no interface holds the local VTEP; assuming underlay MTU {FALLBACK_UNDERLAY_MTU}");
                FALLBACK_UNDERLAY_MTU
            }
        };
        cache.insert(local, underlay);
        underlay
    }

    async fn resolve(&self, desired: &Desired) -> (Vec<NetworkDesired>, Vec<NetError>) {
        let mut cache = BTreeMap::new();
        let mut out = Vec::new();
        let mut errors = Vec::new();
        let mut seen = BTreeSet::new();
        for (spec, remotes) in &desired.networks {
            if !seen.insert(spec.id.as_str()) {
                errors.push(NetError::DuplicateNetwork {
                    network: spec.id.clone(),
                });
                continue;
            }
            // VXLAN: the option as given, else underlay - 50. Encrypted:
            // underlay - 78 caps the option (see `NetworkDesired::resolve`).
            let default_mtu = match (spec.mtu, spec.encrypted) {
                (Some(m), false) => m,
                (_, encrypted) => {
                    let overhead = if encrypted {
                        ENCRYPTED_OVERHEAD
                    } else {
                        VXLAN_OVERHEAD
                    };
                    let u = self.underlay_mtu(&mut cache, spec.local_vtep).await;
                    u.saturating_sub(overhead).max(68)
                }
            };
            match NetworkDesired::resolve(spec, remotes, default_mtu) {
                Ok(d) => out.push(d),
                Err(e) => errors.push(e),
            }
        }
        (out, errors)
    }

    /// Make the kernel match `desired` for every network; networks not in
    /// `desired` (but adopted/created by this driver) are removed with
    /// their namespace. Idempotent; only the difference is applied. Every
    /// network is attempted even when one fails (an invalid spec leaves
    /// that network's kernel state alone); the first failure is returned.
    pub async fn reconcile(&mut self, desired: &Desired) -> Result<ReconcileReport, NetError> {
        let start = Instant::now();
        let mut report = ReconcileReport::default();
        let (resolved, mut errors) = self.resolve(desired).await;
        let wanted: BTreeSet<&str> = desired
            .networks
            .iter()
            .map(|(s, _)| s.id.as_str())
            .collect();
        let gone: Vec<String> = self
            .networks
            .keys()
            .filter(|id| !wanted.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            match self.remove_network(&id).await {
                Ok(()) => report.networks_removed += 1,
                Err(e) => errors.push(e),
            }
        }
        let mut applied = Applied::default();
        for d in &resolved {
            if let Err(e) = self.reconcile_network(d, &mut report, &mut applied).await {
                warn!(network = %d.id, error = %e, "reconcile failed");
                errors.push(e);
            }
        }
        report.fdb_added = applied.fdb_added;
        report.fdb_removed = applied.fdb_removed;
        report.fdb_replaced = applied.fdb_replaced;
        report.neigh_added = applied.neigh_added;
        report.neigh_removed = applied.neigh_removed;
        report.neigh_replaced = applied.neigh_replaced;
        report.duration = start.elapsed();
        if !report.is_noop() {
            info!(?report, "reconciled");
        }
        let failed = errors.len();
        match errors.into_iter().next() {
            None => Ok(report),
            Some(e) if failed == 1 => Err(e),
            Some(first) => Err(NetError::Networks {
                failed,
                first: Box::new(first),
            }),
        }
    }

    async fn reconcile_network(
        &mut self,
        d: &NetworkDesired,
        report: &mut ReconcileReport,
        applied: &mut Applied,
    ) -> Result<(), NetError> {
        let path = self.netns_path(&d.id);
        if self.networks.contains_key(&d.id) && !path.exists() {
            // Someone removed the bind mount: our sockets keep a namespace
            // nobody else can reach. Start over with a fresh one.
            // Delete its vx0 through our socket first: the VNI stays taken
            // in the daemon's namespace until that device is gone.
            warn!(network = %d.id, "namespace file vanished; recreating the network");
            if let Some(old) = self.networks.remove(&d.id) {
                let _ = kernel::delete_link(&d.id, &old.handle, VXLAN).await;
            }
        }
        let kernel = match self.networks.get(&d.id) {
            Some(conn) => kernel::dump(&d.id, &conn.handle).await?,
            None => KernelState::default(),
        };
        let ops = plan::plan_network(d, &kernel);
        if ops.is_empty() {
            return Ok(());
        }
        debug!(network = %d.id, ops = ops.len(), "applying plan");
        if ops.contains(&Op::CreateNamespace) {
            netns::remove_netns(&path)?;
            let conn = netns::create_and_connect(&path).await?;
            self.networks.insert(d.id.clone(), conn);
            report.networks_created += 1;
        }
        let Some(conn) = self.networks.get(&d.id) else {
            return Err(NetError::UnknownNetwork {
                network: d.id.clone(),
            });
        };
        report.links_changed += ops
            .iter()
            .filter(|o| !o.is_entry() && **o != Op::CreateNamespace)
            .count();
        let target = Target {
            network: &d.id,
            ns_path: &path,
            net: &conn.handle,
            raw: &conn.raw,
            own: &self.own.handle,
        };
        kernel::apply(&target, &ops, applied).await
    }

    async fn remove_network(&mut self, id: &str) -> Result<(), NetError> {
        if let Some(conn) = self.networks.remove(id) {
            // Deleting vx0 first closes its UDP socket in the daemon's
            // namespace now, not whenever the kernel tears the namespace down.
            if let Err(e) = kernel::delete_link(id, &conn.handle, VXLAN).await {
                warn!(network = %id, error = %e, "could not delete vx0 before removing the namespace");
            }
            drop(conn);
        }
        netns::remove_netns(&self.netns_path(id))?;
        info!(network = %id, "network removed");
        Ok(())
    }

    /// Attach a workload as `eth0` with the default route via `gateway`:
    /// [`Driver::attach_as`] with `"eth0"` and `default_route = true`.
    pub async fn attach(
        &mut self,
        network_id: &str,
        workload_netns: &Path,
        ip: Ipv4Net,
        mac: [u8; 6],
        gateway: Ipv4Addr,
    ) -> Result<String, NetError> {
        self.attach_as(network_id, workload_netns, "eth0", ip, mac, gateway, true)
            .await
    }

    /// Attach a workload: create a veth pair, one end into the network
    /// namespace on `br0`, the other moved into `workload_netns` (a
    /// namespace bind-mount path) as `ifname` with `ip/prefix`, MAC `mac`
    /// and the network's MTU; `lo` is brought up too (the task's DNS
    /// resolver listens on 127.0.0.11). A task on several networks gets
    /// `eth0`, `eth1`, … and the default route (via `gateway`) only where
    /// `default_route` is set: on none of its overlays when it also has a
    /// [`crate::GwBridge`] attachment, which takes the default route.
    /// Returns the host-side device name (needed for [`Driver::detach`]). A
    /// leftover pair for the same MAC (a workload that died) is replaced.
    #[allow(clippy::too_many_arguments)]
    pub async fn attach_as(
        &mut self,
        network_id: &str,
        workload_netns: &Path,
        ifname: &str,
        ip: Ipv4Net,
        mac: [u8; 6],
        gateway: Ipv4Addr,
        default_route: bool,
    ) -> Result<String, NetError> {
        check_ifname(ifname)?;
        let conn = self
            .networks
            .get(network_id)
            .ok_or_else(|| NetError::UnknownNetwork {
                network: network_id.to_string(),
            })?;
        let workload = netns::connect(workload_netns).await?;
        let host = kernel::attach(
            network_id,
            &conn.handle,
            workload_netns,
            &workload.handle,
            ifname,
            ip,
            mac,
            gateway,
            default_route,
        )
        .await?;
        info!(network = %network_id, %ip, ifname, default_route, host_veth = %host, "workload attached");
        Ok(host)
    }

    /// Give encrypted network `network_id` its TAP: the device `tmp_name`
    /// (created by the userspace data path in the daemon's namespace) is
    /// moved into the network's namespace as `dp0` (replacing an old one),
    /// enslaved to `br0` and brought up. The network must have been
    /// reconciled (its namespace and bridge exist).
    pub async fn adopt_tap(&mut self, network_id: &str, tmp_name: &str) -> Result<(), NetError> {
        let path = self.netns_path(network_id);
        let conn = self
            .networks
            .get(network_id)
            .ok_or_else(|| NetError::UnknownNetwork {
                network: network_id.to_string(),
            })?;
        let target = Target {
            network: network_id,
            ns_path: &path,
            net: &conn.handle,
            raw: &conn.raw,
            own: &self.own.handle,
        };
        kernel::adopt_tap(&target, tmp_name).await?;
        info!(network = %network_id, device = TAP, "encrypted data path attached");
        Ok(())
    }

    /// Whether encrypted network `network_id` has its `dp0` in place.
    pub async fn has_tap(&self, network_id: &str) -> bool {
        match self.networks.get(network_id) {
            Some(conn) => matches!(kernel::link_by_name(&conn.handle, TAP).await, Ok(Some(_))),
            None => false,
        }
    }

    /// Detach a workload: delete its host-side veth (the kernel deletes the
    /// pair). Idempotent: a missing device or network is not an error,
    /// since the veth died with its namespace.
    pub async fn detach(&mut self, network_id: &str, host_veth: &str) -> Result<(), NetError> {
        let Some(conn) = self.networks.get(network_id) else {
            return Ok(());
        };
        kernel::delete_link(network_id, &conn.handle, host_veth).await?;
        Ok(())
    }

    /// Current kernel FDB/neighbour (and device) view of each network vs
    /// `desired`, for `network inspect --verbose`: per network id, what a
    /// reconcile would change, in `bridge`/`ip` words. An empty list means
    /// in sync. Networks held here but not desired are listed too.
    pub async fn diff(&self, desired: &Desired) -> Result<Vec<(String, Vec<String>)>, NetError> {
        let (resolved, errors) = self.resolve(desired).await;
        if let Some(e) = errors.into_iter().next() {
            return Err(e);
        }
        let mut out = Vec::new();
        for d in &resolved {
            let kernel = match self.networks.get(&d.id) {
                Some(conn) => kernel::dump(&d.id, &conn.handle).await?,
                None => KernelState::default(),
            };
            let lines = plan::plan_network(d, &kernel)
                .iter()
                .map(|op| match op {
                    Op::CreateNamespace => "namespace missing: create namespace".to_string(),
                    other => other.to_string(),
                })
                .collect();
            out.push((d.id.clone(), lines));
        }
        for id in plan::networks_to_remove(self.networks.keys().map(String::as_str), &resolved) {
            if !desired.networks.iter().any(|(s, _)| s.id == id) {
                out.push((
                    id,
                    vec!["not desired: namespace would be removed".to_string()],
                ));
            }
        }
        Ok(out)
    }
}

/// Refuse interface names the kernel would refuse, with a clearer error
/// than EINVAL from the rename: 1 to 15 bytes, no `/`, no whitespace, not
/// `.` or `..`.
pub(crate) fn check_ifname(name: &str) -> Result<(), NetError> {
    let reason = if name.is_empty() || name.len() > 15 {
        Some("must be 1 to 15 bytes long")
    } else if name == "." || name == ".." {
        Some("is reserved")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Some("must not contain '/', ':' or whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetError::InvalidName {
            kind: "interface name",
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::check_ifname;

    #[test]
    fn interface_names() {
        for ok in ["eth0", "eth1", "gw0", "abcdefghijklmno"] {
            assert!(check_ifname(ok).is_ok(), "{ok}");
        }
        for bad in ["", "abcdefghijklmnop", "a/b", "a b", ".", "..", "eth0:1"] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
    }
}
