//! Trust boundaries between members, attacked with real certificates and
//! real sockets: a worker may free only its own endpoints, a removed node's
//! certificate is refused on 2377 and the key rotation that follows its
//! removal shuts it out of gossip, an absurd `scale` is refused while the
//! cluster keeps writing, and a flood of half-open connections to 2377
//! does not stop writes. Needs root and the built `shoal` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal::proto::rpc::{self, NodeRequest, NodeResponse};
use shoal_tests::{cli, in_netns, lab};
use shoal_tls::NodeIdentity;

fn identity(lab: &shoal_lab::Lab, host: usize) -> NodeIdentity {
    let sw = lab.host(host).unwrap().data_dir.join("swarm");
    let read = |f: &str| std::fs::read_to_string(sw.join(f)).unwrap();
    NodeIdentity::from_pem(&read("node.crt"), &read("node.key"), &read("roots.pem")).unwrap()
}

/// One node call to the manager at `addr` with `id`'s certificate, from
/// inside host `ns`.
fn node_call(
    ns: &str,
    id: &NodeIdentity,
    addr: SocketAddr,
    req: NodeRequest,
) -> Result<NodeResponse, String> {
    let tls = id.client_config(&[rpc::ALPN_NODE]).unwrap();
    in_netns(ns, async move {
        match rpc::call::<_, Result<NodeResponse, String>>(tls, addr, &req).await {
            Ok(r) => r,
            Err(e) => Err(e.message),
        }
    })
}

/// Ids of the gossip keys `host` holds (from `shoal info`).
fn key_ids(lab: &shoal_lab::Lab, host: usize) -> Vec<u64> {
    shoal_tests::info(lab, host)["swarm"]["keys"]
        .as_array()
        .map(|ks| ks.iter().filter_map(|k| k["id"].as_u64()).collect())
        .unwrap_or_default()
}

#[test]
fn a_worker_frees_only_its_own_endpoints_and_a_removed_node_is_refused() {
    shoal_tls::install_crypto_provider();
    let lab = lab(3);
    lab.form_swarm(3, 1).unwrap();
    let h2 = lab.host(2).unwrap();
    let manager: SocketAddr = format!("{}:2377", lab.host(1).unwrap().addr)
        .parse()
        .unwrap();
    let net = cli(&lab, 1, &["network", "create", "--attachable", "app"]).unwrap();
    let net = net.trim().to_string();
    let svc = cli(
        &lab,
        1,
        &[
            "service",
            "create",
            "--runtime",
            "host",
            "--name",
            "web",
            "--replicas",
            "0",
            "--network",
            "app",
            "--",
            "sleep",
            "1000",
        ],
    )
    .unwrap();
    let vip = shoal_model::service::vip_endpoint_id(svc.trim());
    let inspect = cli(&lab, 1, &["--format", "json", "network", "inspect", "app"]).unwrap();
    assert!(inspect.contains(&vip), "the service has a VIP: {inspect}");

    // h2's genuine worker certificate tries to free the service's VIP.
    let worker = identity(&lab, 2);
    let r = node_call(
        &h2.ns,
        &worker,
        manager,
        NodeRequest::Detach {
            network: net.clone(),
            endpoint: vip.clone(),
        },
    );
    let e = r.unwrap_err();
    assert!(e.contains("a node may only free its own"), "{e}");
    let inspect = cli(&lab, 1, &["--format", "json", "network", "inspect", "app"]).unwrap();
    assert!(
        inspect.contains(&vip),
        "the VIP is still allocated: {inspect}"
    );

    // Once removed, the same certificate (still within its validity) is
    // refused for every node call.
    let h2_alive = |lab: &shoal_lab::Lab| {
        let addr = h2.addr.to_string();
        cli(lab, 1, &["--format", "json", "gossip", "members"])
            .ok()
            .and_then(|o| serde_json::from_str::<serde_json::Value>(&o).ok())
            .and_then(|v| v.as_array().cloned())
            .is_some_and(|ms| {
                ms.iter().any(|m| {
                    m["state"] == "Alive" && m["info"]["advertise_addr"].as_str() == Some(&addr)
                })
            })
    };
    shoal_tests::wait_for("h2 in h1's gossip", Duration::from_secs(30), || {
        h2_alive(&lab)
    });
    let out = cli(&lab, 1, &["node", "rm", "--force", "h2"]).unwrap();
    assert!(!out.trim().is_empty());
    let r = node_call(&h2.ns, &worker, manager, NodeRequest::Leave);
    let e = r.unwrap_err();
    assert!(e.contains("not part of this swarm"), "{e}");
    let log = std::fs::read_to_string(&lab.host(1).unwrap().log).unwrap();
    assert!(log.contains("rejected node call"), "the manager says why");

    // The removal rotated the gossip ring (twice, 5 s apart) past every
    // key h2 holds: its daemon still runs, but the others stop hearing it.
    shoal_tests::wait_for("h2 out of h1's gossip", Duration::from_secs(60), || {
        !h2_alive(&lab)
    });
    assert!(lab.daemon_state(2).unwrap() == shoal_lab::DaemonState::Running);

    // Nor does its session get anything more: a new gossip key reaches the
    // remaining worker (h3), never the removed node (h2).
    let out = cli(&lab, 1, &["swarm", "rotate-keys"]).unwrap();
    let new: u64 = out
        .split_whitespace()
        .find_map(|w| w.trim_end_matches(';').parse().ok())
        .unwrap_or_else(|| panic!("no key id in {out:?}"));
    shoal_tests::wait_for("the new key on h3", Duration::from_secs(20), || {
        key_ids(&lab, 3).contains(&new)
    });
    assert!(
        !key_ids(&lab, 2).contains(&new),
        "the removed node got the new key"
    );
    let log = std::fs::read_to_string(&lab.host(1).unwrap().log).unwrap();
    assert!(log.contains("session refused"), "the leader says why");
}

#[test]
fn an_absurd_scale_is_refused_and_the_cluster_still_writes() {
    let lab = lab(1);
    lab.form_swarm(1, 1).unwrap();
    cli(
        &lab,
        1,
        &[
            "service",
            "create",
            "--runtime",
            "host",
            "--name",
            "web",
            "--replicas",
            "1",
            "--",
            "sleep",
            "1000",
        ],
    )
    .unwrap();
    let e = cli(&lab, 1, &["service", "scale", "web=1000000000000"]).unwrap_err();
    assert!(
        e.contains("--replicas 1000000000000: a service has at most 10000 replicas"),
        "{e}"
    );
    let t0 = Instant::now();
    cli(&lab, 1, &["network", "create", "after"]).unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "writes still commit at once"
    );
    let ls = cli(&lab, 1, &["--format", "json", "service", "inspect", "web"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&ls).unwrap();
    assert_eq!(v[0]["spec"]["replicas"], 1, "{ls}");
    cli(&lab, 1, &["service", "rm", "web"]).unwrap();
}

#[test]
fn half_open_connections_to_2377_do_not_stop_writes() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // The daemons get the common default descriptor limit (1024: they
    // inherit it from this process); the flooding test then takes room for
    // 10,000 sockets. Without the per-address cap the manager would run out
    // of descriptors and refuse its own CLI and every other host.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, 1024, hard).unwrap();
    let lab = lab(3);
    lab.form_swarm(1, 1).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard.min(65_536), hard).unwrap();
    let h2 = lab.host(2).unwrap();
    let manager: SocketAddr = format!("{}:2377", lab.host(1).unwrap().addr)
        .parse()
        .unwrap();

    // h2 keeps 10,000 TCP connections to 2377 open and never says a word,
    // opening new ones all the time (so the manager's handshake deadline
    // alone cannot keep up).
    const FLOOD: usize = 10_000;
    let (open_tx, open_rx) = std::sync::mpsc::channel();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ns = h2.ns.clone();
    let flooder = std::thread::spawn(move || {
        in_netns(&ns, async move {
            let mut conns = std::collections::VecDeque::new();
            let mut opened = 0usize;
            loop {
                if stop_rx.try_recv().is_ok() {
                    return opened;
                }
                let c = tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio::net::TcpStream::connect(manager),
                )
                .await;
                if let Ok(Ok(c)) = c {
                    opened += 1;
                    conns.push_back(c);
                    if conns.len() > FLOOD {
                        conns.pop_front();
                    }
                    if opened == FLOOD {
                        let _ = open_tx.send(opened);
                    }
                }
            }
        })
    });
    open_rx.recv_timeout(Duration::from_secs(120)).unwrap();

    // Meanwhile every write commits, and another host still joins (the
    // flood only uses up its own address's share).
    for i in 0..20 {
        let t0 = Instant::now();
        cli(&lab, 1, &["network", "create", &format!("n{i}")]).unwrap();
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "write {i} took {:?}",
            t0.elapsed()
        );
    }
    let token = cli(&lab, 1, &["swarm", "join-token", "-q", "worker"]).unwrap();
    let out = cli(
        &lab,
        3,
        &[
            "swarm",
            "join",
            "--token",
            token.trim(),
            &manager.to_string(),
        ],
    );
    assert!(out.is_ok(), "a join during the flood: {out:?}");
    let _ = stop_tx.send(());
    let opened = flooder.join().unwrap();
    assert!(
        opened > FLOOD,
        "the flood went on during the writes ({opened})"
    );
    let nodes = cli(&lab, 1, &["node", "ls"]).unwrap();
    assert!(nodes.contains("h3"), "{nodes}");
}
