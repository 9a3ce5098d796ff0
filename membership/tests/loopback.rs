//! Real UDP/TCP gossip agents on loopback addresses (127.x.y.z, one port per
//! agent), fast timings. Each test uses its own 127.N.0.0/24 so tests can run
//! in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use shoal_membership::{Gossip, GossipConfig, KeyRing, MemberInfo, MemberState};

const PORT: u16 = 17946;

fn addr(net: u8, i: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, net, 0, i)), PORT)
}

fn ring() -> KeyRing {
    KeyRing::new(vec![(1, [0x11; 32])]).unwrap()
}

async fn agent(net: u8, i: u8, ring: KeyRing, seeds: Vec<SocketAddr>) -> Gossip {
    let a = addr(net, i);
    let me = MemberInfo {
        node_id: format!("node-{net}-{i}"),
        gossip_addr: a,
        advertise_addr: a.ip(),
        data_path_addr: a.ip(),
    };
    Gossip::start(GossipConfig::fast(a), me, ring, seeds)
        .await
        .unwrap()
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while t.elapsed() < limit {
        if cond() {
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out after {limit:?} waiting for: {what}");
}

fn alive(g: &Gossip) -> usize {
    g.members()
        .iter()
        .filter(|m| m.state == MemberState::Alive)
        .count()
}

fn has(g: &Gossip, table: &str, key: &str) -> bool {
    g.entries(table).iter().any(|e| e.key == key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_agents_put_delete_crash() {
    let net = 21;
    let mut agents = vec![agent(net, 1, ring(), vec![]).await];
    for i in 2..=5 {
        agents.push(agent(net, i, ring(), vec![addr(net, 1)]).await);
    }
    wait_for(
        "5 members alive everywhere",
        Duration::from_secs(10),
        || agents.iter().all(|g| alive(g) == 5),
    )
    .await;

    let mut events = agents[4].subscribe();
    agents[1].put("ep/net-a", "ep1", b"10.0.9.2".to_vec());
    let t = wait_for("entry on all", Duration::from_secs(3), || {
        agents.iter().all(|g| has(g, "ep/net-a", "ep1"))
    })
    .await;
    println!("put -> present on all 5 agents in {t:?}");
    let e = agents[3].entries("ep/net-a").pop().unwrap();
    assert_eq!(
        (e.owner.as_str(), e.value.as_slice()),
        ("node-21-2", &b"10.0.9.2"[..])
    );
    assert_eq!(agents[0].tables(), vec!["ep/net-a".to_string()]);
    let ev = tokio::time::timeout(Duration::from_secs(1), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(ev, shoal_membership::Event::EntryChanged(ref x) if x.key == "ep1"));

    // Only the owner can delete.
    agents[0].delete("ep/net-a", "ep1");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(has(&agents[0], "ep/net-a", "ep1"));
    agents[1].delete("ep/net-a", "ep1");
    let t = wait_for("entry gone everywhere", Duration::from_secs(3), || {
        agents.iter().all(|g| !has(g, "ep/net-a", "ep1"))
    })
    .await;
    println!("delete -> gone on all 5 agents in {t:?}");

    // Crash agent 3 (drop without leave): its entries vanish everywhere.
    agents[2].put("ep/net-a", "ep3", vec![3]);
    wait_for("ep3 on all", Duration::from_secs(3), || {
        agents.iter().all(|g| has(g, "ep/net-a", "ep3"))
    })
    .await;
    let crashed = agents.remove(2);
    drop(crashed);
    let t = wait_for(
        "crashed agent's entries gone",
        Duration::from_secs(6),
        || agents.iter().all(|g| !has(g, "ep/net-a", "ep3")),
    )
    .await;
    println!("crash -> entries gone on the 4 others in {t:?}");
    for g in &agents {
        let m = g.metrics();
        assert!(m.max_datagram_sent <= 1400, "{m:?}");
        assert!(m.max_datagram_sent > 0);
        assert_eq!(m.decrypt_failures_total, 0);
    }
    println!("metrics of agent 1: {:?}", agents[0].metrics());
    for g in agents {
        g.leave().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_cannot_join_and_is_counted() {
    let net = 22;
    let a = agent(net, 1, ring(), vec![]).await;
    let b = agent(net, 2, ring(), vec![addr(net, 1)]).await;
    wait_for("a and b joined", Duration::from_secs(5), || {
        alive(&a) == 2 && alive(&b) == 2
    })
    .await;
    let bad_ring = KeyRing::new(vec![(1, [0x22; 32])]).unwrap();
    let intruder = agent(net, 3, bad_ring, vec![addr(net, 1), addr(net, 2)]).await;
    intruder.put("ep/x", "evil", vec![6]);
    wait_for("decrypt failures counted", Duration::from_secs(5), || {
        a.metrics().decrypt_failures_total > 0 && b.metrics().decrypt_failures_total > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(alive(&intruder), 1, "intruder must see only itself");
    assert_eq!(a.members().len(), 2);
    assert!(a.entries("ep/x").is_empty() && b.entries("ep/x").is_empty());
    // Nobody answers the intruder (its packets are dropped unopened).
    assert_eq!(intruder.members().len(), 1);

    // Key rotation: a new newest key, the old one still accepted.
    let rotated = KeyRing::new(vec![(2, [0x33; 32]), (1, [0x11; 32])]).unwrap();
    a.set_key_ring(rotated.clone());
    a.put("ep/x", "after-rotation", vec![1]);
    b.set_key_ring(rotated);
    wait_for("entry after rotation", Duration::from_secs(5), || {
        has(&b, "ep/x", "after-rotation")
    })
    .await;
    drop(intruder);
    a.leave().await.unwrap();
    b.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_and_partitioned_agent_converge() {
    let net = 23;
    let a = agent(net, 1, ring(), vec![]).await;
    let b = agent(net, 2, ring(), vec![addr(net, 1)]).await;
    let c = agent(net, 3, ring(), vec![addr(net, 1)]).await;
    wait_for("3 joined", Duration::from_secs(5), || {
        [&a, &b, &c].iter().all(|g| alive(g) == 3)
    })
    .await;
    for i in 0..300 {
        a.put("ep/n1", &format!("a{i}"), vec![1; 30]);
    }
    for i in 0..100 {
        b.put("ep/n2", &format!("b{i}"), vec![2; 30]);
    }
    wait_for("c has all", Duration::from_secs(5), || {
        c.entries("ep/n1").len() == 300 && c.entries("ep/n2").len() == 100
    })
    .await;

    // A late joiner pulls everything with the join-time push/pull.
    let d = agent(net, 4, ring(), vec![addr(net, 2)]).await;
    let t = wait_for("late joiner converged", Duration::from_secs(5), || {
        d.entries("ep/n1").len() == 300 && d.entries("ep/n2").len() == 100
    })
    .await;
    println!("late joiner converged in {t:?}; metrics: {:?}", d.metrics());

    // Partition c away (all its packets dropped) long enough to be declared down.
    c.put("ep/n3", "c-own", vec![3]);
    wait_for("c-own everywhere", Duration::from_secs(3), || {
        [&a, &b, &d].iter().all(|g| has(g, "ep/n3", "c-own"))
    })
    .await;
    c.set_paused(true);
    wait_for(
        "c's entry dropped on the others",
        Duration::from_secs(6),
        || [&a, &b, &d].iter().all(|g| !has(g, "ep/n3", "c-own")),
    )
    .await;
    // Meanwhile the others change things c does not hear about.
    for i in 0..50 {
        a.delete("ep/n1", &format!("a{i}"));
    }
    b.put("ep/n2", "b-new", vec![9]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.set_paused(false);
    let snapshot = |g: &Gossip| {
        let mut v = Vec::new();
        for t in ["ep/n1", "ep/n2", "ep/n3"] {
            v.extend(g.entries(t).into_iter().map(|e| (e.table, e.key, e.value)));
        }
        v
    };
    let t = wait_for(
        "tables equal everywhere after heal",
        Duration::from_secs(20),
        || {
            let s = snapshot(&a);
            s.len() == 250 + 101 + 1 && [&b, &c, &d].iter().all(|g| snapshot(g) == s)
        },
    )
    .await;
    println!("partition healed, tables equal in {t:?}");
    for g in [a, b, c, d] {
        assert!(g.metrics().max_datagram_sent <= 1400);
        g.leave().await.unwrap();
    }
}
