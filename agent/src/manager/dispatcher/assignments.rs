//! What the leader tells each node to have, computed from the store: its
//! own record, the managers, trusted roots, the key ring, its tasks with
//! their networks (without endpoint lists) and the services they can
//! reach (VIPs, DNS, routing mesh). Pure functions of the state.

use std::collections::{BTreeMap, BTreeSet};

use shoal_model::service::{PublishMode, TaskState};
use shoal_model::state::{NodeStatus, State};
use shoal_model::NodeId;

use crate::manager::managers_of;
use crate::proto::session::{ingress_endpoint_id, AssignedTask, Assignments, ServiceView};

/// Views of the services visible on `nets` (sharing a network), and of
/// every service publishing ports through the routing mesh.
pub fn service_views(state: &State, nets: &BTreeSet<String>) -> Vec<ServiceView> {
    let up = |node: &str| {
        state
            .nodes
            .values()
            .any(|n| n.id.as_str() == node && n.status != NodeStatus::Down)
    };
    let ingress = state.networks.values().find(|n| n.ingress);
    state
        .services
        .values()
        .filter(|s| {
            s.task_networks(ingress).iter().any(|n| nets.contains(n))
                || s.spec.ports.iter().any(|p| p.mode == PublishMode::Ingress)
        })
        .map(|s| ServiceView {
            id: s.id.clone(),
            name: s.spec.name.clone(),
            endpoint_mode: s.spec.endpoint_mode,
            vips: s.vips.clone(),
            ports: s.spec.ports.clone(),
            backends: state
                .tasks
                .values()
                .filter(|t| t.service == s.id && t.state == TaskState::Running)
                .filter(|t| t.desired == TaskState::Running && up(&t.node))
                .flat_map(|t| t.endpoints.iter().map(|(n, e)| (n.clone(), e.ip)))
                .collect(),
        })
        .collect()
}

/// Compute a node's assignments from the store.
pub fn assignments_of(state: &State, node: &NodeId) -> Assignments {
    let cluster = state.cluster.as_ref();
    let a = Assignments {
        version: state.index,
        node: state.nodes.get(node).cloned(),
        managers: managers_of(state),
        roots_pem: cluster.map(|c| c.ca.trusted_roots()).unwrap_or_default(),
        keys: state.keys.clone(),
        heartbeat_ms: cluster.map(|c| c.heartbeat_period_ms).unwrap_or(5000),
        data_path_port: cluster.map(|c| c.data_path_port).unwrap_or(4789),
        tasks: Vec::new(),
        networks: BTreeMap::new(),
        services: Vec::new(),
        ingress_endpoint: None,
    };
    with_tasks(a, state, node)
}

fn with_tasks(mut a: Assignments, state: &State, node: &NodeId) -> Assignments {
    let ingress = state.networks.values().find(|n| n.ingress);
    a.tasks = state
        .tasks
        .values()
        .filter(|t| t.node == node.as_str() && !t.state.is_terminal())
        .map(|t| {
            let spec = state.services.get(&t.service).map(|s| &s.spec);
            AssignedTask {
                task: t.clone(),
                command: spec.map(|s| s.command.clone()).unwrap_or_default(),
                env: spec.map(|s| s.env.clone()).unwrap_or_default(),
            }
        })
        .collect();
    let mut nets: BTreeSet<String> = a
        .tasks
        .iter()
        .flat_map(|t| t.task.endpoints.keys().cloned())
        .collect();
    a.ingress_endpoint = ingress.and_then(|i| i.endpoints.get(&ingress_endpoint_id(node)).cloned());
    if let (Some(i), Some(_)) = (ingress, &a.ingress_endpoint) {
        nets.insert(i.id.clone());
    }
    a.services = service_views(state, &nets);
    a.networks = nets
        .iter()
        .filter_map(|n| state.networks.get(n))
        .map(|n| {
            let mut n = n.clone();
            n.endpoints.clear();
            (n.id.clone(), n)
        })
        .collect();
    a
}
