//! Egress from overlay workloads, end to end on real kernels: a workload's
//! default route goes through `gw0` into its node's `shoal_gwbridge`, and
//! what leaves the node is masqueraded behind the node's own address; a
//! workload whose networks are all `--internal` gets no way out at all but
//! still reaches its peers on the overlay; stopping workloads leaves no
//! egress veth and no lease behind. Needs root, iproute2, nftables and the
//! built `shoal` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_lab::Lab;
use shoal_tests::{cli, exec, run_sleeper, wait_for};

const CONFIG: &str = "heartbeat_ms = 500\ngossip_profile = \"fast\"\n";

/// A 3-host swarm (h1 manager) with gossip up everywhere.
fn swarm() -> Lab {
    let lab = Lab::builder()
        .nodes(3)
        .daemon_config(CONFIG)
        .start()
        .unwrap();
    lab.init_swarm(1).unwrap();
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

/// Output of `argv` run inside the workload's network namespace.
fn in_workload(lab: &Lab, host: usize, w: &Value, argv: &[&str]) -> (bool, String) {
    let p = pid(w);
    let mut full = vec!["nsenter", "-t", &p, "-n"];
    full.extend(argv);
    exec(lab, host, &full)
}

/// Runs `f` on a thread that entered the network namespace at `path`
/// (a bind mount or `/proc/<pid>/ns/net`).
fn in_ns_path<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(path)
                .unwrap_or_else(|e| panic!("open netns {}: {e}", path.display()));
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    })
}

/// A TCP listener in lab host `host`'s namespace on its underlay address;
/// `accept` returns the peer address of the first connection and the
/// bytes it sent.
struct HostListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl HostListener {
    fn bind(lab: &Lab, host: usize, port: u16) -> HostListener {
        let h = lab.host(host).unwrap();
        let addr = SocketAddr::from((h.addr, port));
        let listener = in_ns_path(Path::new(&format!("/run/netns/{}", h.ns)), || {
            TcpListener::bind(addr)
        })
        .unwrap_or_else(|e| panic!("listen on {addr} in h{host}: {e}"));
        listener.set_nonblocking(true).unwrap();
        HostListener { listener, addr }
    }

    /// The first connection within `timeout`: its peer and what it sent.
    fn accept(&self, timeout: Duration) -> (SocketAddr, String) {
        let deadline = Instant::now() + timeout;
        let (mut s, peer) = loop {
            match self.listener.accept() {
                Ok(c) => break c,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert!(
                        Instant::now() < deadline,
                        "no connection to {} within {timeout:?}",
                        self.addr
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("accept on {}: {e}", self.addr),
            }
        };
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got)
            .unwrap_or_else(|e| panic!("read from {peer}: {e}"));
        (peer, got)
    }
}

/// Connects from inside the workload's namespace to `to` once (no retry)
/// and sends `msg`.
fn connect_from(w: &Value, to: SocketAddr, msg: &str) -> std::io::Result<()> {
    let ns = w["netns"].as_str().unwrap().to_string();
    in_ns_path(Path::new(&ns), || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
        s.write_all(msg.as_bytes())?;
        s.shutdown(std::net::Shutdown::Write)
    })
}

/// Host-side egress veths (`gw<hex>`) on `shoal_gwbridge` in h`host`'s
/// namespace.
fn gw_veths(lab: &Lab, host: usize) -> Vec<String> {
    let ns = lab.host(host).unwrap().ns;
    let (ok, out) = exec(
        lab,
        host,
        &["ip", "-o", "link", "show", "master", "shoal_gwbridge"],
    );
    assert!(ok, "ip link show master shoal_gwbridge in {ns}: {out}");
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("gw"))
        .collect()
}

/// The leases in h`host`'s `<run_dir>/gwbridge.json` (none when the file
/// was never written).
fn gw_leases(lab: &Lab, host: usize) -> serde_json::Map<String, Value> {
    let path = lab.host(host).unwrap().run_dir.join("gwbridge.json");
    match std::fs::read(&path) {
        Ok(b) => {
            let v: Value = serde_json::from_slice(&b)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
            v["leases"].as_object().cloned().unwrap_or_default()
        }
        Err(e) if e.kind() == ErrorKind::NotFound => serde_json::Map::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}

#[test]
fn egress_leaves_through_gw0_masqueraded_behind_the_node_and_is_cleaned_up() {
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
            "app",
        ],
    )
    .unwrap();
    let w1 = run_sleeper(&lab, 1, "app", "w1");
    let w1b = run_sleeper(&lab, 1, "app", "w1b");

    // The default route is the egress one, on gw0 via the bridge's
    // gateway; eth0 (the overlay) carries only its subnet.
    let (ok, routes) = in_workload(&lab, 1, &w1, &["ip", "route", "show"]);
    assert!(ok, "{routes}");
    let default: Vec<&str> = routes
        .lines()
        .filter(|l| l.starts_with("default"))
        .collect();
    assert!(
        default.len() == 1 && default[0].contains("via 172.18.0.1 dev gw0"),
        "want one default route, via 172.18.0.1 on gw0:\n{routes}"
    );
    assert!(
        routes.contains("10.0.9.0/24 dev eth0"),
        "no overlay subnet route on eth0:\n{routes}"
    );
    let gw_ip = w1["gw_ip"].as_str().unwrap().to_string();
    assert!(gw_ip.starts_with("172.18."), "gw_ip {gw_ip}");

    // To h2's underlay address: the listener sees h1's underlay address.
    let h1 = lab.host(1).unwrap().addr;
    let sink = HostListener::bind(&lab, 2, 5400);
    connect_from(&w1, sink.addr, "hello from w1")
        .unwrap_or_else(|e| panic!("w1 cannot reach {} (h2's underlay): {e}", sink.addr));
    let (peer, got) = sink.accept(Duration::from_secs(10));
    eprintln!(
        "h2's listener saw w1 ({}, egress {gw_ip}) as {peer}",
        ip(&w1)
    );
    assert_eq!(got, "hello from w1");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(h1),
        "the connection from w1 (overlay {}, egress {gw_ip}) must arrive masqueraded \
         behind h1's underlay address {h1}, it came from {peer}",
        ip(&w1)
    );

    // Two workloads: two egress veths and two leases on h1.
    assert_ne!(
        w1b["gw_ip"], w1["gw_ip"],
        "w1 and w1b share an egress address"
    );
    let veths = gw_veths(&lab, 1);
    assert_eq!(veths.len(), 2, "h1's egress veths: {veths:?}");
    let leases = gw_leases(&lab, 1);
    assert_eq!(leases.len(), 2, "h1's leases: {leases:?}");

    cli(&lab, 1, &["stop", "w1"]).unwrap();
    cli(&lab, 1, &["stop", "w1b"]).unwrap();
    wait_for(
        "h1's egress veths removed from shoal_gwbridge",
        Duration::from_secs(10),
        || gw_veths(&lab, 1).is_empty(),
    );
    wait_for("h1's egress leases freed", Duration::from_secs(10), || {
        gw_leases(&lab, 1).is_empty()
    });
    // No peer half left behind in h1's namespace either.
    let (ok, links) = exec(&lab, 1, &["ip", "-o", "link", "show"]);
    assert!(ok, "{links}");
    assert!(
        !links
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .any(|n| n.starts_with("gw") || n.starts_with("gp")),
        "egress veths left in h1's namespace:\n{links}"
    );
}

#[test]
fn internal_network_has_no_way_out_but_reaches_its_peers() {
    let lab = swarm();
    cli(
        &lab,
        1,
        &[
            "network",
            "create",
            "--internal",
            "--attachable",
            "--subnet",
            "10.0.8.0/24",
            "priv",
        ],
    )
    .unwrap();
    let insp: Value =
        serde_json::from_str(&cli(&lab, 1, &["network", "inspect", "priv"]).unwrap()).unwrap();
    assert_eq!(insp[0]["Internal"], true, "{insp}");
    let w1 = run_sleeper(&lab, 1, "priv", "i1");
    let w3 = run_sleeper(&lab, 3, "priv", "i3");

    // No default route, no gw0, no lease.
    let (ok, routes) = in_workload(&lab, 1, &w1, &["ip", "route", "show"]);
    assert!(ok, "{routes}");
    assert!(
        !routes.lines().any(|l| l.starts_with("default")),
        "an internal workload has a default route:\n{routes}"
    );
    let (ok, links) = in_workload(&lab, 1, &w1, &["ip", "-o", "link", "show"]);
    assert!(ok, "{links}");
    assert!(
        !links.contains("gw0"),
        "an internal workload has gw0:\n{links}"
    );
    assert!(w1["gw_ip"].is_null(), "{w1}");
    assert!(gw_leases(&lab, 1).is_empty(), "{:?}", gw_leases(&lab, 1));

    // Its peer on h3 over the overlay: reachable.
    let ip3 = ip(&w3);
    wait_for(
        "i1 pings i3 over the internal overlay",
        Duration::from_secs(20),
        || in_workload(&lab, 1, &w1, &["ping", "-c1", "-W1", &ip3]).0,
    );

    // h2's underlay address: refused at once by the routing table.
    let sink = HostListener::bind(&lab, 2, 5401);
    let started = Instant::now();
    let e = connect_from(&w1, sink.addr, "must not arrive").expect_err(&format!(
        "an internal workload reached {} (h2's underlay)",
        sink.addr
    ));
    let took = started.elapsed();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::ENETUNREACH),
        "want \"Network is unreachable\", got: {e}"
    );
    assert!(took < Duration::from_secs(1), "failing took {took:?}");
    assert!(
        matches!(sink.listener.accept(), Err(ref e) if e.kind() == ErrorKind::WouldBlock),
        "something connected to h2's listener"
    );
}

/// The seed's "customize the docker_gwbridge interface": h2 makes its
/// `shoal_gwbridge` before joining (subnet 10.11.0.0/16, no traffic
/// between its workloads, masquerading on); `network ls` shows it as a
/// local bridge network, h2's workloads egress through it and cannot reach
/// each other over it, while h1 keeps the defaults; in use, it can be
/// neither removed nor made again.
#[test]
fn a_gwbridge_made_before_joining_is_set_up_as_asked() {
    let lab = Lab::builder()
        .nodes(2)
        .daemon_config(CONFIG)
        .start()
        .unwrap();
    let local = |h: usize| {
        shoal_tests::json(&lab, h, &["network", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["Name"] == "shoal_gwbridge")
            .cloned()
    };
    assert!(local(2).is_none(), "no gwbridge before anyone makes it");
    cli(
        &lab,
        2,
        &[
            "network",
            "create",
            "--subnet",
            "10.11.0.0/16",
            "--opt",
            "com.docker.network.bridge.name=shoal_gwbridge",
            "--opt",
            "com.docker.network.bridge.enable_icc=false",
            "--opt",
            "com.docker.network.bridge.enable_ip_masquerade=true",
            "-d",
            "bridge",
            "shoal_gwbridge",
        ],
    )
    .unwrap();
    let n = local(2).expect("shoal_gwbridge listed on h2");
    assert_eq!(
        (n["Driver"].as_str(), n["Scope"].as_str()),
        (Some("bridge"), Some("local"))
    );
    let e = cli(&lab, 2, &["network", "create", "-d", "bridge", "br0"]).unwrap_err();
    assert!(e.contains("not supported yet"), "{e}");
    let e = cli(&lab, 2, &["network", "create", "-d", "ipvlan", "iv"]).unwrap_err();
    assert!(e.contains("not supported"), "{e}");

    lab.form_swarm(2, 1).unwrap();
    wait_for("gossip on both", Duration::from_secs(20), || {
        (1..=2).all(|h| cli(&lab, h, &["gossip", "members"]).is_ok())
    });
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
    let (a, b) = (
        run_sleeper(&lab, 2, "app", "a"),
        run_sleeper(&lab, 2, "app", "b"),
    );
    let (c, d) = (
        run_sleeper(&lab, 1, "app", "c"),
        run_sleeper(&lab, 1, "app", "d"),
    );
    let gw = |w: &Value| w["gw_ip"].as_str().unwrap().to_string();
    assert!(
        gw(&a).starts_with("10.11.") && gw(&b).starts_with("10.11."),
        "{a} {b}"
    );
    assert!(gw(&c).starts_with("172.18."), "h1 keeps the default: {c}");
    let (_, routes) = in_workload(&lab, 2, &a, &["ip", "route", "show", "default"]);
    assert!(routes.contains("via 10.11.0.1 dev gw0"), "{routes}");
    // Masquerading on: out to h1's underlay address.
    let h1 = lab.host(1).unwrap().addr.to_string();
    let (ok, out) = in_workload(&lab, 2, &a, &["ping", "-c", "1", "-W", "2", &h1]);
    assert!(ok, "a reaches h1's underlay: {out}");
    // enable_icc=false on h2: a cannot reach b over the bridge, but can
    // over the overlay; on h1 (the defaults) c reaches d over the bridge.
    let (ok, out) = in_workload(&lab, 2, &a, &["ping", "-c", "3", "-W", "1", &gw(&b)]);
    assert!(
        !ok,
        "a reached b over shoal_gwbridge with enable_icc=false: {out}"
    );
    let (ok, out) = in_workload(&lab, 2, &a, &["ping", "-c", "1", "-W", "2", &ip(&b)]);
    assert!(ok, "a reaches b over the overlay: {out}");
    let (ok, out) = in_workload(&lab, 1, &c, &["ping", "-c", "1", "-W", "2", &gw(&d)]);
    assert!(ok, "c reaches d over h1's default gwbridge: {out}");

    let n = local(2).unwrap();
    let inspect = shoal_tests::json(&lab, 2, &["network", "inspect", "shoal_gwbridge"]);
    assert_eq!(inspect[0]["Id"], n["Id"]);
    assert_eq!(
        inspect[0]["Options"]["com.docker.network.bridge.enable_icc"], "false",
        "{inspect}"
    );
    assert_eq!(inspect[0]["IPAM"]["Config"][0]["Subnet"], "10.11.0.0/16");
    assert_eq!(
        inspect[0]["Containers"].as_object().unwrap().len(),
        2,
        "{inspect}"
    );
    // In use by the swarm: neither removed nor made again.
    let e = cli(&lab, 2, &["network", "rm", "shoal_gwbridge"]).unwrap_err();
    assert!(e.contains("in use"), "{e}");
    let e = cli(
        &lab,
        1,
        &["network", "create", "-d", "bridge", "shoal_gwbridge"],
    )
    .unwrap_err();
    assert!(e.contains("in use by this node's swarm"), "{e}");
}
