//! `shoal service ...`: the manager side of the service commands, and the
//! rows the CLI prints (Docker's column layouts).

use serde::{Deserialize, Serialize};
use shoal_raft_store::service::{self, PortConfig, Service, ServiceSpec, Task, TaskState};
use shoal_raft_store::state::Command;
use shoal_tls::NodeId;

use crate::api::{ApiError, ErrorCode};
use crate::swarm::{now_ms, Swarm};

/// Changes of `service update` (and `service scale`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServiceUpdate {
    /// `--replicas`.
    pub replicas: Option<u64>,
    /// `--network-add`.
    pub network_add: Vec<String>,
    /// `--network-rm`.
    pub network_rm: Vec<String>,
    /// `--publish-add`.
    pub publish_add: Vec<PortConfig>,
    /// `--publish-rm` (published port numbers).
    pub publish_rm: Vec<u16>,
    /// `--env-add K=V`.
    pub env_add: Vec<String>,
    /// `--force`: replace every task even if nothing changed.
    pub force: bool,
}

/// One row of `service ls` / document of `service inspect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceRow {
    /// The stored service.
    #[serde(flatten)]
    pub service: Service,
    /// Tasks running now.
    pub running: u64,
    /// Network names by id.
    pub network_names: Vec<(String, String)>,
}

/// One row of `service ps`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRow {
    /// The stored task.
    #[serde(flatten)]
    pub task: Task,
    /// Host name of its node.
    pub node_hostname: String,
    /// The service's command.
    pub command: Vec<String>,
}

fn not_found(what: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("service {what} not found"))
}

impl Swarm {
    /// `service create`: VIPs are allocated in apply; the scheduler places
    /// the tasks.
    pub async fn service_create(&self, spec: ServiceSpec) -> Result<String, ApiError> {
        let id = NodeId::generate().to_string();
        self.propose(Command::CreateService {
            id: id.clone(),
            spec,
            at: now_ms(),
        })
        .await?;
        Ok(id)
    }

    async fn service_get(&self, key: &str) -> Result<Service, ApiError> {
        let k = key.to_string();
        self.read(move |s| service::find(&s.services, &k).cloned())
            .await?
            .ok_or_else(|| not_found(key))
    }

    /// `service update` / `service scale`.
    pub async fn service_update(&self, key: &str, u: ServiceUpdate) -> Result<String, ApiError> {
        let svc = self.service_get(key).await?;
        let nets = self.read(|s| s.networks.clone()).await?;
        let mut spec = svc.spec.clone();
        if let Some(r) = u.replicas {
            spec.replicas = r;
        }
        for n in &u.network_add {
            spec.networks.push(n.clone());
        }
        for n in &u.network_rm {
            let id = shoal_raft_store::network::find(&nets, n)
                .map(|x| x.id.clone())
                .ok_or_else(|| {
                    ApiError::new(ErrorCode::NotFound, format!("network {n} not found"))
                })?;
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
        for kv in &u.env_add {
            let k = kv.split_once('=').map(|(k, _)| k).unwrap_or(kv);
            spec.env
                .retain(|e| e.split_once('=').map(|(x, _)| x).unwrap_or(e) != k);
            spec.env.push(kv.clone());
        }
        if u.force {
            spec.labels
                .insert("com.shoal.force-update".into(), now_ms().to_string());
        }
        self.propose(Command::UpdateService {
            service: svc.id.clone(),
            spec,
            at: now_ms(),
        })
        .await?;
        Ok(svc.spec.name)
    }

    /// `service rm`: the tasks are stopped by their nodes.
    pub async fn service_remove(&self, key: &str) -> Result<String, ApiError> {
        let svc = self.service_get(key).await?;
        self.propose(Command::RemoveService {
            service: svc.id.clone(),
            at: now_ms(),
        })
        .await?;
        Ok(svc.spec.name)
    }

    /// `service ls` (no keys) / `service inspect KEYS`.
    pub async fn services(&self, keys: &[String]) -> Result<Vec<ServiceRow>, ApiError> {
        let st = self
            .read(|s| (s.services.clone(), s.tasks.clone(), s.networks.clone()))
            .await?;
        let (services, tasks, nets) = st;
        let row = |s: &Service| ServiceRow {
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
    pub async fn service_tasks(&self, keys: &[String]) -> Result<Vec<TaskRow>, ApiError> {
        let (services, tasks, nodes) = self
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
}

/// `2/3`-style replica column.
pub fn replicas_column(r: &ServiceRow) -> String {
    format!("{}/{}", r.running, r.service.spec.replicas)
}

/// `*:8080->80/tcp` list.
pub fn ports_column(ports: &[PortConfig]) -> String {
    ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Docker's "Running 5 seconds ago".
pub fn state_column(t: &Task, now_ms: u64) -> String {
    let ago = now_ms.saturating_sub(t.updated_at) / 1000;
    let when = match ago {
        0..=1 => "about a second ago".to_string(),
        2..=59 => format!("{ago} seconds ago"),
        60..=3599 => format!("{} minutes ago", ago / 60),
        _ => format!("{} hours ago", ago / 3600),
    };
    format!("{} {}", t.state, when)
}
