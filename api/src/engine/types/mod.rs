//! The Docker Engine API's swarm objects as JSON, field for field as moby's
//! `api/types/swarm` and `api/types/network` write them: the same key
//! spelling, fields Go always writes are always written, fields Go omits
//! when empty (`omitempty`) are omitted when empty. Requests decode into
//! the same types after [`super::gojson::normalize`] (Go matches keys
//! without case and reads `null` as the zero value).
//!
//! Written here rather than taken from `bollard-stubs`: that crate makes
//! every field optional and omitted when `None` (Go writes most of them
//! always), its renames are case-sensitive, and it is ~10k lines generated
//! from the whole API for the ~30 types Shoal serves.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// String-to-string maps (`Labels`, `Options`) are kept sorted.
pub type Map = BTreeMap<String, String>;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `Version` of every object: bumped on each write (`?version=` checks it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ObjectVersion {
    /// The store index of the object's last write.
    pub index: u64,
}

mod service;
pub use service::*;

// --- nodes --------------------------------------------------------------

/// `Node`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Node {
    /// Node id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Version.
    pub version: ObjectVersion,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// What is asked of it.
    pub spec: NodeSpec,
    /// What it is.
    pub description: NodeDescription,
    /// How it is.
    pub status: NodeStatus,
    /// Managers only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager_status: Option<ManagerStatus>,
}

/// `NodeSpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeSpec {
    /// Optional name (Shoal names nodes by host name; not stored).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Labels (always written).
    pub labels: Map,
    /// `worker` or `manager`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub role: String,
    /// `active`, `pause`, `drain`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub availability: String,
}

/// `NodeDescription`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeDescription {
    /// Host name.
    pub hostname: String,
    /// OS and architecture.
    pub platform: Platform,
    /// CPUs and memory.
    pub resources: Limit,
    /// Engine version.
    pub engine: EngineDescription,
    /// Its certificate's issuer.
    #[serde(rename = "TLSInfo")]
    pub tls_info: TlsInfo,
}

/// `Platform`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Platform {
    /// `x86_64`.
    pub architecture: String,
    /// `linux`.
    #[serde(rename = "OS")]
    pub os: String,
}

/// `EngineDescription`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EngineDescription {
    /// The ENGINE VERSION column.
    pub engine_version: String,
}

/// `TLSInfo`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TlsInfo {
    /// Root CA certificate (PEM).
    pub trust_root: String,
}

/// `NodeStatus`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeStatus {
    /// `ready`, `down`, `unknown`, `disconnected`.
    pub state: String,
    /// Free text.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The node's address.
    pub addr: String,
}

/// `ManagerStatus`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ManagerStatus {
    /// Raft leader.
    #[serde(skip_serializing_if = "is_false")]
    pub leader: bool,
    /// `reachable` or `unreachable`.
    pub reachability: String,
    /// `ip:2377`.
    pub addr: String,
}

// --- swarm --------------------------------------------------------------

/// `Swarm` (`GET /swarm`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Swarm {
    /// Cluster id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Version.
    pub version: ObjectVersion,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Settings.
    pub spec: SwarmSpec,
    /// Root CA.
    #[serde(rename = "TLSInfo")]
    pub tls_info: TlsInfo,
    /// A `swarm ca --rotate` is under way.
    pub root_rotation_in_progress: bool,
    /// Overlay subnet pools.
    pub default_addr_pool: Vec<String>,
    /// Prefix length of allocated subnets.
    pub subnet_size: u32,
    /// VXLAN port.
    pub data_path_port: u32,
    /// Join tokens.
    pub join_tokens: JoinTokens,
}

/// `JoinTokens`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct JoinTokens {
    /// Worker token.
    pub worker: String,
    /// Manager token.
    pub manager: String,
}

/// `Spec` (swarm).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SwarmSpec {
    /// `default`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Always written.
    pub labels: Map,
    /// Task history.
    pub orchestration: Orchestration,
    /// Raft settings.
    pub raft: RaftSpec,
    /// Heartbeats.
    pub dispatcher: Dispatcher,
    /// CA settings.
    #[serde(rename = "CAConfig")]
    pub ca_config: CaConfig,
    /// `{}`.
    pub task_defaults: Empty,
    /// Autolock (not supported: always false).
    pub encryption_config: EncryptionConfig,
}

/// `OrchestrationConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Orchestration {
    /// Tasks kept per slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_history_retention_limit: Option<i64>,
}

/// `RaftConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RaftSpec {
    /// Entries between snapshots.
    #[serde(skip_serializing_if = "is_zero")]
    pub snapshot_interval: u64,
    /// Ticks without a leader before an election.
    pub election_tick: i64,
    /// Ticks between heartbeats.
    pub heartbeat_tick: i64,
}

/// `DispatcherConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Dispatcher {
    /// Nanoseconds.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub heartbeat_period: i64,
}

/// `CAConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CaConfig {
    /// Nanoseconds.
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub node_cert_expiry: i64,
    /// Raise to rotate the root CA.
    #[serde(skip_serializing_if = "is_zero")]
    pub force_rotate: u64,
}

/// `EncryptionConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EncryptionConfig {
    /// Always written.
    pub auto_lock_managers: bool,
}

/// `InitRequest`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct InitRequest {
    /// `0.0.0.0:2377`.
    pub listen_addr: String,
    /// Empty: chosen by the daemon.
    pub advertise_addr: String,
    /// Empty: the advertise address.
    pub data_path_addr: String,
    /// 0: 4789.
    pub data_path_port: u32,
    /// Not supported.
    pub force_new_cluster: bool,
    /// Settings.
    pub spec: SwarmSpec,
    /// Not supported.
    pub auto_lock_managers: bool,
    /// Empty: `active`.
    pub availability: String,
    /// Empty: `10.0.0.0/8`.
    pub default_addr_pool: Vec<String>,
    /// 0: 24.
    pub subnet_size: u32,
}

/// `JoinRequest`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct JoinRequest {
    /// `0.0.0.0:2377`.
    pub listen_addr: String,
    /// Empty: the address that routes to the manager.
    pub advertise_addr: String,
    /// Empty: the advertise address.
    pub data_path_addr: String,
    /// Managers to join through.
    pub remote_addrs: Vec<String>,
    /// `SWMTKN-1-…`.
    pub join_token: String,
    /// Empty: `active`.
    pub availability: String,
}

// --- networks -----------------------------------------------------------

/// `NetworkCreateRequest`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkCreate {
    /// Name.
    pub name: String,
    /// `overlay` (empty: overlay in a swarm).
    pub driver: String,
    /// `swarm` or empty.
    pub scope: String,
    /// Subnets.
    #[serde(rename = "IPAM")]
    pub ipam: Option<Ipam>,
    /// No egress.
    pub internal: bool,
    /// `shoal run` may join.
    pub attachable: bool,
    /// The routing mesh's network.
    pub ingress: bool,
    /// Not supported.
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: Option<bool>,
    /// Not supported.
    pub config_only: bool,
    /// Driver options (`encrypted`, `com.docker.network.driver.mtu`).
    pub options: Map,
    /// Labels.
    pub labels: Map,
}

/// `IPAM`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Ipam {
    /// `default`.
    pub driver: String,
    /// Subnets.
    pub config: Vec<IpamConfig>,
    /// Options.
    pub options: Map,
}

/// `IPAMConfig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamConfig {
    /// CIDR.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subnet: String,
    /// Not supported.
    #[serde(rename = "IPRange", skip_serializing_if = "String::is_empty")]
    pub ip_range: String,
    /// Gateway.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gateway: String,
}
