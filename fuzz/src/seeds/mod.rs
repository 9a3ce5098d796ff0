//! Seed inputs: a few valid encodings per target, made with the real
//! encoders (the gossip core, raft-store's frame encoder, bincode and
//! serde_json of the real types, rcgen through shoal-tls, hickory), so the
//! fuzzer starts past the first length check. Written by
//! `SHOAL_FUZZ_SEEDS=fuzz/corpus cargo +nightly fuzz run <target>` (see
//! [`crate::seed_hook`]); the committed `fuzz/corpus/*/seed-*` are its output.

mod files;
mod net;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Serialize;
use shoal_model::network::{Endpoint, Network, NetworkSpec};
use shoal_model::service::{
    EndpointMode, PortConfig, Protocol, PublishMode, RestartCondition, ServiceSpec,
};
use shoal_model::state::{
    Availability, CaState, Cluster, Command, GossipKey, Node, NodeStatus, NodeUpdate, State,
};
use shoal_model::{NodeId, Role};

use crate::{ca, NOW_MS};
use files::*;
use net::*;

/// The ring key the `dataplane_datagram` target opens with.
pub const DATAPLANE_KEY: [u8; 32] = [0x44; 32];

/// Sealed datagrams as a peer sends them: an ARP-sized frame and a TSO
/// segment, each with its virtio-net header, under [`DATAPLANE_KEY`].
fn dataplane_datagrams() -> Vec<Vec<u8>> {
    use shoal_dataplane::keys::{direction_key, RingKey};
    use shoal_dataplane::wire::{self, Header, HEADER_LEN, TAG_LEN};
    let ring = RingKey { id: 9, key: DATAPLANE_KEY };
    let Some(key) = direction_key(&ring, "sender", "receiver") else {
        return Vec::new();
    };
    let mut frame = vec![2, 0x42, 10, 0, 9, 3, 2, 0x42, 10, 0, 9, 2, 0x08, 0x00];
    frame.extend([0x45; 50]);
    let mut tso = [0u8; 10];
    tso[0] = 1;
    tso[1] = 1;
    tso[2..4].copy_from_slice(&66u16.to_le_bytes());
    tso[4..6].copy_from_slice(&1372u16.to_le_bytes());
    tso[6..8].copy_from_slice(&34u16.to_le_bytes());
    tso[8..10].copy_from_slice(&16u16.to_le_bytes());
    let mut big = frame.clone();
    big.resize(4000, 0x17);
    [([0u8; 10], frame), (tso, big)]
        .into_iter()
        .enumerate()
        .filter_map(|(i, (vh, f))| {
            let body = [&vh[..], &f].concat();
            let mut buf = vec![0u8; HEADER_LEN + body.len() + TAG_LEN];
            buf[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(&body);
            let h = Header { vni: 4097, key_id: 9, epoch: 3, counter: i as u64 };
            let n = wire::seal(&key, &h, &mut buf, body.len()).ok()?;
            buf.truncate(n);
            Some(buf)
        })
        .collect()
}

/// The seeds of `target` (empty for an unknown name).
pub fn for_target(target: &str) -> Vec<Vec<u8>> {
    match target {
        "gossip_packet" => gossip_packets(),
        "gossip_sealed" => gossip_sealed(),
        "gossip_sync" => gossip_sync(),
        "endpoint_record" => vec![endpoint_record().encode()],
        "dataplane_datagram" => dataplane_datagrams(),
        "raft_frame" => raft_frames(),
        "raft_snapshot" => raft_snapshots(),
        // Both encodings a data dir may hold: CBOR, and the bincode of
        // the releases before it.
        "state_snapshot" => states()
            .iter()
            .flat_map(|s| [s.encode().unwrap_or_default(), bin(s)])
            .collect(),
        "raft_command" => commands()
            .iter()
            .flat_map(|c| [c.encode().unwrap_or_default(), bin(c)])
            .collect(),
        "image_reference" => [
            "busybox",
            "10.77.0.1:5000/shoal/echo:1",
            "reg:5000/a/b:t@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "docker.io/library/nginx:1.25",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        "container_log" => vec![
            br#"{"log":"hello
","stream":"stdout","time":"2026-12-01T13:51:30.000000042Z"}
{"log":"oops
","stream":"stderr","time":"2026-12-01T13:51:31.5Z"}
{"log":"torn"#
                .to_vec(),
        ],
        "api_frame" => api_frames(),
        "session_frame" => session_frames(),
        "rpc_frame" => rpc_frames(),
        "dns_query" => dns_queries(),
        "join_token" => join_tokens(),
        "tls_cert" => tls_certs(),
        "tls_pem" => tls_pems(),
        "tls_csr" => tls_csrs(),
        "swarm_file" => swarm_files(),
        "workload" => vec![pretty(&workload())],
        "gossip_resume" => gossip_resumes(),
        "daemon_config" => daemon_configs(),
        "net_status" => vec![json(&net_status())],
        "engine_request" => engine_requests(),
        _ => Vec::new(),
    }
}

/// What the docker CLI and docker-py send (`../shared/reference`): a
/// service spec as the CLI writes it, one as Shoal renders it, docker-py's
/// lower-case mode, an init request, filters in both shapes.
fn engine_requests() -> Vec<Vec<u8>> {
    let rendered = json(&shoal_api::engine::convert::spec_to_docker(&service_spec()));
    let cli = br#"{"Name":"web","Labels":{"tier":"fe"},"TaskTemplate":{"ContainerSpec":{"Image":"nginx:alpine","Args":["sh","-c","sleep 1d"],"Env":["A=1"],"Init":false,"DNSConfig":{},"Secrets":[{"File":{"Name":"db","UID":"0","GID":"0","Mode":292},"SecretName":"pw"}]},"Resources":{"Limits":{},"Reservations":{}},"RestartPolicy":{"Condition":"on-failure","Delay":5000000000,"MaxAttempts":0},"Placement":{"Constraints":["node.role==worker"]},"Networks":[{"Target":"abc","Aliases":["www"]}],"ForceUpdate":0},"Mode":{"Replicated":{"Replicas":2}},"EndpointSpec":{"Mode":"vip","Ports":[{"Protocol":"tcp","TargetPort":80,"PublishedPort":8080,"PublishMode":"ingress"}]}}"#.to_vec();
    let py = br#"{"Name":"g","TaskTemplate":{"ContainerSpec":{"Image":"busybox","Args":null}},"Mode":{"global":{}},"UpdateConfig":{"order":"start-first"}}"#.to_vec();
    let init = br#"{"ListenAddr":"0.0.0.0:2377","AdvertiseAddr":"","DataPathPort":0,"Spec":{"Labels":null,"Dispatcher":{"HeartbeatPeriod":2000000000}},"DefaultAddrPool":null,"SubnetSize":24}"#.to_vec();
    let filters = br#"{"label":{"com.docker.stack.namespace=app":true}}"#.to_vec();
    let py_filters = br#"{"name":["web"],"desired-state":["running"]}"#.to_vec();
    vec![
        cli.clone(),
        rendered,
        py,
        init,
        [filters, py_filters].join(crate::SEP),
    ]
}

pub(crate) fn bin<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).unwrap_or_default()
}

pub(crate) fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

pub(crate) fn pretty<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(v).unwrap_or_default()
}

/// A frame as `shoal_api::write_frame` puts it on the wire.
pub(crate) fn api_frame<T: Serialize>(v: &T) -> Vec<u8> {
    let body = json(v);
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

pub(crate) fn node_id(n: u8) -> NodeId {
    let s = format!("{:0>25}", format!("node{n}"));
    s.parse().unwrap_or_else(|_| NodeId::generate())
}

fn model_node(n: u8, raft_id: Option<u64>) -> Node {
    Node {
        id: node_id(n),
        hostname: format!("host{n}"),
        role: if raft_id.is_some() {
            Role::Manager
        } else {
            Role::Worker
        },
        availability: Availability::Active,
        status: NodeStatus::Ready,
        addr: SocketAddr::from(([10, 0, 0, n], 2377)),
        data_path_addr: IpAddr::from([10, 0, 0, n]),
        raft_id,
        created_at: 1,
        updated_at: 1,
        version: 0,
    }
}

fn cluster() -> Cluster {
    Cluster {
        id: "fuzzcluster0000000000000".into(),
        created_at: NOW_MS,
        ca: CaState {
            cert_pem: ca().cert_pem(),
            key_pem: ca().key_pem(),
            previous_roots: vec![],
        },
        worker_secret: "wsecret0000000000000000000".into(),
        manager_secret: "msecret0000000000000000000".into(),
        default_addr_pools: vec!["10.0.0.0/8".into()],
        default_addr_pool_mask_len: 24,
        data_path_port: 4789,
        heartbeat_period_ms: 5000,
        key_rotation_ms: 12 * 3600 * 1000,
    }
}

pub(crate) fn service_spec() -> ServiceSpec {
    ServiceSpec {
        name: "web".into(),
        replicas: 2,
        networks: vec!["appnet".into()],
        ports: vec![PortConfig {
            protocol: Protocol::Tcp,
            target: 80,
            published: 8080,
            mode: PublishMode::Ingress,
        }],
        endpoint_mode: EndpointMode::Vip,
        env: vec!["A=1".into()],
        restart_condition: RestartCondition::Any,
        command: vec!["sleep".into(), "1000".into()],
        labels: BTreeMap::from([("k".into(), "v".into())]),
        image: "10.77.0.1:5000/shoal/echo:1".into(),
        container: shoal_model::service::ContainerSpec {
            configs: vec![shoal_model::configs::FileRef {
                id: String::new(),
                name: "app.conf".into(),
                target: "/etc/app.conf".into(),
                uid: String::new(),
                gid: String::new(),
                mode: 0,
            }],
            secrets: vec![shoal_model::configs::FileRef {
                id: String::new(),
                name: "db_pw".into(),
                target: "".into(),
                uid: String::new(),
                gid: String::new(),
                mode: 0,
            }],
            healthcheck: Some(shoal_model::health::HealthConfig {
                test: vec!["CMD-SHELL".into(), "wget -q -O- localhost".into()],
                interval_ms: 2_000,
                retries: 2,
                ..Default::default()
            }),
            ..Default::default()
        },
        mode: Default::default(),
        constraints: vec!["node.role==worker".into()],
        max_replicas_per_node: 2,
        placement_prefs: vec!["spread=node.labels.zone".into()],
        update_config: Default::default(),
        force_update: 1,
        rollback_config: Default::default(),
        aliases: BTreeMap::from([("appnet".into(), vec!["www".into()])]),
    }
}

pub(crate) fn commands() -> Vec<Command> {
    vec![
        Command::InitCluster {
            cluster: Box::new(cluster()),
            node: model_node(1, Some(1)),
        },
        Command::AddNode {
            node: model_node(2, None),
        },
        Command::UpdateNode {
            id: node_id(2),
            update: NodeUpdate {
                availability: Some(Availability::Drain),
                ..NodeUpdate::default()
            },
            at: NOW_MS,
        },
        Command::AddKey {
            key: GossipKey {
                id: 7,
                lamport: 0,
                key: [0x42; 32],
            },
        },
        Command::AddDataplaneKey {
            key: GossipKey {
                id: 8,
                lamport: 0,
                key: [0x43; 32],
            },
        },
        Command::CreateFile {
            kind: shoal_model::configs::FileKind::Config,
            file: shoal_model::configs::StoredFile {
                id: "cfg0000000000000000000000".into(),
                name: "app.conf".into(),
                labels: BTreeMap::new(),
                data: b"listen 80\n".to_vec(),
                created_at: NOW_MS,
                updated_at: NOW_MS,
                version: 0,
            },
        },
        Command::CreateFile {
            kind: shoal_model::configs::FileKind::Secret,
            file: shoal_model::configs::StoredFile {
                id: "sec0000000000000000000000".into(),
                name: "db_pw".into(),
                labels: BTreeMap::from([("k".into(), "v".into())]),
                data: b"hunter2".to_vec(),
                created_at: NOW_MS,
                updated_at: NOW_MS,
                version: 0,
            },
        },
        Command::CreateNetwork {
            spec: NetworkSpec {
                id: "appnet0000000000000000000".into(),
                name: "appnet".into(),
                attachable: true,
                ..NetworkSpec::default()
            },
            at: NOW_MS,
        },
        Command::AttachEndpoint {
            network: "appnet".into(),
            id: "ep1".into(),
            name: "w1".into(),
            node: node_id(2).to_string(),
            ip: None,
        },
        Command::CreateService {
            id: "svc0000000000000000000000".into(),
            spec: service_spec(),
            at: NOW_MS,
        },
        Command::SetJoinSecret {
            role: Role::Worker,
            secret: "wsecret1111111111111111111".into(),
        },
    ]
}

/// The empty state, and the state after each prefix of [`commands`].
pub(crate) fn states() -> Vec<State> {
    let mut out = vec![State::default()];
    let mut s = State::default();
    for (i, c) in commands().into_iter().enumerate() {
        let _ = s.apply_command(i as u64 + 1, c);
        if i % 3 == 0 || i + 1 == commands().len() {
            out.push(s.clone());
        }
    }
    out
}

pub(crate) fn full_state() -> State {
    states().pop().unwrap_or_default()
}

pub(crate) fn network() -> Network {
    let s = full_state();
    s.networks
        .values()
        .next()
        .cloned()
        .unwrap_or_else(|| Network {
            id: "appnet0000000000000000000".into(),
            name: "appnet".into(),
            driver: "overlay".into(),
            subnet: "10.0.1.0/24".parse().unwrap_or_default(),
            gateway: Ipv4Addr::new(10, 0, 1, 1),
            vni: 4096,
            attachable: true,
            ingress: false,
            internal: false,
            encrypted: false,
            mtu: None,
            labels: BTreeMap::new(),
            created_at: NOW_MS,
            version: 5,
            endpoints: BTreeMap::new(),
            last_ip: None,
        })
}

pub(crate) fn endpoint() -> Endpoint {
    network()
        .endpoints
        .values()
        .next()
        .cloned()
        .unwrap_or(Endpoint {
            id: "ep1".into(),
            name: "w1".into(),
            node: node_id(2).to_string(),
            ip: Ipv4Addr::new(10, 0, 1, 2),
            mac: [2, 0x42, 10, 0, 1, 2],
        })
}
