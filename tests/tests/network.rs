//! Overlay network objects in the replicated store, through the CLI of
//! real daemons in the lab. Needs root and the built `shoal` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_lab::Lab;
use shoal_tests::{cli, exec, wait_for};

fn inspect(lab: &Lab, host: usize, net: &str) -> Value {
    let v: Value =
        serde_json::from_str(&cli(lab, host, &["network", "inspect", net]).unwrap()).unwrap();
    v[0].clone()
}

#[test]
fn networks_are_allocated_in_the_store_and_agree_everywhere() {
    let lab = Lab::builder()
        .nodes(3)
        .daemon_config("heartbeat_ms = 500\n")
        .start()
        .unwrap();
    lab.init_swarm(2).unwrap();
    // swarm init made the ingress network, like docker.
    let ingress = inspect(&lab, 1, "ingress");
    assert_eq!(ingress["Ingress"], true);
    assert_eq!(ingress["IPAM"]["Config"][0]["Subnet"], "10.0.0.0/24");
    assert_eq!(
        ingress["Options"]["com.docker.network.driver.overlay.vxlanid_list"],
        "4096"
    );

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
            "--opt",
            "com.docker.network.driver.mtu=1400",
            "my-net",
        ],
    )
    .unwrap();
    // Allocated from the pool: the next free /24.
    cli(&lab, 2, &["network", "create", "app"]).unwrap();
    let app = inspect(&lab, 1, "app");
    assert_eq!(app["IPAM"]["Config"][0]["Subnet"], "10.0.1.0/24");
    assert_eq!(app["IPAM"]["Config"][0]["Gateway"], "10.0.1.1");
    // Both managers hold the same documents.
    assert_eq!(inspect(&lab, 2, "my-net"), inspect(&lab, 1, "my-net"));
    assert_eq!(
        inspect(&lab, 2, "my-net")["Options"]["com.docker.network.driver.mtu"],
        "1400"
    );

    let e = cli(
        &lab,
        1,
        &["network", "create", "--subnet", "10.0.9.0/25", "dup"],
    )
    .unwrap_err();
    assert!(
        e.contains("dup") && e.contains("my-net") && e.contains("overlaps"),
        "{e}"
    );
    // The same subnet exactly: refused, naming both networks.
    let e = cli(
        &lab,
        2,
        &["network", "create", "--subnet", "10.0.9.0/24", "twin"],
    )
    .unwrap_err();
    assert!(
        e.contains("twin") && e.contains("my-net") && e.contains("10.0.9.0/24"),
        "{e}"
    );
    assert!(!cli(&lab, 1, &["network", "ls"]).unwrap().contains("twin"));
    let e = cli(&lab, 1, &["network", "create", "--ingress", "ing2"]).unwrap_err();
    assert!(e.contains("only one ingress network"), "{e}");
    let e = cli(
        &lab,
        1,
        &[
            "network",
            "create",
            "--subnet",
            "10.5.0.0/24",
            "--gateway",
            "10.6.0.1",
            "g",
        ],
    )
    .unwrap_err();
    assert!(e.contains("gateway 10.6.0.1"), "{e}");
    let e = cli(&lab, 3, &["network", "create", "w"]).unwrap_err();
    assert!(e.contains("not a swarm manager"), "{e}");

    let ls = cli(&lab, 2, &["network", "ls"]).unwrap();
    for name in ["ingress", "my-net", "app"] {
        assert!(ls.contains(name), "{ls}");
    }
    cli(&lab, 1, &["network", "rm", "app"]).unwrap();
    assert!(!cli(&lab, 2, &["network", "ls"]).unwrap().contains("app"));
    let e = cli(&lab, 1, &["network", "inspect", "app"]).unwrap_err();
    assert!(e.contains("network app not found"), "{e}");
}

/// A 3-host swarm (h1 manager) with gossip up everywhere, ready for
/// `shoal run`.
fn swarm() -> Lab {
    let lab = Lab::builder()
        .nodes(3)
        .daemon_config("heartbeat_ms = 500\ngossip_profile = \"fast\"\n")
        .start()
        .unwrap();
    lab.init_swarm(1).unwrap();
    wait_for("gossip everywhere", Duration::from_secs(20), || {
        (1..=3).all(|h| cli(&lab, h, &["gossip", "members"]).is_ok())
    });
    lab
}

/// `shoal run --network NET --name NAME -- sleep 600` on `host`.
fn run(lab: &Lab, host: usize, net: &str, name: &str) -> Result<String, String> {
    cli(
        lab,
        host,
        &[
            "run",
            "--runtime",
            "host",
            "--network",
            net,
            "--name",
            name,
            "--",
            "sleep",
            "600",
        ],
    )
}

/// The `ps` record of workload `name` on `host`.
fn ps(lab: &Lab, host: usize, name: &str) -> Value {
    let v: Value =
        serde_json::from_str(&cli(lab, host, &["--format", "json", "ps"]).unwrap()).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no workload {name} in ps on h{host}: {v}"))
}

/// The MTU `ip -o link show DEV` reports for `dev`, run on `host` (through
/// `nsenter NSARGS` when given).
fn link_mtu(lab: &Lab, host: usize, ns_args: &[&str], dev: &str) -> u32 {
    let mut argv = Vec::new();
    if !ns_args.is_empty() {
        argv.push("nsenter");
        argv.extend(ns_args);
    }
    argv.extend(["ip", "-o", "link", "show", dev]);
    let (ok, out) = exec(lab, host, &argv);
    assert!(ok, "{argv:?} on h{host}: {out}");
    let mut words = out.split_whitespace();
    words
        .find(|w| *w == "mtu")
        .and_then(|_| words.next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no mtu in {argv:?} on h{host}: {out}"))
}

#[test]
fn mtu_option_reaches_the_kernel_links() {
    let lab = swarm();
    cli(
        &lab,
        1,
        &[
            "network",
            "create",
            "--attachable",
            "--subnet",
            "10.0.9.0/24",
            "--opt",
            "com.docker.network.driver.mtu=1400",
            "small",
        ],
    )
    .unwrap();
    // A network without the option gets the underlay's MTU less VXLAN's 50.
    cli(
        &lab,
        1,
        &[
            "network",
            "create",
            "--attachable",
            "--subnet",
            "10.0.10.0/24",
            "plain",
        ],
    )
    .unwrap();
    wait_for("shoal run on h2", Duration::from_secs(30), || {
        run(&lab, 2, "small", "s2").is_ok()
    });
    wait_for("shoal run on h2", Duration::from_secs(30), || {
        run(&lab, 2, "plain", "p2").is_ok()
    });
    let (s2, p2) = (ps(&lab, 2, "s2"), ps(&lab, 2, "p2"));
    let ns_of = |w: &Value| {
        let id = w["network"]["id"].as_str().unwrap();
        format!(
            "--net={}",
            lab.host(2)
                .unwrap()
                .run_dir
                .join("overlay/netns")
                .join(id)
                .display()
        )
    };
    let (small_ns, plain_ns) = (ns_of(&s2), ns_of(&p2));
    for dev in ["vx0", "br0"] {
        assert_eq!(link_mtu(&lab, 2, &[&small_ns], dev), 1400, "{dev} of small");
    }
    let pid = s2["pid"].as_u64().unwrap().to_string();
    assert_eq!(
        link_mtu(&lab, 2, &["-t", &pid, "-n"], "eth0"),
        1400,
        "eth0 of a workload on small"
    );
    let underlay = link_mtu(&lab, 2, &[], "eth0");
    let want = underlay - 50;
    for dev in ["vx0", "br0"] {
        assert_eq!(link_mtu(&lab, 2, &[&plain_ns], dev), want, "{dev} of plain");
    }
    let pid = p2["pid"].as_u64().unwrap().to_string();
    assert_eq!(
        link_mtu(&lab, 2, &["-t", &pid, "-n"], "eth0"),
        want,
        "eth0 of a workload on plain"
    );
}

#[test]
fn a_small_network_fills_up_and_frees_addresses() {
    let lab = swarm();
    // A /29 has 6 host addresses; the gateway takes the first.
    cli(
        &lab,
        1,
        &[
            "network",
            "create",
            "--attachable",
            "--subnet",
            "10.9.9.0/29",
            "tiny",
        ],
    )
    .unwrap();
    wait_for("shoal run on h2", Duration::from_secs(30), || {
        run(&lab, 2, "tiny", "t1").is_ok()
    });
    let started = Instant::now();
    for (i, host) in [(2, 3), (3, 2), (4, 3), (5, 2)] {
        run(&lab, host, "tiny", &format!("t{i}"))
            .unwrap_or_else(|e| panic!("endpoint {i} of 5 on tiny refused: {e}"));
    }
    eprintln!(
        "4 shoal runs took {:?} ({:?} each)",
        started.elapsed(),
        started.elapsed() / 4
    );
    let insp: Value =
        serde_json::from_str(&cli(&lab, 1, &["network", "inspect", "tiny"]).unwrap()).unwrap();
    let mut ips: Vec<String> = insp[0]["Containers"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["IPv4Address"].as_str().unwrap_or_default().to_string())
        .collect();
    ips.sort();
    assert_eq!(
        ips,
        [
            "10.9.9.2/29",
            "10.9.9.3/29",
            "10.9.9.4/29",
            "10.9.9.5/29",
            "10.9.9.6/29"
        ],
        "{insp}"
    );
    for host in [1, 2] {
        let e = run(&lab, host, "tiny", "t6").unwrap_err();
        assert!(e.contains("network tiny is full"), "h{host}: {e}");
    }
    // The refused runs left nothing behind (compared by name: the table's
    // random ids may hold "t6" too).
    let listed = shoal_tests::json(&lab, 2, &["ps"]);
    assert!(
        listed.as_array().unwrap().iter().all(|w| w["name"] != "t6"),
        "a refused workload runs: {listed}"
    );
    // Stopping one frees its address for the next.
    cli(&lab, 3, &["stop", "t2"]).unwrap();
    wait_for("t2's address freed", Duration::from_secs(10), || {
        run(&lab, 2, "tiny", "t6").is_ok()
    });
    let t6 = ps(&lab, 2, "t6");
    assert_eq!(t6["endpoint"]["ip"], "10.9.9.3", "{t6}");
}

#[test]
fn a_24_network_accepts_253_endpoints_and_no_more() {
    let lab = swarm();
    cli(
        &lab,
        1,
        &[
            "network",
            "create",
            "--attachable",
            "--subnet",
            "10.9.9.0/24",
            "big",
        ],
    )
    .unwrap();
    wait_for("shoal run on h1", Duration::from_secs(30), || {
        run(&lab, 1, "big", "b1").is_ok()
    });
    // Spread over the three hosts: each run makes a namespace, two veths
    // and a process on its host.
    let started = Instant::now();
    let mut each = Vec::new();
    for i in 2..=253 {
        let host = 1 + i % 3;
        let t = Instant::now();
        run(&lab, host, "big", &format!("b{i}"))
            .unwrap_or_else(|e| panic!("endpoint {i} of 253 on big (h{host}) refused: {e}"));
        each.push(t.elapsed());
    }
    eprintln!(
        "252 shoal runs took {:?}: the first 10 {:?} each, the last 10 {:?} each",
        started.elapsed(),
        each[..10].iter().sum::<Duration>() / 10,
        each[each.len() - 10..].iter().sum::<Duration>() / 10,
    );
    let insp: Value =
        serde_json::from_str(&cli(&lab, 1, &["network", "inspect", "big"]).unwrap()).unwrap();
    let mut ips: Vec<String> = insp[0]["Containers"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["IPv4Address"].as_str().unwrap_or_default().to_string())
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 253, "distinct addresses on big: {ips:?}");
    assert!(
        !ips.iter().any(|a| a == "10.9.9.1/24"),
        "the gateway was handed out"
    );
    let e = run(&lab, 2, "big", "b254").unwrap_err();
    assert!(e.contains("network big is full"), "{e}");
}
