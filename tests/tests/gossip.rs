//! SWIM gossip between real daemons in the lab: members, a replicated
//! table entry spreading, deletion, a killed owner's entries vanishing, and
//! convergence after a partition heals. Needs root and the built binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use shoal_lab::Lab;
use shoal_tests::{cli, wait_for};

const CONFIG: &str = "heartbeat_ms = 500\ngossip_profile = \"fast\"\n";

fn json(lab: &Lab, host: usize, args: &[&str]) -> Option<Value> {
    let mut a = vec!["--format", "json"];
    a.extend_from_slice(args);
    serde_json::from_str(&cli(lab, host, &a).ok()?).ok()
}

/// (table, key) -> value held by `host`.
fn table(lab: &Lab, host: usize) -> Option<BTreeMap<(String, String), String>> {
    let v = json(lab, host, &["gossip", "tables"])?;
    Some(
        v.as_array()?
            .iter()
            .map(|e| {
                (
                    (
                        e["table"].as_str().unwrap().to_string(),
                        e["key"].as_str().unwrap().to_string(),
                    ),
                    e["value"].as_str().unwrap().to_string(),
                )
            })
            .collect(),
    )
}

fn alive(lab: &Lab, host: usize) -> usize {
    json(lab, host, &["gossip", "members"])
        .and_then(|v| {
            v.as_array()
                .map(|a| a.iter().filter(|m| m["state"] == "Alive").count())
        })
        .unwrap_or(0)
}

#[test]
fn entries_spread_vanish_with_their_owner_and_converge_after_a_partition() {
    let n = 10;
    let lab = Lab::builder()
        .nodes(n)
        .daemon_config(CONFIG)
        .start()
        .unwrap();
    lab.init_swarm(3).unwrap();
    wait_for(
        "every node sees 10 alive members",
        Duration::from_secs(30),
        || (1..=n).all(|h| alive(&lab, h) == n),
    );
    // node ls shows the gossip view.
    let ls = cli(&lab, 1, &["node", "ls"]).unwrap();
    assert!(
        ls.contains("GOSSIP") && ls.matches("alive").count() == n,
        "{ls}"
    );

    let key = ("t1".to_string(), "k1".to_string());
    cli(&lab, 3, &["gossip", "put", "t1", "k1", "hello"]).unwrap();
    let took = wait_for("the entry on every host", Duration::from_secs(5), || {
        (1..=n).all(|h| {
            table(&lab, h).is_some_and(|t| t.get(&key).map(String::as_str) == Some("hello"))
        })
    });
    eprintln!("entry on all {n} hosts after {took:?}");

    cli(&lab, 3, &["gossip", "rm", "t1", "k1"]).unwrap();
    wait_for("the deletion everywhere", Duration::from_secs(5), || {
        (1..=n).all(|h| table(&lab, h).is_some_and(|t| !t.contains_key(&key)))
    });

    cli(&lab, 3, &["gossip", "put", "t1", "k3", "owned-by-h3"]).unwrap();
    let k3 = ("t1".to_string(), "k3".to_string());
    wait_for("h3's entry everywhere", Duration::from_secs(5), || {
        (1..=n).all(|h| table(&lab, h).is_some_and(|t| t.contains_key(&k3)))
    });
    lab.kill(3).unwrap();
    let others: Vec<usize> = (1..=n).filter(|h| *h != 3).collect();
    let took = wait_for(
        "h3's entries gone from every other host",
        Duration::from_secs(10),
        || {
            others
                .iter()
                .all(|&h| table(&lab, h).is_some_and(|t| !t.contains_key(&k3)))
        },
    );
    eprintln!("killed owner's entry gone everywhere after {took:?}");
    lab.restart(3).unwrap();

    // Partition h1-h5 | h6-h10, write on both sides, heal: equal tables.
    let a: Vec<usize> = (1..=5).collect();
    let b: Vec<usize> = (6..=10).collect();
    lab.partition(&a, &b).unwrap();
    cli(&lab, 1, &["gossip", "put", "side", "a", "from-h1"]).unwrap();
    cli(&lab, 6, &["gossip", "put", "side", "b", "from-h6"]).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    lab.heal().unwrap();
    let took = wait_for(
        "equal tables everywhere after the heal",
        Duration::from_secs(60),
        || {
            let Some(first) = table(&lab, 1) else {
                return false;
            };
            first.len() >= 2
                && first.contains_key(&("side".to_string(), "b".to_string()))
                && (2..=n).all(|h| table(&lab, h).as_ref() == Some(&first))
        },
    );
    eprintln!("tables equal {took:?} after the heal");
}
