//! Overlay networks end to end on real kernels: workloads on two lab hosts
//! reach each other over VXLAN; a host without workloads holds nothing;
//! a dead host's endpoints leave the others' kernels; a hand-deleted FDB
//! entry comes back. Needs root, iproute2 and the built `shoal` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;
use shoal_lab::Lab;
use shoal_tests::{cli, exec, run_sleeper, wait_for, wait_pings};

const CONFIG: &str = "heartbeat_ms = 500\ngossip_profile = \"fast\"\n";

fn workload(lab: &Lab, host: usize) -> Value {
    let v: Value =
        serde_json::from_str(&cli(lab, host, &["--format", "json", "ps"]).unwrap()).unwrap();
    v[0].clone()
}

/// The VXLAN FDB entries (MAC -> remote VTEP) of a network on a host; the
/// bridge's own learned entries on the vx0 port are not ours.
fn fdb(lab: &Lab, host: usize, net_id: &str) -> String {
    let ns = lab
        .host(host)
        .unwrap()
        .run_dir
        .join("overlay/netns")
        .join(net_id);
    let ns = format!("--net={}", ns.display());
    exec(
        lab,
        host,
        &["nsenter", &ns, "bridge", "fdb", "show", "dev", "vx0"],
    )
    .1
    .lines()
    .filter(|l| l.contains(" dst "))
    .collect::<Vec<_>>()
    .join("\n")
}

#[test]
fn workloads_on_two_hosts_talk_over_the_overlay() {
    let lab = Lab::builder()
        .nodes(3)
        .daemon_config(CONFIG)
        .start()
        .unwrap();
    lab.init_swarm(1).unwrap();
    cli(
        &lab,
        1,
        &[
            "network",
            "create",
            "-d",
            "overlay",
            "--attachable",
            "--subnet",
            "10.0.9.0/24",
            "app",
        ],
    )
    .unwrap();
    cli(&lab, 2, &["network", "create", "closed"]).unwrap_err();
    cli(&lab, 1, &["network", "create", "closed"]).unwrap();
    let e = cli(
        &lab,
        2,
        &[
            "run",
            "--runtime",
            "host",
            "--network",
            "closed",
            "--",
            "sleep",
            "600",
        ],
    )
    .unwrap_err();
    assert!(e.contains("not attachable"), "{e}");
    // Gossip must run before endpoints can be published.
    wait_for("gossip everywhere", Duration::from_secs(20), || {
        (1..=3).all(|h| cli(&lab, h, &["gossip", "members"]).is_ok())
    });

    cli(
        &lab,
        1,
        &[
            "run",
            "--runtime",
            "host",
            "--network",
            "app",
            "--name",
            "w1",
            "--",
            "sleep",
            "600",
        ],
    )
    .unwrap();
    cli(
        &lab,
        3,
        &[
            "run",
            "--runtime",
            "host",
            "--network",
            "app",
            "--name",
            "w3",
            "--",
            "sleep",
            "600",
        ],
    )
    .unwrap();
    let (w1, w3) = (workload(&lab, 1), workload(&lab, 3));
    let ip3 = w3["endpoint"]["ip"].as_str().unwrap().to_string();
    let ip1 = w1["endpoint"]["ip"].as_str().unwrap().to_string();
    let net_id = w1["network"]["id"].as_str().unwrap().to_string();
    let ns1 = format!("--net={}", w1["netns"].as_str().unwrap());
    let ns3 = format!("--net={}", w3["netns"].as_str().unwrap());

    let took = wait_for(
        "w1 pings w3 over the overlay",
        Duration::from_secs(20),
        || exec(&lab, 1, &["nsenter", &ns1, "ping", "-c1", "-W1", &ip3]).0,
    );
    eprintln!("w1 -> w3 reachable after {took:?}");
    assert!(exec(&lab, 3, &["nsenter", &ns3, "ping", "-c1", "-W1", &ip1]).0);

    // h2 has no workload on app: no namespace, no entries.
    let h2ns = lab
        .host(2)
        .unwrap()
        .run_dir
        .join("overlay/netns")
        .join(&net_id);
    assert!(
        !h2ns.exists(),
        "h2 holds a namespace for app without endpoints"
    );

    // A hand-deleted FDB entry comes back.
    let mac3 = w3["endpoint"]["mac"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| format!("{:02x}", b.as_u64().unwrap()))
        .collect::<Vec<_>>()
        .join(":");
    assert!(
        fdb(&lab, 1, &net_id).contains(&mac3),
        "{}",
        fdb(&lab, 1, &net_id)
    );
    let netns = format!(
        "--net={}",
        lab.host(1)
            .unwrap()
            .run_dir
            .join("overlay/netns")
            .join(&net_id)
            .display()
    );
    let vtep3 = lab.host(3).unwrap().addr.to_string();
    let (ok, out) = exec(
        &lab,
        1,
        &[
            "nsenter", &netns, "bridge", "fdb", "del", &mac3, "dev", "vx0", "dst", &vtep3, "self",
        ],
    );
    // (The reconciler may restore it before we even look again.)
    assert!(ok, "{out}");
    wait_for("the FDB entry restored", Duration::from_secs(10), || {
        fdb(&lab, 1, &net_id).contains(&mac3)
    });

    // Kill -9 h3's daemon and its workload: h1's entry for w3 goes.
    lab.kill(3).unwrap();
    let pid3 = w3["pid"].as_u64().unwrap() as i32;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid3),
        nix::sys::signal::Signal::SIGKILL,
    );
    let took = wait_for(
        "h3's endpoint gone from h1's FDB",
        Duration::from_secs(15),
        || !fdb(&lab, 1, &net_id).contains(&mac3),
    );
    eprintln!("dead host's endpoint removed from h1 after {took:?}");

    // Stopping w1 removes its namespace, endpoint and (last endpoint) the
    // network namespace on h1.
    cli(&lab, 1, &["stop", "w1"]).unwrap();
    let h1ns = lab
        .host(1)
        .unwrap()
        .run_dir
        .join("overlay/netns")
        .join(&net_id);
    wait_for(
        "h1's app namespace removed",
        Duration::from_secs(10),
        || !h1ns.exists(),
    );
    let insp: Value =
        serde_json::from_str(&cli(&lab, 1, &["network", "inspect", "app"]).unwrap()).unwrap();
    assert!(
        !insp[0]["Containers"]
            .as_object()
            .unwrap()
            .values()
            .any(|c| c["Name"] == "w1"),
        "{insp}"
    );
}

/// A 3-host swarm (h1 manager) with attachable network `app` and gossip up.
fn overlay_lab() -> Lab {
    let lab = Lab::builder()
        .nodes(3)
        .daemon_config(CONFIG)
        .start()
        .unwrap();
    lab.init_swarm(1).unwrap();
    cli(
        &lab,
        1,
        &[
            "network",
            "create",
            "--attachable",
            "--subnet",
            "10.0.9.0/24",
            "app",
        ],
    )
    .unwrap();
    wait_for("gossip everywhere", Duration::from_secs(20), || {
        (1..=3).all(|h| cli(&lab, h, &["gossip", "members"]).is_ok())
    });
    lab
}

fn pid(w: &Value) -> String {
    w["pid"].as_u64().unwrap().to_string()
}

fn ip(w: &Value) -> String {
    w["endpoint"]["ip"].as_str().unwrap().to_string()
}

#[test]
fn tcp_stream_between_workloads_arrives_intact() {
    let lab = overlay_lab();
    let (w1, w3) = (
        run_sleeper(&lab, 1, "app", "w1"),
        run_sleeper(&lab, 3, "app", "w3"),
    );
    wait_pings(&lab, 1, &w1, &ip(&w3));
    let bin = shoal_tests::shoal_lab_bin();
    let bin = bin.to_str().unwrap();
    let addr = format!("{}:5300", ip(&w3));
    let (p1, p3) = (pid(&w1), pid(&w3));
    let sink = lab
        .command(
            3,
            &[
                "nsenter",
                "-t",
                &p3,
                "-n",
                bin,
                "tcp-sink",
                "--listen",
                &addr,
                "--hash",
                "--timeout",
                "60",
            ],
        )
        .unwrap()
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, sent) = exec(
        &lab,
        1,
        &[
            "nsenter",
            "-t",
            &p1,
            "-n",
            bin,
            "tcp-source",
            "--to",
            &addr,
            "--bytes",
            "4000000",
            "--hash",
        ],
    );
    assert!(ok, "tcp-source failed: {sent}");
    let got = sink.wait_with_output().unwrap();
    assert!(got.status.success(), "tcp-sink failed: {got:?}");
    let sent: Value = serde_json::from_str(sent.trim()).unwrap();
    let got: Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(sent["bytes"], 4_000_000, "{sent}");
    assert_eq!(got["bytes"], sent["bytes"], "sent {sent}, received {got}");
    assert_eq!(got["fnv64"], sent["fnv64"], "sent {sent}, received {got}");
}

/// Lines of `argv` run in the overlay namespace of `net_id` on `host`.
fn in_overlay_ns(lab: &Lab, host: usize, net_id: &str, argv: &[&str]) -> Vec<String> {
    let ns = lab
        .host(host)
        .unwrap()
        .run_dir
        .join("overlay/netns")
        .join(net_id);
    let ns = format!("--net={}", ns.display());
    let mut full = vec!["nsenter", &ns];
    full.extend(argv);
    let (ok, out) = exec(lab, host, &full);
    assert!(ok, "{full:?} on h{host}: {out}");
    out.lines().map(str::to_string).collect()
}

fn assert_no_duplicates(what: &str, lines: &[String]) {
    let mut seen = std::collections::BTreeSet::new();
    for l in lines {
        assert!(seen.insert(l), "duplicate {what} entry {l:?} in {lines:#?}");
    }
}

#[test]
fn daemon_restart_loses_no_ping_and_leaves_no_duplicate_entries() {
    let lab = overlay_lab();
    let (w1, w3) = (
        run_sleeper(&lab, 1, "app", "w1"),
        run_sleeper(&lab, 3, "app", "w3"),
    );
    let ip3 = ip(&w3);
    wait_pings(&lab, 1, &w1, &ip3);
    // 300 pings every 50 ms (15 s), the restart in the middle.
    let p1 = pid(&w1);
    let ping = lab
        .command(
            1,
            &[
                "nsenter", "-t", &p1, "-n", "ping", "-q", "-i", "0.05", "-c", "300", "-W", "1",
                &ip3,
            ],
        )
        .unwrap()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    lab.restart(1).unwrap();
    let restarted = started.elapsed();
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        restarted < Duration::from_secs(13),
        "the restart ({restarted:?}) did not finish inside the ping window: {text}"
    );
    assert!(cli(&lab, 1, &["ps"]).unwrap().contains("w1"));
    // Two reconcile rounds after the restart: still one entry per peer.
    std::thread::sleep(Duration::from_secs(4));
    let net_id = w1["network"]["id"].as_str().unwrap();
    let fdb = in_overlay_ns(&lab, 1, net_id, &["bridge", "fdb", "show"]);
    assert_no_duplicates("FDB", &fdb);
    let neigh = in_overlay_ns(&lab, 1, net_id, &["ip", "neigh", "show"]);
    assert_no_duplicates("neighbour", &neigh);
    let mac3 = shoal_lab::chaos::mac_text(&w3["endpoint"]["mac"]);
    assert_eq!(
        fdb.iter()
            .filter(|l| l.starts_with(&mac3) && l.contains(" dst "))
            .count(),
        1,
        "want one FDB entry for w3 ({mac3}): {fdb:#?}"
    );
    assert_eq!(
        neigh
            .iter()
            .filter(|l| l.starts_with(&format!("{ip3} ")))
            .count(),
        1,
        "want one neighbour entry for w3 ({ip3}): {neigh:#?}"
    );
    // Checked last so a failure here still reports the entries above.
    assert!(
        text.contains("300 packets transmitted, 300 received"),
        "pings lost over the restart of h1's daemon (done after {restarted:?}):\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
