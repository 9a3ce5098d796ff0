//! A manager's data dir written before the domain model moved out of
//! raft-store (`tests/fixtures/raft-v1`, made by the pre-move `shoal`
//! binary: `swarm init`, two networks, two services, a key rotation, a join
//! token rotation, a drain, with `snapshot_every = 6` so it holds both a
//! snapshot and log entries after it) opens after the move with the same
//! state, and takes new writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use shoal::manager::store::{Store, StoreMachine};
use shoal_model::service::EndpointMode;
use shoal_model::state::{Availability, Command};
use shoal_raft_store::mem::MemRouter;
use shoal_raft_store::{RaftConfig, RaftNode};

/// The fixture manager's raft id (`swarm.json` of the run that made it).
const RAFT_ID: u64 = 6324793116975838575;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[tokio::test]
async fn a_data_dir_written_before_the_model_moved_opens_with_the_same_state() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/raft-v1"),
        &tmp.path().join("raft"),
    );
    let cfg = RaftConfig {
        id: RAFT_ID,
        data_dir: tmp.path().to_path_buf(),
        tick: Duration::from_millis(20),
        ..RaftConfig::default()
    };
    let router = MemRouter::new();
    let node = RaftNode::restart(cfg, StoreMachine::default(), router.endpoint(RAFT_ID))
        .await
        .unwrap();
    router.register(RAFT_ID, node.inbox());
    let store = Store::new(node);

    // Every committed entry is replayed on top of the snapshot.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.status().applied < 14 {
        assert!(
            Instant::now() < deadline,
            "log not replayed: {:?}",
            store.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = store.status();
    assert!(
        status.snapshot_index > 0,
        "the fixture holds a snapshot: {status:?}"
    );
    assert!(
        status.applied > status.snapshot_index,
        "and entries after it: {status:?}"
    );
    let st = store.read_local(|s| s.clone()).await.unwrap();

    let cluster = st.cluster.as_ref().unwrap();
    assert_eq!(cluster.id, "04p3oslquh44g3bpt4g97n98r");
    assert_eq!(cluster.worker_secret, "dycsc2w2szg08gxc09wbggmvj");
    assert_eq!(
        cluster.default_addr_pools,
        vec!["10.222.0.0/16".to_string()]
    );
    assert_eq!(st.keys.len(), 2, "initial key + rotate-keys");

    let node = st.nodes.values().next().unwrap();
    assert_eq!(st.nodes.len(), 1);
    assert_eq!(node.hostname, "fixture");
    assert_eq!(node.raft_id, Some(RAFT_ID));
    assert_eq!(node.availability, Availability::Drain);

    let net = |name: &str| st.networks.values().find(|n| n.name == name).unwrap();
    assert!(net("ingress").ingress);
    let fixnet = net("fixnet");
    assert_eq!(fixnet.subnet.to_string(), "10.222.9.0/24");
    assert_eq!(fixnet.vni, 4097);
    assert!(fixnet.attachable);
    assert_eq!(fixnet.labels.get("team").map(String::as_str), Some("a"));
    assert!(net("fixsec").encrypted);

    let svc = |name: &str| st.services.values().find(|s| s.spec.name == name).unwrap();
    let web = svc("web");
    assert_eq!(web.id, "arbr6huxz5eh6frjggk44ltp4");
    assert_eq!(web.spec.env, vec!["A=1".to_string(), "B=2".to_string()]);
    assert_eq!(web.spec.ports[0].to_string(), "*:8080->80/tcp");
    assert_eq!(
        web.spec.command,
        vec!["sleep".to_string(), "1000".to_string()]
    );
    assert_eq!(
        web.spec.labels.get("tier").map(String::as_str),
        Some("front")
    );
    assert_eq!(
        web.vips.get(&fixnet.id).map(|v| v.to_string()).as_deref(),
        Some("10.222.9.2")
    );
    assert_eq!(svc("api").spec.endpoint_mode, EndpointMode::Dnsrr);

    // The restarted log takes new writes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.status().is_leader {
        assert!(Instant::now() < deadline, "no leader: {:?}", store.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store
        .propose(Command::RemoveService {
            service: web.id.clone(),
            at: 1,
        })
        .await
        .unwrap();
    assert!(store
        .read_local(|s| s.services.values().all(|v| v.spec.name != "web"))
        .await
        .unwrap());
    store.shutdown().await.unwrap();
}
