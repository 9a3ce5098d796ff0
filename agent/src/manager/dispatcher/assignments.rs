//! What the leader tells each node to have, computed from the store: its
//! own record, the managers, trusted roots, the key ring, its tasks with
//! their networks (without endpoint lists) and the services they can
//! reach (VIPs, DNS, routing mesh). Pure functions of the state.

use std::collections::{BTreeMap, BTreeSet};

use shoal_model::configs::{self, FileKind};
use shoal_model::service::{ContainerSpec, PublishMode, TaskState};
use shoal_model::state::{NodeStatus, State};
use shoal_model::NodeId;

use crate::manager::managers_of;
use crate::proto::session::{
    ingress_endpoint_id, AssignedTask, Assignments, ServiceView, TaskFile,
};

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
            aliases: s.spec.aliases.clone(),
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
        gossip_keys: state
            .gossip_keys
            .iter()
            .map(|(n, k)| (n.to_string(), k.clone()))
            .collect(),
        dataplane_keys: state.dataplane_keys.clone(),
    };
    with_tasks(a, state, node)
}

/// The configs and secrets a task's container mounts, with their data
/// (sent only to the node running the task).
fn task_files(state: &State, c: &ContainerSpec) -> Vec<TaskFile> {
    [FileKind::Config, FileKind::Secret]
        .into_iter()
        .flat_map(|kind| {
            configs::refs(c, kind).iter().filter_map(move |r| {
                let f = state.files(kind).get(&r.id)?;
                Some(TaskFile {
                    path: kind.path(&r.target),
                    data: f.data.clone(),
                    uid: r.uid.parse().unwrap_or(0),
                    gid: r.gid.parse().unwrap_or(0),
                    mode: r.mode,
                })
            })
        })
        .collect()
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
                image: spec.map(|s| s.image.clone()).unwrap_or_default(),
                container: spec.map(|s| s.container.clone()),
                files: spec
                    .map(|s| task_files(state, &s.container))
                    .unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::testkit::World;
    use shoal_model::state::Command;

    fn node_ids(w: &World) -> Vec<NodeId> {
        w.state.nodes.keys().cloned().collect()
    }

    #[test]
    fn a_node_gets_its_own_tasks_with_their_spec_and_networks() {
        let mut w = World::new(3);
        w.create(6);
        w.settle();
        for id in node_ids(&w) {
            let a = assignments_of(&w.state, &id);
            assert_eq!(a.version, w.state.index);
            assert_eq!(a.node.as_ref().map(|n| &n.id), Some(&id));
            assert_eq!(a.tasks.len(), 2, "6 replicas spread over 3 nodes");
            for t in &a.tasks {
                assert_eq!(t.task.node, id.as_str());
                assert_eq!(t.command, vec!["sleep".to_string(), "1000".to_string()]);
            }
            // The task's network, without the endpoint list (which grows
            // with the cluster and is gossiped instead).
            assert_eq!(a.networks.len(), 1);
            assert!(a
                .networks
                .values()
                .all(|n| n.name == "app" && n.endpoints.is_empty()));
            assert!(a.ingress_endpoint.is_none());
            assert_eq!(a.heartbeat_ms, 1000);
            assert_eq!(
                a.managers.len(),
                0,
                "the test cluster's manager has no raft id"
            );
        }
    }

    #[test]
    fn ended_tasks_are_not_assigned_and_a_node_without_tasks_gets_no_networks() {
        let mut w = World::new(3);
        w.create(1);
        w.settle();
        let holder = w.state.tasks.values().next().unwrap().node.clone();
        let idle: Vec<_> = node_ids(&w)
            .into_iter()
            .filter(|n| n.as_str() != holder)
            .collect();
        for id in &idle {
            let a = assignments_of(&w.state, id);
            assert!(a.tasks.is_empty() && a.networks.is_empty() && a.services.is_empty());
        }
        w.apply(Command::RemoveService {
            service: "svc1".into(),
            at: w.now,
        });
        w.settle();
        let holder: NodeId = holder.parse().unwrap();
        assert!(assignments_of(&w.state, &holder).tasks.is_empty());
    }

    #[test]
    fn services_list_running_backends_on_nodes_that_are_up() {
        let mut w = World::new(3);
        w.create(3);
        w.settle();
        let id = node_ids(&w)[0].clone();
        let a = assignments_of(&w.state, &id);
        assert_eq!(a.services.len(), 1);
        let web = &a.services[0];
        assert_eq!(web.name, "web");
        assert_eq!(web.vips.len(), 1);
        assert_eq!(web.backends.len(), 3);
        // A node goes down: its task's address leaves every view at once.
        let down = node_ids(&w)[1].clone();
        w.apply(Command::UpdateNode {
            id: down,
            update: shoal_model::state::NodeUpdate {
                status: Some(NodeStatus::Down),
                ..Default::default()
            },
            at: w.now,
        });
        let a = assignments_of(&w.state, &id);
        assert_eq!(a.services[0].backends.len(), 2);
    }

    #[test]
    fn same_as_ignores_only_the_version() {
        let mut w = World::new(2);
        w.create(2);
        w.settle();
        let id = node_ids(&w)[0].clone();
        let a = assignments_of(&w.state, &id);
        let mut b = a.clone();
        b.version += 7;
        assert!(a.same_as(&b));
        b.heartbeat_ms += 1;
        assert!(!a.same_as(&b));
    }
}
