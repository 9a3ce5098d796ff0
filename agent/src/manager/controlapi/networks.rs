//! Control API for networks: `network create / ls / inspect [--verbose] /
//! rm`, and endpoint allocation for `shoal run` (allocation itself
//! happens in Raft apply, so every manager agrees).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use shoal_api::{ApiError, ErrorCode};
use shoal_model::network::{self, Endpoint, Network, NetworkSpec};
use shoal_model::state::{Command, Node};
use shoal_model::{now_ms, NodeId};

use crate::manager::Manager;
use crate::proto::gossip::{EncryptionStatus, NetStatus, ENCRYPTION_MODE, STATUS_TABLE};

/// `network create`: allocation happens in Raft apply.
pub async fn create(m: &Manager, mut spec: NetworkSpec) -> Result<String, ApiError> {
    spec.id = NodeId::generate().to_string();
    let id = spec.id.clone();
    m.store()
        .propose(Command::CreateNetwork { spec, at: now_ms() })
        .await?;
    Ok(id)
}

/// Allocate an endpoint for a workload of `node` on an attachable
/// network (manager side).
pub async fn allocate_endpoint(
    m: &Manager,
    network: &str,
    name: String,
    node: String,
    ip: Option<Ipv4Addr>,
) -> Result<(Network, Endpoint), ApiError> {
    let store = m.store();
    let key = network.to_string();
    let net = store
        .read(move |s| network::find(&s.networks, &key).cloned())
        .await?
        .ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, format!("network {network} not found"))
        })?;
    if !net.attachable {
        return Err(ApiError::invalid(format!(
            "network {} is not attachable: create it with --attachable to run standalone workloads on it",
            net.name
        )));
    }
    let id = NodeId::generate().to_string();
    store
        .propose(Command::AttachEndpoint {
            network: net.id.clone(),
            id: id.clone(),
            name,
            node,
            ip,
        })
        .await?;
    let nid = net.id.clone();
    let net = store
        .read_local(move |s| s.networks.get(&nid).cloned())
        .await?
        .ok_or_else(|| ApiError::internal("network vanished"))?;
    let ep = net
        .endpoints
        .get(&id)
        .cloned()
        .ok_or_else(|| ApiError::internal("endpoint vanished"))?;
    Ok((net, ep))
}

/// `network rm`. The ingress network goes only while no service publishes
/// a port through it (swarmkit's rule); the routing-mesh sandboxes' own
/// endpoints, on their way out once nothing publishes, do not hold it.
pub async fn remove(m: &Manager, network: &str) -> Result<String, ApiError> {
    let key = network.to_string();
    let (ingress, users) = m
        .store()
        .read(move |s| {
            let Some(n) = network::find(&s.networks, &key).filter(|n| n.ingress) else {
                return (None, Vec::new());
            };
            let sandboxes: Vec<String> = s
                .nodes
                .keys()
                .map(crate::proto::session::ingress_endpoint_id)
                .filter(|id| n.endpoints.contains_key(id))
                .collect();
            let users: Vec<String> = s
                .services
                .values()
                .filter(|svc| {
                    svc.spec
                        .ports
                        .iter()
                        .any(|p| p.mode == shoal_model::service::PublishMode::Ingress)
                })
                .map(|svc| svc.spec.name.clone())
                .collect();
            (Some((n.id.clone(), sandboxes)), users)
        })
        .await?;
    if let Some((net, sandboxes)) = ingress {
        match users.as_slice() {
            [] => {}
            [one] => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "ingress network cannot be removed because service {one} depends on it"
                    ),
                ))
            }
            many => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "ingress network cannot be removed because services {} depend on it",
                        many.join(", ")
                    ),
                ))
            }
        }
        for id in sandboxes {
            m.store()
                .propose(Command::DetachEndpoint {
                    network: net.clone(),
                    id,
                })
                .await?;
        }
    }
    m.store()
        .propose(Command::RemoveNetwork {
            network: network.to_string(),
        })
        .await?;
    Ok(network.to_string())
}

/// `network ls` (no names) / `network inspect NAME...`: docker-like
/// documents, with the data-path addresses of nodes that have
/// endpoints as peers.
pub async fn inspect(m: &Manager, names: &[String]) -> Result<Vec<serde_json::Value>, ApiError> {
    let (nets, nodes, key_ids, port) = m
        .store()
        .read(|s| {
            let port = s.cluster.as_ref().map_or(4789, |c| c.data_path_port);
            let ids: Vec<u32> = s.dataplane_keys.iter().map(|k| k.id).collect();
            (s.networks.clone(), s.nodes.clone(), ids, port)
        })
        .await?;
    let selected: Vec<_> = if names.is_empty() {
        nets.values().cloned().collect()
    } else {
        names
            .iter()
            .map(|k| {
                network::find(&nets, k).cloned().ok_or_else(|| {
                    ApiError::new(ErrorCode::NotFound, format!("network {k} not found"))
                })
            })
            .collect::<Result<_, _>>()?
    };
    Ok(selected
        .iter()
        .map(|n| network_doc(n, &nodes, &key_ids, port))
        .collect())
}

/// `network inspect --verbose`: each node's view of each network from
/// the `netstatus` gossip table ("Nodes": per host name, its VTEP,
/// peers, and kernel-vs-desired differences).
pub async fn add_node_views(m: &Manager, docs: &mut [serde_json::Value]) -> Result<(), ApiError> {
    let nodes = m.store().read(|s| s.nodes.clone()).await?;
    let statuses: Vec<NetStatus> = m
        .gossip
        .get()
        .map(|g| g.entries(STATUS_TABLE))
        .unwrap_or_default()
        .iter()
        .filter_map(|e| serde_json::from_slice(&e.value).ok())
        .collect();
    for d in docs.iter_mut() {
        let id = d["Id"].as_str().unwrap_or_default().to_string();
        let mut views = serde_json::Map::new();
        for st in statuses.iter().filter(|s| s.network == id) {
            let name = nodes
                .values()
                .find(|n| n.id.as_str() == st.node)
                .map(|n| n.hostname.clone())
                .unwrap_or_else(|| st.node.clone());
            views.insert(
                name,
                serde_json::json!({
                    "NodeId": st.node,
                    "VTEP": st.vtep,
                    "Peers": st.peers,
                    "InSync": st.in_sync,
                    "Differences": st.differences,
                    "TotalDifferences": st.total_differences,
                    "Encryption": st.encryption.as_ref().map(encryption_view),
                }),
            );
        }
        d["Nodes"] = serde_json::Value::Object(views);
    }
    Ok(())
}

/// One node's encrypted data path in `network inspect --verbose`.
fn encryption_view(e: &EncryptionStatus) -> serde_json::Value {
    let peers: Vec<serde_json::Value> = e
        .peers
        .iter()
        .map(|p| {
            serde_json::json!({
                "Node": p.node,
                "TxPackets": p.tx_packets,
                "TxBytes": p.tx_bytes,
                "RxPackets": p.rx_packets,
                "RxBytes": p.rx_bytes,
                "AuthFailures": p.auth_failures,
                "Replays": p.replays,
                "UnknownKey": p.unknown_key,
                "StaleEpoch": p.stale_epoch,
                "Malformed": p.malformed,
                "NoCommonKey": p.no_common_key,
                "Spoofed": p.spoofed,
            })
        })
        .collect();
    serde_json::json!({
        "Mode": e.mode,
        "KeyIds": e.key_ids,
        "Port": e.port,
        "Epoch": e.epoch,
        "Peers": peers,
        "UnknownPeer": e.unknown_peer,
        "BroadcastDropped": e.broadcast_dropped,
    })
}

/// A network as `network inspect` shows it (docker's field names);
/// `key_ids` is the data-plane ring (shown for encrypted networks, never
/// the keys), `data_path_port` the cluster's VXLAN port.
fn network_doc(
    n: &Network,
    nodes: &BTreeMap<NodeId, Node>,
    key_ids: &[u32],
    data_path_port: u16,
) -> serde_json::Value {
    let mut options = serde_json::Map::new();
    options.insert(
        "com.docker.network.driver.overlay.vxlanid_list".into(),
        n.vni.to_string().into(),
    );
    if n.encrypted {
        options.insert("encrypted".into(), "".into());
    }
    if let Some(m) = n.mtu {
        options.insert("com.docker.network.driver.mtu".into(), m.to_string().into());
    }
    let containers: serde_json::Map<String, serde_json::Value> = n
        .endpoints
        .values()
        .map(|e| {
            (
                e.id.clone(),
                serde_json::json!({
                    "Name": e.name,
                    "Node": e.node,
                    "IPv4Address": format!("{}/{}", e.ip, n.subnet.prefix_len()),
                    "MacAddress": e.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
                }),
            )
        })
        .collect();
    let mut peer_nodes: Vec<&str> = n.endpoints.values().map(|e| e.node.as_str()).collect();
    peer_nodes.sort_unstable();
    peer_nodes.dedup();
    let peers: Vec<serde_json::Value> = peer_nodes
        .iter()
        .filter_map(|id| nodes.values().find(|x| x.id.as_str() == *id))
        .map(|x| serde_json::json!({"Name": x.hostname, "IP": x.data_path_addr.to_string()}))
        .collect();
    serde_json::json!({
        "Name": n.name,
        "Id": n.id,
        "Created": n.created_at,
        "Scope": "swarm",
        "Driver": n.driver,
        "IPAM": {"Driver": "default", "Config": [{"Subnet": n.subnet.to_string(), "Gateway": n.gateway.to_string()}]},
        "Internal": n.internal,
        "Attachable": n.attachable,
        "Ingress": n.ingress,
        "Options": options,
        "Labels": n.labels,
        "Containers": containers,
        "Peers": peers,
        "Version": n.version,
        "Encryption": if n.encrypted {
            serde_json::json!({
                "Mode": ENCRYPTION_MODE,
                "Cipher": "AES-256-GCM",
                "KeyIds": key_ids,
                "DefaultPort": data_path_port.wrapping_add(1),
            })
        } else {
            serde_json::Value::Null
        },
    })
}
