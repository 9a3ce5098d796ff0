//! Encrypted overlays (`--opt encrypted`) end to end on real kernels:
//! workloads on two lab hosts talk through the userspace data path
//! (TAP `dp0` -> AES-256-GCM -> UDP 4790) and the underlay never carries
//! their bytes in clear. The traffic is made by this test inside the
//! workloads' own network namespaces and captured with AF_PACKET in the
//! lab's underlay namespace. Needs root, iproute2 and the built `shoal`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_lab::Lab;
use shoal_tests::{capture, cli, exec, run_sleeper, scrape, udp, wait_for, wait_pings};

const CONFIG: &str =
    "heartbeat_ms = 500\ngossip_profile = \"fast\"\nmetrics_addr = \"127.0.0.1:9323\"\n";
/// The encrypted data path's port (data-path port 4789 + 1).
const ENCRYPTED_PORT: u16 = 4790;

/// Three hosts, one manager; `app` plain and `secret` encrypted.
fn encrypted_lab() -> Lab {
    let lab = Lab::builder()
        .nodes(3)
        .daemon_config(CONFIG)
        .start()
        .unwrap();
    lab.init_swarm(1).unwrap();
    for (name, subnet, extra) in [
        ("app", "10.0.9.0/24", None),
        ("secret", "10.0.10.0/24", Some("encrypted")),
    ] {
        let mut args = vec!["network", "create", "--attachable", "--subnet", subnet];
        if let Some(o) = extra {
            args.extend(["--opt", o]);
        }
        args.push(name);
        cli(&lab, 1, &args).unwrap();
    }
    wait_for("gossip everywhere", Duration::from_secs(20), || {
        (1..=3).all(|h| cli(&lab, h, &["gossip", "members"]).is_ok())
    });
    lab
}

/// Sleepers s1 on h1 and s2 on h2 on `secret`, once s1 pings s2.
fn secret_pair(lab: &Lab) -> (Value, Value) {
    let (s1, s2) = (
        run_sleeper(lab, 1, "secret", "s1"),
        run_sleeper(lab, 2, "secret", "s2"),
    );
    wait_pings(lab, 1, &s1, &ip(&s2).to_string());
    (s1, s2)
}

/// Run `nft` commands (one per string, words split on spaces) on `host`.
fn nft(lab: &Lab, host: usize, cmds: &[String]) {
    for cmd in cmds {
        let argv: Vec<&str> = std::iter::once("nft").chain(cmd.split(' ')).collect();
        let (ok, out) = exec(lab, host, &argv);
        assert!(ok, "nft {cmd}: {out}");
    }
}

fn pid(w: &Value) -> u32 {
    w["pid"].as_u64().unwrap() as u32
}

fn ip(w: &Value) -> std::net::Ipv4Addr {
    w["endpoint"]["ip"].as_str().unwrap().parse().unwrap()
}

/// Runs `f` on a thread inside the network namespace of process `pid`.
fn in_ns_of<T: Send + 'static>(
    pid: u32,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
}

/// A UDP receiver on `port` in workload `w`'s namespace, bound before
/// this returns: `on` sees every datagram into `acc`, until `stop` is set
/// and then a second passed without one; the thread returns `acc`.
fn receive_udp<T: Send + 'static>(
    w: &Value,
    port: u16,
    stop: Arc<AtomicBool>,
    mut acc: T,
    mut on: impl FnMut(&mut T, &[u8]) + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let at = SocketAddr::new(ip(w).into(), port);
    let (tx, ready) = std::sync::mpsc::channel();
    let t = in_ns_of(pid(w), move || {
        let s = UdpSocket::bind(at).unwrap();
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBuf, &(8 << 20)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        let mut quiet_since: Option<Instant> = None;
        loop {
            match s.recv_from(&mut buf) {
                Ok((n, _)) => {
                    on(&mut acc, &buf[..n]);
                    quiet_since = None;
                }
                Err(_) if stop.load(Ordering::Relaxed) => {
                    let q = *quiet_since.get_or_insert_with(Instant::now);
                    if q.elapsed() > Duration::from_secs(1) {
                        return acc;
                    }
                }
                Err(_) => {}
            }
        }
    });
    ready.recv().unwrap();
    t
}

/// The sequence number of a numbered datagram (8 bytes, big-endian).
fn seq(d: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(d.try_into().ok()?))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The canary: 16 random bytes, repeated to fill every payload.
fn canary() -> [u8; 16] {
    let mut c = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut c)
        .unwrap();
    c
}

fn filled(canary: &[u8; 16], len: usize) -> Vec<u8> {
    canary.iter().copied().cycle().take(len).collect()
}

/// `count` UDP datagrams full of the canary from `from`'s namespace to
/// `to:7000`, each echoed by `to`'s namespace (resent until echoed, so
/// every one of them crosses both ways). Returns how many were echoed.
fn udp_exchange(from: &Value, to: &Value, canary: [u8; 16], count: usize) -> usize {
    let dst = SocketAddr::new(ip(to).into(), 7000);
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let echo = in_ns_of(pid(to), move || {
        let s = UdpSocket::bind(dst).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 2048];
        while !s2.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], peer);
            }
        }
    });
    let sent = in_ns_of(pid(from), move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut echoed = 0;
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..count {
            let mut d = filled(&canary, 1000);
            d[..8].copy_from_slice(&(i as u64).to_be_bytes());
            while Instant::now() < deadline {
                s.send_to(&d, dst).unwrap();
                match s.recv_from(&mut buf) {
                    Ok((n, _)) if buf[..n] == d[..] => {
                        echoed += 1;
                        break;
                    }
                    _ => continue,
                }
            }
        }
        echoed
    })
    .join()
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    echo.join().unwrap();
    sent
}

/// `bytes` of canary over one TCP connection from `from` to `to:7001`;
/// (bytes received, whether they equal what was sent).
fn tcp_transfer(from: &Value, to: &Value, canary: [u8; 16], bytes: usize) -> (usize, bool) {
    let dst = SocketAddr::new(ip(to).into(), 7001);
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = in_ns_of(pid(to), move || {
        let l = TcpListener::bind(dst).unwrap();
        tx.send(()).unwrap();
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        got
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let data = filled(&canary, bytes);
    let expect = data.clone();
    in_ns_of(pid(from), move || {
        let mut c = TcpStream::connect_timeout(&dst, Duration::from_secs(10)).unwrap();
        c.write_all(&data).unwrap();
    })
    .join()
    .unwrap();
    let got = sink.join().unwrap();
    (got.len(), got == expect)
}

#[test]
fn encrypted_traffic_flows_and_the_underlay_never_sees_it_in_clear() {
    let lab = encrypted_lab();
    let (s1, s2) = (
        run_sleeper(&lab, 1, "secret", "s1"),
        run_sleeper(&lab, 2, "secret", "s2"),
    );
    let (p1, p2) = (
        run_sleeper(&lab, 1, "app", "p1"),
        run_sleeper(&lab, 2, "app", "p2"),
    );
    wait_pings(&lab, 1, &s1, &ip(&s2).to_string());
    wait_pings(&lab, 1, &p1, &ip(&p2).to_string());

    let underlay = shoal_lab::names::underlay_ns(&lab.prefix());
    let stop = Arc::new(AtomicBool::new(false));
    let cap = capture(underlay, stop.clone());
    std::thread::sleep(Duration::from_millis(200)); // the socket is open
    let secret = canary();
    let echoed = udp_exchange(&s1, &s2, secret, 1000);
    let (got, same) = tcp_transfer(&s1, &s2, secret, 10 << 20);
    let plain = canary();
    let control = udp_exchange(&p1, &p2, plain, 20);
    stop.store(true, Ordering::Relaxed);
    let frames = cap.join().unwrap();

    assert_eq!(
        echoed, 1000,
        "UDP datagrams echoed over the encrypted network"
    );
    assert_eq!(
        (got, same),
        (10 << 20, true),
        "the TCP stream arrived intact"
    );
    assert_eq!(control, 20, "UDP datagrams echoed over the plain network");
    let sealed = frames
        .iter()
        .filter(|f| udp(f).is_some_and(|(_, d, _)| d == ENCRYPTED_PORT))
        .count();
    assert!(
        sealed >= 2000,
        "only {sealed} datagrams to UDP {ENCRYPTED_PORT} on the underlay"
    );
    let leaked = frames.iter().filter(|f| contains(f, &secret)).count();
    assert_eq!(
        leaked, 0,
        "the encrypted network's canary crossed the underlay in clear"
    );
    let vni = |net: &str| -> u32 {
        let v: Value =
            serde_json::from_str(&cli(&lab, 1, &["network", "inspect", net]).unwrap()).unwrap();
        v[0]["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let secret_vni = vni("secret");
    let vxlan_of_secret = frames
        .iter()
        .filter_map(|f| udp(f))
        .filter(|(_, d, p)| *d == 4789 && p.len() >= 8)
        .filter(|(_, _, p)| u32::from_be_bytes([0, p[4], p[5], p[6]]) == secret_vni)
        .count();
    assert_eq!(vxlan_of_secret, 0, "VXLAN frames of the encrypted network");
    // The control: the plain network's canary is there for anyone to read.
    let seen = frames.iter().filter(|f| contains(f, &plain)).count();
    assert!(
        seen >= 20,
        "the plain network's canary was not captured ({seen})"
    );
}

/// One data-path counter of `host` toward peer node `peer`.
fn counter(lab: &Lab, host: usize, name: &str, peer: &str) -> f64 {
    let key = format!("shoal_dataplane_{name}_total{{peer=\"{peer}\"}}");
    scrape(lab, host)
        .unwrap_or_default()
        .get(&key)
        .copied()
        .unwrap_or(0.0)
}

/// Sends `datagrams` to `to` from a UDP socket bound to `from` inside lab
/// host `host`'s namespace.
fn inject(
    lab: &Lab,
    host: usize,
    from: std::net::Ipv4Addr,
    to: SocketAddr,
    datagrams: Vec<Vec<u8>>,
) {
    let ns = lab.host(host).unwrap().ns;
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let s = UdpSocket::bind(SocketAddr::new(from.into(), 0)).unwrap();
        for d in datagrams {
            s.send_to(&d, to).unwrap();
        }
    })
    .join()
    .unwrap();
}

#[test]
fn tampered_replayed_and_foreign_datagrams_are_dropped_and_counted() {
    let lab = encrypted_lab();
    let (s1, s2) = secret_pair(&lab);
    let (h1, h2, h3) = (
        lab.host(1).unwrap(),
        lab.host(2).unwrap(),
        lab.host(3).unwrap(),
    );
    let n1 = shoal_tests::node_id(&lab, 1);

    // s2 counts every datagram that reaches its port 7000.
    let dst = SocketAddr::new(ip(&s2).into(), 7000);
    let stop = Arc::new(AtomicBool::new(false));
    let listener = receive_udp(&s2, 7000, stop.clone(), 0, |n, _| *n += 1);

    // One genuine datagram, captured on the underlay while h2 drops it
    // (so that its counter is still unseen there).
    nft(
        &lab,
        2,
        &[
            "add table inet shoal_test_drop".into(),
            "add chain inet shoal_test_drop input { type filter hook input priority -10 ; }".into(),
            "add rule inet shoal_test_drop input udp dport 4790 drop".into(),
        ],
    );
    let cap_stop = Arc::new(AtomicBool::new(false));
    let cap = capture(
        shoal_lab::names::underlay_ns(&lab.prefix()),
        cap_stop.clone(),
    );
    std::thread::sleep(Duration::from_millis(200));
    let n2 = shoal_tests::node_id(&lab, 2);
    let sent_before = counter(&lab, 1, "tx_packets", &n2);
    let secret = canary();
    in_ns_of(pid(&s1), move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(&filled(&secret, 1000), dst).unwrap();
    })
    .join()
    .unwrap();
    wait_for("h1 sealed the datagram", Duration::from_secs(10), || {
        counter(&lab, 1, "tx_packets", &n2) > sent_before
    });
    std::thread::sleep(Duration::from_millis(200)); // it crossed the bridge
    cap_stop.store(true, Ordering::Relaxed);
    nft(&lab, 2, &["delete table inet shoal_test_drop".into()]);
    let sealed = cap
        .join()
        .unwrap()
        .iter()
        .filter_map(|f| udp(f).map(|(_, d, p)| (d, p.to_vec())))
        .filter(|(d, p)| *d == ENCRYPTED_PORT && p.len() == 36 + 10 + 14 + 20 + 8 + 1000)
        .map(|(_, p)| p)
        .next()
        .expect("the sealed datagram on the underlay");
    assert!(
        !contains(&sealed, &secret),
        "the canary is in clear in the datagram"
    );
    let delivered = counter(&lab, 2, "rx_packets", &n1);

    let flip = |i: usize| {
        let mut d = sealed.clone();
        d[i] ^= 0x01;
        d
    };
    let to = SocketAddr::new(h2.addr.into(), ENCRYPTED_PORT);
    // In this order: the forgeries first (their counter is unseen, so
    // they reach the authentication check), then the genuine datagram,
    // then its replay.
    inject(
        &lab,
        1,
        h1.addr,
        to,
        vec![
            flip(60),               // ciphertext
            flip(sealed.len() - 1), // tag
            flip(15),               // header (counter)
            sealed.clone(),         // genuine: delivered once
            sealed.clone(),         // replay
            sealed[..30].to_vec(),  // truncated
            {
                let mut d = sealed.clone(); // a key id nobody has
                d[4] ^= 0xff;
                d
            },
        ],
    );
    // h3 is a member, but no peer of h2 on this network.
    inject(&lab, 3, h3.addr, to, vec![sealed.clone()]);

    for (name, want) in [
        ("replays", 1.0),
        ("auth_failures", 3.0),
        ("malformed", 1.0),
        ("unknown_key", 1.0),
    ] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while counter(&lab, 2, name, &n1) != want {
            assert!(
                Instant::now() < deadline,
                "want {name} = {want} on h2 for h1 ({n1}): {:#?}",
                scrape(&lab, 2)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    wait_for("unknown_peer on h2", Duration::from_secs(10), || {
        scrape(&lab, 2)
            .and_then(|m| m.get("shoal_dataplane_unknown_peer_total").copied())
            .is_some_and(|v| v >= 1.0)
    });
    assert_eq!(
        counter(&lab, 2, "rx_packets", &n1),
        delivered + 1.0,
        "only the genuine datagram is delivered, once"
    );
    stop.store(true, Ordering::Relaxed);
    assert_eq!(listener.join().unwrap(), 1, "s2 got something extra");
    // The counters are in `network inspect --verbose` too (published at
    // most every 10 s), with the mode and the key ids.
    let ids = |v: &Value| v["KeyIds"].as_array().map(Vec::len).unwrap_or(0);
    wait_for(
        "counters in network inspect --verbose",
        Duration::from_secs(30),
        || {
            let v: Value = serde_json::from_str(
                &cli(&lab, 1, &["network", "inspect", "--verbose", "secret"]).unwrap(),
            )
            .unwrap();
            let e = &v[0]["Nodes"][&h2.name]["Encryption"];
            v[0]["Encryption"]["Mode"] == "userspace"
                && ids(&v[0]["Encryption"]) >= 1
                && e["Peers"].as_array().is_some_and(|p| {
                    p.iter()
                        .any(|p| p["Node"] == n1.as_str() && p["Replays"] == 1)
                })
        },
    );
}

/// This host's data-plane key ids (`info`), newest first.
fn dataplane_keys(lab: &Lab, host: usize) -> Vec<u64> {
    shoal_tests::info(lab, host)["swarm"]["dataplane_keys"]
        .as_array()
        .map(|ks| ks.iter().filter_map(|k| k["id"].as_u64()).collect())
        .unwrap_or_default()
}

/// Cut (or heal) host `host`'s control traffic with the manager at
/// `manager` (2377 both ways: its session and node calls); gossip and the
/// data path stay up.
fn cut_session(lab: &Lab, host: usize, manager: std::net::Ipv4Addr, cut: bool) {
    let rules: Vec<String> = if cut {
        vec![
            "add table inet shoal_test_cut".into(),
            "add chain inet shoal_test_cut output { type filter hook output priority -10 ; }"
                .into(),
            format!("add rule inet shoal_test_cut output ip daddr {manager} udp dport 2377 drop"),
            format!("add rule inet shoal_test_cut output ip daddr {manager} tcp dport 2377 drop"),
            "add chain inet shoal_test_cut input { type filter hook input priority -10 ; }".into(),
            format!("add rule inet shoal_test_cut input ip saddr {manager} udp sport 2377 drop"),
            format!("add rule inet shoal_test_cut input ip saddr {manager} tcp sport 2377 drop"),
        ]
    } else {
        vec!["delete table inet shoal_test_cut".into()]
    };
    nft(lab, host, &rules);
}

#[test]
fn key_rotations_lose_nothing_even_with_a_session_cut() {
    use std::collections::hash_map::DefaultHasher;
    use std::hash::Hasher;
    let lab = encrypted_lab();
    let (s1, s2) = secret_pair(&lab);
    let (n1, n2) = (shoal_tests::node_id(&lab, 1), shoal_tests::node_id(&lab, 2));
    let bad = |lab: &Lab| -> f64 {
        ["auth_failures", "unknown_key", "no_common_key"]
            .iter()
            .map(|c| counter(lab, 1, c, &n2) + counter(lab, 2, c, &n1))
            .sum()
    };
    let bad_before = bad(&lab);
    let before = dataplane_keys(&lab, 1);
    assert!(!before.is_empty(), "no data-plane keys on h1");

    // Numbered UDP at 2000 datagrams/s, s1 -> s2.
    let stop = Arc::new(AtomicBool::new(false));
    let udp_to = SocketAddr::new(ip(&s2).into(), 7002);
    let receiver = receive_udp(
        &s2,
        7002,
        stop.clone(),
        std::collections::BTreeSet::new(),
        |seen, d| {
            seen.extend(seq(d));
        },
    );
    let s_stop = stop.clone();
    let sender = in_ns_of(pid(&s1), move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let start = Instant::now();
        let mut i = 0u64;
        while !s_stop.load(Ordering::Relaxed) {
            let due = start + Duration::from_micros(500 * i);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            s.send_to(&i.to_be_bytes(), udp_to).unwrap();
            i += 1;
        }
        i
    });
    // A hashed TCP stream beside it, s1 -> s2, 8 MB/s.
    let tcp_to = SocketAddr::new(ip(&s2).into(), 7003);
    let (tx, ready) = std::sync::mpsc::channel();
    let sink = in_ns_of(pid(&s2), move || {
        let l = TcpListener::bind(tcp_to).unwrap();
        tx.send(()).unwrap();
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let (mut h, mut n, mut buf) = (DefaultHasher::new(), 0usize, vec![0u8; 65536]);
        loop {
            let k = c.read(&mut buf).unwrap();
            if k == 0 {
                return (n, h.finish());
            }
            h.write(&buf[..k]);
            n += k;
        }
    });
    ready.recv().unwrap();
    let t_stop = stop.clone();
    let source = in_ns_of(pid(&s1), move || {
        let mut c = TcpStream::connect_timeout(&tcp_to, Duration::from_secs(10)).unwrap();
        let chunk: Vec<u8> = (0..65536u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let (mut h, mut n, start) = (DefaultHasher::new(), 0usize, Instant::now());
        while !t_stop.load(Ordering::Relaxed) {
            let due = start + Duration::from_micros(8 * n as u64 / 64); // 8 MB/s
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            c.write_all(&chunk).unwrap();
            h.write(&chunk);
            n += chunk.len();
        }
        (n, h.finish())
    });

    // Four rotations 3 s apart; during the third, h2 cannot reach the
    // manager, so it learns that key only after the cut heals.
    let manager = lab.host(1).unwrap().addr;
    for round in 1..=4 {
        if round == 3 {
            cut_session(&lab, 2, manager, true);
        }
        cli(&lab, 1, &["swarm", "rotate-keys"]).unwrap();
        std::thread::sleep(Duration::from_secs(3));
        if round == 3 {
            assert_ne!(
                dataplane_keys(&lab, 2).first(),
                dataplane_keys(&lab, 1).first(),
                "the cut did not keep the new key from h2"
            );
            cut_session(&lab, 2, manager, false);
        }
        let newest = dataplane_keys(&lab, 1)[0];
        wait_for(
            &format!("h2 holds the key of rotation {round}"),
            Duration::from_secs(60),
            || dataplane_keys(&lab, 2).first() == Some(&newest),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    let (sent_bytes, sent_hash) = source.join().unwrap();
    let seen = receiver.join().unwrap();
    let (got_bytes, got_hash) = sink.join().unwrap();

    let after = dataplane_keys(&lab, 1);
    assert!(
        after.iter().all(|k| !before.contains(k)),
        "the ring was not replaced: {before:?} -> {after:?}"
    );
    let missing: Vec<u64> = (0..sent).filter(|i| !seen.contains(i)).take(20).collect();
    assert!(
        missing.is_empty(),
        "{} of {sent} datagrams lost across the rotations, first: {missing:?}",
        sent as usize - seen.len()
    );
    assert!(sent > 20_000, "only {sent} datagrams sent");
    assert_eq!(
        (got_bytes, got_hash),
        (sent_bytes, sent_hash),
        "the TCP stream differs"
    );
    assert_eq!(
        bad(&lab),
        bad_before,
        "auth failures, unknown keys or unsendable frames"
    );
}

#[test]
fn services_resolve_balance_and_publish_over_encrypted_networks() {
    let lab = Lab::builder()
        .nodes(3)
        .daemon_config(CONFIG)
        .start()
        .unwrap();
    lab.init_swarm(1).unwrap();
    // The routing mesh itself encrypted: ingress replaced by an encrypted one.
    cli(&lab, 1, &["network", "rm", "-f", "ingress"]).unwrap();
    for args in [
        &[
            "--ingress",
            "--opt",
            "encrypted",
            "--subnet",
            "10.0.20.0/24",
            "ingress",
        ][..],
        &["--opt", "encrypted", "--subnet", "10.0.21.0/24", "secret"][..],
    ] {
        let mut a = vec!["network", "create"];
        a.extend_from_slice(args);
        cli(&lab, 1, &a).unwrap();
    }
    wait_for("gossip everywhere", Duration::from_secs(20), || {
        (1..=3).all(|h| cli(&lab, h, &["gossip", "members"]).is_ok())
    });
    let stop = Arc::new(AtomicBool::new(false));
    let cap = capture(shoal_lab::names::underlay_ns(&lab.prefix()), stop.clone());
    shoal_tests::create_echo(
        &lab,
        "web",
        &["--replicas", "3", "--network", "secret", "-p", "8080:80"],
    )
    .unwrap();
    wait_for("3 running tasks", Duration::from_secs(60), || {
        shoal_tests::json(&lab, 1, &["service", "ps", "web"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["state"] == "running")
            .count()
            == 3
    });
    // The routing mesh on every host, balanced over the tasks.
    let http = |host: usize, url: &str| {
        let (ok, out) = exec(&lab, host, &["curl", "-s", "--max-time", "2", url]);
        ok.then(|| out.trim().to_string())
    };
    for h in 1..=3 {
        let url = format!("http://{}:8080/", lab.host(h).unwrap().addr);
        wait_for(
            &format!("h{h}:8080 answers"),
            Duration::from_secs(30),
            || http(h, &url).is_some_and(|b| b.starts_with("web.")),
        );
    }
    let url1 = format!("http://{}:8080/", lab.host(1).unwrap().addr);
    let answers: std::collections::BTreeSet<String> =
        (0..12).filter_map(|_| http(2, &url1)).collect();
    assert!(
        answers.len() > 1,
        "the mesh balances over tasks: {answers:?}"
    );
    // DNS and the VIP from inside a task, across nodes.
    let task = shoal_tests::json(&lab, 1, &["ps"])
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["task"].is_string())
        .map(|w| w["pid"].as_u64().unwrap().to_string())
        .expect("a task on h1");
    let in_task = |argv: &[&str]| {
        let mut a = vec!["nsenter", "-t", &task, "-n", "-m", "--"];
        a.extend_from_slice(argv);
        exec(&lab, 1, &a)
    };
    let (ok, out) = in_task(&["getent", "ahostsv4", "tasks.web"]);
    let ips: std::collections::BTreeSet<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(ok && ips.len() == 3, "tasks.web -> 3 IPs: {out}");
    let over_vip: std::collections::BTreeSet<String> = (0..12)
        .filter_map(|_| {
            let (ok, out) = in_task(&["curl", "-s", "--max-time", "3", "http://web/"]);
            ok.then(|| out.trim().to_string())
        })
        .collect();
    assert!(
        over_vip.len() > 1,
        "the VIP balances over tasks: {over_vip:?}"
    );
    stop.store(true, Ordering::Relaxed);
    let frames = cap.join().unwrap();
    let sealed = frames
        .iter()
        .filter(|f| udp(f).is_some_and(|(_, d, _)| d == ENCRYPTED_PORT))
        .count();
    let vxlan = frames
        .iter()
        .filter(|f| udp(f).is_some_and(|(_, d, _)| d == 4789))
        .count();
    assert!(sealed > 0, "no sealed datagrams on the underlay");
    assert_eq!(
        vxlan, 0,
        "VXLAN frames on the underlay, though every overlay is encrypted"
    );
}

#[test]
fn a_daemon_restart_pauses_encrypted_traffic_briefly_and_old_datagrams_stay_dead() {
    let lab = encrypted_lab();
    let (s1, s2) = secret_pair(&lab);
    let (h1, h2) = (lab.host(1).unwrap(), lab.host(2).unwrap());
    let n1 = shoal_tests::node_id(&lab, 1);
    let epoch = |lab: &Lab| scrape(lab, 1).and_then(|m| m.get("shoal_dataplane_epoch").copied());
    let epoch_before = epoch(&lab).expect("h1's data path epoch");

    // Numbered UDP at 1000/s from s1 to s2, each arrival timed; the
    // capture keeps one sealed datagram of h1's current epoch.
    let stop = Arc::new(AtomicBool::new(false));
    let cap_stop = Arc::new(AtomicBool::new(false));
    let cap = capture(
        shoal_lab::names::underlay_ns(&lab.prefix()),
        cap_stop.clone(),
    );
    std::thread::sleep(Duration::from_millis(200));
    let to = SocketAddr::new(ip(&s2).into(), 7004);
    let receiver = receive_udp(&s2, 7004, stop.clone(), Vec::new(), |arrivals, d| {
        if let Some(i) = seq(d) {
            arrivals.push((i, Instant::now()));
        }
    });
    let s_stop = stop.clone();
    let sender = in_ns_of(pid(&s1), move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let start = Instant::now();
        let mut i = 0u64;
        while !s_stop.load(Ordering::Relaxed) {
            let due = start + Duration::from_millis(i);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let _ = s.send_to(&i.to_be_bytes(), to);
            i += 1;
        }
    });
    let rx = |lab: &Lab| counter(lab, 2, "rx_packets", &n1);
    let flowing = rx(&lab);
    wait_for(
        "traffic before the restart",
        Duration::from_secs(10),
        || rx(&lab) > flowing + 100.0,
    );
    cap_stop.store(true, Ordering::Relaxed);
    let old = cap
        .join()
        .unwrap()
        .iter()
        .filter_map(|f| udp(f).map(|(_, d, p)| (d, p.to_vec())))
        .find(|(d, p)| *d == ENCRYPTED_PORT && p.len() == 36 + 10 + 14 + 20 + 8 + 8)
        .map(|(_, p)| p)
        .expect("a sealed datagram of the stream");

    lab.restart(1).unwrap();
    let before_restart = rx(&lab);
    shoal_tests::wait_until(
        "encrypted traffic after the restart",
        Duration::from_secs(60),
        || (rx(&lab) > before_restart + 100.0).then_some(()),
    );
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let arrivals = receiver.join().unwrap();
    let pause = arrivals
        .windows(2)
        .map(|w| w[1].1.duration_since(w[0].1))
        .max()
        .unwrap_or_default();
    // Reported, not asserted (a timing): the README quotes it.
    eprintln!("encrypted traffic paused {pause:?} over h1's daemon restart");
    assert!(
        shoal_tests::json(&lab, 1, &["ps"])
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["name"] == "s1" && w["pid"].as_u64() == Some(u64::from(pid(&s1)))),
        "s1 did not survive the restart"
    );
    let epoch_after = epoch(&lab).expect("h1's data path epoch after the restart");
    assert!(
        epoch_after > epoch_before,
        "epoch {epoch_before} -> {epoch_after}"
    );
    // A datagram of h1's previous start, replayed now: stale, not delivered.
    let stale = counter(&lab, 2, "stale_epoch", &n1);
    inject(
        &lab,
        1,
        h1.addr,
        SocketAddr::new(h2.addr.into(), ENCRYPTED_PORT),
        vec![old],
    );
    wait_for(
        "the old datagram counted stale",
        Duration::from_secs(10),
        || counter(&lab, 2, "stale_epoch", &n1) == stale + 1.0,
    );
}

#[test]
fn a_node_cut_off_for_two_rotations_cannot_read_the_others_and_recovers() {
    let lab = encrypted_lab();
    let (s1, s2) = secret_pair(&lab);
    let n2 = shoal_tests::node_id(&lab, 2);
    let manager = lab.host(1).unwrap().addr;
    let held = dataplane_keys(&lab, 2);
    cut_session(&lab, 2, manager, true);
    for _ in 0..2 {
        cli(&lab, 1, &["swarm", "rotate-keys"]).unwrap();
    }
    assert_eq!(dataplane_keys(&lab, 2), held, "h2 got keys through the cut");
    // h1 now holds no key h2 may be sent: nothing of s1's reaches s2, and
    // h1 counts what it could not send.
    let refused = counter(&lab, 1, "no_common_key", &n2);
    let dst = SocketAddr::new(ip(&s2).into(), 7005);
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = receive_udp(&s2, 7005, stop.clone(), 0u64, |n, _| *n += 1);
    let send = |n: usize| {
        in_ns_of(pid(&s1), move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            for i in 0..n {
                let _ = s.send_to(&(i as u64).to_be_bytes(), dst);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
        .join()
        .unwrap()
    };
    // h1 must have the new ring and h2's (stale) advertisement first.
    let newest = dataplane_keys(&lab, 1)[0];
    wait_for("h1 holds the newest key", Duration::from_secs(10), || {
        dataplane_keys(&lab, 1).first() == Some(&newest)
    });
    let n1 = shoal_tests::node_id(&lab, 1);
    let rx_cut = counter(&lab, 2, "rx_packets", &n1);
    send(50);
    wait_for("h1 refuses to send to h2", Duration::from_secs(10), || {
        counter(&lab, 1, "no_common_key", &n2) >= refused + 50.0
    });
    assert_eq!(
        counter(&lab, 2, "rx_packets", &n1),
        rx_cut,
        "h2 received s1's traffic while two rotations behind"
    );
    // Healed: h2 catches up, and s1's traffic reaches s2 again.
    cut_session(&lab, 2, manager, false);
    wait_for("h2 holds the newest key", Duration::from_secs(60), || {
        dataplane_keys(&lab, 2).first() == Some(&newest)
    });
    wait_for("s1 reaches s2 again", Duration::from_secs(30), || {
        send(5);
        counter(&lab, 2, "rx_packets", &n1) >= rx_cut + 5.0
    });
    stop.store(true, Ordering::Relaxed);
    let got = receiver.join().unwrap();
    assert!(got >= 5, "s2 received {got} datagrams after the heal");
}
