//! Real-kernel tests (root): every namespace is made through the crate's own
//! API under a per-test temp dir, and a guard unmounts and removes all of
//! them, even when a test panics. No packet leaves namespaces made here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::future::Future;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use nix::sched::{setns, CloneFlags};
use shoal_netdriver::{
    bench_reconcile, create_netns, remove_netns, Desired, Driver, NetworkSpec, RemoteEndpoint,
};

/// Owns the temp dir; on drop removes every namespace made under it: the
/// drivers' network namespaces first, then the host/workload ones.
struct Lab {
    dir: tempfile::TempDir,
    made: Mutex<Vec<PathBuf>>,
}

impl Lab {
    fn new() -> Lab {
        Lab {
            dir: tempfile::tempdir().unwrap(),
            made: Mutex::new(Vec::new()),
        }
    }

    /// A namespace standing for a lab host or a workload sandbox.
    fn ns(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(format!("ns-{name}"));
        create_netns(&p).unwrap();
        self.made.lock().unwrap().push(p.clone());
        p
    }

    /// A daemon run dir.
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
                let netns = e.path().join("netns");
                if let Ok(inner) = std::fs::read_dir(&netns) {
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

/// Run `f` on a thread that has entered the namespace at `ns`, with its own
/// tokio runtime built there (so worker threads are in it too). Panics
/// propagate.
fn in_ns<T, F, Fut>(ns: &Path, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let ns = ns.to_path_buf();
    let r = std::thread::spawn(move || {
        let file = File::open(&ns).unwrap();
        setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f())
    })
    .join();
    match r {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Run a command in a namespace; returns (success, stdout+stderr).
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

fn mac(tag: u8, i: u32) -> [u8; 6] {
    let b = i.to_be_bytes();
    [0x02, tag, b[0], b[1], b[2], b[3]]
}

fn spec(id: &str, local: Ipv4Addr, mtu: Option<u32>) -> NetworkSpec {
    NetworkSpec {
        id: id.to_string(),
        vni: 4242,
        subnet: "10.99.0.0/16".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 99, 0, 1),
        mtu,
        local_vtep: local,
        port: 4789,
        encrypted: false,
    }
}

fn eps(n: u32) -> Vec<RemoteEndpoint> {
    (0..n)
        .map(|i| RemoteEndpoint {
            ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 99, 1, 0)) + i),
            mac: mac(0x5c, i),
            vtep: Ipv4Addr::new(198, 18, 0, 1 + (i % 50) as u8),
        })
        .collect()
}

fn count_lines(ns: &Path, args: &[&str], needle: &str) -> usize {
    let (ok, out) = nsenter(ns, args);
    assert!(ok, "{args:?}: {out}");
    out.lines().filter(|l| l.contains(needle)).count()
}

/// Two simulated hosts joined by a veth underlay (10.88.0.0/24, inside
/// namespaces made here only), one driver per host, one overlay with the
/// same VNI on both, a workload on each side: ping crosses VXLAN.
#[test]
fn two_hosts_ping_over_vxlan() {
    let lab = Lab::new();
    let (ha, hb) = (lab.ns("host-a"), lab.ns("host-b"));
    let (wa, wb) = (lab.ns("wl-a"), lab.ns("wl-b"));
    let hb2 = hb.clone();
    // Underlay: veth ul0 (in A) <-> ul1 (moved into B).
    in_ns(&ha, move || async move {
        let (conn, h, _) = rtnetlink::new_connection().unwrap();
        tokio::spawn(conn);
        h.link()
            .add(rtnetlink::LinkVeth::new("ul0", "ul1").build())
            .execute()
            .await
            .unwrap();
        let ul1 = h
            .link()
            .get()
            .match_name("ul1".to_string())
            .execute()
            .try_next()
            .await
            .unwrap()
            .unwrap();
        let f = File::open(&hb2).unwrap();
        h.link()
            .set(
                rtnetlink::LinkUnspec::new_with_index(ul1.header.index)
                    .setns_by_fd(f.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .unwrap();
    });
    sh(
        &ha,
        "ip link set lo up; ip addr add 10.88.0.1/24 dev ul0; ip link set ul0 up",
    );
    sh(
        &hb,
        "ip link set lo up; ip addr add 10.88.0.2/24 dev ul1; ip link set ul1 up",
    );

    let (mac_a, mac_b) = ([0x02, 0x42, 10, 99, 0, 2], [0x02, 0x42, 10, 99, 0, 3]);
    let (ip_a, ip_b) = (Ipv4Addr::new(10, 99, 0, 2), Ipv4Addr::new(10, 99, 0, 3));
    let gw = Ipv4Addr::new(10, 99, 0, 1);
    let (vtep_a, vtep_b) = (Ipv4Addr::new(10, 88, 0, 1), Ipv4Addr::new(10, 88, 0, 2));
    let mut sides = Vec::new();
    for (host, run, wl, local, ip, m, remote) in [
        (
            &ha,
            lab.run_dir("a"),
            &wa,
            vtep_a,
            ip_a,
            mac_a,
            RemoteEndpoint {
                ip: ip_b,
                mac: mac_b,
                vtep: vtep_b,
            },
        ),
        (
            &hb,
            lab.run_dir("b"),
            &wb,
            vtep_b,
            ip_b,
            mac_b,
            RemoteEndpoint {
                ip: ip_a,
                mac: mac_a,
                vtep: vtep_a,
            },
        ),
    ] {
        let (run2, wl2) = (run.clone(), wl.clone());
        let host_veth = in_ns(host, move || async move {
            let mut d = Driver::new(&run2).await.unwrap();
            // The agent passes the whole endpoint table, local one included.
            let local_ep = RemoteEndpoint {
                ip,
                mac: m,
                vtep: local,
            };
            let desired = Desired {
                networks: vec![(spec("ovl", local, None), vec![local_ep, remote])],
            };
            let r = d.reconcile(&desired).await.unwrap();
            assert_eq!(
                (r.networks_created, r.fdb_added, r.neigh_added),
                (1, 1, 1),
                "{r:?}"
            );
            d.attach("ovl", &wl2, format!("{ip}/16").parse().unwrap(), m, gw)
                .await
                .unwrap()
        });
        sides.push((host.clone(), run, wl.clone(), host_veth));
    }

    let netns_a = sides[0].1.join("netns/ovl");
    // Default MTU = underlay (veth, 1500) - 50, on vx0, br0 and the workload.
    let (_, link) = nsenter(&netns_a, &["ip", "-o", "link", "show", "vx0"]);
    assert!(link.contains("mtu 1450"), "{link}");
    let (_, eth0) = nsenter(&wa, &["ip", "-o", "link", "show", "eth0"]);
    assert!(
        eth0.contains("mtu 1450") && eth0.contains("02:42:0a:63:00:02"),
        "{eth0}"
    );
    // The VXLAN socket (UDP 4789 = 0x12B5) is in the host namespace, not the overlay one.
    let (_, udp_host) = nsenter(&ha, &["cat", "/proc/net/udp"]);
    assert!(
        udp_host.contains(":12B5"),
        "no VXLAN socket in the host ns:\n{udp_host}"
    );
    let (_, udp_ovl) = nsenter(&netns_a, &["cat", "/proc/net/udp"]);
    assert!(
        !udp_ovl.contains(":12B5"),
        "VXLAN socket in the overlay ns:\n{udp_ovl}"
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out) = nsenter(&wa, &["ping", "-c1", "-W1", "10.99.0.3"]);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "no ping across VXLAN: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, out) = nsenter(&wb, &["ping", "-c1", "-W1", "10.99.0.2"]);
    assert!(ok, "reverse ping: {out}");

    // Detach removes the pair; a second detach is a no-op.
    let (host, run, wl, host_veth) = sides[0].clone();
    in_ns(&host, move || async move {
        let mut d = Driver::new(&run).await.unwrap();
        d.detach("ovl", &host_veth).await.unwrap();
        d.detach("ovl", &host_veth).await.unwrap();
    });
    let (ok, _) = nsenter(&wl, &["ip", "link", "show", "eth0"]);
    assert!(!ok, "eth0 still in the workload after detach");
}

/// 1,000 endpoints: second reconcile is a no-op, hand-deleted entries come
/// back exactly, a restarted driver adopts without duplicates, the MTU is
/// on the link, removal unmounts.
#[test]
fn reconcile_is_idempotent_against_the_kernel() {
    let lab = Lab::new();
    let host = lab.ns("host");
    let run = lab.run_dir("h");
    let run2 = run.clone();
    let netns = run.join("netns/net1");
    let netns2 = netns.clone();
    in_ns(&host, move || async move {
        let run = run2;
        let netns = netns2;
        let local = Ipv4Addr::new(10, 77, 0, 1);
        // A stale file (crash between create and mount) is cleaned on start.
        std::fs::create_dir_all(run.join("netns")).unwrap();
        std::fs::write(run.join("netns/stale"), b"").unwrap();
        let mut d = Driver::new(&run).await.unwrap();
        assert!(!run.join("netns/stale").exists());
        assert!(d.networks().is_empty());

        let all = eps(1000);
        let desired = Desired {
            networks: vec![(spec("net1", local, Some(1400)), all.clone())],
        };
        let r = d.reconcile(&desired).await.unwrap();
        assert_eq!(
            (r.networks_created, r.fdb_added, r.neigh_added),
            (1, 1000, 1000),
            "{r:?}"
        );
        let r = d.reconcile(&desired).await.unwrap();
        assert!(r.is_noop(), "second reconcile not a no-op: {r:?}");
        assert_eq!(
            d.diff(&desired).await.unwrap(),
            vec![("net1".to_string(), vec![])]
        );

        // MTU from the spec is on the links.
        for dev in ["vx0", "br0"] {
            let (_, l) = nsenter(&netns, &["ip", "-o", "link", "show", dev]);
            assert!(l.contains("mtu 1400"), "{l}");
        }
        let (_, l) = nsenter(&netns, &["ip", "-d", "-o", "link", "show", "vx0"]);
        assert!(
            l.contains("vxlan id 4242")
                && l.contains("local 10.77.0.1")
                && l.contains("nolearning")
                && l.contains("proxy"),
            "{l}"
        );
        assert_eq!(
            count_lines(&netns, &["bridge", "fdb", "show", "dev", "vx0"], " dst "),
            1000
        );
        assert_eq!(
            count_lines(&netns, &["ip", "neigh", "show", "dev", "vx0"], "PERMANENT"),
            1000
        );

        // Hand-deleted FDB and neighbour entries come back, nothing else moves.
        let victim = all[17];
        let m = victim.mac;
        let mac_s = format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        );
        sh(
            &netns,
            &format!("bridge fdb del {mac_s} dev vx0 dst {} self", victim.vtep),
        );
        sh(&netns, &format!("ip neigh del {} dev vx0", all[400].ip));
        let diff = d.diff(&desired).await.unwrap();
        assert_eq!(diff[0].1.len(), 2, "{diff:?}");
        assert!(diff[0].1.iter().any(|l| l.contains(&mac_s)), "{diff:?}");
        let r = d.reconcile(&desired).await.unwrap();
        assert_eq!(
            (
                r.fdb_added,
                r.neigh_added,
                r.fdb_removed,
                r.neigh_removed,
                r.fdb_replaced,
                r.links_changed
            ),
            (1, 1, 0, 0, 0, 0),
            "{r:?}"
        );
        let (_, fdb) = nsenter(&netns, &["bridge", "fdb", "show", "dev", "vx0"]);
        assert!(
            fdb.lines().any(|l| l.contains(&mac_s)
                && l.contains(&victim.vtep.to_string())
                && l.contains("self")
                && l.contains("permanent")),
            "{fdb}"
        );

        // Restart: a new driver adopts the namespace and has nothing to do.
        drop(d);
        let mut d = Driver::new(&run).await.unwrap();
        assert_eq!(d.networks(), vec!["net1".to_string()]);
        let r = d.reconcile(&desired).await.unwrap();
        assert!(r.is_noop(), "restart did not converge silently: {r:?}");
        assert_eq!(
            count_lines(&netns, &["bridge", "fdb", "show", "dev", "vx0"], " dst "),
            1000
        );

        // Churn: 100 leave, 10 move to another VTEP, MTU changes.
        let mut changed: Vec<RemoteEndpoint> = all[100..].to_vec();
        for e in changed.iter_mut().take(10) {
            e.vtep = Ipv4Addr::new(198, 18, 1, 1);
        }
        let desired2 = Desired {
            networks: vec![(spec("net1", local, Some(1300)), changed)],
        };
        let r = d.reconcile(&desired2).await.unwrap();
        assert_eq!(
            (
                r.fdb_removed,
                r.neigh_removed,
                r.fdb_replaced,
                r.fdb_added,
                r.neigh_added,
                r.links_changed
            ),
            (100, 100, 10, 0, 0, 2),
            "{r:?}"
        );
        assert!(d.reconcile(&desired2).await.unwrap().is_noop());
        let (_, l) = nsenter(&netns, &["ip", "-o", "link", "show", "vx0"]);
        assert!(l.contains("mtu 1300"), "{l}");

        // Not desired any more: namespace removed and unmounted.
        let r = d.reconcile(&Desired::default()).await.unwrap();
        assert_eq!(r.networks_removed, 1);
        assert!(!netns.exists());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(netns.to_str().unwrap()), "still mounted");
        assert!(d.networks().is_empty());
    });
}

#[test]
fn bad_specs_name_the_network_and_leave_others_alone() {
    let lab = Lab::new();
    let host = lab.ns("host");
    let run = lab.run_dir("h");
    in_ns(&host, move || async move {
        let local = Ipv4Addr::new(10, 77, 0, 1);
        let mut d = Driver::new(&run).await.unwrap();
        let mut bad = spec("bad", local, None);
        bad.gateway = Ipv4Addr::new(192, 168, 1, 1);
        let mut other = spec("good", local, None);
        other.vni = 4243;
        let desired = Desired {
            networks: vec![(bad, vec![]), (other, eps(3))],
        };
        let e = d.reconcile(&desired).await.unwrap_err();
        assert!(e.to_string().contains("network bad"), "{e}");
        assert_eq!(d.networks(), vec!["good".to_string()]);
        // Default MTU without an interface holding the local VTEP: 1450.
        let (_, l) = nsenter(
            &run.join("netns/good"),
            &["ip", "-o", "link", "show", "vx0"],
        );
        assert!(l.contains("mtu 1450"), "{l}");
        let e = d
            .attach(
                "nope",
                Path::new("/nonexistent"),
                "10.99.0.9/16".parse().unwrap(),
                mac(1, 1),
                Ipv4Addr::new(10, 99, 0, 1),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        // A namespace unmounted behind the driver's back is rebuilt.
        remove_netns(&run.join("netns/good")).unwrap();
        let only_good = Desired {
            networks: desired.networks[1..].to_vec(),
        };
        let r = d.reconcile(&only_good).await.unwrap();
        assert_eq!(
            (r.networks_created, r.fdb_added, r.neigh_added),
            (1, 3, 3),
            "{r:?}"
        );
        assert!(d.reconcile(&only_good).await.unwrap().is_noop());
        d.reconcile(&Desired::default()).await.unwrap();
    });
}

#[test]
fn bench_reconcile_small() {
    let lab = Lab::new();
    let host = lab.ns("bench");
    let run = lab.run_dir("bench");
    let run2 = run.clone();
    let r = in_ns(&host, move || async move {
        bench_reconcile(&run2, 1000).await.unwrap()
    });
    assert_eq!(r.entries, 2000);
    assert!(std::fs::read_dir(run.join("netns"))
        .unwrap()
        .next()
        .is_none());
}

/// `cargo test -p shoal-netdriver --release -- --ignored bench_reconcile_10k --nocapture`
#[test]
#[ignore]
fn bench_reconcile_10k() {
    let lab = Lab::new();
    let host = lab.ns("bench");
    let run = lab.run_dir("bench");
    let r = in_ns(&host, move || async move {
        bench_reconcile(&run, 10_000).await.unwrap()
    });
    println!(
        "bench reconcile: {} endpoints, {} entries: add {:.0} entries/s ({:.3} s), delete {:.0} entries/s ({:.3} s)",
        r.endpoints, r.entries, r.add_per_sec, r.add_secs, r.del_per_sec, r.del_secs
    );
}
