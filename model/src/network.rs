//! Overlay networks in the replicated store, and their allocation.
//!
//! Everything here runs inside Raft apply, so it is deterministic: subnets
//! come from the cluster's address pools in order (freed ones are reused),
//! VNIs from 4096 up, endpoint IPs lowest-free and MACs derived from the IP
//! (`02:42:` + the IPv4 bytes, as Docker does), unique per network.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// First VNI handed out (Docker's overlay driver starts at 4096 too).
pub const FIRST_VNI: u32 = 4096;
/// Largest VXLAN network identifier.
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// What `network create` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Id chosen by the proposer (25 base36 chars).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// `--subnet`, else allocated from the pools.
    pub subnet: Option<Ipv4Net>,
    /// `--gateway`, else the subnet's first host.
    pub gateway: Option<Ipv4Addr>,
    /// `--attachable`: standalone workloads (`shoal run`) may join.
    pub attachable: bool,
    /// `--ingress`: the routing-mesh network (only one).
    pub ingress: bool,
    /// `--internal`: no egress.
    pub internal: bool,
    /// `--opt encrypted`: IPsec between nodes.
    pub encrypted: bool,
    /// `--opt com.docker.network.driver.mtu=N`.
    pub mtu: Option<u32>,
    /// `--label k=v`.
    pub labels: BTreeMap<String, String>,
}

/// A network as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Always `overlay` for now.
    pub driver: String,
    /// Subnet.
    pub subnet: Ipv4Net,
    /// Gateway (on the bridge in every node's network namespace).
    pub gateway: Ipv4Addr,
    /// VXLAN network identifier.
    pub vni: u32,
    /// See [`NetworkSpec`].
    pub attachable: bool,
    /// See [`NetworkSpec`].
    pub ingress: bool,
    /// See [`NetworkSpec`].
    pub internal: bool,
    /// See [`NetworkSpec`].
    pub encrypted: bool,
    /// See [`NetworkSpec`].
    pub mtu: Option<u32>,
    /// See [`NetworkSpec`].
    pub labels: BTreeMap<String, String>,
    /// Unix ms of creation.
    pub created_at: u64,
    /// Raft index of the last change.
    pub version: u64,
    /// Attached endpoints by id.
    pub endpoints: BTreeMap<String, Endpoint>,
    /// The address given out last: the next one is searched after it
    /// (serial allocation, as swarm does), so a freed address is not
    /// handed out again until the subnet wraps — the task that held it
    /// may still be stopping on its node (same MAC, same host veth).
    #[serde(default)]
    pub last_ip: Option<Ipv4Addr>,
}

/// One attachment of a workload to a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Endpoint id.
    pub id: String,
    /// Workload name.
    pub name: String,
    /// Node it runs on.
    pub node: String,
    /// Address in the network.
    pub ip: Ipv4Addr,
    /// MAC derived from the address.
    pub mac: [u8; 6],
}

/// Why a network command was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum NetworkError {
    /// Names are unique.
    #[error("network with name {0} already exists")]
    NameInUse(String),
    /// Subnets may not overlap.
    #[error("subnet {subnet} of network {name} overlaps with network {other} ({other_subnet})")]
    Overlap {
        /// The new network.
        name: String,
        /// Its subnet.
        subnet: Ipv4Net,
        /// The existing network.
        other: String,
        /// Its subnet.
        other_subnet: Ipv4Net,
    },
    /// `--gateway` outside the subnet (or its network/broadcast address).
    #[error("gateway {gateway} is not a usable address of subnet {subnet}")]
    BadGateway {
        /// Gateway asked for.
        gateway: Ipv4Addr,
        /// Subnet.
        subnet: Ipv4Net,
    },
    /// Subnet too small to be useful.
    #[error("subnet {0} is too small: use a prefix of /29 or shorter")]
    TooSmall(Ipv4Net),
    /// The pools have no free subnet left.
    #[error("no free subnet of /{0} left in the default address pools")]
    PoolsExhausted(u8),
    /// No VNI left.
    #[error("no free VXLAN network identifier left")]
    VnisExhausted,
    /// Only one ingress network.
    #[error("only one ingress network can exist (network {0} is the ingress network)")]
    IngressExists(String),
    /// Unknown network.
    #[error("network {0} not found")]
    NotFound(String),
    /// `network rm` while attached.
    #[error("network {name} has active endpoints ({endpoints}); remove them first")]
    InUse {
        /// Network.
        name: String,
        /// Their names.
        endpoints: String,
    },
    /// No address left.
    #[error("network {0} is full: no free address left")]
    Full(String),
    /// Asked-for address unusable or taken.
    #[error("address {ip} is not available in network {name}")]
    AddressUnavailable {
        /// Network.
        name: String,
        /// Address.
        ip: Ipv4Addr,
    },
    /// Duplicate endpoint id.
    #[error("endpoint {0} already exists")]
    EndpointExists(String),
}

/// The MAC Docker derives from an IPv4 address.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

fn usable(net: &Ipv4Net, ip: Ipv4Addr) -> bool {
    net.contains(&ip) && ip != net.network() && ip != net.broadcast()
}

/// Create a network in `nets` (keyed by id). `pools`/`mask` are the
/// cluster's default address pools.
pub fn create(
    nets: &mut BTreeMap<String, Network>,
    spec: NetworkSpec,
    pools: &[Ipv4Net],
    mask: u8,
    at: u64,
    index: u64,
) -> Result<(), NetworkError> {
    if nets.values().any(|n| n.name == spec.name) || nets.contains_key(&spec.id) {
        return Err(NetworkError::NameInUse(spec.name));
    }
    if spec.ingress {
        if let Some(i) = nets.values().find(|n| n.ingress) {
            return Err(NetworkError::IngressExists(i.name.clone()));
        }
    }
    let subnet = match spec.subnet {
        Some(s) => {
            let s = s.trunc();
            if s.prefix_len() > 29 {
                return Err(NetworkError::TooSmall(s));
            }
            if let Some(o) = nets.values().find(|n| overlaps(&n.subnet, &s)) {
                return Err(NetworkError::Overlap {
                    name: spec.name,
                    subnet: s,
                    other: o.name.clone(),
                    other_subnet: o.subnet,
                });
            }
            s
        }
        None => allocate_subnet(nets, pools, mask)?,
    };
    let gateway = match spec.gateway {
        Some(g) if usable(&subnet, g) => g,
        Some(g) => return Err(NetworkError::BadGateway { gateway: g, subnet }),
        None => subnet
            .hosts()
            .next()
            .ok_or(NetworkError::TooSmall(subnet))?,
    };
    let vni = (FIRST_VNI..=MAX_VNI)
        .find(|v| !nets.values().any(|n| n.vni == *v))
        .ok_or(NetworkError::VnisExhausted)?;
    nets.insert(
        spec.id.clone(),
        Network {
            id: spec.id,
            name: spec.name,
            driver: "overlay".into(),
            subnet,
            gateway,
            vni,
            attachable: spec.attachable,
            ingress: spec.ingress,
            internal: spec.internal,
            encrypted: spec.encrypted,
            mtu: spec.mtu,
            labels: spec.labels,
            created_at: at,
            version: index,
            endpoints: BTreeMap::new(),
            last_ip: None,
        },
    );
    Ok(())
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn allocate_subnet(
    nets: &BTreeMap<String, Network>,
    pools: &[Ipv4Net],
    mask: u8,
) -> Result<Ipv4Net, NetworkError> {
    for pool in pools {
        let Ok(subnets) = pool.subnets(mask) else {
            continue;
        };
        // Bounded: a /8 pool at /24 is 65,536 candidates, each checked
        // against the (few) existing networks.
        for s in subnets {
            if !nets.values().any(|n| overlaps(&n.subnet, &s)) {
                return Ok(s);
            }
        }
    }
    Err(NetworkError::PoolsExhausted(mask))
}

/// Find a network by exact id, exact name, or unique id prefix.
pub fn find<'a>(nets: &'a BTreeMap<String, Network>, key: &str) -> Option<&'a Network> {
    nets.get(key)
        .or_else(|| nets.values().find(|n| n.name == key))
        .or_else(|| {
            let mut m = nets
                .values()
                .filter(|n| !key.is_empty() && n.id.starts_with(key));
            match (m.next(), m.next()) {
                (Some(n), None) => Some(n),
                _ => None,
            }
        })
}

/// Remove a network with no endpoints.
/// `network rm`: refused while an endpoint is attached, except those
/// `going` says are on their way out (tasks told to shut down, as
/// swarmkit lets a stack's network go with its services).
pub fn remove(
    nets: &mut BTreeMap<String, Network>,
    key: &str,
    going: impl Fn(&str) -> bool,
) -> Result<(), NetworkError> {
    let n = find(nets, key).ok_or_else(|| NetworkError::NotFound(key.to_string()))?;
    let staying: Vec<&str> = n
        .endpoints
        .values()
        .filter(|e| !going(&e.id))
        .map(|e| e.name.as_str())
        .collect();
    if !staying.is_empty() {
        return Err(NetworkError::InUse {
            name: n.name.clone(),
            endpoints: staying.join(", "),
        });
    }
    let id = n.id.clone();
    nets.remove(&id);
    Ok(())
}

/// Attach an endpoint: the first free address after the last one given
/// out, wrapping around (or the one asked for).
pub fn attach(
    net: &mut Network,
    id: String,
    name: String,
    node: String,
    ip: Option<Ipv4Addr>,
    index: u64,
) -> Result<Endpoint, NetworkError> {
    if net.endpoints.contains_key(&id) {
        return Err(NetworkError::EndpointExists(id));
    }
    let mut used: std::collections::BTreeSet<Ipv4Addr> =
        net.endpoints.values().map(|e| e.ip).collect();
    used.insert(net.gateway);
    let ip = match ip {
        Some(a) if usable(&net.subnet, a) && !used.contains(&a) => a,
        Some(a) => {
            return Err(NetworkError::AddressUnavailable {
                name: net.name.clone(),
                ip: a,
            })
        }
        None => {
            let free = |a: &Ipv4Addr| !used.contains(a);
            let after = |a: &Ipv4Addr| net.last_ip.is_none_or(|l| *a > l);
            net.subnet
                .hosts()
                .find(|a| free(a) && after(a))
                .or_else(|| net.subnet.hosts().find(free))
                .ok_or_else(|| NetworkError::Full(net.name.clone()))?
        }
    };
    net.last_ip = Some(ip);
    let ep = Endpoint {
        id: id.clone(),
        name,
        node,
        ip,
        mac: mac_for(ip),
    };
    net.endpoints.insert(id, ep.clone());
    net.version = index;
    Ok(ep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, name: &str) -> NetworkSpec {
        NetworkSpec {
            id: id.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    fn pools() -> Vec<Ipv4Net> {
        vec!["10.0.0.0/8".parse().unwrap()]
    }

    #[test]
    fn sequential_subnets_vnis_and_reuse() {
        let mut nets = BTreeMap::new();
        create(&mut nets, spec("a", "ingress"), &pools(), 24, 0, 1).unwrap();
        create(&mut nets, spec("b", "app"), &pools(), 24, 0, 2).unwrap();
        assert_eq!(nets["a"].subnet.to_string(), "10.0.0.0/24");
        assert_eq!(nets["a"].gateway.to_string(), "10.0.0.1");
        assert_eq!(nets["b"].subnet.to_string(), "10.0.1.0/24");
        assert_eq!((nets["a"].vni, nets["b"].vni), (4096, 4097));
        remove(&mut nets, "ingress", |_| false).unwrap();
        create(&mut nets, spec("c", "again"), &pools(), 24, 0, 3).unwrap();
        assert_eq!(nets["c"].subnet.to_string(), "10.0.0.0/24");
        assert_eq!(nets["c"].vni, 4096);
    }

    #[test]
    fn overlap_names_both_networks() {
        let mut nets = BTreeMap::new();
        let mut s = spec("a", "one");
        s.subnet = Some("10.0.9.0/24".parse().unwrap());
        create(&mut nets, s, &pools(), 24, 0, 1).unwrap();
        let mut s = spec("b", "two");
        s.subnet = Some("10.0.9.0/25".parse().unwrap());
        let e = create(&mut nets, s, &pools(), 24, 0, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("two") && e.contains("one"), "{e}");
        // The pool skips the taken subnet.
        create(&mut nets, spec("c", "three"), &pools(), 24, 0, 3).unwrap();
        assert_eq!(nets["c"].subnet.to_string(), "10.0.0.0/24");
    }

    #[test]
    fn gateway_checks_ingress_and_names() {
        let mut nets = BTreeMap::new();
        let mut s = spec("a", "one");
        s.subnet = Some("10.1.0.0/24".parse().unwrap());
        s.gateway = Some("10.2.0.1".parse().unwrap());
        assert!(matches!(
            create(&mut nets, s, &pools(), 24, 0, 1),
            Err(NetworkError::BadGateway { .. })
        ));
        let mut i = spec("i", "ingress");
        i.ingress = true;
        create(&mut nets, i, &pools(), 24, 0, 1).unwrap();
        let mut i2 = spec("j", "ingress2");
        i2.ingress = true;
        assert!(matches!(
            create(&mut nets, i2, &pools(), 24, 0, 2),
            Err(NetworkError::IngressExists(_))
        ));
        assert!(matches!(
            create(&mut nets, spec("k", "ingress"), &pools(), 24, 0, 2),
            Err(NetworkError::NameInUse(_))
        ));
    }

    #[test]
    fn a_freed_address_is_not_handed_out_again_before_the_subnet_wraps() {
        let mut nets = BTreeMap::new();
        let mut s = spec("a", "app");
        s.subnet = Some("10.1.0.0/29".parse().unwrap());
        create(&mut nets, s, &pools(), 24, 0, 1).unwrap();
        let net = nets.get_mut("a").unwrap();
        let at = |id: &str, net: &mut Network| {
            attach(net, id.into(), id.into(), "n".into(), None, 2)
                .unwrap()
                .ip
                .to_string()
        };
        assert_eq!(at("e1", net), "10.1.0.2");
        assert_eq!(at("e2", net), "10.1.0.3");
        net.endpoints.remove("e1");
        // .2 is free again, but the next address comes after .3.
        assert_eq!(at("e3", net), "10.1.0.4");
        assert_eq!(at("e4", net), "10.1.0.5");
        assert_eq!(at("e5", net), "10.1.0.6");
        // The end of the subnet: wrap around to what is free.
        assert_eq!(at("e6", net), "10.1.0.2");
    }

    #[test]
    fn endpoints_fill_a_24_and_block_removal() {
        let mut nets = BTreeMap::new();
        create(&mut nets, spec("a", "app"), &pools(), 24, 0, 1).unwrap();
        let net = nets.get_mut("a").unwrap();
        for i in 0..253 {
            let ep = attach(net, format!("e{i}"), format!("w{i}"), "n".into(), None, 2).unwrap();
            assert_eq!(ep.mac, mac_for(ep.ip));
        }
        // .0 network, .1 gateway, .2-.254 = 253 endpoints, .255 broadcast.
        let e = attach(net, "x".into(), "x".into(), "n".into(), None, 3).unwrap_err();
        assert_eq!(e.to_string(), "network app is full: no free address left");
        let e = remove(&mut nets, "app", |_| false).unwrap_err().to_string();
        assert!(e.contains("w0") && e.contains("active endpoints"), "{e}");
        // Endpoints on their way out (tasks told to shut down) do not
        // block; the others are named.
        let e = remove(&mut nets, "app", |id| id != "e7")
            .unwrap_err()
            .to_string();
        assert!(e.contains("(w7)"), "{e}");
        remove(&mut nets, "app", |_| true).unwrap();
        assert!(nets.is_empty());
    }
}
