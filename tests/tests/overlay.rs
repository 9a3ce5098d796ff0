//! Overlay networks end to end on real kernels: workloads on two lab hosts
//! reach each other over VXLAN; a host without workloads holds nothing;
//! a dead host's endpoints leave the others' kernels; a hand-deleted FDB
//! entry comes back. Needs root, iproute2 and the built `shoal` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;
use shoal_lab::Lab;
use shoal_tests::{cli, wait_for};

const CONFIG: &str = "heartbeat_ms = 500\ngossip_profile = \"fast\"\n";

fn exec(lab: &Lab, host: usize, argv: &[&str]) -> (bool, String) {
    let out = lab.exec(host, argv).unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

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
        &["run", "--network", "closed", "--", "sleep", "600"],
    )
    .unwrap_err();
    assert!(e.contains("not attachable"), "{e}");
    // Encrypted overlays fail closed: no plaintext, no endpoint left behind.
    cli(
        &lab,
        1,
        &[
            "network",
            "create",
            "--attachable",
            "--opt",
            "encrypted",
            "secret",
        ],
    )
    .unwrap();
    let e = cli(
        &lab,
        2,
        &["run", "--network", "secret", "--", "sleep", "600"],
    )
    .unwrap_err();
    assert!(
        e.contains("refusing to attach rather than send plaintext"),
        "{e}"
    );
    let insp: Value =
        serde_json::from_str(&cli(&lab, 1, &["network", "inspect", "secret"]).unwrap()).unwrap();
    assert!(
        insp[0]["Containers"].as_object().unwrap().is_empty(),
        "{insp}"
    );
    // Gossip must run before endpoints can be published.
    wait_for("gossip everywhere", Duration::from_secs(20), || {
        (1..=3).all(|h| cli(&lab, h, &["gossip", "members"]).is_ok())
    });

    cli(
        &lab,
        1,
        &[
            "run",
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
