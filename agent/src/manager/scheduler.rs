//! The scheduler (runs on the leader): compares services with their tasks
//! and proposes the commands that close the gap.
//!
//! [`plan`] is pure: the store plus the time in, commands out. [`run`]
//! runs it on every store change (and every second), proposes
//! what it returns, and runs it again; commands are level-triggered, so a
//! lost proposal or a leader change only delays convergence.
//!
//! A global service (`--mode global`) wants one task on every `Ready` +
//! `Active` node instead of slots (its tasks have slot 0, its history is
//! per node); the rules below hold for it with "slot" read as "node".
//!
//! Rules (Docker's, for replicated services):
//! - every slot `1..=replicas` has one live task (desired `Running`, not
//!   ended, on a node that is not `Down`); a missing one is created on the
//!   node with the fewest tasks of the service, then the fewest tasks in
//!   all (spread), among `Ready` + `Active` nodes;
//! - a task on a `Down` or removed node is marked `Orphaned`; one on a
//!   drained node, above the replica count, or from an older spec is told
//!   to shut down (and replaced where its slot still exists);
//! - an ended task is replaced according to the restart condition, not
//!   sooner than [`RESTART_DELAY_MS`] after it ended;
//! - ended tasks are kept as history ([`TASK_HISTORY`] per slot) and then
//!   removed; tasks of a removed service are removed once ended.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Weak;
use std::time::Duration;

use shoal_model::placement;
use shoal_model::service::{PublishMode, RestartCondition, Service, ServiceMode, Task, TaskState};
use shoal_model::state::{Availability, Command, NodeStatus, State};
use shoal_model::{now_ms, NodeId};
use tracing::debug;

use super::{rolling, Manager};
use crate::proto::session::ingress_endpoint_id;

/// Minimum time between a task ending and its replacement starting.
pub const RESTART_DELAY_MS: u64 = 1000;
/// Ended tasks kept per slot (for `service ps`).
pub const TASK_HISTORY: usize = 3;

fn live(t: &Task, state: &State) -> bool {
    t.desired == TaskState::Running
        && !t.state.is_terminal()
        && state
            .nodes
            .values()
            .any(|n| n.id.as_str() == t.node && n.status != NodeStatus::Down)
}

/// Whether an ended task's slot gets a new task: always after a stop or
/// a lost node, else as the restart condition says.
/// What one task of `svc` reserves: (memory bytes, nano CPUs).
fn reservation(svc: &Service) -> (i64, i64) {
    let c = &svc.spec.container;
    (
        c.reserve_memory.unwrap_or(0).max(0),
        c.reserve_nano_cpus.unwrap_or(0).max(0),
    )
}

/// Why no node takes a task, as Docker words it.
fn no_suitable_node(
    eligible: &[&shoal_model::state::Node],
    short: impl Fn(&shoal_model::state::Node) -> (bool, bool),
) -> String {
    if eligible.is_empty() {
        return "no suitable node (no node is ready and active)".into();
    }
    let lacks: Vec<(bool, bool)> = eligible.iter().map(|n| short(n)).collect();
    let n = lacks.len();
    let nodes = if n == 1 { "node" } else { "nodes" };
    let what = if lacks.iter().all(|l| l.0 && !l.1) {
        "memory"
    } else if lacks.iter().all(|l| !l.0 && l.1) {
        "CPU"
    } else {
        "resources"
    };
    format!("no suitable node (insufficient {what} on {n} {nodes})")
}

fn restarts(svc: &Service, t: &Task) -> bool {
    if matches!(t.state, TaskState::Shutdown | TaskState::Orphaned) {
        return true;
    }
    match svc.spec.restart_condition {
        RestartCondition::Any => true,
        RestartCondition::OnFailure => t.state != TaskState::Complete,
        RestartCondition::None => false,
    }
}

/// What the scheduler proposes now. `new_id` makes task ids.
pub fn plan(state: &State, now: u64, new_id: &mut dyn FnMut() -> String) -> Vec<Command> {
    let mut out = Vec::new();
    let node_ok = |id: &str| {
        state
            .nodes
            .values()
            .find(|n| n.id.as_str() == id)
            .map(|n| (n.status, n.availability))
    };
    let rolling = rolling::plan(state, now, |t| live(t, state));
    let constraints: BTreeMap<&str, placement::Constraints> = state
        .services
        .iter()
        .map(|(id, s)| {
            (
                id.as_str(),
                placement::Constraints::parse(&s.spec.constraints),
            )
        })
        .collect();
    let fits = |sid: &str, n: &shoal_model::state::Node| {
        constraints
            .get(sid)
            .is_some_and(|c| c.fit(n, state.node_labels.get(&n.id)))
    };
    // 1. Tasks that must stop or are lost.
    for t in state.tasks.values() {
        if t.state.is_terminal() {
            if t.desired != TaskState::Shutdown {
                out.push(Command::SetTaskDesired {
                    id: t.id.clone(),
                    desired: TaskState::Shutdown,
                    at: now,
                });
            }
            continue;
        }
        let svc = state.services.get(&t.service);
        if t.is_pending() {
            // Never placed: nothing runs, so a pending task that is no
            // longer wanted ends here and now.
            let wanted = t.desired == TaskState::Running
                && svc.is_some_and(|s| wanted_slot(s, t) && t.spec_version >= s.spec_version);
            if !wanted {
                out.push(Command::TaskStatus {
                    id: t.id.clone(),
                    state: TaskState::Shutdown,
                    exit_code: None,
                    message: "shutdown".into(),
                    at: now,
                });
            }
            continue;
        }
        match node_ok(&t.node) {
            None | Some((NodeStatus::Down, _)) => {
                out.push(Command::TaskStatus {
                    id: t.id.clone(),
                    state: TaskState::Orphaned,
                    exit_code: None,
                    message: "node is down".into(),
                    at: now,
                });
                continue;
            }
            Some((_, Availability::Drain)) if t.desired == TaskState::Running => {
                out.push(shutdown(t, now));
                continue;
            }
            _ => {}
        }
        if t.desired != TaskState::Running {
            continue;
        }
        match svc {
            None => out.push(shutdown(t, now)),
            // Out of the wanted slots, or replaced now by a rolling update.
            Some(s) if !wanted_slot(s, t) || rolling.stop.contains(&t.id) => {
                out.push(shutdown(t, now))
            }
            // Of an older spec, its turn not yet come: it keeps running.
            Some(s) if t.spec_version < s.spec_version => {}
            // Its node no longer satisfies the constraints (a label went):
            // it moves, as swarm's constraint enforcer does.
            Some(s)
                if !state
                    .nodes
                    .values()
                    .any(|n| n.id.as_str() == t.node && fits(&s.id, n)) =>
            {
                out.push(shutdown(t, now))
            }
            Some(_) => {}
        }
    }
    // Load per node, counting only tasks that will keep running.
    let stopping: BTreeSet<String> = out
        .iter()
        .filter_map(|c| match c {
            Command::SetTaskDesired { id, .. } | Command::TaskStatus { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect();
    let running = |t: &&Task| live(t, state) && !stopping.contains(&t.id);
    let running_ref = |t: &&&Task| running(t);
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    // Reservations held on each node: (memory bytes, nano CPUs).
    let mut held: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for t in state.tasks.values().filter(running) {
        *load.entry(t.node.as_str()).or_default() += 1;
        if let Some(s) = state.services.get(&t.service) {
            let (m, c) = reservation(s);
            let h = held.entry(t.node.as_str()).or_default();
            *h = (h.0 + m, h.1 + c);
        }
    }
    // 2. Slots without a live task.
    for svc in state.services.values() {
        let mine: Vec<&Task> = state
            .tasks
            .values()
            .filter(|t| t.service == svc.id)
            .collect();
        let mut svc_load: BTreeMap<&str, usize> = BTreeMap::new();
        for t in mine.iter().filter(running_ref) {
            *svc_load.entry(t.node.as_str()).or_default() += 1;
        }
        let host_ports: Vec<u16> = svc
            .spec
            .ports
            .iter()
            .filter(|p| p.mode == PublishMode::Host)
            .map(|p| p.published)
            .collect();
        // What must hold a live task: slots 1..=replicas, or (global)
        // every ready, active node, with slot 0.
        let ready = |n: &&shoal_model::state::Node| {
            n.status == NodeStatus::Ready && n.availability == Availability::Active
        };
        let allowed = |n: &&shoal_model::state::Node| fits(&svc.id, n);
        let places: Vec<(u64, Option<&str>)> = match svc.spec.mode {
            ServiceMode::Replicated => (1..=svc.spec.replicas).map(|s| (s, None)).collect(),
            ServiceMode::Global => state
                .nodes
                .values()
                .filter(ready)
                .filter(allowed)
                .map(|n| (0, Some(n.id.as_str())))
                .collect(),
        };
        for (slot, on) in places {
            let in_slot: Vec<&&Task> = mine
                .iter()
                .filter(|t| t.slot == slot && on.is_none_or(|n| t.node == n))
                .collect();
            // Start-first: the replacement starts beside the old task.
            let start_first = rolling.start_first.contains(&(
                svc.id.clone(),
                slot,
                on.unwrap_or_default().to_string(),
            ));
            if !start_first && in_slot.iter().any(|t| running(t)) {
                continue;
            }
            // A task of this slot still running (stopping for an update, or
            // not yet reported): wait for it to end first.
            if !start_first
                && in_slot
                    .iter()
                    .any(|t| !t.state.is_terminal() && !stopping.contains(&t.id) && live(t, state))
            {
                continue;
            }
            let last = in_slot.iter().max_by_key(|t| (t.created_at, t.id.clone()));
            if let Some(last) = last {
                let ended = last.state.is_terminal() && last.spec_version >= svc.spec_version;
                if ended && !restarts(svc, last) {
                    continue; // slot is done
                }
                let crashed = matches!(
                    last.state,
                    TaskState::Failed | TaskState::Complete | TaskState::Rejected
                );
                if ended && crashed && now < last.updated_at + RESTART_DELAY_MS {
                    continue;
                }
            }
            let (mem, cpu) = reservation(svc);
            // What a node lacks for this task: (memory, CPU).
            let short = |n: &shoal_model::state::Node| -> (bool, bool) {
                let Some(r) = state.node_resources.get(&n.id) else {
                    return (false, false); // not reported: cannot judge
                };
                let (hm, hc) = held.get(n.id.as_str()).copied().unwrap_or_default();
                (
                    mem > 0 && hm + mem > r.memory_bytes,
                    cpu > 0 && hc + cpu > r.nano_cpus,
                )
            };
            let ready_nodes: Vec<&shoal_model::state::Node> = state
                .nodes
                .values()
                .filter(ready)
                .filter(|n| on.is_none_or(|o| n.id.as_str() == o))
                .filter(|n| {
                    // Host-mode ports: one task per node.
                    host_ports.is_empty() || svc_load.get(n.id.as_str()).copied().unwrap_or(0) == 0
                })
                .collect();
            let allowed_nodes: Vec<&shoal_model::state::Node> =
                ready_nodes.iter().copied().filter(allowed).collect();
            // `--replicas-max-per-node`: nodes holding that many are full.
            let max = svc.spec.max_replicas_per_node;
            let eligible: Vec<&shoal_model::state::Node> = allowed_nodes
                .iter()
                .copied()
                .filter(|n| {
                    max == 0 || (svc_load.get(n.id.as_str()).copied().unwrap_or(0) as u64) < max
                })
                .collect();
            let groups = spread_groups(&svc.spec.placement_prefs, state, &svc_load);
            let candidate = eligible
                .iter()
                .copied()
                .filter(|n| short(n) == (false, false))
                .min_by_key(|n| {
                    (
                        groups
                            .iter()
                            .map(|(key, g)| g.get(&label(state, &n.id, key)).copied().unwrap_or(0))
                            .collect::<Vec<usize>>(),
                        svc_load.get(n.id.as_str()).copied().unwrap_or(0),
                        load.get(n.id.as_str()).copied().unwrap_or(0),
                        n.id.as_str().to_string(),
                    )
                });
            let pending = last.filter(|t| t.is_pending() && !stopping.contains(&t.id));
            let Some(node) = candidate else {
                if on.is_some() {
                    continue; // a global task waits until its node fits it
                }
                // No suitable node: the slot waits as a pending task that
                // says why.
                let message = if allowed_nodes.is_empty() && !ready_nodes.is_empty() {
                    let n = ready_nodes.len();
                    let nodes = if n == 1 { "node" } else { "nodes" };
                    format!(
                        "no suitable node (scheduling constraints not satisfied on {n} {nodes})"
                    )
                } else if eligible.is_empty() && !allowed_nodes.is_empty() {
                    "no suitable node (max replicas per node limit exceed)".to_string()
                } else {
                    no_suitable_node(&eligible, short)
                };
                if pending.is_none_or(|p| p.message != message) {
                    out.push(Command::PendTask {
                        id: pending.map_or_else(&mut *new_id, |p| p.id.clone()),
                        service: svc.id.clone(),
                        slot,
                        message,
                        at: now,
                    });
                }
                continue;
            };
            let nid = node.id.as_str();
            *svc_load.entry(nid).or_default() += 1;
            *load.entry(nid).or_default() += 1;
            let h = held.entry(nid).or_default();
            *h = (h.0 + mem, h.1 + cpu);
            out.push(match pending {
                Some(p) => Command::AssignTask {
                    id: p.id.clone(),
                    node: nid.to_string(),
                    at: now,
                },
                None => Command::CreateTask {
                    id: new_id(),
                    service: svc.id.clone(),
                    slot,
                    node: nid.to_string(),
                    at: now,
                },
            });
        }
    }
    // 3. History: drop ended tasks beyond the limit (all of them for a
    // service that is gone).
    // A global service's history is per node (its tasks share slot 0).
    let mut by_slot: BTreeMap<(&str, u64, &str), Vec<&Task>> = BTreeMap::new();
    for t in state.tasks.values() {
        if t.state.is_terminal() && t.desired == TaskState::Shutdown {
            let node = if t.slot == 0 { t.node.as_str() } else { "" };
            by_slot
                .entry((t.service.as_str(), t.slot, node))
                .or_default()
                .push(t);
        }
    }
    for ((sid, _, _), mut ended) in by_slot {
        let keep = if state.services.contains_key(sid) {
            TASK_HISTORY
        } else {
            0
        };
        ended.sort_by_key(|t| std::cmp::Reverse((t.created_at, t.id.clone())));
        for t in ended.into_iter().skip(keep) {
            out.push(Command::RemoveTask { id: t.id.clone() });
        }
    }
    out.extend(rolling.status);
    out
}

/// A node's value of label `key`.
fn label<'s>(state: &'s State, node: &NodeId, key: &str) -> Option<&'s str> {
    state
        .node_labels
        .get(node)
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

/// `--placement-pref spread=node.labels.K`, in order: for each K, how many
/// of the service's tasks run on the nodes of each value of K (nodes
/// without K are one more value). The candidate in the emptiest group wins
/// first.
fn spread_groups<'a>(
    prefs: &'a [String],
    state: &'a State,
    svc_load: &BTreeMap<&str, usize>,
) -> Vec<(&'a str, BTreeMap<Option<&'a str>, usize>)> {
    prefs
        .iter()
        .filter_map(|p| placement::spread_label(p))
        .map(|key| {
            let mut g: BTreeMap<Option<&str>, usize> = BTreeMap::new();
            for m in state.nodes.values() {
                *g.entry(label(state, &m.id, key)).or_default() +=
                    svc_load.get(m.id.as_str()).copied().unwrap_or(0);
            }
            (key, g)
        })
        .collect()
}

/// Whether the task's slot is one the service wants: `1..=replicas`, or
/// slot 0 of a global service.
fn wanted_slot(s: &Service, t: &Task) -> bool {
    match s.spec.mode {
        ServiceMode::Replicated => (1..=s.spec.replicas).contains(&t.slot),
        ServiceMode::Global => t.slot == 0,
    }
}

fn shutdown(t: &Task, now: u64) -> Command {
    Command::SetTaskDesired {
        id: t.id.clone(),
        desired: TaskState::Shutdown,
        at: now,
    }
}

/// On the leader: run the scheduler on every store change (and every
/// second), propose what it says, and give every live node a routing-mesh
/// endpoint on the ingress network while ports are published there.
pub async fn run(manager: Weak<Manager>) {
    let Some(mut rx) = manager.upgrade().map(|m| m.store().subscribe()) else {
        return;
    };
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let Some(store) = manager.upgrade().map(|m| m.store().clone()) else {
            return;
        };
        if !store.status().is_leader {
            continue;
        }
        let now = now_ms();
        // Plan from a copy: apply needs the state's lock, and planning a
        // big service must never hold it.
        let Ok(st) = store.read_local(State::clone).await else {
            continue;
        };
        let mut cmds = plan(&st, now, &mut || NodeId::generate().to_string());
        cmds.extend(mesh_endpoints(&st));
        drop(st);
        for e in store.propose_all(cmds).await {
            debug!("scheduler: {e}");
        }
        // Let the applied changes arrive before planning again.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Routing-mesh endpoints: one per node that is up while any service
/// publishes a port in ingress mode; none otherwise.
fn mesh_endpoints(st: &State) -> Vec<Command> {
    let Some(ingress) = st.networks.values().find(|n| n.ingress) else {
        return Vec::new();
    };
    let wanted = st
        .services
        .values()
        .any(|s| s.spec.ports.iter().any(|p| p.mode == PublishMode::Ingress));
    let mut out = Vec::new();
    for n in st.nodes.values() {
        let id = ingress_endpoint_id(&n.id);
        let has = ingress.endpoints.contains_key(&id);
        if wanted && !has && n.status != NodeStatus::Down {
            out.push(Command::AttachEndpoint {
                network: ingress.id.clone(),
                id,
                name: format!("ingress-sbox.{}", n.hostname),
                node: n.id.to_string(),
                ip: None,
            });
        } else if !wanted && has {
            out.push(Command::DetachEndpoint {
                network: ingress.id.clone(),
                id,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::testkit::World;

    #[test]
    fn reservations_place_only_where_they_fit_and_the_rest_waits_pending() {
        use shoal_model::state::NodeResources;
        const GIB: i64 = 1 << 30;
        let mut w = World::new(3);
        let res = |cpus: i64, gib: i64| NodeResources {
            nano_cpus: cpus * 1_000_000_000,
            memory_bytes: gib * GIB,
        };
        for id in w.state.nodes.keys().cloned().collect::<Vec<_>>() {
            w.apply(Command::SetNodeResources {
                id,
                resources: res(2, 24),
            });
        }
        // 10 GiB each: two fit on a 24 GiB node, the seventh waits.
        w.create(0);
        let mut spec = w.state.services["svc1"].spec.clone();
        spec.replicas = 7;
        spec.container.reserve_memory = Some(10 * GIB);
        w.apply(Command::UpdateService {
            service: "web".into(),
            spec: spec.clone(),
            at: 0,
        });
        w.settle();
        let mut per = w.running_per_node();
        per.sort();
        assert_eq!(per, vec![2, 2, 2]);
        let pending: Vec<&Task> = w.state.tasks.values().filter(|t| t.is_pending()).collect();
        assert_eq!(pending.len(), 1);
        assert_eq!(
            pending[0].message,
            "no suitable node (insufficient memory on 3 nodes)"
        );
        assert!(pending[0].endpoints.is_empty());
        let waiting = pending[0].id.clone();
        // A bigger node joins: the pending task is placed there, with an
        // address, and runs.
        let big = crate::manager::testkit::node();
        let big_id = big.id.clone();
        w.apply(Command::AddNode { node: big });
        w.apply(Command::SetNodeResources {
            id: big_id.clone(),
            resources: res(8, 64),
        });
        w.settle();
        let t = &w.state.tasks[&waiting];
        assert_eq!(t.node, big_id.as_str());
        assert_eq!(t.state, TaskState::Running);
        assert!(t.endpoints.contains_key("net1"));
        assert!(w.state.tasks.values().all(|t| !t.is_pending()));
        // CPU that no node has: every slot waits, saying so; scaling down
        // ends the pending tasks.
        spec.container.reserve_memory = None;
        spec.container.reserve_nano_cpus = Some(16_000_000_000);
        spec.replicas = 2;
        w.apply(Command::UpdateService {
            service: "web".into(),
            spec: spec.clone(),
            at: 0,
        });
        w.settle();
        let pending: Vec<&Task> = w.state.tasks.values().filter(|t| t.is_pending()).collect();
        assert_eq!(pending.len(), 2);
        assert_eq!(
            pending[0].message,
            "no suitable node (insufficient CPU on 4 nodes)"
        );
        spec.replicas = 0;
        w.apply(Command::UpdateService {
            service: "web".into(),
            spec,
            at: 0,
        });
        w.settle();
        assert!(w.state.tasks.values().all(|t| !t.is_pending()));
    }

    #[test]
    fn spreads_and_scales() {
        let mut w = World::new(3);
        w.create(6);
        w.settle();
        assert_eq!(w.running_per_node(), vec![2, 2, 2]);
        // Every task has an address on the service network, all distinct.
        let ips: BTreeSet<_> = w
            .state
            .tasks
            .values()
            .map(|t| t.endpoints["net1"].ip)
            .collect();
        assert_eq!(ips.len(), 6);
        assert!(w.state.services["svc1"].vips.contains_key("net1"));
        let mut spec = w.state.services["svc1"].spec.clone();
        spec.replicas = 2;
        w.apply(Command::UpdateService {
            service: "web".into(),
            spec,
            at: 0,
        });
        w.settle();
        let mut per = w.running_per_node();
        per.sort();
        assert_eq!(per.iter().sum::<usize>(), 2);
        // Ended tasks freed their addresses: 2 tasks + VIP + nothing else.
        assert_eq!(w.state.networks["net1"].endpoints.len(), 3);
    }

    #[test]
    fn down_node_tasks_are_replaced_and_drain_moves_tasks() {
        let mut w = World::new(3);
        w.create(3);
        w.settle();
        let victim = w.state.nodes.keys().nth(1).unwrap().clone();
        w.apply(Command::UpdateNode {
            id: victim.clone(),
            update: shoal_model::state::NodeUpdate {
                status: Some(NodeStatus::Down),
                ..Default::default()
            },
            at: 0,
        });
        w.settle();
        let per = w.running_per_node();
        assert_eq!(per.iter().sum::<usize>(), 3);
        assert!(w
            .state
            .tasks
            .values()
            .any(|t| t.node == victim.as_str() && t.state == TaskState::Orphaned));
        let drained = w.state.nodes.keys().next().unwrap().clone();
        w.apply(Command::UpdateNode {
            id: drained.clone(),
            update: shoal_model::state::NodeUpdate {
                availability: Some(Availability::Drain),
                ..Default::default()
            },
            at: 0,
        });
        w.settle();
        assert_eq!(w.running_per_node()[0], 0);
        assert_eq!(w.running_per_node().iter().sum::<usize>(), 3);
    }

    #[test]
    fn a_global_service_runs_one_task_on_every_ready_active_node() {
        let mut w = World::new(3);
        w.create(1);
        let mut svc = w.state.services["svc1"].clone();
        svc.spec.mode = shoal_model::service::ServiceMode::Global;
        svc.spec.replicas = 0;
        w.apply(Command::UpdateService {
            service: "svc1".into(),
            spec: svc.spec,
            at: 0,
        });
        w.settle();
        assert_eq!(w.running_per_node(), vec![1, 1, 1]);
        // Every running task has slot 0 and is named after its node.
        for t in w
            .state
            .tasks
            .values()
            .filter(|t| t.state == TaskState::Running)
        {
            assert_eq!(t.slot, 0);
            assert_eq!(t.name(), format!("web.{}", t.node));
        }
        // A drained node loses its task, an active one gets it back.
        let drained = w.state.nodes.keys().next().unwrap().clone();
        let set = |w: &mut World, a: Availability| {
            w.apply(Command::UpdateNode {
                id: drained.clone(),
                update: shoal_model::state::NodeUpdate {
                    availability: Some(a),
                    ..Default::default()
                },
                at: 0,
            })
        };
        set(&mut w, Availability::Drain);
        w.settle();
        assert_eq!(w.running_per_node(), vec![0, 1, 1]);
        set(&mut w, Availability::Active);
        w.settle();
        assert_eq!(w.running_per_node(), vec![1, 1, 1]);
        // A node that joins gets one; history stays per node.
        w.apply(Command::AddNode {
            node: crate::manager::testkit::node(),
        });
        w.settle();
        assert_eq!(w.running_per_node(), vec![1, 1, 1, 1]);
        let history = w
            .state
            .tasks
            .values()
            .filter(|t| t.node == drained.as_str())
            .count();
        assert!(
            history >= 2,
            "the drained node keeps its ended task as history"
        );
    }

    /// A spec change rolls: with parallelism 1, stop-first never has more
    /// than one slot without a running task and start-first never fewer
    /// running tasks than replicas; both end with every task on the new
    /// spec and the status `completed`.
    #[test]
    fn updates_roll_one_slot_at_a_time() {
        use shoal_model::update::{UpdateOrder, UpdateState};
        for order in [UpdateOrder::StopFirst, UpdateOrder::StartFirst] {
            let mut w = World::new(3);
            w.create(3);
            w.settle();
            let mut spec = w.state.services["svc1"].spec.clone();
            spec.env.push("NEW=1".into());
            spec.update_config.order = order;
            w.apply(Command::UpdateService {
                service: "svc1".into(),
                spec,
                at: 0,
            });
            let mut saw_updating = false;
            w.settle_watching(|st| {
                let running = st
                    .tasks
                    .values()
                    .filter(|t| t.state == TaskState::Running && t.desired == TaskState::Running)
                    .count();
                match order {
                    UpdateOrder::StopFirst => assert!(running >= 2, "{order:?}: {running} running"),
                    UpdateOrder::StartFirst => {
                        assert!(running >= 3, "{order:?}: {running} running")
                    }
                }
                saw_updating |= st.services["svc1"]
                    .update_status
                    .as_ref()
                    .is_some_and(|s| s.state == UpdateState::Updating);
            });
            let svc = &w.state.services["svc1"];
            assert!(saw_updating, "{order:?}");
            assert_eq!(
                svc.update_status.as_ref().map(|s| s.state),
                Some(UpdateState::Completed)
            );
            let live: Vec<_> = w
                .state
                .tasks
                .values()
                .filter(|t| t.state == TaskState::Running)
                .collect();
            assert_eq!(live.len(), 3, "{order:?}");
            assert!(live.iter().all(|t| t.spec_version == svc.spec_version));
        }
    }

    /// A replacement that fails pauses the update (default), or rolls it
    /// back: the previous spec runs everywhere again.
    #[test]
    fn a_failing_update_pauses_or_rolls_back() {
        use shoal_model::update::{FailureAction, UpdateState};
        for action in [FailureAction::Pause, FailureAction::Rollback] {
            let mut w = World::new(3);
            w.create(3);
            w.settle();
            let before = w.state.services["svc1"].spec.clone();
            let mut spec = before.clone();
            spec.env.push("BROKEN=1".into());
            spec.update_config.failure_action = action;
            w.apply(Command::UpdateService {
                service: "svc1".into(),
                spec,
                at: 0,
            });
            w.failing_from = Some(w.state.services["svc1"].spec_version);
            // Failed tasks restart forever: watch a bounded number of rounds.
            for _ in 0..8 {
                let mut ids = w.ids;
                let cmds = plan(&w.state, w.now, &mut || {
                    ids += 1;
                    format!("t{ids:03}")
                });
                w.ids = ids;
                for c in cmds {
                    w.apply(c);
                }
                if action == FailureAction::Rollback
                    && w.state.services["svc1"].spec.env == before.env
                {
                    w.failing_from = None; // the old spec works
                }
                w.report_all();
                w.now += 2000;
            }
            let svc = &w.state.services["svc1"];
            let running: Vec<_> = w
                .state
                .tasks
                .values()
                .filter(|t| t.state == TaskState::Running)
                .collect();
            match action {
                FailureAction::Pause => {
                    assert_eq!(
                        svc.update_status.as_ref().map(|s| s.state),
                        Some(UpdateState::Paused)
                    );
                    // Only the first slot was tried: two old tasks still run.
                    assert_eq!(running.len(), 2, "{running:?}");
                }
                _ => {
                    w.settle();
                    let svc = &w.state.services["svc1"];
                    assert_eq!(svc.spec.env, before.env);
                    assert_eq!(
                        svc.update_status.as_ref().map(|s| s.state),
                        Some(UpdateState::RollbackCompleted)
                    );
                }
            }
        }
    }

    /// `--update-max-failure-ratio`: the failure action waits until more
    /// than that share of the slots failed.
    #[test]
    fn the_failure_ratio_tolerates_some_failures() {
        use shoal_model::update::{FailureRatio, UpdateState};
        for (ratio, failures_before_pause) in [(0.0, 1), (0.5, 3)] {
            let mut w = World::new(4);
            w.create(4);
            w.settle();
            let mut spec = w.state.services["svc1"].spec.clone();
            spec.env.push("BROKEN=1".into());
            spec.update_config.max_failure_ratio = FailureRatio::new(ratio).unwrap();
            w.apply(Command::UpdateService {
                service: "svc1".into(),
                spec,
                at: w.now,
            });
            let v = w.state.services["svc1"].spec_version;
            w.failing_from = Some(v);
            let failed = |w: &World| {
                w.state
                    .tasks
                    .values()
                    .filter(|t| t.spec_version >= v && t.state == TaskState::Failed)
                    .count()
            };
            // The most failures seen before the plan paused the update.
            let mut tolerated = 0;
            for _ in 0..20 {
                let paused = w.state.services["svc1"]
                    .update_status
                    .as_ref()
                    .is_some_and(|s| s.state == UpdateState::Paused);
                if paused {
                    break;
                }
                tolerated = failed(&w);
                w.round();
            }
            assert_eq!(tolerated, failures_before_pause, "ratio {ratio}");
            assert_eq!(
                w.state.services["svc1"]
                    .update_status
                    .as_ref()
                    .map(|s| s.state),
                Some(UpdateState::Paused),
                "ratio {ratio}"
            );
        }
    }

    /// `--update-monitor`: a replacement that fails after running longer
    /// than the monitor period is not a failure of the update; sooner, it
    /// is. The update completes only once its last replacement ran that
    /// long.
    #[test]
    fn the_monitor_period_decides_what_counts_as_a_failure() {
        use shoal_model::update::UpdateState;
        for (monitor_ms, pauses) in [(5_000, false), (60_000, true)] {
            let mut w = World::new(2);
            w.create(2);
            w.settle();
            let mut spec = w.state.services["svc1"].spec.clone();
            spec.env.push("NEW=1".into());
            spec.update_config.delay_ms = 30_000;
            spec.update_config.monitor_ms = monitor_ms;
            w.apply(Command::UpdateService {
                service: "svc1".into(),
                spec,
                at: w.now,
            });
            let v = w.state.services["svc1"].spec_version;
            // The first replacement runs for 10 s, then fails.
            let mut first = None;
            for _ in 0..10 {
                w.round();
                first = w
                    .state
                    .tasks
                    .values()
                    .find(|t| t.spec_version >= v && t.state == TaskState::Running)
                    .map(|t| (t.id.clone(), t.running_at));
                if first.is_some() {
                    break;
                }
            }
            let (id, ran) = first.expect("a replacement runs");
            w.now = ran + 10_000;
            w.apply(Command::TaskStatus {
                id,
                state: TaskState::Failed,
                exit_code: Some(1),
                message: "crashed".into(),
                at: w.now,
            });
            w.settle();
            let state = w.state.services["svc1"]
                .update_status
                .as_ref()
                .map(|s| s.state);
            match pauses {
                true => assert_eq!(state, Some(UpdateState::Paused), "monitor {monitor_ms}"),
                false => assert_eq!(state, Some(UpdateState::Completed), "monitor {monitor_ms}"),
            }
        }
    }

    #[test]
    fn restart_policy_and_history() {
        let mut w = World::new(1);
        w.create(1);
        w.settle();
        for round in 0..5 {
            let t = w
                .state
                .tasks
                .values()
                .find(|t| t.state == TaskState::Running)
                .unwrap()
                .id
                .clone();
            w.apply(Command::TaskStatus {
                id: t,
                state: TaskState::Failed,
                exit_code: Some(1),
                message: "exit 1".into(),
                at: w.now,
            });
            // Not replaced before the restart delay.
            let early = plan(&w.state, w.now, &mut || "x".into());
            assert!(
                !early
                    .iter()
                    .any(|c| matches!(c, Command::CreateTask { .. })),
                "round {round}: {early:?}"
            );
            w.settle();
        }
        let tasks = w.state.tasks.len();
        assert_eq!(tasks, TASK_HISTORY + 1, "history kept, older removed");
        // Remove: everything goes once ended.
        w.apply(Command::RemoveService {
            service: "web".into(),
            at: 0,
        });
        w.settle();
        assert!(w.state.tasks.is_empty());
        assert_eq!(w.state.networks["net1"].endpoints.len(), 0);
    }

    #[test]
    fn restart_none_leaves_completed_slot() {
        let mut w = World::new(2);
        w.create(1);
        let mut spec = w.state.services["svc1"].spec.clone();
        spec.restart_condition = RestartCondition::None;
        w.apply(Command::UpdateService {
            service: "web".into(),
            spec,
            at: 0,
        });
        w.settle();
        let t = w
            .state
            .tasks
            .values()
            .find(|t| t.state == TaskState::Running)
            .unwrap()
            .id
            .clone();
        w.apply(Command::TaskStatus {
            id: t,
            state: TaskState::Complete,
            exit_code: Some(0),
            message: String::new(),
            at: w.now,
        });
        w.settle();
        assert_eq!(w.running_per_node().iter().sum::<usize>(), 0);
    }
}
