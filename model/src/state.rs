//! The typed replicated state of a Shoal cluster.
//!
//! Every change is a [`Command`] that goes through Raft and is applied by
//! [`State::apply`] in log order on every manager. `apply` is deterministic:
//! it reads no clock and no randomness (time stamps and generated ids travel
//! inside the command, chosen by the proposer), so every manager ends with the
//! same state. Later parts add networks, services, tasks and keys here.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use shoal_tls::{NodeId, Role};

use crate::configs::{self, FileError, StoredFile};
use crate::network::{self, Network, NetworkError};
use crate::service::{self, Service, ServiceError, Task, TaskState};

/// Everything the managers agree on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Set once by `swarm init`.
    pub cluster: Option<Cluster>,
    /// Every node that joined and was not removed.
    pub nodes: BTreeMap<NodeId, Node>,
    /// Raft index of the last applied command; object versions come from it.
    pub index: u64,
    /// Gossip encryption keys, newest (highest Lamport time) first, at most
    /// [`KEYS_KEPT`].
    pub keys: Vec<GossipKey>,
    /// Overlay networks by id.
    pub networks: BTreeMap<String, Network>,
    /// Services by id.
    pub services: BTreeMap<String, Service>,
    /// Tasks by id.
    pub tasks: BTreeMap<String, Task>,
    /// Each node's gossip signing key (Ed25519 public key), registered by
    /// the node over its mutual-TLS session: only the owner's signature
    /// makes a gossip entry count (see `shoal_membership::auth`). Added
    /// after the first release: [`State::decode`] reads older snapshots.
    pub gossip_keys: BTreeMap<NodeId, Vec<u8>>,
    /// What each node offers the scheduler (reported by the node).
    #[serde(default)]
    pub node_resources: BTreeMap<NodeId, NodeResources>,
    /// `node update --label-add`: each node's labels, for placement
    /// constraints (`node.labels.K==V`).
    #[serde(default)]
    pub node_labels: BTreeMap<NodeId, BTreeMap<String, String>>,
    /// Data-plane keys of encrypted overlays, newest first, at most
    /// [`KEYS_KEPT`]; rotated with the gossip ring, never used for it.
    #[serde(default)]
    pub dataplane_keys: Vec<GossipKey>,
    /// Configs by id.
    #[serde(default)]
    pub configs: BTreeMap<String, StoredFile>,
    /// Secrets by id.
    #[serde(default)]
    pub secrets: BTreeMap<String, StoredFile>,
}

/// Put `key` first in a ring. Lamport: one past the newest, so the ring
/// order is the same on every manager whatever the proposer's clock says.
fn add_key(ring: &mut Vec<GossipKey>, mut key: GossipKey) {
    key.lamport = ring.first().map(|k| k.lamport + 1).unwrap_or(1);
    ring.retain(|k| k.id != key.id);
    ring.insert(0, key);
    ring.truncate(KEYS_KEPT);
}

/// Length of an Ed25519 public key.
pub const GOSSIP_KEY_LEN: usize = 32;

/// How many gossip keys the ring keeps (newest encrypts, all decrypt).
pub const KEYS_KEPT: usize = 3;

/// One 256-bit gossip key. Never printed: `Debug` shows only id and time.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipKey {
    /// Key id carried in every gossip packet header.
    pub id: u32,
    /// Lamport time of its creation (orders the ring).
    pub lamport: u64,
    /// The key material.
    pub key: [u8; 32],
}

impl fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GossipKey")
            .field("id", &self.id)
            .field("lamport", &self.lamport)
            .finish_non_exhaustive()
    }
}

/// Cluster-wide settings and secrets.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    /// Random id chosen at `swarm init`.
    pub id: String,
    /// Unix milliseconds of `swarm init`.
    pub created_at: u64,
    /// The root CA that signs node certificates.
    pub ca: CaState,
    /// Secret part of the worker join token.
    pub worker_secret: String,
    /// Secret part of the manager join token.
    pub manager_secret: String,
    /// Pools overlay subnets are allocated from.
    pub default_addr_pools: Vec<String>,
    /// Prefix length of subnets allocated from the pools.
    pub default_addr_pool_mask_len: u8,
    /// UDP port of the VXLAN data path.
    pub data_path_port: u16,
    /// Node heartbeat period in milliseconds.
    pub heartbeat_period_ms: u64,
    /// Gossip key rotation interval in milliseconds.
    pub key_rotation_ms: u64,
}

impl fmt::Debug for Cluster {
    // Secrets and the CA key never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .field("created_at", &self.created_at)
            .field("ca", &self.ca)
            .field("default_addr_pools", &self.default_addr_pools)
            .field(
                "default_addr_pool_mask_len",
                &self.default_addr_pool_mask_len,
            )
            .field("data_path_port", &self.data_path_port)
            .field("heartbeat_period_ms", &self.heartbeat_period_ms)
            .field("key_rotation_ms", &self.key_rotation_ms)
            .finish_non_exhaustive()
    }
}

/// The cluster CA as replicated to managers (they all can sign).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct CaState {
    /// Current root certificate (PEM); new certificates are signed by it.
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
    /// Older roots still trusted while a rotation is in progress.
    pub previous_roots: Vec<String>,
}

impl CaState {
    /// Every root a node must trust: the current one first.
    pub fn trusted_roots(&self) -> Vec<String> {
        let mut roots = vec![self.cert_pem.clone()];
        roots.extend(self.previous_roots.iter().cloned());
        roots
    }
}

impl fmt::Debug for CaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaState")
            .field("previous_roots", &self.previous_roots.len())
            .finish_non_exhaustive()
    }
}

/// Whether the scheduler may place work on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    /// New tasks may be scheduled.
    Active,
    /// No new tasks; existing ones keep running.
    Pause,
    /// No tasks; existing ones are moved away.
    Drain,
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Availability::Active => "Active",
            Availability::Pause => "Pause",
            Availability::Drain => "Drain",
        })
    }
}

impl std::str::FromStr for Availability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "active" => Ok(Availability::Active),
            "pause" => Ok(Availability::Pause),
            "drain" => Ok(Availability::Drain),
            _ => Err(format!(
                "invalid availability {s:?}: expected active, pause or drain"
            )),
        }
    }
}

/// Liveness of a node as the managers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Not yet heard from.
    Unknown,
    /// Heartbeating.
    Ready,
    /// Missed its heartbeats or left.
    Down,
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeStatus::Unknown => "Unknown",
            NodeStatus::Ready => "Ready",
            NodeStatus::Down => "Down",
        })
    }
}

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Cluster-wide id (also the CN of its certificate).
    pub id: NodeId,
    /// Host name the node reported when joining.
    pub hostname: String,
    /// Manager or worker (what its certificate says once issued).
    pub role: Role,
    /// Scheduling availability.
    pub availability: Availability,
    /// Liveness.
    pub status: NodeStatus,
    /// Control-plane address (`--advertise-addr`), with the 2377 port.
    pub addr: SocketAddr,
    /// VXLAN address (`--data-path-addr`).
    pub data_path_addr: IpAddr,
    /// Raft id while the node is a manager.
    pub raft_id: Option<u64>,
    /// Unix milliseconds when it joined.
    pub created_at: u64,
    /// Unix milliseconds of the last change.
    pub updated_at: u64,
    /// Raft index of the last change.
    pub version: u64,
}

pub use crate::command::{Command, NodeResources, NodeUpdate};

/// Why a command was rejected by `apply` (it is still in the log; it just
/// changed nothing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    /// `InitCluster` on an initialised store.
    #[error("this swarm is already initialized")]
    AlreadyInitialized,
    /// Anything but `InitCluster` on an empty store.
    #[error("the swarm is not initialized")]
    NotInitialized,
    /// `AddNode` with an id in use.
    #[error("node {0} already exists")]
    NodeExists(NodeId),
    /// The node named does not exist.
    #[error("node {0} not found")]
    NoSuchNode(NodeId),
    /// Two nodes would share a raft id.
    #[error("raft id {0} is already used by node {1}")]
    RaftIdInUse(u64, NodeId),
    /// A network command was refused.
    #[error("{0}")]
    Network(#[from] NetworkError),
    /// A service command was refused.
    #[error("{0}")]
    Service(#[from] ServiceError),
    /// A gossip signing key of the wrong size.
    #[error("a gossip signing key has {GOSSIP_KEY_LEN} bytes, not {0}")]
    BadGossipKey(usize),
    /// A config or secret command was refused.
    #[error("{0}")]
    File(#[from] FileError),
}

/// The result of applying one command.
pub type ApplyResult = Result<(), ApplyError>;

impl State {
    /// Apply one command at raft index `index`.
    pub fn apply_command(&mut self, index: u64, cmd: Command) -> ApplyResult {
        self.index = index;
        if !matches!(cmd, Command::InitCluster { .. }) && self.cluster.is_none() {
            return Err(ApplyError::NotInitialized);
        }
        match cmd {
            Command::InitCluster { cluster, mut node } => {
                if self.cluster.is_some() {
                    return Err(ApplyError::AlreadyInitialized);
                }
                node.version = index;
                self.cluster = Some(*cluster);
                self.nodes.insert(node.id.clone(), node);
            }
            Command::AddNode { mut node } => {
                if self.nodes.contains_key(&node.id) {
                    return Err(ApplyError::NodeExists(node.id));
                }
                if let Some(rid) = node.raft_id {
                    self.check_raft_id(rid, &node.id)?;
                }
                node.version = index;
                self.nodes.insert(node.id.clone(), node);
            }
            Command::UpdateNode { id, update, at } => {
                if let Some(Some(rid)) = update.raft_id {
                    self.check_raft_id(rid, &id)?;
                }
                let node = self
                    .nodes
                    .get_mut(&id)
                    .ok_or_else(|| ApplyError::NoSuchNode(id.clone()))?;
                if let Some(a) = update.availability {
                    node.availability = a;
                }
                if let Some(r) = update.role {
                    node.role = r;
                }
                if let Some(s) = update.status {
                    node.status = s;
                }
                if let Some(r) = update.raft_id {
                    node.raft_id = r;
                }
                if let Some(a) = update.addr {
                    node.addr = a;
                }
                if let Some(a) = update.data_path_addr {
                    node.data_path_addr = a;
                }
                node.updated_at = at;
                node.version = index;
            }
            Command::RemoveNode { id } => {
                if self.nodes.remove(&id).is_none() {
                    return Err(ApplyError::NoSuchNode(id));
                }
                // A removed node's gossip entries stop counting everywhere.
                self.gossip_keys.remove(&id);
                self.node_labels.remove(&id);
                self.node_resources.remove(&id);
                // Its endpoints (workloads, ingress sandbox) go with it; its
                // tasks are rescheduled by the scheduler.
                for net in self.networks.values_mut() {
                    let before = net.endpoints.len();
                    net.endpoints.retain(|_, e| e.node != id.as_str());
                    if net.endpoints.len() != before {
                        net.version = index;
                    }
                }
            }
            Command::SetJoinSecret { role, secret } => {
                if let Some(c) = self.cluster.as_mut() {
                    match role {
                        Role::Worker => c.worker_secret = secret,
                        Role::Manager => c.manager_secret = secret,
                    }
                }
            }
            Command::SetCa { ca } => {
                if let Some(c) = self.cluster.as_mut() {
                    c.ca = ca;
                }
            }
            Command::AddKey { key } => add_key(&mut self.keys, key),
            Command::AddDataplaneKey { key } => add_key(&mut self.dataplane_keys, key),
            c @ (Command::CreateFile { .. }
            | Command::UpdateFileLabels { .. }
            | Command::RemoveFile { .. }) => self.apply_file(index, c)?,
            Command::CreateNetwork { spec, at } => {
                let (pools, mask) = match self.cluster.as_ref() {
                    Some(c) => (
                        c.default_addr_pools
                            .iter()
                            .filter_map(|p| p.parse().ok())
                            .collect::<Vec<_>>(),
                        c.default_addr_pool_mask_len,
                    ),
                    None => (Vec::new(), 24),
                };
                network::create(&mut self.networks, spec, &pools, mask, at, index)?;
            }
            Command::RemoveNetwork { network: key } => {
                let tasks = &self.tasks;
                network::remove(&mut self.networks, &key, |ep| {
                    tasks
                        .get(ep)
                        .is_some_and(|t| t.desired >= TaskState::Complete)
                })?;
            }
            Command::AttachEndpoint {
                network: key,
                id,
                name,
                node,
                ip,
            } => {
                let nid = network::find(&self.networks, &key)
                    .map(|n| n.id.clone())
                    .ok_or_else(|| NetworkError::NotFound(key.clone()))?;
                if let Some(net) = self.networks.get_mut(&nid) {
                    network::attach(net, id, name, node, ip, index)?;
                }
            }
            Command::DetachEndpoint { network: key, id } => {
                if let Some(net) = self.networks.get_mut(&key) {
                    net.endpoints.remove(&id);
                    net.version = index;
                }
            }
            Command::CreateService { id, mut spec, at } => {
                if self.services.contains_key(&id) {
                    return Err(ServiceError::NameInUse(spec.name).into());
                }
                configs::resolve(&mut spec.container, &self.configs, &self.secrets)?;
                let spec = service::check_spec(&self.services, &self.networks, spec, None)?;
                let mut svc = Service {
                    id: id.clone(),
                    spec,
                    vips: BTreeMap::new(),
                    spec_version: index,
                    created_at: at,
                    updated_at: at,
                    version: index,
                    update_status: None,
                    previous_spec: None,
                };
                service::sync_vips(&mut svc, &mut self.networks, index)?;
                self.services.insert(id, svc);
            }
            Command::UpdateService {
                service: key,
                mut spec,
                at,
            } => {
                configs::resolve(&mut spec.container, &self.configs, &self.secrets)?;
                let mut svc = service::find(&self.services, &key)
                    .cloned()
                    .ok_or_else(|| ServiceError::NotFound(key.clone()))?;
                let spec =
                    service::check_spec(&self.services, &self.networks, spec, Some(&svc.id))?;
                // Only what tasks run replaces them (not the count, not how
                // an update rolls).
                let mut same = spec.clone();
                same.replicas = svc.spec.replicas;
                same.update_config = svc.spec.update_config.clone();
                same.rollback_config = svc.spec.rollback_config.clone();
                if same != svc.spec {
                    // A new rollout: the scheduler reports on it afresh.
                    svc.spec_version = index;
                    svc.update_status = None;
                    svc.previous_spec = Some(Box::new(svc.spec.clone()));
                }
                svc.spec = spec;
                svc.updated_at = at;
                svc.version = index;
                service::sync_vips(&mut svc, &mut self.networks, index)?;
                self.services.insert(svc.id.clone(), svc);
            }
            Command::RemoveService { service: key, at } => {
                let svc = service::find(&self.services, &key)
                    .cloned()
                    .ok_or_else(|| ServiceError::NotFound(key.clone()))?;
                service::free_vips(&svc, &mut self.networks, index);
                self.services.remove(&svc.id);
                for t in self.tasks.values_mut().filter(|t| t.service == svc.id) {
                    if t.desired != TaskState::Shutdown {
                        t.desired = TaskState::Shutdown;
                        t.updated_at = at;
                        t.version = index;
                    }
                }
            }
            Command::CreateTask {
                id,
                service: sid,
                slot,
                node,
                at,
            } => {
                if self.tasks.contains_key(&id) {
                    return Err(ServiceError::TaskExists(id).into());
                }
                let endpoints = self.place(&id, &sid, slot, &node, index)?;
                let svc = self
                    .services
                    .get(&sid)
                    .ok_or_else(|| ServiceError::NotFound(sid.clone()))?;
                let (service_name, spec_version) = (svc.spec.name.clone(), svc.spec_version);
                self.tasks.insert(
                    id.clone(),
                    Task {
                        id,
                        service: sid,
                        service_name,
                        slot,
                        node,
                        desired: TaskState::Running,
                        state: TaskState::Assigned,
                        exit_code: None,
                        message: "assigned".into(),
                        endpoints,
                        spec_version,
                        created_at: at,
                        updated_at: at,
                        version: index,
                        running_at: 0,
                    },
                );
            }
            Command::SetTaskDesired { id, desired, at } => {
                let t = self
                    .tasks
                    .get_mut(&id)
                    .ok_or_else(|| ServiceError::NoSuchTask(id.clone()))?;
                t.desired = desired;
                t.updated_at = at;
                t.version = index;
            }
            Command::TaskStatus {
                id,
                state,
                exit_code,
                message,
                at,
            } => {
                let t = self
                    .tasks
                    .get_mut(&id)
                    .ok_or_else(|| ServiceError::NoSuchTask(id.clone()))?;
                // Forward only: a late report never revives an ended task.
                if t.state.is_terminal() || state <= t.state {
                    return Ok(());
                }
                t.state = state;
                if state == TaskState::Running {
                    t.running_at = at;
                }
                t.exit_code = exit_code.or(t.exit_code);
                t.message = service::bounded_message(message);
                t.updated_at = at;
                t.version = index;
                if state.is_terminal() {
                    let (tid, eps) = (t.id.clone(), t.endpoints.clone());
                    service::free_endpoints(&tid, &eps, &mut self.networks, index);
                }
            }
            Command::RemoveTask { id } => {
                if let Some(t) = self.tasks.remove(&id) {
                    service::free_endpoints(&t.id, &t.endpoints, &mut self.networks, index);
                }
            }
            Command::SetGossipKey { id, key } => {
                if !self.nodes.contains_key(&id) {
                    return Err(ApplyError::NoSuchNode(id));
                }
                if key.len() != GOSSIP_KEY_LEN {
                    return Err(ApplyError::BadGossipKey(key.len()));
                }
                self.gossip_keys.insert(id, key);
            }
            Command::SetNodeResources { id, resources } => {
                if !self.nodes.contains_key(&id) {
                    return Err(ApplyError::NoSuchNode(id));
                }
                self.node_resources.insert(id, resources);
            }
            Command::RollbackService { service: key, at } => {
                let mut svc = service::find(&self.services, &key)
                    .cloned()
                    .ok_or_else(|| ServiceError::NotFound(key.clone()))?;
                let previous = svc
                    .previous_spec
                    .take()
                    .ok_or_else(|| ServiceError::NoPreviousSpec(svc.spec.name.clone()))?;
                let now = std::mem::replace(&mut svc.spec, *previous);
                svc.previous_spec = Some(Box::new(now));
                svc.spec_version = index;
                svc.updated_at = at;
                svc.version = index;
                svc.update_status = Some(crate::update::UpdateStatus {
                    state: crate::update::UpdateState::RollbackStarted,
                    started_at: at,
                    completed_at: 0,
                    message: "rollback in progress".into(),
                });
                service::sync_vips(&mut svc, &mut self.networks, index)?;
                self.services.insert(svc.id.clone(), svc);
            }
            Command::SetUpdateStatus {
                service: sid,
                status,
            } => {
                let svc = self
                    .services
                    .get_mut(&sid)
                    .ok_or_else(|| ServiceError::NotFound(sid.clone()))?;
                svc.update_status = Some(crate::update::UpdateStatus {
                    message: service::bounded_message(status.message),
                    ..status
                });
                svc.version = index;
            }
            Command::SetNodeLabels { id, labels } => {
                if !self.nodes.contains_key(&id) {
                    return Err(ApplyError::NoSuchNode(id));
                }
                service::check_labels(&labels)?;
                if labels.is_empty() {
                    self.node_labels.remove(&id);
                } else {
                    self.node_labels.insert(id, labels);
                }
            }
            Command::PendTask {
                id,
                service: sid,
                slot,
                message,
                at,
            } => {
                if let Some(t) = self.tasks.get_mut(&id) {
                    if !t.is_pending() {
                        return Err(ServiceError::TaskExists(id).into());
                    }
                    t.message = service::bounded_message(message);
                    t.updated_at = at;
                    t.version = index;
                    return Ok(());
                }
                let svc = self
                    .services
                    .get(&sid)
                    .ok_or_else(|| ServiceError::NotFound(sid.clone()))?;
                let (service_name, spec_version) = (svc.spec.name.clone(), svc.spec_version);
                self.tasks.insert(
                    id.clone(),
                    Task {
                        id,
                        service: sid,
                        service_name,
                        slot,
                        node: String::new(),
                        desired: TaskState::Running,
                        state: TaskState::New,
                        exit_code: None,
                        message: service::bounded_message(message),
                        endpoints: BTreeMap::new(),
                        spec_version,
                        created_at: at,
                        updated_at: at,
                        version: index,
                        running_at: 0,
                    },
                );
            }
            Command::AssignTask { id, node, at } => {
                let t = self
                    .tasks
                    .get(&id)
                    .ok_or_else(|| ServiceError::NoSuchTask(id.clone()))?;
                if !t.is_pending() || t.desired != TaskState::Running {
                    return Err(ServiceError::TaskExists(id).into());
                }
                let (sid, slot) = (t.service.clone(), t.slot);
                let endpoints = self.place(&id, &sid, slot, &node, index)?;
                if let Some(t) = self.tasks.get_mut(&id) {
                    t.node = node;
                    t.endpoints = endpoints;
                    t.state = TaskState::Assigned;
                    t.message = "assigned".into();
                    t.updated_at = at;
                    t.version = index;
                }
            }
        }
        Ok(())
    }

    /// Placing task `id` (slot `slot` of service `sid`) on `node`, which
    /// must exist: its endpoints on the service's networks.
    fn place(
        &mut self,
        id: &str,
        sid: &str,
        slot: u64,
        node: &str,
        index: u64,
    ) -> Result<BTreeMap<String, network::Endpoint>, ApplyError> {
        let svc = self
            .services
            .get(sid)
            .ok_or_else(|| ServiceError::NotFound(sid.to_string()))?;
        if !self.nodes.keys().any(|n| n.as_str() == node) {
            return Err(ApplyError::NoSuchNode(
                node.parse()
                    .map_err(|_| ServiceError::NotFound(node.to_string()))?,
            ));
        }
        let ingress = self.networks.values().find(|n| n.ingress).cloned();
        let nets = svc.task_networks(ingress.as_ref());
        let name = match slot {
            0 => format!("{}.{node}.{id}", svc.spec.name),
            n => format!("{}.{n}.{id}", svc.spec.name),
        };
        Ok(service::allocate_endpoints(
            id,
            &name,
            node,
            &nets,
            &mut self.networks,
            index,
        )?)
    }

    fn check_raft_id(&self, rid: u64, owner: &NodeId) -> Result<(), ApplyError> {
        match self
            .nodes
            .values()
            .find(|n| n.raft_id == Some(rid) && &n.id != owner)
        {
            Some(other) => Err(ApplyError::RaftIdInUse(rid, other.id.clone())),
            None => Ok(()),
        }
    }

    /// The node with raft id `rid`, if any.
    pub fn node_by_raft_id(&self, rid: u64) -> Option<&Node> {
        self.nodes.values().find(|n| n.raft_id == Some(rid))
    }

    /// Managers (nodes with the manager role).
    pub fn managers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().filter(|n| n.role == Role::Manager)
    }
}

/// Most bytes of strings a decoded state snapshot may hold (bincode's
/// limit counts what strings allocate): as much as the largest Raft batch
/// a snapshot can travel in (raft-store's `MAX_BATCH`, 1 GiB).
pub const STATE_DECODE_LIMIT: usize = 1 << 30;

impl State {
    /// Serializes the whole state ([`crate::codec`]): the snapshot format
    /// on disk and on the wire.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        crate::codec::encode(self).map_err(|e| format!("cannot encode state snapshot: {e}"))
    }

    /// Reads a state written by [`State::encode`], or by a release that
    /// wrote bincode (the layouts in [`crate::legacy`]). The bytes come
    /// from disk and from the leader, so what they make us allocate is
    /// bounded: CBOR allocates as it reads, bincode is held to
    /// [`STATE_DECODE_LIMIT`] (without a limit it allocates a string of
    /// whatever length the input claims before reading it).
    pub fn decode(data: &[u8]) -> Result<State, String> {
        if let Some(r) = crate::codec::decode(data) {
            return r.map_err(|e| format!("corrupted state snapshot: {e}"));
        }
        crate::legacy::decode_state(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        Cluster {
            id: "c1".into(),
            created_at: 1,
            ca: CaState {
                cert_pem: "CERT".into(),
                key_pem: "SECRET-KEY".into(),
                previous_roots: vec![],
            },
            worker_secret: "wsecret".into(),
            manager_secret: "msecret".into(),
            default_addr_pools: vec!["10.0.0.0/8".into()],
            default_addr_pool_mask_len: 24,
            data_path_port: 4789,
            heartbeat_period_ms: 5000,
            key_rotation_ms: 12 * 3600 * 1000,
        }
    }

    fn node(raft_id: Option<u64>) -> Node {
        Node {
            id: NodeId::generate(),
            hostname: "h".into(),
            role: if raft_id.is_some() {
                Role::Manager
            } else {
                Role::Worker
            },
            availability: Availability::Active,
            status: NodeStatus::Ready,
            addr: "10.0.0.1:2377".parse().unwrap(),
            data_path_addr: "10.0.0.1".parse().unwrap(),
            raft_id,
            created_at: 1,
            updated_at: 1,
            version: 0,
        }
    }

    #[test]
    fn init_add_update_remove() {
        let mut s = State::default();
        let m = node(Some(7));
        assert_eq!(
            s.apply_command(1, Command::AddNode { node: m.clone() }),
            Err(ApplyError::NotInitialized)
        );
        s.apply_command(
            2,
            Command::InitCluster {
                cluster: Box::new(cluster()),
                node: m.clone(),
            },
        )
        .unwrap();
        let w = node(None);
        s.apply_command(3, Command::AddNode { node: w.clone() })
            .unwrap();
        assert_eq!(
            s.apply_command(4, Command::AddNode { node: w.clone() }),
            Err(ApplyError::NodeExists(w.id.clone()))
        );
        let mut dup = node(Some(7));
        dup.id = NodeId::generate();
        assert!(matches!(
            s.apply_command(5, Command::AddNode { node: dup }),
            Err(ApplyError::RaftIdInUse(7, _))
        ));
        s.apply_command(
            6,
            Command::UpdateNode {
                id: w.id.clone(),
                update: NodeUpdate {
                    availability: Some(Availability::Drain),
                    ..Default::default()
                },
                at: 9,
            },
        )
        .unwrap();
        assert_eq!(s.nodes[&w.id].availability, Availability::Drain);
        assert_eq!(s.nodes[&w.id].version, 6);
        s.apply_command(7, Command::RemoveNode { id: w.id.clone() })
            .unwrap();
        assert_eq!(s.nodes.len(), 1);
        assert_eq!(s.node_by_raft_id(7).map(|n| &n.id), Some(&m.id));
    }

    #[test]
    fn snapshot_round_trip_and_corruption() {
        let s = initialized();
        let snap = s.encode().unwrap();
        let t = State::decode(&snap).unwrap();
        assert_eq!(s, t);
        assert!(State::decode(&snap[..snap.len() / 2]).is_err());
        assert!(State::decode(&[0xff; 3]).is_err());
    }

    #[test]
    fn commands_round_trip_and_bincode_commands_still_read() {
        let cmd = Command::CreateService {
            id: "s1".into(),
            spec: spec(3),
            at: 9,
        };
        assert_eq!(Command::decode(&cmd.encode().unwrap()).unwrap(), cmd);
        // What the bincode releases wrote into the log (a command whose
        // layout did not change; `data_dir_compat` reads older services).
        let rm = Command::RemoveService {
            service: "web".into(),
            at: 3,
        };
        let old = bincode::serde::encode_to_vec(&rm, bincode::config::standard()).unwrap();
        assert_eq!(Command::decode(&old).unwrap(), rm);
        assert!(Command::decode(&[0xd9, 0xd9, 0xf7, 0xff]).is_err());
    }

    /// Found by `fuzz/` (state_snapshot): a string length of 2^40 made
    /// bincode allocate a terabyte before reading it (an abort); now the
    /// claim is refused.
    #[test]
    fn huge_claimed_string_is_refused_before_allocating() {
        // Some(cluster), cluster id: length as varint u64 (tag 253) 2^40.
        let bytes = [1u8, 253, 0, 0, 0, 0, 0, 1, 0, 0];
        let err = State::decode(&bytes).unwrap_err();
        assert!(err.contains("corrupted state snapshot"), "{err}");
    }

    #[test]
    fn key_ring_keeps_three_newest_in_lamport_order() {
        let mut s = initialized();
        for id in 1..=5u32 {
            s.apply_command(
                1 + u64::from(id),
                Command::AddKey {
                    key: GossipKey {
                        id,
                        lamport: 0,
                        key: [id as u8; 32],
                    },
                },
            )
            .unwrap();
        }
        let ids: Vec<u32> = s.keys.iter().map(|k| k.id).collect();
        assert_eq!(ids, vec![5, 4, 3]);
        let lamports: Vec<u64> = s.keys.iter().map(|k| k.lamport).collect();
        assert_eq!(lamports, vec![5, 4, 3]);
        assert!(!format!("{:?}", s.keys[0]).contains("key:"));
        // The data-plane ring is apart: its keys never enter the gossip
        // ring, and it keeps three of its own.
        for id in 10..=13u32 {
            let key = GossipKey {
                id,
                lamport: 0,
                key: [id as u8; 32],
            };
            s.apply_command(10 + u64::from(id), Command::AddDataplaneKey { key })
                .unwrap();
        }
        let dp: Vec<(u32, u64)> = s.dataplane_keys.iter().map(|k| (k.id, k.lamport)).collect();
        assert_eq!(dp, vec![(13, 4), (12, 3), (11, 2)]);
        let ids: Vec<u32> = s.keys.iter().map(|k| k.id).collect();
        assert_eq!(ids, vec![5, 4, 3]);
        let back = State::decode(&s.encode().unwrap()).unwrap();
        assert_eq!(back.dataplane_keys, s.dataplane_keys);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let dbg = format!("{:?}", cluster());
        assert!(
            !dbg.contains("SECRET-KEY") && !dbg.contains("wsecret") && !dbg.contains("msecret")
        );
    }

    /// A state after `swarm init` (node 1, a manager).
    fn initialized() -> State {
        let mut s = State::default();
        s.apply_command(
            1,
            Command::InitCluster {
                cluster: Box::new(cluster()),
                node: node(Some(1)),
            },
        )
        .unwrap();
        s
    }

    fn spec(replicas: u64) -> crate::service::ServiceSpec {
        crate::service::ServiceSpec {
            name: "web".into(),
            replicas,
            networks: vec![],
            ports: vec![],
            endpoint_mode: crate::service::EndpointMode::Vip,
            env: vec![],
            restart_condition: crate::service::RestartCondition::Any,
            command: vec!["sleep".into()],
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
        }
    }

    #[test]
    fn absurd_replica_counts_are_refused_in_apply() {
        let mut s = initialized();
        let huge = Command::CreateService {
            id: "s1".into(),
            spec: spec(1_000_000_000_000),
            at: 1,
        };
        let e = s.apply_command(2, huge).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--replicas 1000000000000: a service has at most 10000 replicas"
        );
        assert!(s.services.is_empty());
        let ok = Command::CreateService {
            id: "s1".into(),
            spec: spec(crate::service::MAX_REPLICAS),
            at: 1,
        };
        s.apply_command(3, ok).unwrap();
        let scale = Command::UpdateService {
            service: "s1".into(),
            spec: spec(crate::service::MAX_REPLICAS + 1),
            at: 2,
        };
        assert!(s.apply_command(4, scale).is_err());
        assert_eq!(s.services["s1"].spec.replicas, crate::service::MAX_REPLICAS);
    }

    #[test]
    fn ports_published_as_zero_get_free_dynamic_ports_and_stack_names_pass() {
        use crate::service::{PortConfig, Protocol, PublishMode};
        let mut s = initialized();
        let port = |published, protocol| PortConfig {
            protocol,
            target: 80,
            published,
            mode: PublishMode::Host,
        };
        let mut a = spec(1);
        a.name = "app_front".into();
        a.ports = vec![port(0, Protocol::Tcp), port(30000, Protocol::Udp)];
        s.apply_command(
            2,
            Command::CreateService {
                id: "a".into(),
                spec: a,
                at: 1,
            },
        )
        .unwrap();
        let got: Vec<u16> = s.services["a"]
            .spec
            .ports
            .iter()
            .map(|p| p.published)
            .collect();
        assert_eq!(got, [30000, 30000], "tcp and udp are counted apart");
        let mut b = spec(1);
        b.name = "app_back".into();
        b.ports = vec![port(0, Protocol::Tcp), port(0, Protocol::Tcp)];
        s.apply_command(
            3,
            Command::CreateService {
                id: "b".into(),
                spec: b,
                at: 1,
            },
        )
        .unwrap();
        let got: Vec<u16> = s.services["b"]
            .spec
            .ports
            .iter()
            .map(|p| p.published)
            .collect();
        assert_eq!(got, [30001, 30002]);
        for bad in ["_x", "x_", "-x", "", "a.b"] {
            let mut c = spec(1);
            c.name = bad.into();
            let e = s.apply_command(
                4,
                Command::CreateService {
                    id: "c".into(),
                    spec: c,
                    at: 1,
                },
            );
            assert!(e.is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn node_supplied_task_messages_are_bounded() {
        let long = "é".repeat(4000);
        let m = crate::service::bounded_message(long);
        assert!(m.len() <= crate::service::MAX_TASK_MESSAGE);
        assert!(m.len() >= crate::service::MAX_TASK_MESSAGE - 1);
        assert_eq!(crate::service::bounded_message("short".into()), "short");
    }

    #[test]
    fn gossip_keys_are_registered_per_node_and_go_with_it() {
        let mut s = State::default();
        let n = node(Some(1));
        let id = n.id.clone();
        s.apply_command(
            1,
            Command::InitCluster {
                cluster: Box::new(cluster()),
                node: n,
            },
        )
        .unwrap();
        let set = |k: Vec<u8>| Command::SetGossipKey {
            id: id.clone(),
            key: k,
        };
        assert_eq!(
            s.apply_command(2, set(vec![1; 31])).unwrap_err(),
            ApplyError::BadGossipKey(31)
        );
        s.apply_command(3, set(vec![7; 32])).unwrap();
        assert_eq!(s.gossip_keys.get(&id), Some(&vec![7; 32]));
        let other = Command::SetGossipKey {
            id: NodeId::generate(),
            key: vec![1; 32],
        };
        assert!(matches!(
            s.apply_command(4, other),
            Err(ApplyError::NoSuchNode(_))
        ));
        // A snapshot keeps them.
        assert_eq!(State::decode(&s.encode().unwrap()).unwrap(), s);
    }
}
