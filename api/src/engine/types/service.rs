//! Docker's service and task objects (`api/types/swarm/service.go`,
//! `task.go`, `container.go`), as [`super`] describes.

use serde::{Deserialize, Serialize};

use super::{is_false, is_zero, is_zero_i64, Map, ObjectVersion};

// --- services -----------------------------------------------------------

/// `ServiceSpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceSpec {
    /// Service name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Labels (always written).
    pub labels: Map,
    /// What each task runs.
    pub task_template: TaskSpec,
    /// Replicated or global.
    pub mode: ServiceMode,
    /// How updates roll.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_config: Option<UpdateConfig>,
    /// How rollbacks roll.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_config: Option<UpdateConfig>,
    /// Networks (deprecated place, API < 1.44; read, never written).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAttachmentConfig>,
    /// VIP or DNS round robin, and published ports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_spec: Option<EndpointSpec>,
}

/// `ServiceMode`: exactly one of the fields is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceMode {
    /// A fixed number of tasks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicated: Option<Replicated>,
    /// One task per eligible node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global: Option<Empty>,
    /// Jobs (not supported by Shoal; read to refuse them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicated_job: Option<serde_json::Value>,
    /// Jobs (not supported by Shoal; read to refuse them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global_job: Option<serde_json::Value>,
}

/// `{}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Empty {}

/// `ReplicatedService`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Replicated {
    /// Task count (missing: 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u64>,
}

/// `TaskSpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskSpec {
    /// The container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_spec: Option<ContainerSpec>,
    /// Limits and reservations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// When a task that ended is replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// Where tasks may run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Networks the tasks join.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAttachmentConfig>,
    /// Raised by `--force` (always written).
    pub force_update: u64,
    /// `container` (or empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub runtime: String,
}

/// `ContainerSpec` (the fields Shoal runs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerSpec {
    /// Image reference.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// Container labels.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub labels: Map,
    /// Entrypoint override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Arguments.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// `K=V`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Working directory.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dir: String,
    /// User.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Read-only root filesystem.
    #[serde(skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// Mounts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// `--init` (sent as `false` by the CLI).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    /// Capabilities added.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capability_add: Vec<String>,
    /// Capabilities dropped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub capability_drop: Vec<String>,
    /// Configs mounted as files.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileReference>,
    /// Secrets mounted as files.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileReference>,
    /// `--health-*`, `--no-healthcheck`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
}

/// `HealthConfig` (durations in nanoseconds; 0: inherit).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthConfig {
    /// `["NONE"]`, `["CMD", …]` or `["CMD-SHELL", cmd]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    /// Between probes.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub interval: i64,
    /// Longest probe.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub timeout: i64,
    /// Failures in a row that make it unhealthy.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub retries: i64,
    /// Grace after start.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub start_period: i64,
}

/// `ConfigReference` / `SecretReference` (one shape: the id and name
/// fields of the other kind stay empty).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct FileReference {
    /// Where and how the file appears.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<FileTarget>,
    /// Config id.
    #[serde(rename = "ConfigID", skip_serializing_if = "String::is_empty")]
    pub config_id: String,
    /// Config name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub config_name: String,
    /// Secret id.
    #[serde(rename = "SecretID", skip_serializing_if = "String::is_empty")]
    pub secret_id: String,
    /// Secret name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub secret_name: String,
}

/// `ConfigReferenceFileTarget`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct FileTarget {
    /// File name or absolute path.
    pub name: String,
    /// Owner.
    #[serde(rename = "UID")]
    pub uid: String,
    /// Group.
    #[serde(rename = "GID")]
    pub gid: String,
    /// Permission bits (decimal in JSON).
    pub mode: u32,
}

/// `Config` / `Secret` (`Spec.Data` only for configs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct FileObject {
    /// Id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Version.
    pub version: ObjectVersion,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Name, labels, data.
    pub spec: FileSpec,
}

/// `ConfigSpec` / `SecretSpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct FileSpec {
    /// Name.
    pub name: String,
    /// Labels (always written).
    pub labels: Map,
    /// Base64 content (configs; never written for secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Secret drivers (not supported).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<serde_json::Value>,
    /// Templating (not supported).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub templating: Option<serde_json::Value>,
}

/// `mount.Mount`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Mount {
    /// `bind`, `volume`, `tmpfs`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub r#type: String,
    /// Host path or volume name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Path in the container.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// Read only.
    #[serde(skip_serializing_if = "is_false")]
    pub read_only: bool,
}

/// `ResourceRequirements`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Resources {
    /// At most.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limit>,
    /// At least (placement).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservations: Option<Limit>,
}

/// `Limit` / `Resources`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Limit {
    /// Billionths of a CPU.
    #[serde(rename = "NanoCPUs", skip_serializing_if = "is_zero_i64")]
    pub nano_cpus: i64,
    /// Bytes.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub memory_bytes: i64,
}

/// `RestartPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RestartPolicy {
    /// `none`, `on-failure`, `any`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub condition: String,
    /// Nanoseconds between restarts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<i64>,
    /// 0: unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u64>,
}

/// `Placement`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Placement {
    /// `node.role==manager`, ...
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// Spread preferences.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub preferences: Vec<PlacementPreference>,
    /// Tasks per node at most (0: no limit).
    #[serde(skip_serializing_if = "is_zero")]
    pub max_replicas: u64,
}

/// `PlacementPreference`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PlacementPreference {
    /// `{"SpreadDescriptor": "node.labels.zone"}`.
    pub spread: Spread,
}

/// `SpreadOver`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Spread {
    /// `node.labels.K`.
    pub spread_descriptor: String,
}

/// `NetworkAttachmentConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkAttachmentConfig {
    /// Network id (or name, as docker-py sends it).
    pub target: String,
    /// DNS aliases.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// `UpdateConfig` (also `RollbackConfig`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct UpdateConfig {
    /// Tasks at once (0: all).
    pub parallelism: u64,
    /// Nanoseconds between batches.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub delay: i64,
    /// `pause`, `continue`, `rollback`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub failure_action: String,
    /// Nanoseconds a new task is watched.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub monitor: i64,
    /// Failures tolerated.
    pub max_failure_ratio: f32,
    /// `stop-first` or `start-first`.
    pub order: String,
}

/// `EndpointSpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointSpec {
    /// `vip` or `dnsrr`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mode: String,
    /// Published ports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortConfig>,
}

/// `PortConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortConfig {
    /// Name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `tcp` or `udp`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Port in the container.
    #[serde(skip_serializing_if = "is_zero")]
    pub target_port: u64,
    /// Port on the nodes (0: allocated).
    #[serde(skip_serializing_if = "is_zero")]
    pub published_port: u64,
    /// `ingress` or `host`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub publish_mode: String,
}

/// `Service`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Service {
    /// Service id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Version.
    pub version: ObjectVersion,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// What is asked.
    pub spec: ServiceSpec,
    /// Before the last update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_spec: Option<ServiceSpec>,
    /// VIPs and ports as allocated.
    pub endpoint: Endpoint,
    /// Where the last update is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_status: Option<UpdateStatus>,
    /// Only with `?status=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_status: Option<ServiceStatus>,
}

/// `Endpoint`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Endpoint {
    /// The endpoint spec.
    pub spec: EndpointSpec,
    /// Ports as allocated.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortConfig>,
    /// One per network.
    #[serde(rename = "VirtualIPs", skip_serializing_if = "Vec::is_empty")]
    pub virtual_ips: Vec<VirtualIp>,
}

/// `EndpointVirtualIP`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct VirtualIp {
    /// Network id.
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// `10.0.1.2/24`.
    pub addr: String,
}

/// `UpdateStatus`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct UpdateStatus {
    /// `updating`, `paused`, `completed`, `rollback_started`, ...
    pub state: String,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// Free text.
    pub message: String,
}

/// `ServiceStatus`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceStatus {
    /// Running now.
    pub running_tasks: u64,
    /// Wanted.
    pub desired_tasks: u64,
    /// Jobs only.
    pub completed_tasks: u64,
}

// --- tasks --------------------------------------------------------------

/// `Task`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Task {
    /// Task id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Version.
    pub version: ObjectVersion,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Always written.
    pub labels: Map,
    /// The spec it runs (never null: the CLI reads its image).
    pub spec: TaskSpec,
    /// Service id.
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// Slot (0 for global services).
    #[serde(skip_serializing_if = "is_zero")]
    pub slot: u64,
    /// Node id once assigned.
    #[serde(rename = "NodeID", skip_serializing_if = "String::is_empty")]
    pub node_id: String,
    /// Observed state.
    pub status: TaskStatus,
    /// Wanted state.
    pub desired_state: String,
    /// Addresses per network.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub networks_attachments: Vec<NetworkAttachment>,
}

/// `TaskStatus`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskStatus {
    /// RFC 3339 of the last change.
    pub timestamp: String,
    /// `running`, `failed`, ...
    pub state: String,
    /// What happened.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Why it failed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub err: String,
    /// Its container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_status: Option<ContainerStatus>,
    /// Always `{}` (host-mode ports are not reported per task).
    pub port_status: Empty,
}

/// `ContainerStatus`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerStatus {
    /// containerd id (the task id).
    #[serde(rename = "ContainerID")]
    pub container_id: String,
    /// Not known to managers (0).
    #[serde(rename = "PID")]
    pub pid: i64,
    /// Exit code once it ended.
    pub exit_code: i64,
}

/// `NetworkAttachment`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkAttachment {
    /// The network.
    pub network: AttachedNetwork,
    /// `10.0.1.3/24`.
    pub addresses: Vec<String>,
}

/// The swarm `Network` object inside an attachment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AttachedNetwork {
    /// Network id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Version.
    pub version: ObjectVersion,
    /// Its name and labels.
    pub spec: AttachedNetworkSpec,
}

/// `NetworkSpec` (name, labels, driver flags).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AttachedNetworkSpec {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Map,
    /// Scope `swarm`.
    pub scope: String,
    /// Ingress network.
    #[serde(skip_serializing_if = "is_false")]
    pub ingress: bool,
    /// Attachable.
    #[serde(skip_serializing_if = "is_false")]
    pub attachable: bool,
    /// Internal.
    #[serde(skip_serializing_if = "is_false")]
    pub internal: bool,
}
