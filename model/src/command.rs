//! Every change to the replicated state: [`Command`] (what a proposer
//! puts into the Raft log, applied in log order by `State::apply_command`)
//! and the values it carries. New variants go at the end; new fields carry
//! `#[serde(default)]` (see [`crate::codec`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use shoal_tls::{NodeId, Role};

use crate::network::NetworkSpec;
use crate::service::{ServiceSpec, TaskState};
use crate::state::{Availability, CaState, Cluster, GossipKey, Node, NodeStatus};

/// A change to a node; `None` fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeUpdate {
    /// New availability.
    pub availability: Option<Availability>,
    /// New role.
    pub role: Option<Role>,
    /// New liveness.
    pub status: Option<NodeStatus>,
    /// New raft id (`Some(None)` clears it on demotion).
    pub raft_id: Option<Option<u64>>,
    /// New control address.
    pub addr: Option<SocketAddr>,
    /// New data-path address.
    pub data_path_addr: Option<IpAddr>,
}

/// CPUs and memory a node offers (Docker's NodeDescription.Resources).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeResources {
    /// Billionths of a CPU.
    pub nano_cpus: i64,
    /// Bytes.
    pub memory_bytes: i64,
}

/// Everything that can change the state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// `swarm init`: the cluster and its first manager.
    InitCluster {
        /// The new cluster.
        cluster: Box<Cluster>,
        /// The first manager.
        node: Node,
    },
    /// A node joined.
    AddNode {
        /// The new node.
        node: Node,
    },
    /// A node changed.
    UpdateNode {
        /// Which node.
        id: NodeId,
        /// What changes.
        update: NodeUpdate,
        /// Unix milliseconds of the change.
        at: u64,
    },
    /// A node was removed (`node rm`, `swarm leave`).
    RemoveNode {
        /// Which node.
        id: NodeId,
    },
    /// `swarm join-token --rotate`.
    SetJoinSecret {
        /// Which token.
        role: Role,
        /// The new secret.
        secret: String,
    },
    /// `swarm ca --rotate` (and its completion).
    SetCa {
        /// The new CA state.
        ca: CaState,
    },
    /// The key manager (or `swarm rotate-keys`) adds a gossip key; the
    /// oldest beyond [`KEYS_KEPT`](crate::state::KEYS_KEPT) is dropped.
    AddKey {
        /// Key material and id; its Lamport time is assigned in apply.
        key: GossipKey,
    },
    /// `network create` (subnet, gateway, VNI allocated here).
    CreateNetwork {
        /// What was asked.
        spec: NetworkSpec,
        /// Unix ms.
        at: u64,
    },
    /// `network rm` (refused while endpoints are attached).
    RemoveNetwork {
        /// Id, name or id prefix.
        network: String,
    },
    /// A workload joins a network (address and MAC allocated here).
    AttachEndpoint {
        /// Id, name or id prefix of the network.
        network: String,
        /// Endpoint id chosen by the proposer.
        id: String,
        /// Workload name.
        name: String,
        /// Node the workload runs on.
        node: String,
        /// Address asked for (`--ip`).
        ip: Option<std::net::Ipv4Addr>,
    },
    /// A workload leaves a network.
    DetachEndpoint {
        /// Network id.
        network: String,
        /// Endpoint id.
        id: String,
    },
    /// `service create` (VIPs allocated here).
    CreateService {
        /// Id chosen by the proposer.
        id: String,
        /// What was asked.
        spec: ServiceSpec,
        /// Unix ms.
        at: u64,
    },
    /// `service update` / `service scale`.
    UpdateService {
        /// Id, name or id prefix.
        service: String,
        /// The whole new spec.
        spec: ServiceSpec,
        /// Unix ms.
        at: u64,
    },
    /// `service rm`: the service goes, its tasks are told to shut down.
    RemoveService {
        /// Id, name or id prefix.
        service: String,
        /// Unix ms.
        at: u64,
    },
    /// The scheduler places a new task (endpoints allocated here).
    CreateTask {
        /// Id chosen by the scheduler.
        id: String,
        /// Service id.
        service: String,
        /// Slot.
        slot: u64,
        /// Node.
        node: String,
        /// Unix ms.
        at: u64,
    },
    /// The scheduler wants a task stopped (`Shutdown`).
    SetTaskDesired {
        /// Task id.
        id: String,
        /// New desired state.
        desired: TaskState,
        /// Unix ms.
        at: u64,
    },
    /// A node (or the scheduler, for a dead node) reports a task's state.
    /// States only move forward; a terminal state frees the endpoints.
    TaskStatus {
        /// Task id.
        id: String,
        /// New state.
        state: TaskState,
        /// Exit code, if it exited.
        exit_code: Option<i32>,
        /// Why.
        message: String,
        /// Unix ms.
        at: u64,
    },
    /// The scheduler forgets an ended task (history beyond the limit).
    RemoveTask {
        /// Task id.
        id: String,
    },
    /// A node registers its gossip signing key (as its certificate's node).
    SetGossipKey {
        /// The node.
        id: NodeId,
        /// Ed25519 public key ([`GOSSIP_KEY_LEN`](crate::state::GOSSIP_KEY_LEN) bytes).
        key: Vec<u8>,
    },
    /// A node's CPUs and memory, as it reported them.
    SetNodeResources {
        /// The node.
        id: NodeId,
        /// What it has.
        resources: NodeResources,
    },
    /// The scheduler found no node for a slot: the task waits, `pending`
    /// (Docker's name; state `New` without a node), with the reason. Again
    /// on a pending task: a new reason.
    PendTask {
        /// Id chosen by the scheduler.
        id: String,
        /// Service id.
        service: String,
        /// Slot.
        slot: u64,
        /// Why no node fits (`no suitable node (insufficient memory on 3 nodes)`).
        message: String,
        /// Unix ms.
        at: u64,
    },
    /// A pending task is placed (endpoints allocated here).
    AssignTask {
        /// Task id.
        id: String,
        /// Node.
        node: String,
        /// Unix ms.
        at: u64,
    },
    /// `service rollback`: back to the spec before the last update.
    RollbackService {
        /// Id, name or id prefix.
        service: String,
        /// Unix ms.
        at: u64,
    },
    /// The scheduler's account of a rolling update.
    SetUpdateStatus {
        /// Service id.
        service: String,
        /// Where the update is.
        status: crate::update::UpdateStatus,
    },
    /// `node update --label-add/--label-rm`: the node's labels, whole.
    SetNodeLabels {
        /// The node.
        id: NodeId,
        /// All its labels (empty: none).
        labels: BTreeMap<String, String>,
    },
    /// The key manager (or `swarm rotate-keys`) adds a data-plane key
    /// (encrypted overlays); a ring apart from the gossip ring, as swarm
    /// keeps `networking:ipsec` apart from `networking:gossip`.
    AddDataplaneKey {
        /// Key material and id; its Lamport time is assigned in apply.
        key: GossipKey,
    },
    /// `config create` / `secret create`.
    CreateFile {
        /// Which store.
        kind: crate::configs::FileKind,
        /// The object (its version is assigned in apply).
        file: crate::configs::StoredFile,
    },
    /// `config update` / `secret update`: labels only.
    UpdateFileLabels {
        /// Which store.
        kind: crate::configs::FileKind,
        /// Id.
        id: String,
        /// All its labels.
        labels: BTreeMap<String, String>,
        /// Unix ms.
        at: u64,
    },
    /// `config rm` / `secret rm` (refused while a service uses it).
    RemoveFile {
        /// Which store.
        kind: crate::configs::FileKind,
        /// Id.
        id: String,
    },
}

impl Command {
    /// The bytes of a command in the Raft log ([`crate::codec`]).
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        crate::codec::encode(self).map_err(|e| format!("cannot encode command: {e}"))
    }

    /// Reads a command written by [`Command::encode`], or by a release
    /// that wrote bincode.
    pub fn decode(data: &[u8]) -> Result<Command, String> {
        if let Some(r) = crate::codec::decode(data) {
            return r.map_err(|e| format!("corrupted command: {e}"));
        }
        crate::legacy::decode_command(data)
    }
}
