//! The planner: pure functions from (desired network, kernel snapshot) to the
//! list of operations that make the kernel match. No netlink, no clock, no
//! I/O: the `kernel` module dumps a [`KernelState`] and executes the returned
//! [`Op`]s. This is where idempotence, "never delete the VXLAN device's own
//! MAC" and "a MAC that moved VTEP is replaced, not deleted and re-added"
//! are decided, and where they are unit tested.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::{NetError, NetworkSpec, RemoteEndpoint};

/// An Ethernet address. Plain bytes: this is what netlink carries.
pub type Mac = [u8; 6];

/// Name of the bridge inside every network namespace.
pub const BRIDGE: &str = "br0";
/// Name of the VXLAN device inside every network namespace.
pub const VXLAN: &str = "vx0";
/// VXLAN encapsulation overhead over IPv4 (outer IP 20 + UDP 8 + VXLAN 8 +
/// inner Ethernet 14): the default overlay MTU is the underlay MTU minus this.
pub const VXLAN_OVERHEAD: u32 = 50;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Name of the TAP device of an encrypted network inside its namespace
/// (the userspace data path's end of the bridge, in place of `vx0`).
pub const TAP: &str = "dp0";
/// What an encrypted network costs below the underlay MTU: outer IPv4
/// (20), UDP (8), sealed header (20), AES-GCM tag (16), virtio-net header
/// (10) and inner Ethernet (14).
pub const ENCRYPTED_OVERHEAD: u32 = 88;
/// `gso_max_size` of `dp0` (and of workload ends on an encrypted network):
/// a TSO frame this large still seals into one UDP datagram.
pub const ENCRYPTED_GSO_MAX_SIZE: u32 = 60_000;

/// Wrapper that prints a MAC the way `bridge fdb` does, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacDisplay(pub Mac);

impl fmt::Display for MacDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// One network as the kernel should hold it, with every default resolved
/// (MTU) and the endpoint list turned into the two tables the kernel keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDesired {
    /// Network id (namespace file name).
    pub id: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// Gateway address with the subnet's prefix length, set on `br0`.
    pub gateway: Ipv4Net,
    /// MTU of `vx0` and `br0`.
    pub mtu: u32,
    /// Local VTEP (source address of the VXLAN device).
    pub local_vtep: Ipv4Addr,
    /// VXLAN UDP destination port.
    pub port: u16,
    /// Static FDB: remote MAC -> remote VTEP.
    pub fdb: BTreeMap<Mac, Ipv4Addr>,
    /// Permanent neighbours on `vx0`: remote IP -> MAC (answered by the
    /// VXLAN ARP proxy, so ARP never crosses the underlay).
    pub neigh: BTreeMap<Ipv4Addr, Mac>,
    /// Encrypted: no `vx0` and no tables; the bridge's uplink is the
    /// userspace data path's TAP `dp0` (created by the agent).
    pub encrypted: bool,
}

/// Check a network id before it becomes a file name under `<run_dir>/netns`.
pub fn validate_network_id(id: &str) -> Result<(), NetError> {
    let reason = if id.is_empty() {
        Some("empty")
    } else if id == "." || id == ".." {
        Some("reserved name")
    } else if id.len() > 200 {
        Some("longer than 200 bytes")
    } else if id.contains('/') || id.contains('\0') {
        Some("contains '/' or NUL")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetError::InvalidNetworkId {
            id: id.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

impl NetworkDesired {
    /// Resolve a spec and its remote endpoints into kernel tables.
    /// `default_mtu` is used when the spec has no MTU (underlay MTU - 50,
    /// or - 78 for an encrypted network, where it also caps the spec's;
    /// looked up by the caller). Endpoints whose VTEP is this node are
    /// skipped (they sit on `br0` directly); when two endpoints claim the
    /// same MAC or the same IP, the first one wins, so the plan is stable.
    pub fn resolve(
        spec: &NetworkSpec,
        remotes: &[RemoteEndpoint],
        default_mtu: u32,
    ) -> Result<NetworkDesired, NetError> {
        validate_network_id(&spec.id)?;
        let invalid = |reason: String| NetError::InvalidSpec {
            network: spec.id.clone(),
            reason,
        };
        if spec.vni == 0 || spec.vni > MAX_VNI {
            return Err(invalid(format!("VNI {} outside 1..={MAX_VNI}", spec.vni)));
        }
        if !spec.subnet.contains(&spec.gateway) {
            return Err(invalid(format!(
                "gateway {} outside subnet {}",
                spec.gateway, spec.subnet
            )));
        }
        // An encrypted network can carry no frame larger than what fits
        // one underlay packet once sealed: there `default_mtu` (underlay
        // - 78) caps the option, which wins only when smaller.
        let mtu = match spec.mtu {
            Some(m) if spec.encrypted => m.min(default_mtu),
            Some(m) => m,
            None => default_mtu,
        };
        if !(68..=65_535).contains(&mtu) {
            return Err(invalid(format!("MTU {mtu} outside 68..=65535")));
        }
        if spec.port == 0 {
            return Err(invalid("VXLAN port 0".to_string()));
        }
        let gateway = Ipv4Net::new(spec.gateway, spec.subnet.prefix_len())
            .map_err(|e| invalid(format!("gateway prefix: {e}")))?;
        let mut fdb = BTreeMap::new();
        let mut neigh = BTreeMap::new();
        for r in remotes.iter().filter(|_| !spec.encrypted) {
            if r.vtep == spec.local_vtep || is_zero(&r.mac) {
                continue;
            }
            fdb.entry(r.mac).or_insert(r.vtep);
            neigh.entry(r.ip).or_insert(r.mac);
        }
        Ok(NetworkDesired {
            id: spec.id.clone(),
            vni: spec.vni,
            gateway,
            mtu,
            local_vtep: spec.local_vtep,
            port: spec.port,
            fdb,
            neigh,
            encrypted: spec.encrypted,
        })
    }
}

/// State of `br0` as dumped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeState {
    /// Interface index inside the network namespace.
    pub index: u32,
    /// Administratively up.
    pub up: bool,
    /// Current MTU.
    pub mtu: u32,
    /// IPv4 addresses with prefix.
    pub addrs: Vec<Ipv4Net>,
}

/// State of `vx0` as dumped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanState {
    /// Interface index inside the network namespace.
    pub index: u32,
    /// Administratively up.
    pub up: bool,
    /// Current MTU.
    pub mtu: u32,
    /// The device's own MAC: its FDB entry is never deleted.
    pub mac: Mac,
    /// Index of the bridge it is enslaved to, if any.
    pub controller: Option<u32>,
    /// VNI.
    pub vni: u32,
    /// Local (source) address.
    pub local: Option<Ipv4Addr>,
    /// UDP destination port.
    pub port: u16,
    /// Source-address learning (we want it off).
    pub learning: bool,
    /// ARP proxy (we want it on).
    pub proxy: bool,
}

/// State of an encrypted network's `dp0` as dumped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapState {
    /// Administratively up.
    pub up: bool,
    /// Current MTU.
    pub mtu: u32,
    /// Index of the bridge it is enslaved to, if any.
    pub controller: Option<u32>,
}

/// A permanent or learned neighbour on `vx0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighState {
    /// Link-layer address.
    pub mac: Mac,
    /// NUD_PERMANENT.
    pub permanent: bool,
}

/// What the kernel holds for one network, dumped by the `kernel` module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    /// The namespace bind mount exists and is live.
    pub namespace: bool,
    /// `br0`, if present.
    pub bridge: Option<BridgeState>,
    /// `vx0`, if present.
    pub vxlan: Option<VxlanState>,
    /// `dp0`, if present.
    pub tap: Option<TapState>,
    /// VXLAN (self) FDB entries on `vx0`: MAC -> remote VTEPs (the kernel
    /// allows several remotes per MAC).
    pub fdb: BTreeMap<Mac, Vec<Ipv4Addr>>,
    /// Neighbours on `vx0`.
    pub neigh: BTreeMap<Ipv4Addr, NeighState>,
}

/// Which device a [`Op::SetMtu`] or [`Op::SetUp`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// `br0`.
    Bridge,
    /// `vx0`.
    Vxlan,
    /// `dp0`.
    Tap,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Bridge => BRIDGE,
            Device::Vxlan => VXLAN,
            Device::Tap => TAP,
        })
    }
}

/// One change to the kernel. A plan lists structural ops first (in the
/// order they must run), then deletions of entries, then additions and
/// replacements: the executor runs structural ops one by one and each group
/// of entry ops pipelined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Create and bind-mount the network namespace.
    CreateNamespace,
    /// Create `br0`, up, with this MTU.
    CreateBridge {
        /// MTU.
        mtu: u32,
    },
    /// Add the gateway address to `br0`.
    AddBridgeAddr(Ipv4Net),
    /// Remove a stale address from `br0`.
    DelBridgeAddr(Ipv4Net),
    /// Delete `vx0` (its parameters changed; it is created again).
    DeleteVxlan,
    /// Create `vx0` in the daemon's namespace, move it into the network
    /// namespace, enslave it to `br0` and bring it up.
    CreateVxlan {
        /// VNI.
        vni: u32,
        /// Local VTEP.
        local: Ipv4Addr,
        /// UDP port.
        port: u16,
        /// MTU.
        mtu: u32,
    },
    /// Change a device's MTU.
    SetMtu {
        /// Which device.
        device: Device,
        /// New MTU.
        mtu: u32,
    },
    /// Bring a device up.
    SetUp(Device),
    /// Enslave `vx0` to `br0` and bring it up.
    AttachVxlan,
    /// Enslave `dp0` to `br0` and bring it up.
    AttachTap,
    /// Delete one remote of a VXLAN FDB entry.
    DelFdb {
        /// MAC.
        mac: Mac,
        /// The remote to remove.
        vtep: Ipv4Addr,
    },
    /// Delete a neighbour.
    DelNeigh {
        /// IP.
        ip: Ipv4Addr,
        /// Its current MAC (for messages).
        mac: Mac,
    },
    /// Add a static FDB entry (`bridge fdb add MAC dev vx0 dst VTEP self permanent`).
    AddFdb {
        /// MAC.
        mac: Mac,
        /// Remote VTEP.
        vtep: Ipv4Addr,
    },
    /// Point an existing FDB entry at another VTEP (`bridge fdb replace`).
    ReplaceFdb {
        /// MAC.
        mac: Mac,
        /// New remote VTEP.
        vtep: Ipv4Addr,
    },
    /// Add a permanent neighbour (`ip neigh add IP lladdr MAC dev vx0 nud permanent`).
    AddNeigh {
        /// IP.
        ip: Ipv4Addr,
        /// MAC.
        mac: Mac,
    },
    /// Change an existing neighbour's MAC or make it permanent.
    ReplaceNeigh {
        /// IP.
        ip: Ipv4Addr,
        /// MAC.
        mac: Mac,
    },
}

impl Op {
    /// Whether this op changes a table entry (pipelined) rather than a
    /// device or namespace (run in order).
    pub fn is_entry(&self) -> bool {
        matches!(
            self,
            Op::DelFdb { .. }
                | Op::DelNeigh { .. }
                | Op::AddFdb { .. }
                | Op::ReplaceFdb { .. }
                | Op::AddNeigh { .. }
                | Op::ReplaceNeigh { .. }
        )
    }

    /// Whether this op removes an entry (the deletion phase runs before the
    /// addition phase, so a MAC can move between several remotes).
    pub fn is_deletion(&self) -> bool {
        matches!(self, Op::DelFdb { .. } | Op::DelNeigh { .. })
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::CreateNamespace => write!(f, "create namespace"),
            Op::CreateBridge { mtu } => write!(f, "create {BRIDGE} mtu {mtu}"),
            Op::AddBridgeAddr(a) => write!(f, "add address {a} on {BRIDGE}"),
            Op::DelBridgeAddr(a) => write!(f, "delete address {a} on {BRIDGE}"),
            Op::DeleteVxlan => write!(f, "delete {VXLAN}"),
            Op::CreateVxlan {
                vni,
                local,
                port,
                mtu,
            } => write!(
                f,
                "create {VXLAN} vni {vni} local {local} dstport {port} mtu {mtu}"
            ),
            Op::SetMtu { device, mtu } => write!(f, "set {device} mtu {mtu}"),
            Op::SetUp(d) => write!(f, "set {d} up"),
            Op::AttachVxlan => write!(f, "attach {VXLAN} to {BRIDGE}"),
            Op::AttachTap => write!(f, "attach {TAP} to {BRIDGE}"),
            Op::DelFdb { mac, vtep } => {
                write!(f, "delete fdb {} dst {vtep} on {VXLAN}", MacDisplay(mac))
            }
            Op::DelNeigh { ip, mac } => {
                write!(f, "delete neigh {ip} lladdr {} on {VXLAN}", MacDisplay(mac))
            }
            Op::AddFdb { mac, vtep } => {
                write!(f, "add fdb {} dst {vtep} on {VXLAN}", MacDisplay(mac))
            }
            Op::ReplaceFdb { mac, vtep } => {
                write!(f, "replace fdb {} dst {vtep} on {VXLAN}", MacDisplay(mac))
            }
            Op::AddNeigh { ip, mac } => {
                write!(f, "add neigh {ip} lladdr {} on {VXLAN}", MacDisplay(mac))
            }
            Op::ReplaceNeigh { ip, mac } => {
                write!(
                    f,
                    "replace neigh {ip} lladdr {} on {VXLAN}",
                    MacDisplay(mac)
                )
            }
        }
    }
}

fn is_zero(mac: &Mac) -> bool {
    mac.iter().all(|b| *b == 0)
}

fn vxlan_matches(v: &VxlanState, d: &NetworkDesired) -> bool {
    v.vni == d.vni && v.local == Some(d.local_vtep) && v.port == d.port && !v.learning && v.proxy
}

/// The operations that turn `kernel` into `desired`. Applying them and
/// planning again yields no ops (tested below against a model of the kernel,
/// and in `tests/` against the real one).
pub fn plan_network(desired: &NetworkDesired, kernel: &KernelState) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut entries_del = Vec::new();
    let mut entries_add = Vec::new();
    if !kernel.namespace {
        ops.push(Op::CreateNamespace);
    }
    let bridge = if kernel.namespace {
        kernel.bridge.as_ref()
    } else {
        None
    };
    match bridge {
        None => {
            ops.push(Op::CreateBridge { mtu: desired.mtu });
            ops.push(Op::AddBridgeAddr(desired.gateway));
        }
        Some(b) => {
            if b.mtu != desired.mtu {
                ops.push(Op::SetMtu {
                    device: Device::Bridge,
                    mtu: desired.mtu,
                });
            }
            for a in &b.addrs {
                if *a != desired.gateway {
                    ops.push(Op::DelBridgeAddr(*a));
                }
            }
            if !b.addrs.contains(&desired.gateway) {
                ops.push(Op::AddBridgeAddr(desired.gateway));
            }
            if !b.up {
                ops.push(Op::SetUp(Device::Bridge));
            }
        }
    }

    let vxlan = if kernel.namespace {
        kernel.vxlan.as_ref()
    } else {
        None
    };
    if desired.encrypted {
        // No VXLAN device and no tables: frames reach other nodes only
        // through `dp0`, whose other end seals them. `dp0` itself is
        // created by the agent; here it is kept enslaved, up and sized.
        if vxlan.is_some() {
            ops.push(Op::DeleteVxlan);
        }
        if let Some(t) = kernel.tap.as_ref().filter(|_| kernel.namespace) {
            if t.mtu != desired.mtu {
                ops.push(Op::SetMtu {
                    device: Device::Tap,
                    mtu: desired.mtu,
                });
            }
            let attached = bridge.is_some_and(|b| t.controller == Some(b.index));
            if !attached || !t.up {
                ops.push(Op::AttachTap);
            }
        }
        return ops;
    }
    let empty_fdb = BTreeMap::new();
    let empty_neigh = BTreeMap::new();
    let (own_mac, kfdb, kneigh) = match vxlan {
        Some(v) if vxlan_matches(v, desired) => {
            if v.mtu != desired.mtu {
                ops.push(Op::SetMtu {
                    device: Device::Vxlan,
                    mtu: desired.mtu,
                });
            }
            let attached = bridge.is_some_and(|b| v.controller == Some(b.index));
            if !attached || !v.up {
                ops.push(Op::AttachVxlan);
            }
            (Some(v.mac), &kernel.fdb, &kernel.neigh)
        }
        other => {
            if other.is_some() {
                ops.push(Op::DeleteVxlan);
            }
            ops.push(Op::CreateVxlan {
                vni: desired.vni,
                local: desired.local_vtep,
                port: desired.port,
                mtu: desired.mtu,
            });
            // A fresh device has empty tables.
            (None, &empty_fdb, &empty_neigh)
        }
    };
    let untouchable = |mac: &Mac| is_zero(mac) || Some(*mac) == own_mac;

    for (mac, vtep) in &desired.fdb {
        if untouchable(mac) {
            continue;
        }
        match kfdb.get(mac).map(Vec::as_slice) {
            None | Some([]) => entries_add.push(Op::AddFdb {
                mac: *mac,
                vtep: *vtep,
            }),
            Some([one]) if one == vtep => {}
            Some([_]) => entries_add.push(Op::ReplaceFdb {
                mac: *mac,
                vtep: *vtep,
            }),
            Some(many) => {
                for w in many.iter().filter(|w| *w != vtep) {
                    entries_del.push(Op::DelFdb {
                        mac: *mac,
                        vtep: *w,
                    });
                }
                if !many.contains(vtep) {
                    entries_add.push(Op::AddFdb {
                        mac: *mac,
                        vtep: *vtep,
                    });
                }
            }
        }
    }
    for (mac, vteps) in kfdb {
        if untouchable(mac) || desired.fdb.contains_key(mac) {
            continue;
        }
        for w in vteps {
            entries_del.push(Op::DelFdb {
                mac: *mac,
                vtep: *w,
            });
        }
    }

    for (ip, mac) in &desired.neigh {
        match kneigh.get(ip) {
            None => entries_add.push(Op::AddNeigh { ip: *ip, mac: *mac }),
            Some(n) if n.mac == *mac && n.permanent => {}
            Some(_) => entries_add.push(Op::ReplaceNeigh { ip: *ip, mac: *mac }),
        }
    }
    for (ip, n) in kneigh {
        if !desired.neigh.contains_key(ip) {
            entries_del.push(Op::DelNeigh {
                ip: *ip,
                mac: n.mac,
            });
        }
    }

    ops.extend(entries_del);
    ops.extend(entries_add);
    ops
}

/// Which adopted/created networks are no longer desired and must be removed
/// with their namespace.
pub fn networks_to_remove<'a>(
    present: impl IntoIterator<Item = &'a str>,
    desired: &[NetworkDesired],
) -> Vec<String> {
    present
        .into_iter()
        .filter(|id| !desired.iter().any(|d| d.id == *id))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const OWN: Mac = [0x0a, 0, 0, 0, 0, 0x01];

    fn spec() -> NetworkSpec {
        NetworkSpec {
            id: "net1".to_string(),
            vni: 4097,
            subnet: "10.0.9.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 0, 9, 1),
            mtu: None,
            local_vtep: Ipv4Addr::new(192, 168, 0, 1),
            port: 4789,
            encrypted: false,
        }
    }

    fn ep(i: u8, vtep: u8) -> RemoteEndpoint {
        RemoteEndpoint {
            ip: Ipv4Addr::new(10, 0, 9, 10 + i),
            mac: [0x02, 0x42, 0, 0, 0, i],
            vtep: Ipv4Addr::new(192, 168, 0, vtep),
        }
    }

    fn desired(eps: &[RemoteEndpoint]) -> NetworkDesired {
        NetworkDesired::resolve(&spec(), eps, 1450).unwrap()
    }

    /// A model of what the kernel does with each op, to check idempotence.
    fn apply(mut k: KernelState, d: &NetworkDesired, ops: &[Op]) -> KernelState {
        for op in ops {
            match *op {
                Op::CreateNamespace => {
                    k = KernelState {
                        namespace: true,
                        ..Default::default()
                    }
                }
                Op::CreateBridge { mtu } => {
                    k.bridge = Some(BridgeState {
                        index: 2,
                        up: true,
                        mtu,
                        addrs: vec![],
                    })
                }
                Op::AddBridgeAddr(a) => k.bridge.as_mut().unwrap().addrs.push(a),
                Op::DelBridgeAddr(a) => k.bridge.as_mut().unwrap().addrs.retain(|x| *x != a),
                Op::DeleteVxlan => {
                    k.vxlan = None;
                    k.fdb.clear();
                    k.neigh.clear();
                }
                Op::CreateVxlan {
                    vni,
                    local,
                    port,
                    mtu,
                } => {
                    k.vxlan = Some(VxlanState {
                        index: 3,
                        up: true,
                        mtu,
                        mac: OWN,
                        controller: k.bridge.as_ref().map(|b| b.index),
                        vni,
                        local: Some(local),
                        port,
                        learning: false,
                        proxy: true,
                    });
                    // The own MAC shows up as an extra FDB entry.
                    k.fdb.insert(OWN, vec![d.local_vtep]);
                }
                Op::SetMtu { device, mtu } => match device {
                    Device::Bridge => k.bridge.as_mut().unwrap().mtu = mtu,
                    Device::Vxlan => k.vxlan.as_mut().unwrap().mtu = mtu,
                    Device::Tap => k.tap.as_mut().unwrap().mtu = mtu,
                },
                Op::SetUp(Device::Bridge) => k.bridge.as_mut().unwrap().up = true,
                Op::SetUp(Device::Vxlan) => k.vxlan.as_mut().unwrap().up = true,
                Op::SetUp(Device::Tap) => k.tap.as_mut().unwrap().up = true,
                Op::AttachTap => {
                    let bi = k.bridge.as_ref().unwrap().index;
                    let t = k.tap.as_mut().unwrap();
                    t.controller = Some(bi);
                    t.up = true;
                }
                Op::AttachVxlan => {
                    let bi = k.bridge.as_ref().unwrap().index;
                    let v = k.vxlan.as_mut().unwrap();
                    v.controller = Some(bi);
                    v.up = true;
                }
                Op::DelFdb { mac, vtep } => {
                    let list = k.fdb.get_mut(&mac).expect("deleting absent fdb");
                    assert!(list.contains(&vtep), "deleting absent remote");
                    list.retain(|w| *w != vtep);
                    if list.is_empty() {
                        k.fdb.remove(&mac);
                    }
                }
                Op::DelNeigh { ip, .. } => {
                    k.neigh.remove(&ip).expect("deleting absent neigh");
                }
                Op::AddFdb { mac, vtep } => {
                    assert!(!k.fdb.contains_key(&mac), "EEXIST on fdb add");
                    k.fdb.insert(mac, vec![vtep]);
                }
                Op::ReplaceFdb { mac, vtep } => {
                    k.fdb.insert(mac, vec![vtep]);
                }
                Op::AddNeigh { ip, mac } => {
                    assert!(!k.neigh.contains_key(&ip), "EEXIST on neigh add");
                    k.neigh.insert(
                        ip,
                        NeighState {
                            mac,
                            permanent: true,
                        },
                    );
                }
                Op::ReplaceNeigh { ip, mac } => {
                    k.neigh.insert(
                        ip,
                        NeighState {
                            mac,
                            permanent: true,
                        },
                    );
                }
            }
        }
        k
    }

    fn converge(d: &NetworkDesired, k: KernelState) -> KernelState {
        let ops = plan_network(d, &k);
        let k2 = apply(k, d, &ops);
        assert_eq!(plan_network(d, &k2), vec![], "not idempotent");
        k2
    }

    #[test]
    fn an_encrypted_network_has_a_bridge_and_no_vxlan_or_tables() {
        let mut s = spec();
        s.encrypted = true;
        let d = NetworkDesired::resolve(&s, &[ep(1, 2)], 1412).unwrap();
        assert!(d.fdb.is_empty() && d.neigh.is_empty());
        let ops = plan_network(&d, &KernelState::default());
        assert_eq!(
            ops,
            vec![
                Op::CreateNamespace,
                Op::CreateBridge { mtu: 1412 },
                Op::AddBridgeAddr("10.0.9.1/24".parse().unwrap()),
            ]
        );
        // A VXLAN device left from before goes; the TAP is kept attached,
        // up and at the network's MTU.
        let mut k = converge(&d, KernelState::default());
        k.vxlan = converge(&desired(&[]), KernelState::default()).vxlan;
        k.tap = Some(TapState {
            up: false,
            mtu: 1500,
            controller: None,
        });
        let ops = plan_network(&d, &k);
        assert_eq!(
            ops,
            vec![
                Op::DeleteVxlan,
                Op::SetMtu {
                    device: Device::Tap,
                    mtu: 1412
                },
                Op::AttachTap,
            ]
        );
        let bridge = k.bridge.as_ref().map(|b| b.index);
        k.vxlan = None;
        k.tap = Some(TapState {
            up: true,
            mtu: 1412,
            controller: bridge,
        });
        assert!(plan_network(&d, &k).is_empty());
    }

    #[test]
    fn an_encrypted_network_caps_the_mtu_option_at_what_fits_sealed() {
        let mut s = spec();
        s.encrypted = true;
        s.mtu = Some(9000);
        assert_eq!(NetworkDesired::resolve(&s, &[], 1412).unwrap().mtu, 1412);
        s.mtu = Some(1300);
        assert_eq!(NetworkDesired::resolve(&s, &[], 1412).unwrap().mtu, 1300);
        s.encrypted = false;
        s.mtu = Some(9000);
        assert_eq!(NetworkDesired::resolve(&s, &[], 1450).unwrap().mtu, 9000);
    }

    #[test]
    fn fresh_network_is_built_in_order() {
        let d = desired(&[ep(1, 2), ep(2, 3)]);
        let ops = plan_network(&d, &KernelState::default());
        assert_eq!(ops[0], Op::CreateNamespace);
        assert_eq!(ops[1], Op::CreateBridge { mtu: 1450 });
        assert_eq!(ops[2], Op::AddBridgeAddr("10.0.9.1/24".parse().unwrap()));
        assert!(matches!(
            ops[3],
            Op::CreateVxlan {
                vni: 4097,
                port: 4789,
                mtu: 1450,
                ..
            }
        ));
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, Op::AddFdb { .. }))
                .count(),
            2
        );
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, Op::AddNeigh { .. }))
                .count(),
            2
        );
        converge(&d, KernelState::default());
    }

    #[test]
    fn idempotent_through_changes() {
        let mut k = converge(
            &desired(&[ep(1, 2), ep(2, 3), ep(3, 3)]),
            KernelState::default(),
        );
        // Endpoint 2 leaves, 4 arrives, 3 moves to another VTEP.
        let d = desired(&[ep(1, 2), ep(3, 9), ep(4, 2)]);
        let ops = plan_network(&d, &k);
        assert!(ops.contains(&Op::DelFdb {
            mac: ep(2, 3).mac,
            vtep: ep(2, 3).vtep
        }));
        assert!(ops.contains(&Op::DelNeigh {
            ip: ep(2, 3).ip,
            mac: ep(2, 3).mac
        }));
        assert!(ops.contains(&Op::ReplaceFdb {
            mac: ep(3, 9).mac,
            vtep: ep(3, 9).vtep
        }));
        assert!(ops.contains(&Op::AddFdb {
            mac: ep(4, 2).mac,
            vtep: ep(4, 2).vtep
        }));
        // The moved endpoint is replaced, not deleted and re-added.
        assert!(!ops.contains(&Op::DelFdb {
            mac: ep(3, 3).mac,
            vtep: ep(3, 3).vtep
        }));
        assert_eq!(ops.len(), 5, "{ops:?}");
        k = converge(&d, k);
        assert_eq!(k.fdb.len(), 4); // three remotes + own MAC
        converge(&desired(&[]), k);
    }

    #[test]
    fn own_mac_entry_is_never_deleted() {
        let k = converge(&desired(&[ep(1, 2)]), KernelState::default());
        assert!(k.fdb.contains_key(&OWN));
        let ops = plan_network(&desired(&[]), &k);
        assert!(ops
            .iter()
            .all(|o| !matches!(o, Op::DelFdb { mac, .. } if *mac == OWN)));
        let k = converge(&desired(&[]), k);
        assert_eq!(k.fdb.keys().collect::<Vec<_>>(), vec![&OWN]);
        // A desired endpoint claiming the device's own MAC is not programmed over it.
        let mut bad = ep(5, 2);
        bad.mac = OWN;
        let ops = plan_network(&desired(&[bad]), &k);
        assert!(ops
            .iter()
            .all(|o| !matches!(o, Op::AddFdb { .. } | Op::ReplaceFdb { .. })));
    }

    #[test]
    fn hand_deleted_entry_is_restored_exactly() {
        let d = desired(&[ep(1, 2), ep(2, 3)]);
        let mut k = converge(&d, KernelState::default());
        k.fdb.remove(&ep(2, 3).mac);
        assert_eq!(
            plan_network(&d, &k),
            vec![Op::AddFdb {
                mac: ep(2, 3).mac,
                vtep: ep(2, 3).vtep
            }]
        );
        k.neigh.remove(&ep(1, 2).ip);
        k.fdb.insert(ep(2, 3).mac, vec![ep(2, 3).vtep]);
        assert_eq!(
            plan_network(&d, &k),
            vec![Op::AddNeigh {
                ip: ep(1, 2).ip,
                mac: ep(1, 2).mac
            }]
        );
    }

    #[test]
    fn several_remotes_for_one_mac_collapse_to_the_desired_one() {
        let d = desired(&[ep(1, 2)]);
        let mut k = converge(&d, KernelState::default());
        let mac = ep(1, 2).mac;
        k.fdb.insert(
            mac,
            vec![Ipv4Addr::new(192, 168, 0, 7), Ipv4Addr::new(192, 168, 0, 8)],
        );
        let ops = plan_network(&d, &k);
        assert_eq!(ops.len(), 3, "{ops:?}");
        // Deletions come before the addition, so the add does not hit EEXIST.
        assert!(ops[0].is_deletion() && ops[1].is_deletion());
        converge(&d, k.clone());
        k.fdb
            .insert(mac, vec![Ipv4Addr::new(192, 168, 0, 7), ep(1, 2).vtep]);
        assert_eq!(
            plan_network(&d, &k),
            vec![Op::DelFdb {
                mac,
                vtep: Ipv4Addr::new(192, 168, 0, 7)
            }]
        );
    }

    #[test]
    fn non_permanent_or_changed_neighbour_is_replaced() {
        let d = desired(&[ep(1, 2)]);
        let mut k = converge(&d, KernelState::default());
        k.neigh.insert(
            ep(1, 2).ip,
            NeighState {
                mac: ep(1, 2).mac,
                permanent: false,
            },
        );
        assert_eq!(
            plan_network(&d, &k),
            vec![Op::ReplaceNeigh {
                ip: ep(1, 2).ip,
                mac: ep(1, 2).mac
            }]
        );
        k.neigh.insert(
            ep(1, 2).ip,
            NeighState {
                mac: [2, 0, 0, 0, 0, 9],
                permanent: true,
            },
        );
        assert_eq!(
            plan_network(&d, &k),
            vec![Op::ReplaceNeigh {
                ip: ep(1, 2).ip,
                mac: ep(1, 2).mac
            }]
        );
    }

    #[test]
    fn changed_vni_recreates_the_device_and_all_entries() {
        let d = desired(&[ep(1, 2), ep(2, 2)]);
        let k = converge(&d, KernelState::default());
        let mut s = spec();
        s.vni = 5000;
        let d2 = NetworkDesired::resolve(&s, &[ep(1, 2), ep(2, 2)], 1450).unwrap();
        let ops = plan_network(&d2, &k);
        assert_eq!(ops[0], Op::DeleteVxlan);
        assert!(matches!(ops[1], Op::CreateVxlan { vni: 5000, .. }));
        assert_eq!(ops.len(), 2 + 4);
        converge(&d2, k);
    }

    #[test]
    fn mtu_gateway_and_link_state_drift_are_fixed() {
        let d = desired(&[]);
        let mut k = converge(&d, KernelState::default());
        k.bridge.as_mut().unwrap().up = false;
        k.bridge.as_mut().unwrap().addrs = vec!["10.0.9.254/24".parse().unwrap()];
        k.vxlan.as_mut().unwrap().controller = None;
        let mut s = spec();
        s.mtu = Some(1400);
        let d2 = NetworkDesired::resolve(&s, &[], 1450).unwrap();
        let ops = plan_network(&d2, &k);
        assert!(ops.contains(&Op::SetMtu {
            device: Device::Bridge,
            mtu: 1400
        }));
        assert!(ops.contains(&Op::SetMtu {
            device: Device::Vxlan,
            mtu: 1400
        }));
        assert!(ops.contains(&Op::DelBridgeAddr("10.0.9.254/24".parse().unwrap())));
        assert!(ops.contains(&Op::AddBridgeAddr("10.0.9.1/24".parse().unwrap())));
        assert!(ops.contains(&Op::SetUp(Device::Bridge)));
        assert!(ops.contains(&Op::AttachVxlan));
        converge(&d2, k);
    }

    #[test]
    fn local_endpoints_and_duplicates_are_filtered_stably() {
        let local = RemoteEndpoint {
            vtep: spec().local_vtep,
            ..ep(1, 1)
        };
        let a = ep(2, 2);
        let dup_mac = RemoteEndpoint {
            ip: Ipv4Addr::new(10, 0, 9, 99),
            ..ep(2, 5)
        };
        let d = desired(&[local, a, dup_mac]);
        assert_eq!(d.fdb.len(), 1);
        assert_eq!(d.fdb[&a.mac], a.vtep);
        assert_eq!(d.neigh.len(), 2);
    }

    #[test]
    fn specs_are_validated() {
        let mut s = spec();
        s.vni = 1 << 24;
        assert!(matches!(
            NetworkDesired::resolve(&s, &[], 1450),
            Err(NetError::InvalidSpec { .. })
        ));
        let mut s = spec();
        s.gateway = Ipv4Addr::new(10, 0, 10, 1);
        let e = NetworkDesired::resolve(&s, &[], 1450).unwrap_err();
        assert!(e.to_string().contains("net1"), "{e}");
        let mut s = spec();
        s.mtu = Some(10);
        assert!(NetworkDesired::resolve(&s, &[], 1450).is_err());
        for bad in ["", "..", "a/b", "."] {
            let mut s = spec();
            s.id = bad.to_string();
            assert!(matches!(
                NetworkDesired::resolve(&s, &[], 1450),
                Err(NetError::InvalidNetworkId { .. })
            ));
        }
        let mut s = spec();
        s.mtu = None;
        assert_eq!(NetworkDesired::resolve(&s, &[], 1450).unwrap().mtu, 1450);
    }

    #[test]
    fn namespace_missing_ignores_stale_kernel_view() {
        // If the namespace is gone, whatever the snapshot says about devices
        // is ignored and everything is built again.
        let d = desired(&[ep(1, 2)]);
        let mut k = converge(&d, KernelState::default());
        k.namespace = false;
        let ops = plan_network(&d, &k);
        assert_eq!(ops[0], Op::CreateNamespace);
        assert!(ops.contains(&Op::AddFdb {
            mac: ep(1, 2).mac,
            vtep: ep(1, 2).vtep
        }));
    }

    #[test]
    fn removal_set() {
        let d = vec![desired(&[])];
        assert_eq!(
            networks_to_remove(["net1", "old"], &d),
            vec!["old".to_string()]
        );
    }

    #[test]
    fn ops_display_name_the_entry() {
        let op = Op::AddFdb {
            mac: [2, 0x42, 0, 0, 0, 1],
            vtep: Ipv4Addr::new(10, 0, 0, 2),
        };
        assert_eq!(
            op.to_string(),
            "add fdb 02:42:00:00:00:01 dst 10.0.0.2 on vx0"
        );
    }

    #[test]
    fn pseudo_random_sequences_converge() {
        // Seeded walk over endpoint sets and VTEP moves; every step must be
        // idempotent after one plan.
        let mut seed: u64 = std::env::var("SHOAL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(7);
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut k = KernelState::default();
        for _ in 0..200 {
            let n = (next() % 30) as u8;
            let mut eps = Vec::new();
            for i in 0..n {
                if next() % 3 != 0 {
                    eps.push(ep(i, 2 + (next() % 4) as u8));
                }
            }
            k = converge(&desired(&eps), k);
        }
    }
}
