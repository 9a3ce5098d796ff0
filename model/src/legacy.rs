//! Layouts of `State` and `Command` from the releases that wrote bincode
//! (before [`crate::codec`]), read when a data dir from such a release
//! opens. bincode has no optional fields: each layout is kept as it was,
//! frozen. Types a layout names from the live model (`Node`, `Network`,
//! `Task`, ...) must not change shape either: the data-dir fixture test
//! (`agent/tests/data_dir_compat.rs`) fails when one does, and that type
//! then gets its frozen copy here.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::network::{Endpoint, Network, NetworkSpec};
use crate::service::{
    EndpointMode, PortConfig, RestartCondition, Service, ServiceSpec, Task, TaskState,
};
use crate::state::{
    CaState, Cluster, Command, GossipKey, Node, NodeUpdate, State, STATE_DECODE_LIMIT,
};
use crate::{NodeId, Role};

/// Bound on what decoding one bincode command may allocate.
const COMMAND_DECODE_LIMIT: usize = 64 << 20;

/// `ServiceSpec` before the image and container fields.
#[derive(Deserialize)]
pub struct ServiceSpecV1 {
    name: String,
    replicas: u64,
    networks: Vec<String>,
    ports: Vec<PortConfig>,
    endpoint_mode: EndpointMode,
    env: Vec<String>,
    restart_condition: RestartCondition,
    command: Vec<String>,
    labels: BTreeMap<String, String>,
}

impl From<ServiceSpecV1> for ServiceSpec {
    /// Tasks of those releases were host processes.
    fn from(v: ServiceSpecV1) -> ServiceSpec {
        ServiceSpec {
            name: v.name,
            replicas: v.replicas,
            networks: v.networks,
            ports: v.ports,
            endpoint_mode: v.endpoint_mode,
            env: v.env,
            restart_condition: v.restart_condition,
            command: v.command,
            labels: v.labels,
            image: String::new(),
            container: crate::service::ContainerSpec {
                runtime: crate::service::Runtime::Host,
                ..Default::default()
            },
            mode: crate::service::ServiceMode::Replicated,
            constraints: Vec::new(),
            max_replicas_per_node: 0,
            placement_prefs: Vec::new(),
            update_config: Default::default(),
            force_update: 0,
            rollback_config: Default::default(),
            aliases: Default::default(),
        }
    }
}

/// `Service` with a [`ServiceSpecV1`].
#[derive(Deserialize)]
pub struct ServiceV1 {
    id: String,
    spec: ServiceSpecV1,
    vips: BTreeMap<String, Ipv4Addr>,
    spec_version: u64,
    created_at: u64,
    updated_at: u64,
    version: u64,
}

impl From<ServiceV1> for Service {
    fn from(v: ServiceV1) -> Service {
        Service {
            id: v.id,
            spec: v.spec.into(),
            vips: v.vips,
            spec_version: v.spec_version,
            created_at: v.created_at,
            updated_at: v.updated_at,
            version: v.version,
            update_status: None,
            previous_spec: None,
        }
    }
}

fn services(v: BTreeMap<String, ServiceV1>) -> BTreeMap<String, Service> {
    v.into_iter().map(|(k, s)| (k, s.into())).collect()
}

/// `Network` as the bincode releases wrote it (before `last_ip`).
#[derive(Deserialize)]
pub struct NetworkV1 {
    id: String,
    name: String,
    driver: String,
    subnet: ipnet::Ipv4Net,
    gateway: Ipv4Addr,
    vni: u32,
    attachable: bool,
    ingress: bool,
    internal: bool,
    encrypted: bool,
    mtu: Option<u32>,
    labels: BTreeMap<String, String>,
    created_at: u64,
    version: u64,
    endpoints: BTreeMap<String, Endpoint>,
}

fn networks(v: BTreeMap<String, NetworkV1>) -> BTreeMap<String, Network> {
    v.into_iter()
        .map(|(k, n)| {
            let net = Network {
                id: n.id,
                name: n.name,
                driver: n.driver,
                subnet: n.subnet,
                gateway: n.gateway,
                vni: n.vni,
                attachable: n.attachable,
                ingress: n.ingress,
                internal: n.internal,
                encrypted: n.encrypted,
                mtu: n.mtu,
                labels: n.labels,
                created_at: n.created_at,
                version: n.version,
                endpoints: n.endpoints,
                last_ip: None,
            };
            (k, net)
        })
        .collect()
}

/// `Task` before `running_at`.
#[derive(Deserialize)]
pub struct TaskV1 {
    id: String,
    service: String,
    service_name: String,
    slot: u64,
    node: String,
    desired: TaskState,
    state: TaskState,
    exit_code: Option<i32>,
    message: String,
    endpoints: BTreeMap<String, Endpoint>,
    spec_version: u64,
    created_at: u64,
    updated_at: u64,
    version: u64,
}

fn tasks(v: BTreeMap<String, TaskV1>) -> BTreeMap<String, Task> {
    v.into_iter()
        .map(|(k, t)| {
            let running_at = if t.state == TaskState::Running {
                t.updated_at
            } else {
                0
            };
            let task = Task {
                id: t.id,
                service: t.service,
                service_name: t.service_name,
                slot: t.slot,
                node: t.node,
                desired: t.desired,
                state: t.state,
                exit_code: t.exit_code,
                message: t.message,
                endpoints: t.endpoints,
                spec_version: t.spec_version,
                created_at: t.created_at,
                updated_at: t.updated_at,
                version: t.version,
                running_at,
            };
            (k, task)
        })
        .collect()
}

/// The last bincode `State` (with `gossip_keys`).
#[derive(Deserialize)]
pub struct StateV2 {
    cluster: Option<Cluster>,
    nodes: BTreeMap<NodeId, Node>,
    index: u64,
    keys: Vec<GossipKey>,
    networks: BTreeMap<String, NetworkV1>,
    services: BTreeMap<String, ServiceV1>,
    tasks: BTreeMap<String, TaskV1>,
    gossip_keys: BTreeMap<NodeId, Vec<u8>>,
}

impl From<StateV2> for State {
    fn from(v: StateV2) -> State {
        State {
            cluster: v.cluster,
            nodes: v.nodes,
            index: v.index,
            keys: v.keys,
            networks: networks(v.networks),
            services: services(v.services),
            tasks: tasks(v.tasks),
            gossip_keys: v.gossip_keys,
            node_resources: BTreeMap::new(),
            node_labels: BTreeMap::new(),
            dataplane_keys: Vec::new(),
            configs: BTreeMap::new(),
            secrets: BTreeMap::new(),
        }
    }
}

/// `State` before `gossip_keys`.
#[derive(Deserialize)]
pub struct StateV1 {
    cluster: Option<Cluster>,
    nodes: BTreeMap<NodeId, Node>,
    index: u64,
    keys: Vec<GossipKey>,
    networks: BTreeMap<String, NetworkV1>,
    services: BTreeMap<String, ServiceV1>,
    tasks: BTreeMap<String, TaskV1>,
}

impl From<StateV1> for State {
    fn from(v: StateV1) -> State {
        State {
            cluster: v.cluster,
            nodes: v.nodes,
            index: v.index,
            keys: v.keys,
            networks: networks(v.networks),
            services: services(v.services),
            tasks: tasks(v.tasks),
            gossip_keys: BTreeMap::new(),
            node_resources: BTreeMap::new(),
            node_labels: BTreeMap::new(),
            dataplane_keys: Vec::new(),
            configs: BTreeMap::new(),
            secrets: BTreeMap::new(),
        }
    }
}

/// A bincode snapshot: [`StateV2`], else [`StateV1`].
pub fn decode_state(data: &[u8]) -> Result<State, String> {
    let cfg = bincode::config::standard().with_limit::<STATE_DECODE_LIMIT>();
    match bincode::serde::decode_from_slice::<StateV2, _>(data, cfg) {
        Ok((state, n)) if n == data.len() => Ok(state.into()),
        first => {
            let (v1, n) = bincode::serde::decode_from_slice::<StateV1, _>(data, cfg).map_err(
                |e| match first {
                    Err(f) => format!("corrupted state snapshot: {f}"),
                    Ok(_) => format!("corrupted state snapshot: {e}"),
                },
            )?;
            if n != data.len() {
                return Err(format!(
                    "corrupted state snapshot: {} trailing bytes",
                    data.len() - n
                ));
            }
            Ok(v1.into())
        }
    }
}

/// A command as the bincode releases wrote it.
pub fn decode_command(data: &[u8]) -> Result<Command, String> {
    let cfg = bincode::config::standard().with_limit::<COMMAND_DECODE_LIMIT>();
    bincode::serde::decode_from_slice::<CommandV1, _>(data, cfg)
        .map(|(c, _)| c.into())
        .map_err(|e| format!("corrupted command: {e}"))
}

/// `Command` as the bincode releases wrote it (before the container
/// fields of `ServiceSpec`).
#[derive(Deserialize)]
pub enum CommandV1 {
    InitCluster {
        cluster: Box<Cluster>,
        node: Node,
    },
    AddNode {
        node: Node,
    },
    UpdateNode {
        id: NodeId,
        update: NodeUpdate,
        at: u64,
    },
    RemoveNode {
        id: NodeId,
    },
    SetJoinSecret {
        role: Role,
        secret: String,
    },
    SetCa {
        ca: CaState,
    },
    AddKey {
        key: GossipKey,
    },
    CreateNetwork {
        spec: NetworkSpec,
        at: u64,
    },
    RemoveNetwork {
        network: String,
    },
    AttachEndpoint {
        network: String,
        id: String,
        name: String,
        node: String,
        ip: Option<std::net::Ipv4Addr>,
    },
    DetachEndpoint {
        network: String,
        id: String,
    },
    CreateService {
        id: String,
        spec: ServiceSpecV1,
        at: u64,
    },
    UpdateService {
        service: String,
        spec: ServiceSpecV1,
        at: u64,
    },
    RemoveService {
        service: String,
        at: u64,
    },
    CreateTask {
        id: String,
        service: String,
        slot: u64,
        node: String,
        at: u64,
    },
    SetTaskDesired {
        id: String,
        desired: TaskState,
        at: u64,
    },
    TaskStatus {
        id: String,
        state: TaskState,
        exit_code: Option<i32>,
        message: String,
        at: u64,
    },
    RemoveTask {
        id: String,
    },
    SetGossipKey {
        id: NodeId,
        key: Vec<u8>,
    },
}

impl From<CommandV1> for Command {
    fn from(c: CommandV1) -> Command {
        match c {
            CommandV1::InitCluster { cluster, node } => Command::InitCluster { cluster, node },
            CommandV1::AddNode { node } => Command::AddNode { node },
            CommandV1::UpdateNode { id, update, at } => Command::UpdateNode { id, update, at },
            CommandV1::RemoveNode { id } => Command::RemoveNode { id },
            CommandV1::SetJoinSecret { role, secret } => Command::SetJoinSecret { role, secret },
            CommandV1::SetCa { ca } => Command::SetCa { ca },
            CommandV1::AddKey { key } => Command::AddKey { key },
            CommandV1::CreateNetwork { spec, at } => Command::CreateNetwork { spec, at },
            CommandV1::RemoveNetwork { network } => Command::RemoveNetwork { network },
            CommandV1::AttachEndpoint {
                network,
                id,
                name,
                node,
                ip,
            } => Command::AttachEndpoint {
                network,
                id,
                name,
                node,
                ip,
            },
            CommandV1::DetachEndpoint { network, id } => Command::DetachEndpoint { network, id },
            CommandV1::CreateService { id, spec, at } => Command::CreateService {
                id,
                spec: spec.into(),
                at,
            },
            CommandV1::UpdateService { service, spec, at } => Command::UpdateService {
                service,
                spec: spec.into(),
                at,
            },
            CommandV1::RemoveService { service, at } => Command::RemoveService { service, at },
            CommandV1::CreateTask {
                id,
                service,
                slot,
                node,
                at,
            } => Command::CreateTask {
                id,
                service,
                slot,
                node,
                at,
            },
            CommandV1::SetTaskDesired { id, desired, at } => {
                Command::SetTaskDesired { id, desired, at }
            }
            CommandV1::TaskStatus {
                id,
                state,
                exit_code,
                message,
                at,
            } => Command::TaskStatus {
                id,
                state,
                exit_code,
                message,
                at,
            },
            CommandV1::RemoveTask { id } => Command::RemoveTask { id },
            CommandV1::SetGossipKey { id, key } => Command::SetGossipKey { id, key },
        }
    }
}
