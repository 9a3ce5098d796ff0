//! A member holding the cluster's gossip key — as every member does — can
//! still write only its own gossip entries: an intruder started with a
//! worker's key ring (read from that worker's run dir) forges another
//! node's endpoint entry, and then tries to erase it with a huge
//! generation; every node refuses both, counts them, and keeps the genuine
//! entry. A gossip datagram recorded on the wire and sent again is refused
//! as a replay and counted. Needs root and the built `shoal` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use shoal_lab::Lab;
use shoal_membership::{Ed25519Auth, EntryAuth, Gossip, GossipConfig, KeyRing, MemberInfo};
use shoal_tests::{capture, cli, in_netns, node_id, start, udp, wait_for};

/// `shoal --format json ARGS` on `host`; `Null` while it fails (gossip
/// not started yet).
fn json(lab: &Lab, host: usize, args: &[&str]) -> Value {
    let mut argv = vec!["--format", "json"];
    argv.extend_from_slice(args);
    cli(lab, host, &argv)
        .ok()
        .and_then(|out| serde_json::from_str(&out).ok())
        .unwrap_or(Value::Null)
}

/// The value of `t/k` on `host`, if it holds one.
fn value(lab: &Lab, host: usize) -> Option<String> {
    json(lab, host, &["gossip", "tables", "--table", "t"])
        .as_array()?
        .iter()
        .find(|e| e["key"] == "k")
        .and_then(|e| e["value"].as_str().map(String::from))
}

fn counter(lab: &Lab, host: usize, name: &str) -> u64 {
    json(lab, host, &["gossip", "metrics"])[name]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_member_cannot_forge_or_erase_another_members_entries() {
    let lab = start(
        Lab::builder()
            .nodes(3)
            .daemon_config("heartbeat_ms = 500\ngossip_profile = \"fast\"\n"),
    );
    lab.form_swarm(3, 1).unwrap();
    let victim = node_id(&lab, 2);
    wait_for("gossip on every host", Duration::from_secs(30), || {
        (1..=3).all(|h| {
            json(&lab, h, &["gossip", "members"])
                .as_array()
                .is_some_and(|m| m.len() == 3)
        })
    });
    cli(&lab, 2, &["gossip", "put", "t", "k", "genuine"]).unwrap();
    wait_for("h2's entry everywhere", Duration::from_secs(10), || {
        (1..=3).all(|h| value(&lab, h).as_deref() == Some("genuine"))
    });

    // The intruder: h3's key ring (from its run dir), its own signing key.
    let h3 = lab.host(3).unwrap();
    let resume: Value =
        serde_json::from_slice(&std::fs::read(h3.run_dir.join("gossip.json")).unwrap()).unwrap();
    let keys: Vec<(u32, [u8; 32])> = resume["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let bytes: Vec<u8> = serde_json::from_value(k["key"].clone()).unwrap();
            (k["id"].as_u64().unwrap() as u32, bytes.try_into().unwrap())
        })
        .collect();
    let seed: SocketAddr = format!("{}:7946", lab.host(1).unwrap().addr)
        .parse()
        .unwrap();
    let bind: SocketAddr = format!("{}:17946", h3.addr).parse().unwrap();
    let victim2 = victim.clone();
    in_netns(&h3.ns, async move {
        let auth = Ed25519Auth::from_pkcs8(&Ed25519Auth::generate_pkcs8().unwrap()).unwrap();
        let auth: std::sync::Arc<dyn EntryAuth> = std::sync::Arc::new(auth);
        let me = MemberInfo {
            node_id: "intruder".into(),
            gossip_addr: bind,
            advertise_addr: bind.ip(),
            data_path_addr: bind.ip(),
        };
        let g = Gossip::start_authenticated(
            GossipConfig::fast(bind),
            me,
            KeyRing::new(keys).unwrap(),
            vec![seed],
            Some(auth),
        )
        .await
        .unwrap();
        let t0 = std::time::Instant::now();
        while g.members().len() < 4 {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the intruder joined gossip"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        // Rewrite h2's entry, then erase it with a huge generation.
        g.forge("t", "k", &victim2, now, b"forged".to_vec(), false);
        g.forge("t", "k", &victim2, u64::MAX, Vec::new(), true);
        tokio::time::sleep(Duration::from_secs(1)).await;
        g.leave().await.unwrap();
    });

    wait_for(
        "both forgeries refused and counted on h1",
        Duration::from_secs(10),
        || {
            counter(&lab, 1, "forged_entries_total") >= 1
                && counter(&lab, 1, "future_entries_total") >= 1
        },
    );
    for h in 1..=3 {
        assert_eq!(
            value(&lab, h).as_deref(),
            Some("genuine"),
            "h{h} kept h2's entry"
        );
    }
}

#[test]
fn a_recorded_gossip_datagram_sent_again_is_refused_as_a_replay() {
    let lab = start(
        Lab::builder()
            .nodes(2)
            .daemon_config("heartbeat_ms = 500\ngossip_profile = \"fast\"\n"),
    );
    lab.form_swarm(2, 1).unwrap();
    wait_for("gossip on both hosts", Duration::from_secs(30), || {
        (1..=2).all(|h| {
            json(&lab, h, &["gossip", "members"])
                .as_array()
                .is_some_and(|m| m.len() == 2)
        })
    });
    let (h1, h2) = (lab.host(1).unwrap(), lab.host(2).unwrap());
    // Record what h2 sends h1 on 7946 (probes, acks, rumours) for 2 s.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cap = capture(h1.ns.clone(), stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let from_h2 = h2.addr.octets();
    let recorded: Vec<Vec<u8>> = cap
        .join()
        .unwrap()
        .iter()
        .filter(|f| f.len() > 30 && f[26..30] == from_h2)
        .filter_map(|f| udp(f))
        .filter(|(_, dport, _)| *dport == 7946)
        .map(|(_, _, p)| p.to_vec())
        .collect();
    assert!(!recorded.is_empty(), "no gossip datagram from h2 recorded");
    let (replays, undecryptable) = (
        counter(&lab, 1, "replays_total"),
        counter(&lab, 1, "decrypt_failures_total"),
    );
    // Sent again, as they were (they still open under the ring key).
    let to: SocketAddr = format!("{}:7946", h1.addr).parse().unwrap();
    let n = recorded.len() as u64;
    let bind: SocketAddr = format!("{}:0", h2.addr).parse().unwrap();
    in_netns(&h2.ns, async move {
        let s = tokio::net::UdpSocket::bind(bind).await.unwrap();
        for d in &recorded {
            s.send_to(d, to).await.unwrap();
        }
    });
    wait_for(
        "every replayed datagram refused and counted on h1",
        Duration::from_secs(10),
        || counter(&lab, 1, "replays_total") >= replays + n,
    );
    assert_eq!(
        counter(&lab, 1, "replays_total"),
        replays + n,
        "only the replayed datagrams were refused"
    );
    assert_eq!(
        counter(&lab, 1, "decrypt_failures_total"),
        undecryptable,
        "the replays were genuine, sealed under the ring key"
    );
    // Gossip goes on.
    cli(&lab, 2, &["gossip", "put", "t", "k", "after"]).unwrap();
    wait_for("h2's entry on h1", Duration::from_secs(10), || {
        value(&lab, 1).as_deref() == Some("after")
    });
}
