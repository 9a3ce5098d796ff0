//! Rows and documents the daemon returns, shared by the CLI, the lab and
//! the tests: services and tasks (`service ls/ps/inspect`), workloads
//! (`shoal ps`), events, gossip members and entries.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use shoal_model::network::{Endpoint, Network};
use shoal_model::service::{PortConfig, Service, Task};

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
    /// `--env-rm K`.
    #[serde(default)]
    pub env_rm: Vec<String>,
    /// `--constraint-add EXPR`.
    #[serde(default)]
    pub constraint_add: Vec<String>,
    /// `--constraint-rm EXPR`.
    #[serde(default)]
    pub constraint_rm: Vec<String>,
    /// `--placement-pref-add spread=node.labels.K`.
    #[serde(default)]
    pub placement_pref_add: Vec<String>,
    /// `--placement-pref-rm spread=node.labels.K`.
    #[serde(default)]
    pub placement_pref_rm: Vec<String>,
    /// `--label-add k=v`.
    #[serde(default)]
    pub label_add: Vec<String>,
    /// `--label-rm k`.
    #[serde(default)]
    pub label_rm: Vec<String>,
    /// `--force`: replace every task even if nothing changed.
    pub force: bool,
    /// `--update-*`.
    #[serde(default)]
    pub update_config: RollingChanges,
    /// `--rollback-*`.
    #[serde(default)]
    pub rollback_config: RollingChanges,
    /// `--health-*` (fields set replace the stored ones) or
    /// `--no-healthcheck`.
    #[serde(default)]
    pub health: Option<shoal_model::health::HealthConfig>,
    /// The whole new spec (the Engine API's update), replacing the stored
    /// one before the changes above apply; its name must not change.
    #[serde(default)]
    pub spec: Option<Box<shoal_model::service::ServiceSpec>>,
    /// Refuse the update unless the service is still at this version
    /// (the Engine API's `?version=`).
    #[serde(default)]
    pub version: Option<u64>,
}

/// `network create -d bridge …`: a network of this node only (scope
/// `local`, no Raft).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LocalNetworkSpec {
    /// Name.
    pub name: String,
    /// `-d`.
    pub driver: String,
    /// `--subnet`.
    pub subnet: Option<ipnet::Ipv4Net>,
    /// `--gateway`.
    pub gateway: Option<Ipv4Addr>,
    /// `--internal`.
    pub internal: bool,
    /// `-o K=V`.
    pub options: BTreeMap<String, String>,
    /// `--label k=v`.
    pub labels: BTreeMap<String, String>,
}

/// Changes to how updates (or rollbacks) roll: each field given replaces
/// the stored one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RollingChanges {
    /// `--update-parallelism`.
    pub parallelism: Option<u64>,
    /// `--update-delay`, ms.
    pub delay_ms: Option<u64>,
    /// `--update-order`.
    pub order: Option<shoal_model::update::UpdateOrder>,
    /// `--update-failure-action`.
    pub failure_action: Option<shoal_model::update::FailureAction>,
    /// `--update-monitor`, ms.
    pub monitor_ms: Option<u64>,
    /// `--update-max-failure-ratio`.
    pub max_failure_ratio: Option<shoal_model::update::FailureRatio>,
}

impl RollingChanges {
    /// `c` with these changes.
    pub fn apply(&self, c: &mut shoal_model::update::UpdateConfig) {
        if let Some(p) = self.parallelism {
            c.parallelism = p;
        }
        if let Some(d) = self.delay_ms {
            c.delay_ms = d;
        }
        if let Some(o) = self.order {
            c.order = o;
        }
        if let Some(a) = self.failure_action {
            c.failure_action = a;
        }
        if let Some(m) = self.monitor_ms {
            c.monitor_ms = m;
        }
        if let Some(r) = self.max_failure_ratio {
            c.max_failure_ratio = r;
        }
    }
}

/// The cluster object (`GET /swarm` of the Engine API).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwarmDoc {
    /// Cluster id.
    pub id: String,
    /// Unix ms of `swarm init`.
    pub created_at: u64,
    /// Store index when read.
    pub version: u64,
    /// Worker join token.
    pub worker_token: String,
    /// Manager join token.
    pub manager_token: String,
    /// Overlay subnet pools.
    pub default_addr_pools: Vec<String>,
    /// Prefix length of allocated subnets.
    pub default_addr_pool_mask_len: u8,
    /// VXLAN port.
    pub data_path_port: u16,
    /// Node heartbeat period, ms.
    pub heartbeat_period_ms: u64,
    /// The root CA certificate (PEM).
    pub ca_cert_pem: String,
    /// A root rotation is under way (old roots still trusted).
    pub root_rotation_in_progress: bool,
}

/// One row of `service ls` / document of `service inspect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceRow {
    /// The stored service.
    #[serde(flatten)]
    pub service: Service,
    /// Tasks running now.
    pub running: u64,
    /// Tasks wanted: the replicas, or (global) the ready, active nodes.
    #[serde(default)]
    pub desired: u64,
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

/// One network a workload is attached to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attachment {
    /// The network as allocated in the store.
    pub network: Network,
    /// The endpoint (IP, MAC).
    pub endpoint: Endpoint,
    /// Host side of the veth (inside the network namespace).
    pub host_veth: String,
    /// Device name inside the workload (`eth0`, `eth1`, ...).
    pub ifname: String,
}

/// A workload this node runs: a `shoal run` process, a service task, or
/// the routing-mesh sandbox (no process).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workload {
    /// Workload id (the endpoint id of `shoal run`, the task id of a task).
    pub id: String,
    /// Name given with `--name` (or the id); `web.1` for tasks.
    pub name: String,
    /// Its networks, the first one is `eth0`.
    pub attachments: Vec<Attachment>,
    /// The first network (what `shoal ps` shows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// The endpoint on the first network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    /// Address on `shoal_gwbridge` (egress), if any.
    #[serde(default)]
    pub gw_ip: Option<Ipv4Addr>,
    /// Its network namespace (bind mount under the run dir).
    pub netns: PathBuf,
    /// Process id of the workload; 0 for a sandbox without a process.
    pub pid: u32,
    /// The command.
    pub argv: Vec<String>,
    /// The service task it is, if any.
    #[serde(default)]
    pub task: Option<String>,
    /// Its container in containerd (same id), when it runs from an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The image it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `running`, `exited (CODE)` until it is cleaned up, or `sandbox`
    /// (the routing mesh's, no process); filled in by `shoal ps`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
}

impl Workload {
    /// Address on network `nid`, if attached.
    pub fn ip_on(&self, nid: &str) -> Option<Ipv4Addr> {
        self.attachments
            .iter()
            .find(|a| a.network.id == nid)
            .map(|a| a.endpoint.ip)
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Sequence number on this manager (starts at 1).
    pub seq: u64,
    /// Unix ms when this manager saw it.
    pub time_ms: u64,
    /// `node`, `network` or `service`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// `create`, `update`, `remove`.
    #[serde(rename = "Action")]
    pub action: String,
    /// Object id.
    pub id: String,
    /// Object name (host name for nodes).
    pub name: String,
    /// What changed, e.g. `state.new=down`.
    pub attributes: BTreeMap<String, String>,
}

impl Event {
    /// Docker's one-line form:
    /// `2026-11-25T10:00:00.000Z node update ID (name=h2, state.new=down)`.
    pub fn line(&self) -> String {
        let mut attrs = vec![format!("name={}", self.name)];
        attrs.extend(self.attributes.iter().map(|(k, v)| format!("{k}={v}")));
        format!(
            "{} {} {} {} ({})",
            rfc3339_ms(self.time_ms),
            self.kind,
            self.action,
            self.id,
            attrs.join(", ")
        )
    }
}

pub(crate) fn rfc3339_ms(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            ms % 1000
        ),
        Err(_) => ms.to_string(),
    }
}

/// A gossip member as `gossip members` shows it (the membership crate's
/// view, field for field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipMember {
    /// Identity and addresses.
    pub info: GossipMemberInfo,
    /// Local opinion on liveness.
    pub state: GossipMemberState,
    /// Generation of the member's identity.
    pub incarnation: u64,
}

/// Who a gossip member is and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipMemberInfo {
    /// Cluster-wide node id.
    pub node_id: String,
    /// Where its gossip listens (UDP and TCP).
    pub gossip_addr: SocketAddr,
    /// Its advertise address.
    pub advertise_addr: IpAddr,
    /// Its data-path address (VTEP).
    pub data_path_addr: IpAddr,
}

/// Liveness of a member as seen locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipMemberState {
    /// Answers probes.
    Alive,
    /// Missed a probe.
    Suspect,
    /// Declared down.
    Down,
}

/// A gossip table entry for display: the value as text when it is UTF-8,
/// decoded for endpoint tables, hex otherwise.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GossipEntry {
    /// Table name.
    pub table: String,
    /// Key.
    pub key: String,
    /// Owner node id.
    pub owner: String,
    /// Version (hybrid Lamport clock).
    pub version: u64,
    /// Value for display.
    pub value: String,
}

/// Gossip table of a network's endpoints (`gossip tables --network`).
pub fn endpoint_table(network_id: &str) -> String {
    format!("ep/{network_id}")
}

/// One image on a node (`image ls`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRow {
    /// `registry/name`.
    pub repository: String,
    /// Its tag (`<none>` when pulled by digest only).
    pub tag: String,
    /// Manifest digest.
    pub digest: String,
    /// Docker's IMAGE ID (config digest).
    pub id: String,
    /// When it was built (RFC 3339), if the image says.
    pub created: Option<String>,
    /// Compressed size of its layers, bytes.
    pub size: u64,
}

/// A line a workload wrote, as `logs` and `service logs` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Who wrote it: `web.1.<task id>@<node>` (empty for `shoal logs`).
    pub context: String,
    /// Nanoseconds since the Unix epoch when it was written.
    pub time: i64,
    /// The same time as `--timestamps` shows it (RFC 3339, nanoseconds).
    pub stamp: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line, without its newline.
    pub line: String,
}
