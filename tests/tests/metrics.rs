//! `/metrics` scraped from real daemons: raft, gossip, session, netdriver,
//! DNS and task series are there with values that fit the cluster; and
//! `shoal events` shows (and streams) what changed.
//! Needs root, iproute2, curl and the built binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use shoal_lab::Lab;
use shoal_tests::{cli, scrape, wait_until};

const CONFIG: &str =
    "heartbeat_ms = 500\ngossip_profile = \"fast\"\nmetrics_addr = \"127.0.0.1:9323\"\n";

#[test]
fn metrics_have_sane_values() {
    let lab = Lab::builder()
        .nodes(3)
        .daemon_config(CONFIG)
        .start()
        .unwrap();
    lab.form_swarm(3, 1).unwrap();
    cli(
        &lab,
        1,
        &["network", "create", "-d", "overlay", "--attachable", "app"],
    )
    .unwrap();
    cli(
        &lab,
        1,
        &[
            "service",
            "create",
            "--runtime",
            "host",
            "--name",
            "s",
            "--replicas",
            "3",
            "--network",
            "app",
            "--",
            "sleep",
            "600",
        ],
    )
    .unwrap();
    let (m, took) = wait_until("leader metrics settle", Duration::from_secs(30), || {
        let m = scrape(&lab, 1)?;
        let ok = m.get("shoal_raft_is_leader") == Some(&1.0)
            && m.get("shoal_session_connected_nodes") == Some(&3.0)
            && m.get("shoal_gossip_members{state=\"alive\"}") == Some(&2.0)
            && m.get("shoal_tasks_running") == Some(&1.0)
            && m.get("shoal_netdriver_reconciles_total")
                .is_some_and(|v| *v >= 1.0)
            && m.get("shoal_netdriver_entries_programmed_total")
                .is_some_and(|v| *v >= 1.0);
        ok.then_some(m)
    });
    eprintln!("leader metrics settled after {took:?}");
    assert!(m["shoal_raft_term"] >= 1.0);
    assert!(m["shoal_raft_commit_index"] >= 5.0, "{m:?}");
    assert!(m["shoal_raft_applied_index"] <= m["shoal_raft_commit_index"]);
    assert!(m["shoal_raft_proposals_total"] >= 1.0);
    assert!(m["shoal_raft_apply_latency_seconds_count"] >= 1.0);
    assert!(m["shoal_raft_apply_latency_seconds_sum"] > 0.0);
    assert!(m["shoal_netdriver_reconciles_total"] >= 1.0, "{m:?}");
    assert!(
        m["shoal_netdriver_entries_programmed_total"] >= 1.0,
        "{m:?}"
    );
    assert_eq!(m["shoal_netdriver_errors_total"], 0.0);
    assert!(m.keys().any(|k| k.starts_with("shoal_gossip_bytes_total")));
    assert!(m.contains_key("shoal_dns_queries_total"));
    // A worker: no raft or session series, but gossip, tasks and the netdriver.
    let w = wait_until("worker metrics", Duration::from_secs(20), || {
        scrape(&lab, 3).filter(|m| m.get("shoal_tasks_running") == Some(&1.0))
    })
    .0;
    assert!(!w.contains_key("shoal_raft_term"), "{w:?}");
    assert!(!w.contains_key("shoal_session_connected_nodes"));
    assert_eq!(w["shoal_gossip_members{state=\"alive\"}"], 2.0);
    // Anything but /metrics is 404.
    let out = lab
        .exec(
            1,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://127.0.0.1:9323/x",
            ],
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
}

#[test]
fn events_list_and_stream_cluster_changes() {
    use std::io::BufRead;
    let lab = Lab::builder()
        .nodes(2)
        .daemon_config(CONFIG)
        .start()
        .unwrap();
    lab.form_swarm(2, 1).unwrap();
    cli(&lab, 1, &["network", "create", "-d", "overlay", "app"]).unwrap();
    let (events, _) = wait_until("network create event", Duration::from_secs(10), || {
        let out = cli(
            &lab,
            1,
            &["--format", "json", "events", "--since", "1m", "--no-follow"],
        )
        .ok()?;
        let evs: Vec<serde_json::Value> = out
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        evs.iter()
            .any(|e| e["Type"] == "network" && e["Action"] == "create" && e["name"] == "app")
            .then_some(evs)
    });
    assert!(
        events.iter().all(|e| e["seq"].as_u64().unwrap_or(0) > 0),
        "{events:?}"
    );
    // Follow: a change made after the stream started arrives as a line.
    let mut cmd = lab
        .command(1, &[lab.shoal_bin().to_str().unwrap(), "events"])
        .unwrap();
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300)); // let the first poll land
    cli(
        &lab,
        1,
        &["node", "update", "--availability", "drain", "self"],
    )
    .unwrap_or_default();
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
            "--",
            "sleep",
            "60",
        ],
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(l);
            if seen
                .iter()
                .any(|l| l.contains(" service create ") && l.contains("name=web"))
            {
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.iter()
            .any(|l| l.contains(" service create ") && l.contains("name=web")),
        "streamed: {seen:#?}"
    );
}
