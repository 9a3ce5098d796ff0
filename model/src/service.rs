//! Services and tasks in the replicated store, and their allocation.
//!
//! A service is a desired state (`replicas` copies of a command, attached
//! to some overlay networks, maybe publishing ports); tasks are its
//! instances, each placed on one node by the scheduler on the leader. As
//! with networks, everything that must agree across managers is decided
//! here in apply: service VIPs (one address per network, in `vip` mode)
//! and task endpoints (IP and MAC per network) are allocated from the
//! networks' address space, and freed when a task ends or a service goes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::network::{self, Endpoint, Network, NetworkError};
use crate::port::allocate_published;
pub use crate::port::{PortConfig, Protocol, PublishMode, DYNAMIC_PORTS};

/// How clients reach the service's tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// One virtual IP per network, balanced over the tasks.
    Vip,
    /// DNS round robin over the task addresses, no VIP.
    Dnsrr,
}

impl fmt::Display for EndpointMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointMode::Vip => "vip",
            EndpointMode::Dnsrr => "dnsrr",
        })
    }
}

impl FromStr for EndpointMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vip" => Ok(EndpointMode::Vip),
            "dnsrr" => Ok(EndpointMode::Dnsrr),
            _ => Err(format!(
                "invalid endpoint mode {s:?}: expected vip or dnsrr"
            )),
        }
    }
}

/// When a task that ended is replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// Whatever the exit.
    Any,
    /// Only after a non-zero exit (or a failure to start).
    OnFailure,
    /// Never.
    None,
}

impl fmt::Display for RestartCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartCondition::Any => "any",
            RestartCondition::OnFailure => "on-failure",
            RestartCondition::None => "none",
        })
    }
}

impl FromStr for RestartCondition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "any" => Ok(RestartCondition::Any),
            "on-failure" => Ok(RestartCondition::OnFailure),
            "none" => Ok(RestartCondition::None),
            _ => Err(format!(
                "invalid restart condition {s:?}: expected any, on-failure or none"
            )),
        }
    }
}

/// What `service create` / `service update` ask for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Unique name.
    pub name: String,
    /// Number of tasks.
    pub replicas: u64,
    /// Networks (ids once stored; names or id prefixes as asked).
    pub networks: Vec<String>,
    /// Published ports.
    pub ports: Vec<PortConfig>,
    /// VIP or DNS round robin.
    pub endpoint_mode: EndpointMode,
    /// `K=V` environment of the tasks.
    pub env: Vec<String>,
    /// Restart policy.
    pub restart_condition: RestartCondition,
    /// The command each task runs.
    pub command: Vec<String>,
    /// `--label k=v`.
    pub labels: BTreeMap<String, String>,
    /// The image each task runs (`name@sha256:…` once pinned at create);
    /// with `--runtime host`, empty: the command runs as a host process.
    #[serde(default)]
    pub image: String,
    /// How each task's container runs.
    #[serde(default)]
    pub container: ContainerSpec,
    /// `--mode`: `replicas` tasks, or one on every eligible node.
    #[serde(default)]
    pub mode: ServiceMode,
    /// `--constraint`: where tasks may run (see [`crate::placement`]).
    #[serde(default)]
    pub constraints: Vec<String>,
    /// `--replicas-max-per-node`: at most this many tasks on one node
    /// (0: no limit).
    #[serde(default)]
    pub max_replicas_per_node: u64,
    /// `--placement-pref spread=node.labels.K`: tasks spread evenly over
    /// the values of K first (see [`crate::placement::spread_label`]).
    #[serde(default)]
    pub placement_prefs: Vec<String>,
    /// How an update replaces the tasks.
    #[serde(default)]
    pub update_config: crate::update::UpdateConfig,
    /// `--force` counter (docker's `TaskTemplate.ForceUpdate`): raising it
    /// replaces every task even when nothing else changed.
    #[serde(default)]
    pub force_update: u64,
    /// `--network name=N,alias=A`: extra DNS names of the service, per
    /// network (ids once stored), as docker's network aliases.
    #[serde(default)]
    pub aliases: BTreeMap<String, Vec<String>>,
    /// How a rollback replaces the tasks (`--rollback-*`).
    #[serde(default)]
    pub rollback_config: crate::update::UpdateConfig,
}

/// `--mode`, as docker names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    /// `replicas` tasks, spread over the nodes.
    #[default]
    Replicated,
    /// One task on every `Ready` + `Active` node, following nodes as
    /// they join, drain and leave (its tasks have slot 0).
    Global,
}

impl std::fmt::Display for ServiceMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServiceMode::Replicated => "replicated",
            ServiceMode::Global => "global",
        })
    }
}

/// Where a task runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// A container from the service's image (containerd).
    #[default]
    Container,
    /// A host process with the daemon's privileges (`--runtime host`).
    Host,
}

/// One `--mount`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// `bind`, `volume` or `tmpfs`.
    pub typ: String,
    /// Host path (bind) or volume name; empty for tmpfs.
    pub source: String,
    /// Path in the container.
    pub target: String,
    /// `readonly`.
    pub readonly: bool,
}

/// The container settings of a service's tasks (Docker's ContainerSpec and
/// Resources); every field defaults, so older specs read as "none set".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerSpec {
    /// Container or host process.
    pub runtime: Runtime,
    /// `--entrypoint` (`Some(vec![])`: cleared).
    pub entrypoint: Option<Vec<String>>,
    /// `--user`.
    pub user: Option<String>,
    /// `--workdir`.
    pub workdir: Option<String>,
    /// `--mount`.
    pub mounts: Vec<Mount>,
    /// `--read-only`.
    pub read_only: bool,
    /// `--cap-add`.
    pub cap_add: Vec<String>,
    /// `--cap-drop`.
    pub cap_drop: Vec<String>,
    /// `--limit-memory`, bytes.
    pub limit_memory: Option<i64>,
    /// `--limit-cpu`, billionths of a CPU.
    pub limit_nano_cpus: Option<i64>,
    /// `--reserve-memory`, bytes.
    pub reserve_memory: Option<i64>,
    /// `--reserve-cpu`, billionths of a CPU.
    pub reserve_nano_cpus: Option<i64>,
    /// `--config`: configs mounted as files.
    pub configs: Vec<crate::configs::FileRef>,
    /// `--secret`: secrets mounted as files.
    pub secrets: Vec<crate::configs::FileRef>,
    /// `--health-*`, `--no-healthcheck` (`None`: the image's check).
    pub healthcheck: Option<crate::health::HealthConfig>,
}

/// A service as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Id chosen by the proposer.
    pub id: String,
    /// The spec, with network keys resolved to ids.
    pub spec: ServiceSpec,
    /// Virtual IP per network id (`vip` mode only).
    pub vips: BTreeMap<String, Ipv4Addr>,
    /// Bumped when tasks must be replaced (anything but `replicas`).
    pub spec_version: u64,
    /// Unix ms.
    pub created_at: u64,
    /// Unix ms.
    pub updated_at: u64,
    /// Raft index of the last change.
    pub version: u64,
    /// How far the last update got (`None`: never updated).
    #[serde(default)]
    pub update_status: Option<crate::update::UpdateStatus>,
    /// The spec before the last update (what `service rollback` returns to).
    #[serde(default)]
    pub previous_spec: Option<Box<ServiceSpec>>,
}

impl Service {
    /// Networks the tasks join: the service's own, plus the ingress network
    /// when a port is published through the routing mesh.
    pub fn task_networks(&self, ingress: Option<&Network>) -> Vec<String> {
        let mut nets = self.spec.networks.clone();
        if let Some(i) = ingress {
            if self
                .spec
                .ports
                .iter()
                .any(|p| p.mode == PublishMode::Ingress)
                && !nets.contains(&i.id)
            {
                nets.push(i.id.clone());
            }
        }
        nets
    }
}

/// Task lifecycle (Docker's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Created by the scheduler.
    New,
    /// Placed on a node, sent to it.
    Assigned,
    /// The node is starting it.
    Starting,
    /// The process runs.
    Running,
    /// Exited with 0.
    Complete,
    /// Stopped on request.
    Shutdown,
    /// Exited non-zero, or could not start.
    Failed,
    /// The node refused it (e.g. fail-closed network).
    Rejected,
    /// Its node went down; it is given up.
    Orphaned,
}

impl TaskState {
    /// Whether the task has ended (it never runs again).
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskState::New => "New",
            TaskState::Assigned => "Assigned",
            TaskState::Starting => "Starting",
            TaskState::Running => "Running",
            TaskState::Complete => "Complete",
            TaskState::Shutdown => "Shutdown",
            TaskState::Failed => "Failed",
            TaskState::Rejected => "Rejected",
            TaskState::Orphaned => "Orphaned",
        })
    }
}

/// One instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Id chosen by the scheduler.
    pub id: String,
    /// Service id.
    pub service: String,
    /// Service name (for display and DNS once the service is gone).
    pub service_name: String,
    /// Replica slot, 1-based.
    pub slot: u64,
    /// Node it is placed on.
    pub node: String,
    /// What the scheduler wants: `Running` or `Shutdown`.
    pub desired: TaskState,
    /// What the node reported.
    pub state: TaskState,
    /// Exit code once it exited.
    pub exit_code: Option<i32>,
    /// Why it is in its state (errors).
    pub message: String,
    /// Its endpoints, by network id (freed in the networks once terminal).
    pub endpoints: BTreeMap<String, Endpoint>,
    /// The service's `spec_version` it was created from.
    pub spec_version: u64,
    /// Unix ms.
    pub created_at: u64,
    /// Unix ms of the last state change.
    pub updated_at: u64,
    /// Raft index of the last change.
    pub version: u64,
    /// Unix ms it was reported running (0: never): how long a
    /// replacement ran before it failed (`--update-monitor`).
    #[serde(default)]
    pub running_at: u64,
}

impl Task {
    /// Waiting for a node the scheduler could place it on (Docker's
    /// `pending`).
    pub fn is_pending(&self) -> bool {
        self.node.is_empty() && self.state == TaskState::New
    }

    /// `web.2` as Docker names tasks; `web.<node id>` for a global
    /// service's (slot 0).
    pub fn name(&self) -> String {
        match self.slot {
            0 => format!("{}.{}", self.service_name, self.node),
            n => format!("{}.{n}", self.service_name),
        }
    }
}

/// Why a service command was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ServiceError {
    /// Names are unique.
    #[error("service with name {0} already exists")]
    NameInUse(String),
    /// Docker's name rules (also a DNS label).
    #[error("invalid service name {0:?}: use 1-63 letters, digits, '-' and '_', starting and ending with a letter or digit")]
    BadName(String),
    /// Unknown service.
    #[error("service {0} not found")]
    NotFound(String),
    /// A port published twice.
    #[error("port {port}/{protocol} is already in use by service {service}")]
    PortInUse {
        /// Port.
        port: u16,
        /// Protocol.
        protocol: Protocol,
        /// The service that has it.
        service: String,
    },
    /// Ingress publishing without an ingress network.
    #[error("cannot publish port {0} in ingress mode: no ingress network exists")]
    NoIngress(u16),
    /// No command.
    #[error("a service needs a command")]
    NoCommand,
    /// A network problem (unknown network, full, …).
    #[error("{0}")]
    Network(#[from] NetworkError),
    /// Unknown task.
    #[error("task {0} not found")]
    NoSuchTask(String),
    /// Task id in use.
    #[error("task {0} already exists")]
    TaskExists(String),
    /// More replicas than one service may have.
    /// A network alias that cannot be used.
    #[error("network alias on {0}: {1}")]
    BadAlias(String, String),
    /// Every port of [`DYNAMIC_PORTS`] is published already.
    #[error("no free {0} port left in 30000-32767 to publish on")]
    NoFreePort(Protocol),
    #[error("--replicas {0}: a service has at most {MAX_REPLICAS} replicas")]
    TooManyReplicas(u64),
    /// A container service without an image.
    #[error("a service needs an image (or --runtime host and a command)")]
    NoImage,
    /// A `--constraint` docker would not take.
    #[error("invalid constraint {0}")]
    BadConstraint(String),
    /// `service rollback` of a service never updated.
    #[error("service {0} has no previous spec to roll back to")]
    NoPreviousSpec(String),
    /// Node labels out of bounds.
    #[error("invalid node labels: {0}")]
    BadLabels(String),
    /// A health check docker would refuse.
    #[error("invalid health check: {0}")]
    BadHealthcheck(String),
}

pub use crate::placement::check_labels;

/// Most replicas one service may have: every replica is a task record the
/// scheduler plans and every manager keeps, so an absurd count (a typo,
/// or a hostile client) must not make the leader loop over it.
pub const MAX_REPLICAS: u64 = 10_000;

/// Longest task message kept in the store (it is reported by nodes).
pub const MAX_TASK_MESSAGE: usize = 1024;

/// `message` cut to [`MAX_TASK_MESSAGE`] bytes on a character boundary.
pub fn bounded_message(mut message: String) -> String {
    if message.len() > MAX_TASK_MESSAGE {
        let mut end = MAX_TASK_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

/// swarmkit's rule: 1-63 letters, digits, `-` and `_` (stacks name
/// services `stack_service`), starting and ending with a letter or digit.
fn valid_name(n: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    n.len() <= 63
        && edge(n.chars().next())
        && edge(n.chars().last())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Resolve the spec's network keys to ids, check names and ports, and
/// return the spec to store.
pub fn check_spec(
    services: &BTreeMap<String, Service>,
    nets: &BTreeMap<String, Network>,
    mut spec: ServiceSpec,
    own_id: Option<&str>,
) -> Result<ServiceSpec, ServiceError> {
    if !valid_name(&spec.name) {
        return Err(ServiceError::BadName(spec.name));
    }
    match spec.container.runtime {
        Runtime::Host if spec.command.is_empty() => return Err(ServiceError::NoCommand),
        Runtime::Container if spec.image.is_empty() => return Err(ServiceError::NoImage),
        _ => {}
    }
    if let Some(h) = &spec.container.healthcheck {
        if spec.container.runtime == Runtime::Host && !h.is_none() {
            return Err(ServiceError::BadHealthcheck(
                "health checks run inside containers: not with --runtime host".into(),
            ));
        }
        h.check().map_err(ServiceError::BadHealthcheck)?;
    }
    for c in &spec.constraints {
        crate::placement::Constraint::parse(c)?;
    }
    for p in &spec.placement_prefs {
        crate::placement::check_pref(p)?;
    }
    if spec.replicas > MAX_REPLICAS {
        return Err(ServiceError::TooManyReplicas(spec.replicas));
    }
    if let Some(s) = services
        .values()
        .find(|s| s.spec.name == spec.name && Some(s.id.as_str()) != own_id)
    {
        return Err(ServiceError::NameInUse(s.spec.name.clone()));
    }
    let mut ids = Vec::new();
    for key in &spec.networks {
        let n = network::find(nets, key).ok_or_else(|| NetworkError::NotFound(key.clone()))?;
        if !ids.contains(&n.id) {
            ids.push(n.id.clone());
        }
    }
    spec.networks = ids;
    let mut aliases = BTreeMap::new();
    for (key, names) in std::mem::take(&mut spec.aliases) {
        let n = network::find(nets, &key).ok_or_else(|| NetworkError::NotFound(key.clone()))?;
        if !spec.networks.contains(&n.id) {
            return Err(ServiceError::BadAlias(
                key,
                "the service is not attached to this network".into(),
            ));
        }
        if let Some(a) = names.iter().find(|a| !valid_name(a)) {
            return Err(ServiceError::BadAlias(
                key,
                format!("{a:?} is not a valid DNS name"),
            ));
        }
        if !names.is_empty() {
            aliases.insert(n.id.clone(), names);
        }
    }
    spec.aliases = aliases;
    allocate_published(services, &mut spec, own_id)?;
    for (i, p) in spec.ports.iter().enumerate() {
        let clash = |q: &PortConfig| q.published == p.published && q.protocol == p.protocol;
        if spec.ports[..i].iter().any(clash) {
            return Err(ServiceError::PortInUse {
                port: p.published,
                protocol: p.protocol,
                service: spec.name.clone(),
            });
        }
        if let Some(s) = services
            .values()
            .filter(|s| Some(s.id.as_str()) != own_id)
            .find(|s| s.spec.ports.iter().any(clash))
        {
            return Err(ServiceError::PortInUse {
                port: p.published,
                protocol: p.protocol,
                service: s.spec.name.clone(),
            });
        }
        if p.mode == PublishMode::Ingress && !nets.values().any(|n| n.ingress) {
            return Err(ServiceError::NoIngress(p.published));
        }
    }
    Ok(spec)
}

/// Id of the endpoint that holds a service's VIP on a network.
pub fn vip_endpoint_id(service: &str) -> String {
    format!("vip-{service}")
}

/// Allocate (or keep) the VIPs of `svc` on the networks its tasks join,
/// and free those it left. All-or-nothing: on error nothing changed.
pub fn sync_vips(
    svc: &mut Service,
    nets: &mut BTreeMap<String, Network>,
    index: u64,
) -> Result<(), ServiceError> {
    // The ingress network needs no VIP: the routing mesh balances over
    // the tasks' ingress addresses itself.
    let want: Vec<String> = if svc.spec.endpoint_mode == EndpointMode::Vip {
        svc.spec
            .networks
            .iter()
            .filter(|n| nets.get(*n).is_some_and(|x| !x.ingress))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    let eid = vip_endpoint_id(&svc.id);
    let mut added = Vec::new();
    for nid in &want {
        if svc.vips.contains_key(nid) {
            continue;
        }
        let Some(net) = nets.get_mut(nid) else {
            continue;
        };
        match network::attach(
            net,
            eid.clone(),
            format!("{}-vip", svc.spec.name),
            String::new(),
            None,
            index,
        ) {
            Ok(ep) => added.push((nid.clone(), ep.ip)),
            Err(e) => {
                for (n, _) in &added {
                    if let Some(net) = nets.get_mut(n) {
                        net.endpoints.remove(&eid);
                    }
                }
                return Err(e.into());
            }
        }
    }
    svc.vips.extend(added);
    let gone: Vec<String> = svc
        .vips
        .keys()
        .filter(|n| !want.contains(n))
        .cloned()
        .collect();
    for nid in gone {
        svc.vips.remove(&nid);
        if let Some(net) = nets.get_mut(&nid) {
            net.endpoints.remove(&eid);
            net.version = index;
        }
    }
    Ok(())
}

/// Free every VIP of a service being removed.
pub fn free_vips(svc: &Service, nets: &mut BTreeMap<String, Network>, index: u64) {
    let eid = vip_endpoint_id(&svc.id);
    for nid in svc.vips.keys() {
        if let Some(net) = nets.get_mut(nid) {
            net.endpoints.remove(&eid);
            net.version = index;
        }
    }
}

/// Allocate a new task's endpoints on `networks` (all or nothing).
pub fn allocate_endpoints(
    task_id: &str,
    name: &str,
    node: &str,
    networks: &[String],
    nets: &mut BTreeMap<String, Network>,
    index: u64,
) -> Result<BTreeMap<String, Endpoint>, ServiceError> {
    let mut out = BTreeMap::new();
    for nid in networks {
        let Some(net) = nets.get_mut(nid) else {
            free_endpoints(task_id, &out, nets, index);
            return Err(NetworkError::NotFound(nid.clone()).into());
        };
        match network::attach(
            net,
            task_id.to_string(),
            name.to_string(),
            node.to_string(),
            None,
            index,
        ) {
            Ok(ep) => {
                out.insert(nid.clone(), ep);
            }
            Err(e) => {
                free_endpoints(task_id, &out, nets, index);
                return Err(e.into());
            }
        }
    }
    Ok(out)
}

/// Release a task's endpoints in the networks (idempotent).
pub fn free_endpoints(
    task_id: &str,
    eps: &BTreeMap<String, Endpoint>,
    nets: &mut BTreeMap<String, Network>,
    index: u64,
) {
    for nid in eps.keys() {
        if let Some(net) = nets.get_mut(nid) {
            if net.endpoints.remove(task_id).is_some() {
                net.version = index;
            }
        }
    }
}

/// Find a service by exact id, exact name, or unique id prefix.
pub fn find<'a>(services: &'a BTreeMap<String, Service>, key: &str) -> Option<&'a Service> {
    services
        .get(key)
        .or_else(|| services.values().find(|s| s.spec.name == key))
        .or_else(|| {
            let mut m = services
                .values()
                .filter(|s| !key.is_empty() && s.id.starts_with(key));
            match (m.next(), m.next()) {
                (Some(s), None) => Some(s),
                _ => None,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_syntaxes() {
        let p: PortConfig = "8080:80".parse().unwrap();
        assert_eq!(
            (p.published, p.target, p.protocol),
            (8080, 80, Protocol::Tcp)
        );
        assert_eq!(p.mode, PublishMode::Ingress);
        let p: PortConfig = "53:5353/udp".parse().unwrap();
        assert_eq!(
            (p.published, p.target, p.protocol),
            (53, 5353, Protocol::Udp)
        );
        let p: PortConfig = "published=8080,target=80,protocol=udp,mode=host"
            .parse()
            .unwrap();
        assert_eq!((p.published, p.target), (8080, 80));
        assert_eq!((p.protocol, p.mode), (Protocol::Udp, PublishMode::Host));
        for bad in [
            "8080",
            "x:80",
            "8080:0",
            "8080:80/sctp",
            "published=1",
            "published=1,target=2,mode=mesh",
            "target=80,foo=1",
            "70000:80",
        ] {
            let e = bad.parse::<PortConfig>().unwrap_err();
            assert!(e.starts_with("invalid publish"), "{bad}: {e}");
        }
    }

    #[test]
    fn states_order() {
        assert!(!TaskState::Running.is_terminal());
        assert!(TaskState::Complete.is_terminal());
        assert!(TaskState::Orphaned.is_terminal());
        assert!(TaskState::New < TaskState::Running);
    }
}
