//! The per-node egress bridge, Docker's `docker_gwbridge`: overlay networks
//! reach only their own subnet, so a task gets one more interface, `gw0`,
//! on the bridge [`GWBRIDGE`] in the daemon's own namespace, with the
//! default route through it; traffic leaving the node from there is
//! masqueraded behind the node's address. The ingress sandbox is attached
//! the same way, which is how published ports reach it.
//!
//! Addresses are leased per key (a task id, `ingress-sbx`) and kept in
//! `<run_dir>/gwbridge.json`, so that a restarted daemon hands every task
//! the address it already has. Host-side veth names derive from the
//! leased address: unique on the node, at most 15 bytes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::kernel::{delete_link, errno, link_by_name};
use crate::netns::{self, NsConn};
use crate::nft;
use crate::NetError;

/// Name of the egress bridge in the daemon's namespace.
pub const GWBRIDGE: &str = "shoal_gwbridge";
/// nftables table (family `ip`, daemon namespace) holding the egress
/// masquerade.
pub const GW_TABLE: &str = "shoal-gw";
/// Interface name of a workload's egress device.
pub const GW_IFNAME: &str = "gw0";
/// Default egress subnet (its first address is the bridge's gateway).
pub const DEFAULT_GW_SUBNET: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(172, 18, 0, 0), 16);
/// nftables table (family `bridge`) dropping frames between the bridge's
/// ports when inter-workload traffic is off (`enable_icc=false`).
pub const GW_ICC_TABLE: &str = "shoal-gw-icc";

/// How the egress bridge is set up: docker's `docker_gwbridge` options
/// (`--subnet`, `--gateway`, `com.docker.network.bridge.enable_icc`,
/// `com.docker.network.bridge.enable_ip_masquerade`,
/// `com.docker.network.driver.mtu`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GwSpec {
    /// The subnet workloads get addresses from.
    pub subnet: Ipv4Net,
    /// The bridge's address (default: the subnet's first).
    pub gateway: Option<Ipv4Addr>,
    /// Workloads on the bridge may reach each other over it.
    pub icc: bool,
    /// Traffic leaving the node is masqueraded behind its address.
    pub masquerade: bool,
    /// MTU of the bridge and its veths (default: the kernel's, 1500).
    pub mtu: Option<u32>,
}

impl Default for GwSpec {
    fn default() -> Self {
        GwSpec {
            subnet: DEFAULT_GW_SUBNET,
            gateway: None,
            icc: true,
            masquerade: true,
            mtu: None,
        }
    }
}

const STATE_FILE: &str = "gwbridge.json";
const EEXIST: i32 = nix::errno::Errno::EEXIST as i32;

/// What a workload got from [`GwBridge::attach`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GwAttachment {
    /// Host-side veth (on the bridge, daemon namespace).
    pub host_veth: String,
    /// The workload's address on `gw0`, with the subnet's prefix length.
    pub ip: Ipv4Net,
    /// The bridge's address: the workload's default gateway.
    pub gateway: Ipv4Addr,
}

/// The persisted leases.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    subnet: Option<Ipv4Net>,
    leases: BTreeMap<String, Ipv4Addr>,
}

/// The egress bridge of this node, with its address leases. Everything it
/// knows is also in the kernel and in `<run_dir>/gwbridge.json`; dropping
/// it and calling [`GwBridge::ensure`] again loses nothing.
pub struct GwBridge {
    run_dir: PathBuf,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    mtu: Option<u32>,
    own: NsConn,
    leases: BTreeMap<String, Ipv4Addr>,
}

impl std::fmt::Debug for GwBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GwBridge")
            .field("run_dir", &self.run_dir)
            .field("subnet", &self.subnet)
            .field("leases", &self.leases)
            .finish()
    }
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink {
        network: GWBRIDGE.to_string(),
        what,
        source,
    }
}

async fn index_of(h: &Handle, name: &str, network: &str) -> Result<u32, NetError> {
    match link_by_name(h, name)
        .await
        .map_err(nl(format!("look up {name}")))?
    {
        Some(m) => Ok(m.header.index),
        None => Err(NetError::DeviceMissing {
            network: network.to_string(),
            device: name.to_string(),
        }),
    }
}

fn v4_of(a: &AddressMessage) -> Option<Ipv4Net> {
    a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Address(IpAddr::V4(ip)) => Ipv4Net::new(*ip, a.header.prefix_len).ok(),
        _ => None,
    })
}

/// Host and (temporary) peer veth names for a leased address: `gw` / `gp`
/// and the address in hex, 10 bytes.
pub fn gw_veth_names(ip: Ipv4Addr) -> (String, String) {
    let x = u32::from(ip);
    (format!("gw{x:08x}"), format!("gp{x:08x}"))
}

/// The lowest address of `subnet` that is neither the network address, the
/// broadcast address, `gateway` nor in `used`.
fn lowest_free(
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    used: &BTreeMap<String, Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let taken: std::collections::BTreeSet<Ipv4Addr> = used.values().copied().collect();
    subnet.hosts().find(|a| *a != gateway && !taken.contains(a))
}

/// The body of [`GW_TABLE`]:
/// - traffic from the subnet leaving through any other interface is
///   masqueraded behind that interface's address (egress);
/// - a DNATed connection that comes back out of the bridge it came in by
///   (a task reaching a port published on its own node) is masqueraded
///   behind the gateway, so the reply returns through the host and is
///   un-NATed (needed where br_netfilter is off);
/// - a connection from a local process to `127.0.0.1:<published port>`,
///   DNATed onto the bridge, is masqueraded too; the bridge has
///   `route_localnet` on so that the un-NATed reply to 127.0.0.1 is
///   routed. That setting would also let a task send to the host's
///   loopback services, so packets from the bridge to 127.0.0.0/8 that
///   open a connection (not replies) are dropped after DNAT.
///
/// Without masquerading (`enable_ip_masquerade=false`) the first rule is
/// left out: workloads' addresses leave the node as they are.
pub fn gw_table(spec: &GwSpec) -> String {
    let br = nft::quote(GWBRIDGE);
    let subnet = spec.subnet.trunc();
    let egress = match spec.masquerade {
        true => format!("ip saddr {subnet} oifname != {br} masquerade\n    "),
        false => String::new(),
    };
    format!(
        "  chain postrouting {{
    type nat hook postrouting priority 100; policy accept;
    {egress}iifname {br} oifname {br} ct status dnat masquerade
    ip saddr 127.0.0.0/8 oifname {br} ct status dnat masquerade
  }}
  chain guard_localnet {{
    type filter hook prerouting priority 0; policy accept;
    iifname {br} ip daddr 127.0.0.0/8 ct direction original drop
  }}
"
    )
}

/// The body of [`GW_ICC_TABLE`]: frames bridged from one workload's veth
/// to another's (the host veths are `gw` + 8 hex digits) are dropped;
/// what goes through the host (egress, published ports) is routed, not
/// bridged, so it still flows.
pub fn gw_icc_table() -> String {
    "  chain forward {
    type filter hook forward priority 0; policy accept;
    iifname \"gw*\" oifname \"gw*\" drop
  }
"
    .to_string()
}

impl GwBridge {
    /// Create (or adopt, and set up as `spec` says) the egress bridge in
    /// the calling thread's network namespace (the daemon's): bridge
    /// [`GWBRIDGE`] up with the gateway address (and `route_localnet`, see
    /// [`gw_table`]) and `spec`'s MTU, IPv4 forwarding on, the table
    /// [`GW_TABLE`], and [`GW_ICC_TABLE`] when inter-workload traffic is
    /// off. Idempotent; after a restart, the leases in
    /// `<run_dir>/gwbridge.json` are kept (those outside the subnet
    /// dropped). Must run inside a tokio runtime.
    pub async fn ensure(run_dir: &Path, spec: &GwSpec) -> Result<GwBridge, NetError> {
        let subnet = spec.subnet.trunc();
        if subnet.prefix_len() > 30 {
            return Err(NetError::InvalidSpec {
                network: GWBRIDGE.to_string(),
                reason: format!("subnet {subnet} too small: need at least a /30"),
            });
        }
        let gateway = match spec.gateway.or_else(|| subnet.hosts().next()) {
            Some(g) if subnet.contains(&g) && g != subnet.network() && g != subnet.broadcast() => g,
            Some(g) => {
                return Err(NetError::InvalidSpec {
                    network: GWBRIDGE.to_string(),
                    reason: format!("gateway {g} is not a host address of {subnet}"),
                })
            }
            None => {
                return Err(NetError::InvalidSpec {
                    network: GWBRIDGE.to_string(),
                    reason: format!("subnet {subnet} has no host addresses"),
                })
            }
        };
        std::fs::create_dir_all(run_dir).map_err(|source| NetError::Io {
            path: run_dir.to_path_buf(),
            op: "create run dir",
            source,
        })?;
        let own = netns::connect_here()?;
        let h = &own.handle;
        let br = match link_by_name(h, GWBRIDGE)
            .await
            .map_err(nl(format!("look up {GWBRIDGE}")))?
        {
            Some(m) => m.header.index,
            None => {
                match h
                    .link()
                    .add(LinkBridge::new(GWBRIDGE).up().build())
                    .execute()
                    .await
                {
                    Err(e) if errno(&e) == Some(EEXIST) => {}
                    r => r.map_err(nl(format!("create bridge {GWBRIDGE}")))?,
                }
                index_of(h, GWBRIDGE, "daemon").await?
            }
        };
        let want =
            Ipv4Net::new(gateway, subnet.prefix_len()).map_err(|e| NetError::InvalidSpec {
                network: GWBRIDGE.to_string(),
                reason: e.to_string(),
            })?;
        let addrs: Vec<AddressMessage> = h
            .address()
            .get()
            .set_link_index_filter(br)
            .execute()
            .try_collect()
            .await
            .map_err(nl(format!("list addresses of {GWBRIDGE}")))?;
        let mut have = false;
        for a in addrs {
            match v4_of(&a) {
                Some(n) if n == want => have = true,
                Some(n) => {
                    warn!(old = %n, new = %want, "egress subnet changed; removing the old address");
                    h.address()
                        .del(a)
                        .execute()
                        .await
                        .map_err(nl(format!("delete {n} from {GWBRIDGE}")))?;
                }
                None => {}
            }
        }
        if !have {
            match h
                .address()
                .add(br, IpAddr::V4(gateway), subnet.prefix_len())
                .execute()
                .await
            {
                Err(e) if errno(&e) == Some(EEXIST) => {}
                r => r.map_err(nl(format!("add {want} to {GWBRIDGE}")))?,
            }
        }
        let mut up = LinkUnspec::new_with_index(br).up();
        if let Some(mtu) = spec.mtu {
            up = up.mtu(mtu);
        }
        h.link()
            .set(up.build())
            .execute()
            .await
            .map_err(nl(format!("set {GWBRIDGE} up")))?;
        nft::set_ip_forward(None, true)?;
        nft::set_sysctl(
            None,
            &format!("/proc/sys/net/ipv4/conf/{GWBRIDGE}/route_localnet"),
            "1",
        )?;
        nft::apply_table(None, GW_TABLE, &gw_table(spec)).await?;
        match spec.icc {
            true => nft::delete_bridge_table(GW_ICC_TABLE).await?,
            false => nft::apply_bridge_table(GW_ICC_TABLE, &gw_icc_table()).await?,
        }

        let path = run_dir.join(STATE_FILE);
        let mut state = load_state(&path)?;
        state
            .leases
            .retain(|_, ip| subnet.contains(&*ip) && *ip != gateway && *ip != subnet.broadcast());
        state.subnet = Some(subnet);
        save_state(&path, &state)?;
        info!(%subnet, %gateway, leases = state.leases.len(), "egress bridge ready");
        Ok(GwBridge {
            run_dir: run_dir.to_path_buf(),
            subnet,
            gateway,
            mtu: spec.mtu,
            own,
            leases: state.leases,
        })
    }

    /// The egress subnet.
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// The bridge's address: every workload's default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The address leased to `key`, if any.
    pub fn lease(&self, key: &str) -> Option<Ipv4Addr> {
        self.leases.get(key).copied()
    }

    /// The leases recorded in `run_dir` (key -> address), for status
    /// output where no `GwBridge` is at hand.
    pub fn leases_in(run_dir: &Path) -> Result<BTreeMap<String, Ipv4Addr>, NetError> {
        Ok(load_state(&run_dir.join(STATE_FILE))?.leases)
    }

    /// All leases (key -> address), for status output.
    pub fn leases(&self) -> &BTreeMap<String, Ipv4Addr> {
        &self.leases
    }

    fn save(&self) -> Result<(), NetError> {
        save_state(
            &self.run_dir.join(STATE_FILE),
            &State {
                subnet: Some(self.subnet),
                leases: self.leases.clone(),
            },
        )
    }

    /// Attach the workload namespace at `workload_netns` (a bind-mount
    /// path) under `key`: lease the lowest free address (or the one `key`
    /// already has), create a veth pair with the host end on the bridge and
    /// the peer in the workload as [`GW_IFNAME`], with the address, `lo`
    /// and `gw0` up, and the default route via the gateway (replacing any
    /// default route there). Re-attaching a key recreates the pair with
    /// the same address.
    pub async fn attach(
        &mut self,
        workload_netns: &Path,
        key: &str,
    ) -> Result<GwAttachment, NetError> {
        let ip = match self.leases.get(key) {
            Some(ip) => *ip,
            None => {
                let ip = lowest_free(self.subnet, self.gateway, &self.leases).ok_or(
                    NetError::PoolExhausted {
                        pool: GWBRIDGE.to_string(),
                        subnet: self.subnet,
                    },
                )?;
                self.leases.insert(key.to_string(), ip);
                if let Err(e) = self.save() {
                    self.leases.remove(key);
                    return Err(e);
                }
                ip
            }
        };
        let net =
            Ipv4Net::new(ip, self.subnet.prefix_len()).map_err(|e| NetError::InvalidSpec {
                network: GWBRIDGE.to_string(),
                reason: e.to_string(),
            })?;
        let (host, peer) = gw_veth_names(ip);
        let h = &self.own.handle;
        delete_link("daemon", h, &host).await?;
        delete_link("daemon", h, &peer).await?;
        let br = index_of(h, GWBRIDGE, "daemon").await?;
        let workload = netns::connect(workload_netns).await?;
        let mut veth = LinkVeth::new(&host, &peer);
        if let Some(mtu) = self.mtu {
            veth = veth.mtu(mtu);
        }
        h.link()
            .add(veth.build())
            .execute()
            .await
            .map_err(nl(format!("create veth {host}/{peer}")))?;
        let configured = async {
            let pi = index_of(h, &peer, "daemon").await?;
            let f = std::fs::File::open(workload_netns).map_err(|source| NetError::Io {
                path: workload_netns.to_path_buf(),
                op: "open workload namespace",
                source,
            })?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(pi)
                        .setns_by_fd(f.as_raw_fd())
                        .name(GW_IFNAME)
                        .build(),
                )
                .execute()
                .await
                .map_err(nl(format!(
                    "move {peer} into {} as {GW_IFNAME}",
                    workload_netns.display()
                )))?;
            drop(f);
            let hi = index_of(h, &host, "daemon").await?;
            h.link()
                .set(LinkUnspec::new_with_index(hi).controller(br).up().build())
                .execute()
                .await
                .map_err(nl(format!("attach {host} to {GWBRIDGE}")))?;
            let wname = workload_netns.display().to_string();
            let w = &workload.handle;
            let wl = |what: String| {
                let wname = wname.clone();
                move |source| NetError::Netlink {
                    network: wname,
                    what,
                    source,
                }
            };
            for dev in ["lo", GW_IFNAME] {
                let i = index_of(w, dev, &wname).await?;
                w.link()
                    .set(LinkUnspec::new_with_index(i).up().build())
                    .execute()
                    .await
                    .map_err(wl(format!("set {dev} up")))?;
            }
            let gi = index_of(w, GW_IFNAME, &wname).await?;
            match w
                .address()
                .add(gi, IpAddr::V4(ip), net.prefix_len())
                .execute()
                .await
            {
                Err(e) if errno(&e) == Some(EEXIST) => {}
                r => r.map_err(wl(format!("add {net} on {GW_IFNAME}")))?,
            }
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(self.gateway)
                .output_interface(gi)
                .build();
            w.route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(wl(format!(
                    "default route via {} dev {GW_IFNAME}",
                    self.gateway
                )))?;
            Ok::<(), NetError>(())
        }
        .await;
        if let Err(e) = configured {
            let _ = delete_link("daemon", h, &host).await;
            let _ = delete_link("daemon", h, &peer).await;
            return Err(e);
        }
        info!(key, ip = %net, host_veth = %host, "attached to the egress bridge");
        Ok(GwAttachment {
            host_veth: host,
            ip: net,
            gateway: self.gateway,
        })
    }

    /// Detach `key`: delete its host veth (the kernel deletes the pair;
    /// gone already is fine) and free its address. Idempotent.
    pub async fn detach(&mut self, key: &str) -> Result<(), NetError> {
        let Some(ip) = self.leases.get(key).copied() else {
            return Ok(());
        };
        let (host, _) = gw_veth_names(ip);
        delete_link("daemon", &self.own.handle, &host).await?;
        self.leases.remove(key);
        if let Err(e) = self.save() {
            self.leases.insert(key.to_string(), ip);
            return Err(e);
        }
        info!(key, %ip, "detached from the egress bridge");
        Ok(())
    }

    /// Tear the egress bridge down (node leaving the swarm): the host veths
    /// of every lease, the bridge, the masquerade table and the state file.
    /// Runs in the calling thread's namespace like [`GwBridge::ensure`];
    /// idempotent. IPv4 forwarding is left as it is.
    pub async fn remove(run_dir: &Path) -> Result<(), NetError> {
        let path = run_dir.join(STATE_FILE);
        let state = load_state(&path)?;
        let own = netns::connect_here()?;
        for ip in state.leases.values() {
            delete_link("daemon", &own.handle, &gw_veth_names(*ip).0).await?;
        }
        delete_link("daemon", &own.handle, GWBRIDGE).await?;
        nft::delete_table(None, GW_TABLE).await?;
        nft::delete_bridge_table(GW_ICC_TABLE).await?;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NetError::Io {
                    path,
                    op: "remove state file",
                    source,
                })
            }
        }
        info!("egress bridge removed");
        Ok(())
    }
}

fn load_state(path: &Path) -> Result<State, NetError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| NetError::State {
            path: path.to_path_buf(),
            reason: format!("not a valid lease file: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(source) => Err(NetError::Io {
            path: path.to_path_buf(),
            op: "read state file",
            source,
        }),
    }
}

/// Write then rename: a crash leaves the old file or the new, never half.
fn save_state(path: &Path, state: &State) -> Result<(), NetError> {
    let text = serde_json::to_vec_pretty(state).map_err(|e| NetError::State {
        path: path.to_path_buf(),
        reason: format!("cannot encode leases: {e}"),
    })?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|source| NetError::Io {
        path: tmp.clone(),
        op: "write state file",
        source,
    })?;
    std::fs::rename(&tmp, path).map_err(|source| NetError::Io {
        path: path.to_path_buf(),
        op: "replace state file",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_skips_gateway_and_leases() {
        let subnet: Ipv4Net = "172.18.0.0/16".parse().unwrap_or(DEFAULT_GW_SUBNET);
        let gw = Ipv4Addr::new(172, 18, 0, 1);
        let mut used = BTreeMap::new();
        assert_eq!(
            lowest_free(subnet, gw, &used),
            Some(Ipv4Addr::new(172, 18, 0, 2))
        );
        used.insert("a".to_string(), Ipv4Addr::new(172, 18, 0, 2));
        used.insert("b".to_string(), Ipv4Addr::new(172, 18, 0, 4));
        assert_eq!(
            lowest_free(subnet, gw, &used),
            Some(Ipv4Addr::new(172, 18, 0, 3))
        );
        let tiny: Ipv4Net = "10.1.0.0/30".parse().unwrap_or(DEFAULT_GW_SUBNET);
        let mut used = BTreeMap::new();
        used.insert("a".to_string(), Ipv4Addr::new(10, 1, 0, 2));
        assert_eq!(lowest_free(tiny, Ipv4Addr::new(10, 1, 0, 1), &used), None);
    }

    #[test]
    fn veth_names_are_short_and_distinct() {
        let (h, p) = gw_veth_names(Ipv4Addr::new(172, 18, 255, 254));
        assert_eq!((h.as_str(), p.as_str()), ("gwac12fffe", "gpac12fffe"));
        assert!(h.len() <= 15);
        assert_ne!(
            gw_veth_names(Ipv4Addr::new(172, 18, 0, 2)).0,
            gw_veth_names(Ipv4Addr::new(172, 18, 0, 3)).0
        );
    }

    #[test]
    fn gw_table_masquerades_the_subnet_and_hairpin() {
        let t = gw_table(&GwSpec::default());
        assert!(
            t.contains("ip saddr 172.18.0.0/16 oifname != \"shoal_gwbridge\" masquerade"),
            "{t}"
        );
        assert!(
            t.contains(
                "iifname \"shoal_gwbridge\" oifname \"shoal_gwbridge\" ct status dnat masquerade"
            ),
            "{t}"
        );
        assert!(
            t.contains("ip saddr 127.0.0.0/8 oifname \"shoal_gwbridge\" ct status dnat masquerade"),
            "{t}"
        );
        assert!(
            t.contains(
                "iifname \"shoal_gwbridge\" ip daddr 127.0.0.0/8 ct direction original drop"
            ),
            "{t}"
        );
    }

    #[test]
    fn state_round_trips_and_bad_files_are_named() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("no temp dir")
        };
        let path = dir.path().join(STATE_FILE);
        let mut s = State {
            subnet: Some(DEFAULT_GW_SUBNET),
            ..State::default()
        };
        s.leases
            .insert("task1".to_string(), Ipv4Addr::new(172, 18, 0, 2));
        assert!(save_state(&path, &s).is_ok());
        let back = load_state(&path).ok().unwrap_or_default();
        assert_eq!(back.leases, s.leases);
        assert_eq!(back.subnet, Some(DEFAULT_GW_SUBNET));
        let _ = std::fs::write(&path, b"{not json");
        match load_state(&path) {
            Err(NetError::State { path: p, .. }) => assert_eq!(p, path),
            other => panic!("expected a State error, got {other:?}"),
        }
    }
}
