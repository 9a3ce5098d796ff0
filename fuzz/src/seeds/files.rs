//! Seeds of the JSON and TOML formats: API, session and RPC frames, and
//! the files a node keeps on disk.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use shoal::proto::gossip::NetStatus;
use shoal::proto::rpc::{JoinRequest, JoinResponse, NodeRequest, NodeResponse};
use shoal::proto::session::{
    AssignedTask, Assignments, NodeReport, ServiceView, TaskReport, ToManager, ToNode,
};
use shoal::swarm::file::SwarmFile;
use shoal::swarm::gossip::Resume;
use shoal_api::{Attachment, Request, RequestFrame, ResponseFrame, Workload};
use shoal_model::network::NetworkSpec;
use shoal_model::service::{EndpointMode, TaskState};
use shoal_model::state::GossipKey;
use shoal_model::Role;
use shoal_tls::NodeKey;

use super::{api_frame, endpoint, full_state, json, network, node_id, pretty, service_spec};
use crate::{ca, NOW_MS};

pub(crate) fn api_frames() -> Vec<Vec<u8>> {
    let reqs = [
        Request::Version,
        Request::Info,
        Request::JoinToken {
            role: Role::Manager,
            rotate: true,
        },
        Request::GossipPut {
            table: "t".into(),
            key: "k".into(),
            value: "v".into(),
        },
        Request::NetworkCreate(NetworkSpec {
            name: "n1".into(),
            subnet: "10.9.0.0/24".parse().ok(),
            ..NetworkSpec::default()
        }),
        Request::NetworkInspect {
            networks: vec!["n1".into()],
            verbose: true,
        },
    ];
    let frames: Vec<RequestFrame> = reqs
        .into_iter()
        .map(|request| RequestFrame {
            version: shoal_api::PROTOCOL_VERSION,
            request,
        })
        .collect();
    let mut out: Vec<Vec<u8>> = frames.iter().map(api_frame).collect();
    out.push(json(&frames[2]));
    out.push(frames.iter().map(api_frame).collect::<Vec<_>>().concat());
    out.push(api_frame(&ResponseFrame {
        version: shoal_api::PROTOCOL_VERSION,
        result: Err(shoal_api::ApiError::invalid("no")),
    }));
    out
}

fn assignments() -> Assignments {
    let s = full_state();
    Assignments {
        version: s.index,
        node: s.nodes.values().nth(1).cloned(),
        managers: vec![(1, SocketAddr::from(([10, 0, 0, 1], 2377)))],
        roots_pem: vec![ca().cert_pem()],
        keys: s.keys.clone(),
        dataplane_keys: s.keys.clone(),
        heartbeat_ms: 5000,
        data_path_port: 4789,
        tasks: s
            .tasks
            .values()
            .take(2)
            .map(|t| AssignedTask {
                task: t.clone(),
                command: vec!["sleep".into(), "1000".into()],
                env: vec!["A=1".into()],
                image: "10.77.0.1:5000/shoal/echo:1@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff".into(),
                container: Some(Default::default()),
                files: vec![shoal::proto::session::TaskFile {
                    path: "/run/secrets/db_pw".into(),
                    data: b"hunter2".to_vec(),
                    uid: 0,
                    gid: 0,
                    mode: 0o400,
                }],
            })
            .collect(),
        networks: s.networks.clone(),
        services: vec![ServiceView {
            id: "svc0000000000000000000000".into(),
            name: "web".into(),
            endpoint_mode: EndpointMode::Vip,
            vips: BTreeMap::from([(network().id, Ipv4Addr::new(10, 0, 1, 9))]),
            ports: service_spec().ports,
            backends: vec![(network().id, Ipv4Addr::new(10, 0, 1, 3))],
            aliases: BTreeMap::from([(network().id, vec!["www".into()])]),
        }],
        ingress_endpoint: Some(endpoint()),
        gossip_keys: [("node1".to_string(), vec![0x42; 32])].into(),
    }
}

pub(crate) fn session_frames() -> Vec<Vec<u8>> {
    let hb = ToManager::Heartbeat(NodeReport {
        vxlan: true,
        esp: false,
        ca_digest: ca().digest().to_string(),
        tasks: vec![TaskReport {
            id: "t1".into(),
            state: TaskState::Running,
            exit_code: None,
            message: String::new(),
        }],
        resources: Some(shoal_model::state::NodeResources {
            nano_cpus: 2_000_000_000,
            memory_bytes: 24 << 30,
        }),
    });
    let redirect = ToNode::Redirect(Some(SocketAddr::from(([10, 0, 0, 1], 2377))));
    let assign = ToNode::Assign(Box::new(assignments()));
    vec![
        api_frame(&hb),
        api_frame(&redirect),
        api_frame(&assign),
        json(&assign),
        [api_frame(&hb), api_frame(&ToNode::Redirect(None))].concat(),
    ]
}

pub(crate) fn csr() -> Vec<u8> {
    NodeKey::generate()
        .and_then(|k| k.csr_der())
        .unwrap_or_default()
}

pub(crate) fn rpc_frames() -> Vec<Vec<u8>> {
    let join_req = JoinRequest {
        secret: "wsecret0000000000000000000".into(),
        csr_der: csr(),
        hostname: "host2".into(),
        addr: SocketAddr::from(([10, 0, 0, 2], 2377)),
        data_path_addr: IpAddr::from([10, 0, 0, 2]),
    };
    let join_resp = JoinResponse {
        node_id: node_id(2),
        role: Role::Worker,
        cert_der: vec![0x30, 0x82, 0x01, 0x00],
        roots_pem: vec![ca().cert_pem()],
        cluster_id: "fuzzcluster0000000000000".into(),
        raft_id: None,
        managers: vec![(1, SocketAddr::from(([10, 0, 0, 1], 2377)))],
    };
    let reqs = [
        NodeRequest::Leave,
        NodeRequest::JoinRaft,
        NodeRequest::Attach {
            network: "appnet".into(),
            name: "w1".into(),
            ip: Some(Ipv4Addr::new(10, 0, 1, 7)),
        },
        NodeRequest::Detach {
            network: "appnet".into(),
            endpoint: "ep1".into(),
        },
        NodeRequest::Renew { csr_der: csr() },
    ];
    let resps = [
        NodeResponse::Attached {
            network: Box::new(network()),
            endpoint: endpoint(),
        },
        NodeResponse::Raft {
            raft_id: 2,
            managers: vec![(1, SocketAddr::from(([10, 0, 0, 1], 2377)))],
        },
        NodeResponse::Ok,
        NodeResponse::Cert {
            cert_der: vec![1, 2, 3],
            roots_pem: vec![ca().cert_pem()],
        },
    ];
    let mut out = vec![api_frame(&join_req), api_frame(&join_resp)];
    out.extend(reqs.iter().map(api_frame));
    out.extend(resps.iter().map(api_frame));
    out.push(json(&join_req));
    out
}

fn swarm_file() -> SwarmFile {
    SwarmFile {
        cluster_id: "fuzzcluster0000000000000".into(),
        node_id: node_id(1),
        role: Role::Manager,
        raft_id: Some(1),
        addr: SocketAddr::from(([10, 0, 0, 1], 2377)),
        listen_addr: SocketAddr::from(([0, 0, 0, 0], 2377)),
        data_path_addr: IpAddr::from([10, 0, 0, 1]),
        managers: vec![(1, SocketAddr::from(([10, 0, 0, 1], 2377)))],
        raft_join_pending: false,
    }
}

pub(crate) fn swarm_files() -> Vec<Vec<u8>> {
    let mut w = swarm_file();
    w.role = Role::Worker;
    w.raft_id = None;
    w.data_path_addr = "fd00::2".parse().unwrap_or(w.data_path_addr);
    vec![pretty(&swarm_file()), json(&w)]
}

pub(crate) fn workload() -> Workload {
    Workload {
        id: "ep1".into(),
        name: "w1".into(),
        attachments: vec![Attachment {
            network: network(),
            endpoint: endpoint(),
            host_veth: "veth0a1b2c".into(),
            ifname: "eth0".into(),
        }],
        network: Some(network()),
        endpoint: Some(endpoint()),
        gw_ip: Some(Ipv4Addr::new(172, 18, 0, 2)),
        netns: "/run/shoal/netns/ep1".into(),
        pid: 4242,
        argv: vec!["sleep".into(), "1000".into()],
        task: None,
        container: Some("ep1".into()),
        image: Some("10.77.0.1:5000/shoal/echo:1".into()),
        state: "running".into(),
    }
}

pub(crate) fn gossip_resumes() -> Vec<Vec<u8>> {
    let keys = vec![
        GossipKey {
            id: 7,
            lamport: 2,
            key: [0x42; 32],
        },
        GossipKey {
            id: 3,
            lamport: 1,
            key: [0x17; 32],
        },
    ];
    vec![json(&Resume {
        node_id: "node1".into(),
        generation: NOW_MS,
        keys: keys.clone(),
        peer_keys: [("node1".to_string(), vec![0x42; 32])].into(),
        dataplane_keys: keys,
    })]
}

pub(crate) fn daemon_configs() -> Vec<Vec<u8>> {
    let full = r#"data_dir = "/var/lib/shoal"
socket = "/run/shoal/shoal.sock"
run_dir = "/run/shoal"
log_level = "debug"
hostname = "host1"
heartbeat_ms = 5000
gossip_port = 7946
gossip_profile = "wan"
dns_upstream = ["1.1.1.1", "[2606:4700::1111]:53", "9.9.9.9:5353"]
metrics_addr = "127.0.0.1:9323"

[raft]
tick_ms = 50
election_ticks = 10
heartbeat_ticks = 2
snapshot_every = 10000
compact_keep = 1000
"#;
    vec![
        full.as_bytes().to_vec(),
        b"data_dir = \"/tmp/x\"\n".to_vec(),
        b"raft = { tick_ms = 100 }\nlog_level = 'info'\n".to_vec(),
    ]
}

pub(crate) fn net_status() -> NetStatus {
    NetStatus {
        network: "appnet0000000000000000000".into(),
        node: "node1".into(),
        vtep: "10.0.0.1".into(),
        peers: vec!["10.0.0.2".into(), "10.0.0.3".into()],
        in_sync: false,
        differences: vec!["fdb 02:42:0a:00:01:02 dst 10.0.0.2 missing".into()],
        total_differences: 1,
        encryption: Some(shoal::proto::gossip::EncryptionStatus {
            mode: "userspace".into(),
            key_ids: vec![3, 2, 1],
            port: 4790,
            epoch: 2,
            peers: vec![shoal_dataplane::PeerStats {
                node: "node2".into(),
                tx_packets: 5,
                ..Default::default()
            }],
            unknown_peer: 0,
            broadcast_dropped: 1,
        }),
    }
}
