//! Real-kernel tests (root, nft) of the service data path: VIP load
//! balancing in a task namespace, the egress bridge with masquerade, and
//! the routing mesh (host publish table + ingress sandbox). Every
//! namespace is made with the crate's own `create_netns` under a per-test
//! temp dir and removed on drop, even when a test panics; traffic only
//! goes to addresses inside those namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use nix::sched::{setns, CloneFlags};
use shoal_netdriver::nft::{self, INGRESS_TABLE, PUBLISH_TABLE, VIP_TABLE};
use shoal_netdriver::{
    create_netns, remove_netns, Backend, Desired, Driver, GwBridge, GwSpec, NetError, NetworkSpec,
    PortRule, Proto, VipRule, GWBRIDGE, GW_TABLE,
};

/// Owns the temp dir; on drop removes the drivers' network namespaces,
/// then every namespace made by the test (which takes their devices, the
/// egress bridge and nft tables with them).
struct Lab {
    dir: tempfile::TempDir,
    made: Mutex<Vec<PathBuf>>,
}

impl Lab {
    fn new() -> Lab {
        Lab {
            dir: tempfile::Builder::new()
                .prefix("shoal-nat-")
                .tempdir()
                .unwrap(),
            made: Mutex::new(Vec::new()),
        }
    }

    /// A namespace (host, outside, sandbox or workload) with `lo` up.
    fn ns(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(format!("ns-{name}"));
        create_netns(&p).unwrap();
        self.made.lock().unwrap().push(p.clone());
        sh(&p, "ip link set lo up");
        p
    }

    fn run_dir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(format!("run-{name}"));
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for e in entries.flatten() {
                if let Ok(inner) = std::fs::read_dir(e.path().join("netns")) {
                    for f in inner.flatten() {
                        let _ = remove_netns(&f.path());
                    }
                }
            }
        }
        for p in self.made.lock().unwrap().iter().rev() {
            let _ = remove_netns(p);
        }
    }
}

fn enter(ns: &Path) {
    let f = File::open(ns).unwrap();
    setns(&f, CloneFlags::CLONE_NEWNET).unwrap();
}

/// Run async `f` on a thread inside `ns` with a runtime built there (its
/// worker threads, and processes they spawn, are in `ns` too).
fn in_ns<T, F, Fut>(ns: &Path, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let ns = ns.to_path_buf();
    in_ns_sync(&ns.clone(), move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f())
    })
}

/// Run `f` on a thread inside `ns`; panics propagate.
fn in_ns_sync<T: Send + 'static>(ns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_path_buf();
    match std::thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join()
    {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

fn nsenter(ns: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(args)
        .output()
        .unwrap();
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

fn sh(ns: &Path, script: &str) {
    let (ok, out) = nsenter(ns, &["sh", "-ec", script]);
    assert!(ok, "{script}: {out}");
}

/// A veth pair `a_name` (in `a`) <-> `b_name` (moved into `b`), both
/// addressed and up.
fn veth_between(a: &Path, a_name: &str, a_ip: &str, b: &Path, b_name: &str, b_ip: &str) {
    let (an, bn, bp) = (a_name.to_string(), b_name.to_string(), b.to_path_buf());
    in_ns(a, move || async move {
        let (conn, h, _) = rtnetlink::new_connection().unwrap();
        tokio::spawn(conn);
        h.link()
            .add(rtnetlink::LinkVeth::new(&an, &bn).build())
            .execute()
            .await
            .unwrap();
        let peer = h
            .link()
            .get()
            .match_name(bn.clone())
            .execute()
            .try_next()
            .await
            .unwrap()
            .unwrap();
        let f = File::open(&bp).unwrap();
        h.link()
            .set(
                rtnetlink::LinkUnspec::new_with_index(peer.header.index)
                    .setns_by_fd(f.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .unwrap();
    });
    sh(
        a,
        &format!("ip addr add {a_ip} dev {a_name}; ip link set {a_name} up"),
    );
    sh(
        b,
        &format!("ip addr add {b_ip} dev {b_name}; ip link set {b_name} up"),
    );
}

/// A TCP server in a namespace: answers every connection with
/// `reply(peer address)` and closes. Bound before `serve` returns; stopped
/// and joined on drop.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn serve(ns: &Path, addr: &str, reply: impl Fn(SocketAddr) -> String + Send + 'static) -> Server {
    let ns = ns.to_path_buf();
    let addr: SocketAddr = addr.parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        enter(&ns);
        let l = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        l.set_nonblocking(true).unwrap();
        let _ = tx.send(Ok(()));
        while !stop2.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, peer)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.write_all(reply(peer).as_bytes());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    Server {
        stop,
        thread: Some(thread),
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connect from inside `ns` to `addr` and read the whole answer.
fn fetch(ns: &Path, addr: &str) -> std::io::Result<String> {
    fetch_within(ns, addr, Duration::from_secs(5))
}

fn fetch_within(ns: &Path, addr: &str, connect: Duration) -> std::io::Result<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    in_ns_sync(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, connect)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
}

/// Connect and expect a fast refusal; returns how long it took.
fn assert_refused(ns: &Path, addr: &str) -> Duration {
    let start = Instant::now();
    let r = fetch(ns, addr);
    let took = start.elapsed();
    match r {
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{addr}: expected a refusal, got {e} after {took:?}"
        ),
        Ok(s) => panic!("{addr}: expected a refusal, got an answer {s:?}"),
    }
    assert!(
        took < Duration::from_secs(1),
        "{addr}: refusal took {took:?}"
    );
    took
}

fn spec(id: &str, subnet: &str, gateway: Ipv4Addr, vni: u32) -> NetworkSpec {
    NetworkSpec {
        id: id.to_string(),
        vni,
        subnet: subnet.parse().unwrap(),
        gateway,
        mtu: Some(1450),
        local_vtep: Ipv4Addr::new(10, 77, 0, 1),
        port: 4789,
        encrypted: false,
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A client and two backends on one overlay (made by the driver in a host
/// namespace); the VIP table in the client spreads 20 connections evenly
/// over both backends, all ports kept; a VIP without backends is refused
/// at once; a bad body leaves the old table; delete is idempotent.
#[test]
fn vip_round_robin_and_refusal() {
    let lab = Lab::new();
    let host = lab.ns("host");
    let (client, b1, b2) = (lab.ns("client"), lab.ns("b1"), lab.ns("b2"));
    let run = lab.run_dir("h");
    let (c2, b12, b22) = (client.clone(), b1.clone(), b2.clone());
    in_ns(&host, move || async move {
        let mut d = Driver::new(&run).await.unwrap();
        let gw = ip("10.44.0.1");
        d.reconcile(&Desired {
            networks: vec![(spec("vipnet", "10.44.0.0/24", gw, 4401), vec![])],
        })
        .await
        .unwrap();
        // The client joins as its second network: eth1, no default route.
        d.attach_as(
            "vipnet",
            &c2,
            "eth1",
            "10.44.0.2/24".parse().unwrap(),
            [0x02, 0x42, 10, 44, 0, 2],
            gw,
            false,
        )
        .await
        .unwrap();
        for (ns, last) in [(&b12, 3u8), (&b22, 4)] {
            d.attach(
                "vipnet",
                ns,
                format!("10.44.0.{last}/24").parse().unwrap(),
                [0x02, 0x42, 10, 44, 0, last],
                gw,
            )
            .await
            .unwrap();
        }
        // Bad names are refused before touching the kernel.
        let e = d
            .attach_as(
                "vipnet",
                &c2,
                "much-too-long-name",
                "10.44.0.9/24".parse().unwrap(),
                [0x02, 0x42, 10, 44, 0, 9],
                gw,
                false,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, NetError::InvalidName { .. }), "{e}");
    });
    let (_, routes) = nsenter(&client, &["ip", "route", "show"]);
    assert!(
        !routes.contains("default"),
        "client has a default route: {routes}"
    );
    let (_, lo) = nsenter(&client, &["ip", "-o", "link", "show", "lo"]);
    assert!(lo.contains("LOOPBACK,UP"), "lo not up: {lo}");
    let (_, routes) = nsenter(&b1, &["ip", "route", "show"]);
    assert!(
        routes.contains("default via 10.44.0.1 dev eth0"),
        "{routes}"
    );

    let _s1 = serve(&b1, "10.44.0.3:7000", |_| "b1".to_string());
    let _s2 = serve(&b2, "10.44.0.4:7000", |_| "b2".to_string());
    // A second port on one backend: the VIP keeps ports.
    let _s3 = serve(&b1, "10.44.0.3:7001", |_| "b1-7001".to_string());

    let rules = vec![
        VipRule {
            vip: ip("10.44.0.100"),
            backends: vec![ip("10.44.0.3"), ip("10.44.0.4")],
        },
        VipRule {
            vip: ip("10.44.0.101"),
            backends: vec![],
        },
        VipRule {
            vip: ip("10.44.0.102"),
            backends: vec![ip("10.44.0.3")],
        },
    ];
    let c3 = client.clone();
    let body = nft::vip_table(&rules);
    in_ns(&host, move || async move {
        nft::apply_table(Some(&c3), VIP_TABLE, &body).await.unwrap();
        // Applying the same body again is a clean replace.
        nft::apply_table(Some(&c3), VIP_TABLE, &body).await.unwrap();
    });

    let (mut n1, mut n2) = (0, 0);
    for i in 0..20 {
        match fetch(&client, "10.44.0.100:7000").unwrap().as_str() {
            "b1" => n1 += 1,
            "b2" => n2 += 1,
            other => panic!("connection {i}: unexpected answer {other:?}"),
        }
    }
    assert_eq!((n1, n2), (10, 10), "round robin over two backends");
    assert_eq!(fetch(&client, "10.44.0.102:7001").unwrap(), "b1-7001");
    let took = assert_refused(&client, "10.44.0.101:7000");
    eprintln!("VIP without backends refused in {took:?}");

    // The backend set changes to none: refused too; a body nft refuses
    // leaves that table in place.
    let c4 = client.clone();
    in_ns(&host, move || async move {
        let none = nft::vip_table(&[VipRule {
            vip: ip("10.44.0.100"),
            backends: vec![],
        }]);
        nft::apply_table(Some(&c4), VIP_TABLE, &none).await.unwrap();
        let e = nft::apply_table(Some(&c4), VIP_TABLE, "  chain x { nonsense }\n")
            .await
            .unwrap_err();
        match &e {
            NetError::Nft { stderr, .. } => assert!(stderr.contains("Error"), "{e}"),
            other => panic!("expected an nft error, got {other}"),
        }
        let listed = nft::list_table(Some(&c4), VIP_TABLE)
            .await
            .unwrap()
            .unwrap();
        assert!(listed.contains("10.44.0.100"), "{listed}");
        assert!(!listed.contains("dnat"), "{listed}");
    });
    assert_refused(&client, "10.44.0.100:7000");

    let c5 = client.clone();
    in_ns(&host, move || async move {
        nft::delete_table(Some(&c5), VIP_TABLE).await.unwrap();
        nft::delete_table(Some(&c5), VIP_TABLE).await.unwrap();
        assert_eq!(nft::list_table(Some(&c5), VIP_TABLE).await.unwrap(), None);
    });
}

/// The egress bridge in a "host" namespace: a workload reaches a server
/// in an "outside" namespace, which sees the host's address (masquerade;
/// the outside has no route back to the bridge subnet). Re-running ensure
/// and attach keeps the lease; detach frees it; remove cleans up.
#[test]
fn gwbridge_egress_masquerade_and_leases() {
    let lab = Lab::new();
    let host = lab.ns("host");
    let outside = lab.ns("outside");
    let (w1, w2, w3) = (lab.ns("w1"), lab.ns("w2"), lab.ns("w3"));
    let run = lab.run_dir("h");
    veth_between(
        &host,
        "ul0",
        "10.66.0.1/24",
        &outside,
        "ul1",
        "10.66.0.2/24",
    );
    let _srv = serve(&outside, "10.66.0.2:7100", |peer| {
        format!("peer={}", peer.ip())
    });

    let (run2, w12) = (run.clone(), w1.clone());
    let first = in_ns(&host, move || async move {
        let mut gw = GwBridge::ensure(&run2, &GwSpec::default()).await.unwrap();
        assert_eq!(gw.gateway(), ip("172.18.0.1"));
        gw.attach(&w12, "task1").await.unwrap()
    });
    assert_eq!(first.ip, "172.18.0.2/16".parse().unwrap());
    assert_eq!(first.gateway, ip("172.18.0.1"));
    assert!(first.host_veth.len() <= 15, "{}", first.host_veth);
    assert_eq!(fetch(&w1, "10.66.0.2:7100").unwrap(), "peer=10.66.0.1");
    let (_, fwd) = nsenter(&host, &["cat", "/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(fwd.trim(), "1");
    let (_, routes) = nsenter(&w1, &["ip", "route", "show"]);
    assert!(
        routes.contains("default via 172.18.0.1 dev gw0"),
        "{routes}"
    );
    let (ok, link) = nsenter(&host, &["ip", "-o", "link", "show", &first.host_veth]);
    assert!(ok && link.contains(&format!("master {GWBRIDGE}")), "{link}");

    // A restarted daemon: ensure adopts, the same key gets the same address.
    let (run3, w13, w22, w32) = (run.clone(), w1.clone(), w2.clone(), w3.clone());
    let host_veth = first.host_veth.clone();
    in_ns(&host, move || async move {
        let mut gw = GwBridge::ensure(&run3, &GwSpec::default()).await.unwrap();
        assert_eq!(gw.lease("task1"), Some(ip("172.18.0.2")));
        let again = gw.attach(&w13, "task1").await.unwrap();
        assert_eq!(again.ip, "172.18.0.2/16".parse().unwrap());
        assert_eq!(again.host_veth, host_veth);
        let second = gw.attach(&w22, "task2").await.unwrap();
        assert_eq!(second.ip, "172.18.0.3/16".parse().unwrap());
        let table = nft::list_table(None, GW_TABLE).await.unwrap().unwrap();
        assert!(table.contains("masquerade"), "{table}");
        // Detach frees the lowest address, which the next key gets.
        gw.detach("task1").await.unwrap();
        gw.detach("task1").await.unwrap();
        assert_eq!(gw.lease("task1"), None);
        let third = gw.attach(&w32, "task3").await.unwrap();
        assert_eq!(third.ip, "172.18.0.2/16".parse().unwrap());
    });
    let (ok, _) = nsenter(&w1, &["ip", "link", "show", "gw0"]);
    assert!(!ok, "gw0 still in w1 after detach");
    assert_eq!(fetch(&w2, "10.66.0.2:7100").unwrap(), "peer=10.66.0.1");
    assert_eq!(fetch(&w3, "10.66.0.2:7100").unwrap(), "peer=10.66.0.1");
    let state = std::fs::read_to_string(run.join("gwbridge.json")).unwrap();
    assert!(state.contains("task2") && state.contains("task3") && !state.contains("task1"));

    let run4 = run.clone();
    in_ns(&host, move || async move {
        GwBridge::remove(&run4).await.unwrap();
        GwBridge::remove(&run4).await.unwrap();
        assert_eq!(nft::list_table(None, GW_TABLE).await.unwrap(), None);
    });
    let (ok, _) = nsenter(&host, &["ip", "link", "show", GWBRIDGE]);
    assert!(!ok, "{GWBRIDGE} still there after remove");
    assert!(!run.join("gwbridge.json").exists());
}

/// Routing mesh: a published port on the host is DNATed to the ingress
/// sandbox (over the egress bridge), which DNATs round robin to two
/// backends on an overlay and masquerades (the backends have no route
/// back to the client). Reached from outside, from the host itself (its
/// address and 127.0.0.1), and from a task on the host's egress bridge
/// (hairpin); a port without backends is refused; tasks cannot reach the
/// host's loopback.
#[test]
fn routing_mesh_host_publish_to_ingress_sandbox() {
    let lab = Lab::new();
    let host = lab.ns("host");
    let outside = lab.ns("outside");
    let sandbox = lab.ns("ingress-sbx");
    let (b1, b2, task) = (lab.ns("b1"), lab.ns("b2"), lab.ns("task"));
    let run = lab.run_dir("h");
    // As on a host without br_netfilter: bridged frames skip conntrack, so
    // only the hairpin masquerade in shoal-gw brings a task's connection to
    // its own node's published port back through the host.
    if Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
        sh(
            &host,
            "echo 0 > /proc/sys/net/bridge/bridge-nf-call-iptables",
        );
    }
    veth_between(
        &host,
        "ul0",
        "10.66.0.1/24",
        &outside,
        "ul1",
        "10.66.0.2/24",
    );

    let (sb, b12, b22, t2) = (sandbox.clone(), b1.clone(), b2.clone(), task.clone());
    let sbx_ip = in_ns(&host, move || async move {
        let mut d = Driver::new(&run).await.unwrap();
        let gw = ip("10.55.0.1");
        d.reconcile(&Desired {
            networks: vec![(spec("ingress", "10.55.0.0/24", gw, 4402), vec![])],
        })
        .await
        .unwrap();
        d.attach_as(
            "ingress",
            &sb,
            "eth1",
            "10.55.0.2/24".parse().unwrap(),
            [0x02, 0x42, 10, 55, 0, 2],
            gw,
            false,
        )
        .await
        .unwrap();
        for (ns, last) in [(&b12, 3u8), (&b22, 4)] {
            d.attach(
                "ingress",
                ns,
                format!("10.55.0.{last}/24").parse().unwrap(),
                [0x02, 0x42, 10, 55, 0, last],
                gw,
            )
            .await
            .unwrap();
        }
        let mut g = GwBridge::ensure(&run, &GwSpec::default()).await.unwrap();
        let sbx = g.attach(&sb, "ingress-sbx").await.unwrap();
        g.attach(&t2, "task").await.unwrap();
        let publish = nft::host_publish_table(&[
            PortRule {
                proto: Proto::Tcp,
                port: 18080,
                backends: vec![Backend {
                    ip: sbx.ip.addr(),
                    port: 18080,
                }],
            },
            PortRule {
                proto: Proto::Tcp,
                port: 18081,
                backends: vec![],
            },
        ]);
        nft::apply_table(None, PUBLISH_TABLE, &publish)
            .await
            .unwrap();
        sbx.ip.addr()
    });
    assert_eq!(sbx_ip, ip("172.18.0.2"));
    nft::set_ip_forward(Some(&sandbox), true).unwrap();
    let ingress = nft::ingress_sandbox_table(
        &[PortRule {
            proto: Proto::Tcp,
            port: 18080,
            backends: vec![
                Backend {
                    ip: ip("10.55.0.3"),
                    port: 8000,
                },
                Backend {
                    ip: ip("10.55.0.4"),
                    port: 8000,
                },
            ],
        }],
        "eth1",
    );
    let sb2 = sandbox.clone();
    in_ns(&host, move || async move {
        nft::apply_table(Some(&sb2), INGRESS_TABLE, &ingress)
            .await
            .unwrap();
    });
    let _s1 = serve(&b1, "10.55.0.3:8000", |p| format!("b1 from {}", p.ip()));
    let _s2 = serve(&b2, "10.55.0.4:8000", |p| format!("b2 from {}", p.ip()));

    let mut seen = std::collections::BTreeSet::new();
    for i in 0..6 {
        let got = fetch(&outside, "10.66.0.1:18080")
            .unwrap_or_else(|e| panic!("outside, connection {i}: {e}"));
        // Masqueraded by the sandbox on its ingress device.
        assert!(got.ends_with(" from 10.55.0.2"), "{got}");
        seen.insert(got);
    }
    assert_eq!(seen.len(), 2, "both backends answer: {seen:?}");
    let got = fetch(&host, "10.66.0.1:18080").unwrap();
    assert!(got.starts_with('b'), "from the host itself: {got}");
    let got = fetch(&host, "127.0.0.1:18080").unwrap();
    assert!(got.starts_with('b'), "from the host, to localhost: {got}");
    let got = fetch(&task, "10.66.0.1:18080").unwrap();
    assert!(
        got.starts_with('b'),
        "from a task on the egress bridge: {got}"
    );
    assert_refused(&outside, "10.66.0.1:18081");
    assert_refused(&host, "10.66.0.1:18081");

    // route_localnet on the bridge must not open the host's loopback
    // services to tasks: a task (root in its namespace) routing 127.0.0.5
    // via its gateway is dropped (a local connection would answer within
    // the second).
    let _lo = serve(&host, "127.0.0.5:9101", |_| "host loopback".to_string());
    assert_eq!(fetch(&host, "127.0.0.5:9101").unwrap(), "host loopback");
    sh(
        &task,
        "echo 1 > /proc/sys/net/ipv4/conf/gw0/route_localnet; \
         echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet; \
         ip route del table local local 127.0.0.0/8 dev lo; \
         ip route add 127.0.0.5/32 via 172.18.0.1 dev gw0",
    );
    let r = fetch_within(&task, "127.0.0.5:9101", Duration::from_secs(1));
    assert!(r.is_err(), "a task reached the host's loopback: {r:?}");
}

/// The publish table takes only its own ports on local addresses: a
/// server on the host's address on another port, and connections from the
/// host to the published port number on another machine, are untouched.
#[test]
fn publish_table_leaves_other_ports_alone() {
    let lab = Lab::new();
    let host = lab.ns("host");
    let outside = lab.ns("outside");
    veth_between(
        &host,
        "ul0",
        "10.66.0.1/24",
        &outside,
        "ul1",
        "10.66.0.2/24",
    );
    let _local = serve(&host, "10.66.0.1:9100", |_| "host".to_string());
    let _out = serve(&outside, "10.66.0.2:18080", |_| "outside".to_string());
    let body = nft::host_publish_table(&[PortRule {
        proto: Proto::Tcp,
        port: 18080,
        backends: vec![Backend {
            ip: ip("172.18.0.2"),
            port: 18080,
        }],
    }]);
    let h2 = host.clone();
    in_ns(&host, move || async move {
        nft::apply_table(Some(&h2), PUBLISH_TABLE, &body)
            .await
            .unwrap();
    });
    assert_eq!(fetch(&outside, "10.66.0.1:9100").unwrap(), "host");
    // Not a local destination: the published port is not hijacked.
    assert_eq!(fetch(&host, "10.66.0.2:18080").unwrap(), "outside");
}
