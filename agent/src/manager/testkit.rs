//! A small in-memory cluster for the manager's unit tests: a state built
//! through real commands, and a scheduler run to a fixed point with every
//! node reporting its tasks.
#![allow(clippy::unwrap_used)]

use shoal_model::service::{EndpointMode, RestartCondition, ServiceSpec, TaskState};
use shoal_model::state::{Availability, CaState, Cluster, Command, Node, NodeStatus, State};
use shoal_model::{NodeId, Role};

use super::scheduler::plan;

pub fn cluster() -> Cluster {
    Cluster {
        id: "c".into(),
        created_at: 0,
        ca: CaState {
            cert_pem: String::new(),
            key_pem: String::new(),
            previous_roots: vec![],
        },
        worker_secret: String::new(),
        manager_secret: String::new(),
        default_addr_pools: vec!["10.0.0.0/8".into()],
        default_addr_pool_mask_len: 24,
        data_path_port: 4789,
        heartbeat_period_ms: 1000,
        key_rotation_ms: 1000,
    }
}

pub fn node() -> Node {
    Node {
        id: NodeId::generate(),
        hostname: "h".into(),
        role: Role::Worker,
        availability: Availability::Active,
        status: NodeStatus::Ready,
        addr: "10.0.0.1:2377".parse().unwrap(),
        data_path_addr: "10.0.0.1".parse().unwrap(),
        raft_id: None,
        created_at: 0,
        updated_at: 0,
        version: 0,
    }
}

pub struct World {
    pub state: State,
    pub index: u64,
    pub ids: u64,
    pub now: u64,
    /// Tasks of this spec version or newer fail as they start (a broken
    /// update).
    pub failing_from: Option<u64>,
}

impl World {
    pub fn new(nodes: usize) -> World {
        let mut state = State::default();
        let mut first = node();
        first.role = Role::Manager;
        state
            .apply_command(
                1,
                Command::InitCluster {
                    cluster: Box::new(cluster()),
                    node: first,
                },
            )
            .unwrap();
        let mut w = World {
            state,
            index: 1,
            ids: 0,
            now: 10_000,
            failing_from: None,
        };
        for _ in 1..nodes {
            w.apply(Command::AddNode { node: node() });
        }
        w.apply(Command::CreateNetwork {
            spec: shoal_model::network::NetworkSpec {
                id: "net1".into(),
                name: "app".into(),
                ..Default::default()
            },
            at: 0,
        });
        w
    }
    pub fn apply(&mut self, c: Command) {
        self.index += 1;
        self.state.apply_command(self.index, c).unwrap();
    }
    /// Run the scheduler to a fixed point, the nodes reporting every
    /// assigned task as running and every stopped one as shut down.
    pub fn settle(&mut self) {
        self.settle_watching(|_| {});
    }
    /// [`World::settle`], showing `watch` the state after every round.
    pub fn settle_watching(&mut self, mut watch: impl FnMut(&State)) {
        for _ in 0..40 {
            let mut ids = self.ids;
            let cmds = plan(&self.state, self.now, &mut || {
                ids += 1;
                format!("t{ids:03}")
            });
            self.ids = ids;
            let mut changed = !cmds.is_empty();
            for c in cmds {
                self.apply(c);
            }
            changed |= self.report_all();
            // An update still watching its last replacements has not
            // settled either.
            changed |= self.state.services.values().any(|s| {
                s.update_status.as_ref().is_some_and(|u| {
                    matches!(
                        u.state,
                        shoal_model::update::UpdateState::Updating
                            | shoal_model::update::UpdateState::RollbackStarted
                    )
                })
            });
            watch(&self.state);
            self.now += 2000;
            if !changed {
                return;
            }
        }
        panic!("scheduler did not settle");
    }
    /// One scheduler pass, the nodes' reports, and 2 s on the clock.
    pub fn round(&mut self) {
        let mut ids = self.ids;
        let cmds = plan(&self.state, self.now, &mut || {
            ids += 1;
            format!("t{ids:03}")
        });
        self.ids = ids;
        for c in cmds {
            self.apply(c);
        }
        self.report_all();
        self.now += 2000;
    }

    /// The nodes report: assigned tasks running (or failed, see
    /// `failing_from`), stopped ones shut down. Whether anything changed.
    pub fn report_all(&mut self) -> bool {
        let reports: Vec<Command> = self
            .state
            .tasks
            .values()
            .filter(|t| !t.state.is_terminal() && !t.is_pending())
            .filter(|t| self.node(&t.node).status != NodeStatus::Down)
            .filter_map(|t| {
                let broken = self.failing_from.is_some_and(|v| t.spec_version >= v);
                let to = if t.desired == TaskState::Shutdown {
                    TaskState::Shutdown
                } else if broken {
                    TaskState::Failed
                } else if t.state != TaskState::Running {
                    TaskState::Running
                } else {
                    return None;
                };
                Some(Command::TaskStatus {
                    id: t.id.clone(),
                    state: to,
                    exit_code: None,
                    message: String::new(),
                    at: self.now,
                })
            })
            .collect();
        let changed = !reports.is_empty();
        for c in reports {
            self.apply(c);
        }
        changed
    }
    pub fn node(&self, id: &str) -> &Node {
        self.state
            .nodes
            .values()
            .find(|n| n.id.as_str() == id)
            .unwrap()
    }
    pub fn running_per_node(&self) -> Vec<usize> {
        self.state
            .nodes
            .keys()
            .map(|n| {
                self.state
                    .tasks
                    .values()
                    .filter(|t| t.node == n.as_str() && t.state == TaskState::Running)
                    .count()
            })
            .collect()
    }
    pub fn create(&mut self, replicas: u64) {
        self.apply(Command::CreateService {
            id: "svc1".into(),
            spec: ServiceSpec {
                name: "web".into(),
                replicas,
                networks: vec!["app".into()],
                ports: vec![],
                endpoint_mode: EndpointMode::Vip,
                env: vec![],
                restart_condition: RestartCondition::Any,
                command: vec!["sleep".into(), "1000".into()],
                labels: Default::default(),
                image: "busybox".into(),
                container: Default::default(),
                mode: Default::default(),
                constraints: vec![],
                max_replicas_per_node: 0,
                placement_prefs: vec![],
                update_config: Default::default(),
                force_update: 0,
                rollback_config: Default::default(),
                aliases: Default::default(),
            },
            at: 0,
        });
    }
}
