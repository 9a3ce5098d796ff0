//! The Shoal network driver: turns the networks assigned to this node and the
//! gossiped endpoint tables into kernel state through rtnetlink (per-network
//! namespace with a bridge and a VXLAN device, static FDB and neighbour
//! entries), with a planner that diffs desired against kernel state and a
//! driver that applies the plan.
//!
//! Data flow: the agent builds a [`Desired`] (networks this node needs, each
//! with the remote endpoints from the gossip tables) and calls
//! [`Driver::reconcile`]. The driver dumps each network namespace into a
//! [`plan::KernelState`], [`plan::plan_network`] (pure, no I/O) returns the
//! [`plan::Op`]s that make the kernel match, and the `kernel` module applies
//! them over one netlink connection per namespace, pipelined.
//!
//! Services need more than overlays, and the crate has it too:
//!
//! - [`Driver::attach_as`] attaches a task to one more network under a
//!   chosen device name (`eth1`, …), with or without the default route;
//!   [`Driver::attach`] is the `eth0` + default route case. `lo` is
//!   always brought up (the task's DNS listens on 127.0.0.11).
//! - [`GwBridge`] is the node's egress bridge `shoal_gwbridge` in the
//!   daemon's namespace (Docker's `docker_gwbridge`):
//!   [`GwBridge::ensure`]`(run_dir, &spec)` creates or adopts it
//!   (gateway `.1`, forwarding on, masquerade table `ip shoal-gw`);
//!   [`GwBridge::attach`]`(workload_netns, key)` gives the workload `gw0`
//!   with an address leased under `key` (kept in
//!   `<run_dir>/gwbridge.json` across restarts) and the default route;
//!   [`GwBridge::detach`]`(key)` frees it; [`GwBridge::remove`] tears all
//!   down.
//! - [`nft`] programs nftables through the `nft` binary, one atomic
//!   transaction per call, in the daemon's namespace or any namespace
//!   path: [`nft::apply_table`] (replace a whole table),
//!   [`nft::delete_table`], [`nft::list_table`], [`nft::set_ip_forward`];
//!   and pure builders of table bodies: [`nft::vip_table`] (a task's VIPs,
//!   DNAT round robin, refused when empty), [`nft::ingress_sandbox_table`]
//!   (routing mesh: published port to tasks, masqueraded on the ingress
//!   overlay) and [`nft::host_publish_table`] (published ports on the
//!   node's addresses, 127.0.0.1 included, to the ingress sandbox or a
//!   `mode=host` task).
//!
//! ```no_run
//! # async fn f(task_ns: &std::path::Path) -> Result<(), shoal_netdriver::NetError> {
//! use shoal_netdriver::nft::{self, VIP_TABLE};
//! use shoal_netdriver::{GwBridge, GwSpec, VipRule};
//! let mut gw = GwBridge::ensure("/run/shoal".as_ref(), &GwSpec::default()).await?;
//! let egress = gw.attach(task_ns, "task-k2x9").await?; // gw0, 172.18.0.2/16
//! let vips = [VipRule {
//!     vip: "10.0.9.2".parse().unwrap(),
//!     backends: vec!["10.0.9.5".parse().unwrap(), "10.0.9.6".parse().unwrap()],
//! }];
//! nft::apply_table(Some(task_ns), VIP_TABLE, &nft::vip_table(&vips)).await?;
//! # let _ = egress; Ok(()) }
//! ```
//!
//! Namespaces never get global names: they are bind-mounted under
//! `<run_dir>/netns/<network id>` so that many daemons can share one kernel
//! (the lab), and a restarted daemon adopts them and converges without
//! recreating anything.
//!
//! ```no_run
//! # async fn f() -> Result<(), shoal_netdriver::NetError> {
//! use shoal_netdriver::{Desired, Driver, NetworkSpec, RemoteEndpoint};
//! let mut driver = Driver::new("/run/shoal".as_ref()).await?;
//! let spec = NetworkSpec {
//!     id: "k2x9net".into(),
//!     vni: 4097,
//!     subnet: "10.0.9.0/24".parse().unwrap(),
//!     gateway: "10.0.9.1".parse().unwrap(),
//!     mtu: None,
//!     local_vtep: "192.168.56.11".parse().unwrap(),
//!     port: 4789,
//!     encrypted: false,
//! };
//! let peer = RemoteEndpoint {
//!     ip: "10.0.9.3".parse().unwrap(),
//!     mac: [0x02, 0x42, 0x0a, 0x00, 0x09, 0x03],
//!     vtep: "192.168.56.12".parse().unwrap(),
//! };
//! let report = driver
//!     .reconcile(&Desired { networks: vec![(spec, vec![peer])] })
//!     .await?;
//! assert!(driver.reconcile(&Desired::default()).await?.networks_removed <= 1);
//! # let _ = report; Ok(()) }
//! ```

#![deny(missing_docs)]

mod batch;
mod bench;
mod driver;
mod error;
mod esp;
mod gwbridge;
mod kernel;
mod netns;
pub mod nft;
pub mod plan;

use std::net::Ipv4Addr;
use std::time::Duration;

pub use bench::{bench_reconcile, BenchReport};
pub use driver::Driver;
pub use error::NetError;
pub use esp::probe_esp;
pub use gwbridge::{
    gw_icc_table, gw_table, gw_veth_names, GwAttachment, GwBridge, GwSpec, DEFAULT_GW_SUBNET,
    GWBRIDGE, GW_ICC_TABLE, GW_IFNAME, GW_TABLE,
};
pub use netns::{create_netns, remove_netns};
pub use nft::{Backend, PortRule, Proto, VipRule};

/// Default VXLAN UDP port (IANA), the `--data-path-port` default.
pub const DEFAULT_VXLAN_PORT: u16 = 4789;

/// One overlay network as this node must hold it. Comes from the store's
/// network object plus this node's data-path address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    /// Network id; also the namespace file name under `<run_dir>/netns`.
    pub id: String,
    /// VXLAN network identifier (1..=16777215).
    pub vni: u32,
    /// The overlay subnet; its prefix length goes with the gateway on `br0`.
    pub subnet: ipnet::Ipv4Net,
    /// Gateway address, set on `br0` inside the network namespace.
    pub gateway: Ipv4Addr,
    /// Overlay MTU; `None` means the MTU of the underlay interface holding
    /// `local_vtep` minus 50 (1450 if that interface is not found).
    pub mtu: Option<u32>,
    /// This node's data-path address: the VXLAN source address.
    pub local_vtep: Ipv4Addr,
    /// VXLAN UDP destination port (4789 unless `--data-path-port`).
    pub port: u16,
    /// `--opt encrypted`: no VXLAN device; the bridge's uplink is the TAP
    /// `dp0` that the agent's userspace data path creates and hands over
    /// with [`Driver::adopt_tap`]. The default MTU is the underlay's minus
    /// [`plan::ENCRYPTED_OVERHEAD`] (78).
    pub encrypted: bool,
}

/// An endpoint on another node that workloads here must reach: its overlay
/// IP and MAC, and the VTEP (data-path address) of the node that hosts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteEndpoint {
    /// Overlay IP (neighbour entry: IP -> MAC).
    pub ip: Ipv4Addr,
    /// Overlay MAC (FDB entry: MAC -> VTEP).
    pub mac: [u8; 6],
    /// Data-path address of the node hosting the endpoint.
    pub vtep: Ipv4Addr,
}

/// Everything this node's kernel should hold: each network it needs with
/// the remote endpoints of that network. Networks not listed are removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// (network, its remote endpoints). Endpoints whose VTEP is this node's
    /// are ignored, so the agent may pass a network's whole endpoint table.
    pub networks: Vec<(NetworkSpec, Vec<RemoteEndpoint>)>,
}

/// What one [`Driver::reconcile`] changed, for logs, metrics and the
/// `reconcile` benchmark. A second reconcile with the same input reports
/// zeros: that is the idempotence users rely on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Namespaces created (network new on this node, or its namespace lost).
    pub networks_created: usize,
    /// Namespaces removed (network no longer desired).
    pub networks_removed: usize,
    /// FDB entries added.
    pub fdb_added: usize,
    /// FDB entries removed (one per remote VTEP).
    pub fdb_removed: usize,
    /// FDB entries pointed at another VTEP in place (endpoint's node
    /// changed); not counted in added/removed.
    pub fdb_replaced: usize,
    /// Neighbour entries added.
    pub neigh_added: usize,
    /// Neighbour entries removed.
    pub neigh_removed: usize,
    /// Neighbour entries whose MAC changed (or made permanent) in place.
    pub neigh_replaced: usize,
    /// Structural changes applied (bridge, VXLAN device, MTU, address, up).
    pub links_changed: usize,
    /// Wall time of the whole reconcile, dumps included.
    pub duration: Duration,
}

impl ReconcileReport {
    /// Total entry writes (FDB + neighbour, added, removed, replaced).
    pub fn entries_changed(&self) -> usize {
        self.fdb_added
            + self.fdb_removed
            + self.fdb_replaced
            + self.neigh_added
            + self.neigh_removed
            + self.neigh_replaced
    }

    /// Whether nothing had to change: the kernel already matched.
    pub fn is_noop(&self) -> bool {
        self.entries_changed() == 0
            && self.networks_created == 0
            && self.networks_removed == 0
            && self.links_changed == 0
    }
}
