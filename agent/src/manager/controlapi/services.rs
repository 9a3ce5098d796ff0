//! Control API for services: `service create / update / scale / rm / ls
//! / inspect / ps / logs` (VIPs are allocated in apply; the scheduler places the
//! tasks).

use std::collections::BTreeMap;

use shoal_api::{ApiError, ErrorCode, Response, ServiceRow, ServiceUpdate, TaskRow};
use shoal_model::service::{self, Service, ServiceMode, ServiceSpec, Task, TaskState};
use shoal_model::state::Command;
use shoal_model::state::{Availability, NodeStatus};
use shoal_model::{network, now_ms, NodeId};

use crate::manager::Manager;

fn not_found(what: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("service {what} not found"))
}

/// `service create`: VIPs are allocated in apply; the scheduler places
/// the tasks.
pub async fn create(m: &Manager, spec: ServiceSpec) -> Result<String, ApiError> {
    let id = NodeId::generate().to_string();
    m.store()
        .propose(Command::CreateService {
            id: id.clone(),
            spec,
            at: now_ms(),
        })
        .await?;
    Ok(id)
}

/// `service logs SERVICE|TASK`: what the tasks wrote, gathered from the
/// nodes that hold them over their sessions (so on the leader), each line
/// with docker's context (`web.1.<task id>@<node>`), oldest first. With
/// cursors (`after`, from the previous answer) only newer lines come back:
/// `--follow` calls again with the cursors it got.
pub async fn logs(
    m: &Manager,
    key: &str,
    tail: Option<usize>,
    after: BTreeMap<String, i64>,
) -> Result<Response, ApiError> {
    use crate::proto::session::{CallReply, ManagerCall};
    let status = m.store().status();
    if !status.is_leader {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "service logs is served by the leader (the nodes' sessions end there): run it on the leader",
        ));
    }
    let k = key.to_string();
    let (tasks, nodes) = m
        .store()
        .read(move |s| {
            let tasks: Vec<Task> = match service::find(&s.services, &k) {
                Some(svc) => s
                    .tasks
                    .values()
                    .filter(|t| t.service == svc.id)
                    .cloned()
                    .collect(),
                None => s
                    .tasks
                    .values()
                    .filter(|t| t.id == k || t.id.starts_with(&k) && k.len() >= 4)
                    .cloned()
                    .collect(),
            };
            let nodes: BTreeMap<String, String> = s
                .nodes
                .values()
                .map(|n| (n.id.to_string(), n.hostname.clone()))
                .collect();
            (tasks, nodes)
        })
        .await?;
    if tasks.is_empty() {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no such task or service: {key}"),
        ));
    }
    let mut by_node: BTreeMap<String, Vec<&Task>> = BTreeMap::new();
    for t in tasks.iter().filter(|t| !t.node.is_empty()) {
        by_node.entry(t.node.clone()).or_default().push(t);
    }
    // Follow-up calls: a task new since the first call shows everything.
    let following = !after.is_empty();
    let mut lines = Vec::new();
    let mut cursors = after.clone();
    let mut errors = Vec::new();
    for (node, ts) in by_node {
        let host = nodes.get(&node).cloned().unwrap_or_else(|| node.clone());
        let Some(conn) = node.parse().ok().and_then(|n| m.liveness.conn(&n)) else {
            errors.push(format!("node {host} has no session (down?)"));
            continue;
        };
        let call = ManagerCall::Logs {
            tasks: ts.iter().map(|t| t.id.clone()).collect(),
            tail: if following { None } else { tail },
            after: after.clone(),
        };
        match crate::manager::dispatcher::call_node(&conn, &call).await {
            Ok(CallReply::Logs(texts)) => {
                for (tid, records, cursor) in texts {
                    let name = ts
                        .iter()
                        .find(|t| t.id == tid)
                        .map(|t| format!("{}.{tid}", t.name()))
                        .unwrap_or_else(|| tid.clone());
                    cursors.insert(tid, cursor);
                    let context = format!("{name}@{host}");
                    lines.extend(
                        records
                            .into_iter()
                            .map(|r| crate::proto::session::log_line(context.clone(), r)),
                    );
                }
            }
            Ok(CallReply::Error(e)) => errors.push(format!("{host}: {e}")),
            Err(e) => errors.push(format!("{host}: {e:#}")),
        }
    }
    lines.sort_by_key(|l| l.time);
    Ok(Response::Logs {
        lines,
        cursors,
        errors,
    })
}

async fn get(m: &Manager, key: &str) -> Result<Service, ApiError> {
    let k = key.to_string();
    m.store()
        .read(move |s| service::find(&s.services, &k).cloned())
        .await?
        .ok_or_else(|| not_found(key))
}

/// `service rollback`: back to the spec before the last update.
pub async fn rollback(m: &Manager, key: &str) -> Result<String, ApiError> {
    let svc = get(m, key).await?;
    if svc.previous_spec.is_none() {
        return Err(ApiError::invalid(format!(
            "service {} has no previous spec to roll back to",
            svc.spec.name
        )));
    }
    m.store()
        .propose(Command::RollbackService {
            service: svc.id.clone(),
            at: now_ms(),
        })
        .await?;
    Ok(svc.spec.name)
}

/// `service update` / `service scale`.
pub async fn update(m: &Manager, key: &str, u: ServiceUpdate) -> Result<String, ApiError> {
    let svc = get(m, key).await?;
    if let Some(v) = u.version.filter(|v| *v != svc.version) {
        return Err(ApiError::invalid(format!(
            "update out of sequence: service {} is at version {}, not {v}",
            svc.spec.name, svc.version
        )));
    }
    let nets = m.store().read(|s| s.networks.clone()).await?;
    let mut spec = match u.spec {
        Some(new) if new.name != svc.spec.name => {
            return Err(ApiError::invalid(format!(
                "renaming services is not supported: {} cannot become {}",
                svc.spec.name, new.name
            )))
        }
        Some(new) => *new,
        None => svc.spec.clone(),
    };
    if let Some(r) = u.replicas {
        if spec.mode == ServiceMode::Global {
            return Err(ApiError::invalid(format!(
                "{}: scale can only be used with replicated mode",
                spec.name
            )));
        }
        spec.replicas = r;
    }
    for n in &u.network_add {
        spec.networks.push(n.clone());
    }
    for n in &u.network_rm {
        let id = network::find(&nets, n)
            .map(|x| x.id.clone())
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("network {n} not found")))?;
        if !spec.networks.contains(&id) {
            return Err(ApiError::invalid(format!(
                "service {} is not attached to network {n}",
                spec.name
            )));
        }
        spec.networks.retain(|x| *x != id);
    }
    spec.ports.retain(|p| !u.publish_rm.contains(&p.published));
    spec.ports.extend(u.publish_add.iter().copied());
    let key_of = |kv: &str| kv.split_once('=').map_or(kv, |(k, _)| k).to_string();
    spec.env.retain(|e| !u.env_rm.contains(&key_of(e)));
    // docker: a constraint is removed as written, spaces aside.
    let bare = |c: &str| c.split_whitespace().collect::<String>();
    add_rm(
        &mut spec.constraints,
        &u.constraint_add,
        &u.constraint_rm,
        |a, b| bare(a) == bare(b),
    );
    add_rm(
        &mut spec.placement_prefs,
        &u.placement_pref_add,
        &u.placement_pref_rm,
        |a, b| a == b,
    );
    for k in &u.label_rm {
        spec.labels.remove(k);
    }
    for kv in &u.label_add {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        if k.is_empty() {
            return Err(ApiError::invalid(format!(
                "--label-add {kv:?}: expected key=value"
            )));
        }
        spec.labels.insert(k.to_string(), v.to_string());
    }
    for kv in &u.env_add {
        let k = kv.split_once('=').map(|(k, _)| k).unwrap_or(kv);
        spec.env
            .retain(|e| e.split_once('=').map(|(x, _)| x).unwrap_or(e) != k);
        spec.env.push(kv.clone());
    }
    if u.force {
        spec.force_update += 1;
    }
    u.update_config.apply(&mut spec.update_config);
    u.rollback_config.apply(&mut spec.rollback_config);
    if let Some(h) = &u.health {
        spec.container.healthcheck = Some(match (&spec.container.healthcheck, h.is_none()) {
            (Some(old), false) if !old.is_none() => h.over(old),
            _ => h.clone(),
        });
    }
    m.store()
        .propose(Command::UpdateService {
            service: svc.id.clone(),
            spec,
            at: now_ms(),
        })
        .await?;
    Ok(svc.spec.name)
}

/// `list` without what `rm` names and with what `add` names (once each);
/// `same` says when two entries are one.
fn add_rm(
    list: &mut Vec<String>,
    add: &[String],
    rm: &[String],
    same: impl Fn(&str, &str) -> bool,
) {
    list.retain(|x| !rm.iter().any(|r| same(r, x)));
    for a in add {
        if !list.iter().any(|x| same(x, a)) {
            list.push(a.clone());
        }
    }
}

/// `service rm`: the tasks are stopped by their nodes.
pub async fn remove(m: &Manager, key: &str) -> Result<String, ApiError> {
    let svc = get(m, key).await?;
    m.store()
        .propose(Command::RemoveService {
            service: svc.id.clone(),
            at: now_ms(),
        })
        .await?;
    Ok(svc.spec.name)
}

/// `service ls` (no keys) / `service inspect KEYS`.
pub async fn list(m: &Manager, keys: &[String]) -> Result<Vec<ServiceRow>, ApiError> {
    let st = m
        .store()
        .read(|s| {
            let eligible = s
                .nodes
                .values()
                .filter(|n| n.status == NodeStatus::Ready && n.availability == Availability::Active)
                .count() as u64;
            (
                s.services.clone(),
                s.tasks.clone(),
                s.networks.clone(),
                eligible,
            )
        })
        .await?;
    let (services, tasks, nets, eligible) = st;
    let row = |s: &Service| ServiceRow {
        desired: match s.spec.mode {
            ServiceMode::Replicated => s.spec.replicas,
            ServiceMode::Global => eligible,
        },
        running: tasks
            .values()
            .filter(|t| t.service == s.id && t.state == TaskState::Running)
            .filter(|t| t.desired == TaskState::Running)
            .count() as u64,
        network_names: s
            .spec
            .networks
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    nets.get(n).map(|x| x.name.clone()).unwrap_or_default(),
                )
            })
            .collect(),
        service: s.clone(),
    };
    if keys.is_empty() {
        return Ok(services.values().map(row).collect());
    }
    keys.iter()
        .map(|k| {
            service::find(&services, k)
                .map(row)
                .ok_or_else(|| not_found(k))
        })
        .collect()
}

/// `service ps KEYS`: tasks, newest first per slot.
pub async fn tasks(m: &Manager, keys: &[String]) -> Result<Vec<TaskRow>, ApiError> {
    let (services, tasks, nodes) = m
        .store()
        .read(|s| (s.services.clone(), s.tasks.clone(), s.nodes.clone()))
        .await?;
    let mut out = Vec::new();
    for k in keys {
        let svc = service::find(&services, k).ok_or_else(|| not_found(k))?;
        let mut mine: Vec<&Task> = tasks.values().filter(|t| t.service == svc.id).collect();
        mine.sort_by_key(|t| (t.slot, std::cmp::Reverse(t.created_at)));
        for t in mine {
            out.push(TaskRow {
                node_hostname: nodes
                    .values()
                    .find(|n| n.id.as_str() == t.node)
                    .map(|n| n.hostname.clone())
                    .unwrap_or_else(|| t.node.chars().take(12).collect()),
                command: svc.spec.command.clone(),
                task: t.clone(),
            });
        }
    }
    Ok(out)
}
