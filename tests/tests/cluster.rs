//! The secure cluster end to end: real `shoal daemon` processes in a lab of
//! network-namespace hosts forming a swarm over Raft + mutual TLS on 2377.
//! Needs root and the built `shoal` binary (`deploy/test.sh` does both).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_lab::{DaemonState, Lab};
use shoal_tests::{cli, info, wait_until};

/// Fast timings so failure tests finish quickly: 50 ms ticks (the default),
/// election timeout 0.5–1 s, 500 ms node heartbeats.
const FAST: &str = "heartbeat_ms = 500\n";

fn lab(nodes: usize, extra: &str) -> Lab {
    Lab::builder()
        .nodes(nodes)
        .daemon_config(&format!("{FAST}{extra}"))
        .start()
        .unwrap_or_else(|e| panic!("lab: {e}"))
}

/// The node records as a manager sees them (fields every manager must agree
/// on; manager status is each manager's own view of reachability).
fn nodes_of(lab: &Lab, host: usize) -> Result<BTreeMap<String, Value>, String> {
    let out = cli(lab, host, &["--format", "json", "node", "ls"])?;
    let v: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    let rows = v.as_array().cloned().unwrap_or_default();
    Ok(rows
        .into_iter()
        .map(|mut r| {
            let id = r["id"].as_str().unwrap().to_string();
            let o = r.as_object_mut().unwrap();
            o.remove("manager_status");
            o.remove("is_self");
            o.remove("gossip");
            // Reported by each node after it joins, not part of the join.
            o.remove("resources");
            (id, r)
        })
        .collect())
}

/// Host index of the current leader, as seen by `from`.
fn leader_host(lab: &Lab, managers: &[usize]) -> Option<usize> {
    let mut ids = BTreeMap::new();
    let mut leader = None;
    for &h in managers {
        let Ok(out) = cli(lab, h, &["--format", "json", "info"]) else {
            continue;
        };
        let v: Value = serde_json::from_str(&out).ok()?;
        let raft = &v["swarm"]["raft"];
        ids.insert(raft["id"].as_u64()?, h);
        if let Some(l) = raft["leader"].as_u64() {
            leader = Some(l);
        }
    }
    leader.and_then(|l| ids.get(&l).copied())
}

#[test]
fn managers_agree_and_workers_are_refused() {
    let lab = lab(5, "");
    lab.init_swarm(3).unwrap();
    let first = nodes_of(&lab, 1).unwrap();
    assert_eq!(first.len(), 5, "{first:#?}");
    let managers = first.values().filter(|n| n["role"] == "manager").count();
    assert_eq!(managers, 3);
    for h in [2, 3] {
        wait_until(
            "identical node ls on every manager",
            Duration::from_secs(10),
            || (nodes_of(&lab, h).ok()? == first).then_some(()),
        );
    }
    // Table output names the columns docker prints and marks the leader.
    let table = cli(&lab, 2, &["node", "ls"]).unwrap();
    assert!(table.starts_with("ID"), "{table}");
    for col in ["HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS"] {
        assert!(table.contains(col), "{table}");
    }
    assert_eq!(table.matches("Leader").count(), 1, "{table}");
    assert_eq!(table.matches("Reachable").count(), 2, "{table}");
    assert!(table.contains(" *"), "{table}");

    let err = cli(&lab, 4, &["node", "ls"]).unwrap_err();
    assert!(err.contains("This node is not a swarm manager"), "{err}");
    let i = info(&lab, 4);
    assert_eq!(i["swarm"]["state"], "active");
    assert_eq!(i["swarm"]["role"], "worker");

    // A second init on a member is refused.
    let err = cli(&lab, 2, &["swarm", "init", "--advertise-addr", "eth0"]).unwrap_err();
    assert!(err.contains("already part of a swarm"), "{err}");
}

#[test]
fn leader_kill_new_leader_and_catch_up() {
    let lab = lab(3, "");
    lab.init_swarm(3).unwrap();
    let managers = [1, 2, 3];
    let (old, _) = wait_until("a leader", Duration::from_secs(10), || {
        leader_host(&lab, &managers)
    });
    lab.kill(old).unwrap();
    assert!(matches!(
        lab.daemon_state(old).unwrap(),
        DaemonState::Exited(_)
    ));
    let rest: Vec<usize> = managers.iter().copied().filter(|&h| h != old).collect();
    let killed_at = Instant::now();
    let (new, _) = wait_until("a new leader", Duration::from_secs(10), || {
        leader_host(&lab, &rest).filter(|&h| h != old)
    });
    let elected = killed_at.elapsed();
    assert!(rest.contains(&new));
    // Writes work again.
    let target = format!("h{old}");
    wait_until("a write after failover", Duration::from_secs(10), || {
        cli(
            &lab,
            rest[0],
            &["node", "update", "--availability", "drain", &target],
        )
        .ok()
    });
    eprintln!("new leader after {elected:?}");
    // The old leader comes back and catches up.
    lab.restart(old).unwrap();
    wait_until(
        "the old leader to catch up",
        Duration::from_secs(15),
        || {
            let n = nodes_of(&lab, old).ok()?;
            n.values()
                .any(|v| v["hostname"] == target.as_str() && v["availability"] == "drain")
                .then_some(())
        },
    );
}

#[test]
fn quorum_loss_fails_fast_and_recovers() {
    let lab = lab(3, "");
    lab.init_swarm(3).unwrap();
    lab.kill(2).unwrap();
    lab.kill(3).unwrap();
    // Let h1 notice (one election timeout) that the others are gone.
    let (err, _) = wait_until(
        "writes to fail with no quorum",
        Duration::from_secs(10),
        || {
            let started = Instant::now();
            let r = cli(
                &lab,
                1,
                &["node", "update", "--availability", "pause", "h1"],
            );
            let took = started.elapsed();
            match r {
                Err(e) if e.contains("no quorum: 1 of 3 managers reachable") => Some((e, took)),
                _ => None,
            }
        },
    );
    assert!(
        err.1 < Duration::from_secs(3),
        "a write without quorum must fail fast, took {:?}",
        err.1
    );
    lab.restart(2).unwrap();
    wait_until(
        "writes to work with 2 of 3",
        Duration::from_secs(15),
        || {
            cli(
                &lab,
                1,
                &["node", "update", "--availability", "pause", "h1"],
            )
            .ok()
        },
    );
    let n = nodes_of(&lab, 2).unwrap();
    assert!(n
        .values()
        .any(|v| v["hostname"] == "h1" && v["availability"] == "pause"));
}

#[test]
fn restart_every_node_keeps_state() {
    let lab = lab(4, "");
    lab.init_swarm(3).unwrap();
    cli(
        &lab,
        1,
        &["node", "update", "--availability", "drain", "h4"],
    )
    .unwrap();
    let before = nodes_of(&lab, 1).unwrap();
    let token = cli(&lab, 1, &["swarm", "join-token", "-q", "worker"]).unwrap();
    for h in 1..=4 {
        lab.kill(h).unwrap();
    }
    for h in 1..=4 {
        lab.restart(h).unwrap();
    }
    for h in 1..=3 {
        wait_until(
            "the same state after a full restart",
            Duration::from_secs(20),
            || (nodes_of(&lab, h).ok()? == before).then_some(()),
        );
    }
    assert_eq!(
        cli(&lab, 2, &["swarm", "join-token", "-q", "worker"]).unwrap(),
        token
    );
    let i = info(&lab, 4);
    assert_eq!(i["swarm"]["role"], "worker");
    assert_eq!(
        i["node_id"].as_str().unwrap(),
        before.values().find(|v| v["hostname"] == "h4").unwrap()["id"]
    );
}

#[test]
fn snapshot_reaches_a_new_manager() {
    // Snapshot every 100 entries and keep only 10 behind it, so a manager
    // joining after 300 writes must be sent the snapshot.
    let lab = lab(2, "[raft]\nsnapshot_every = 100\ncompact_keep = 10\n");
    lab.form_swarm(1, 1).unwrap();
    for i in 0..300 {
        let a = ["active", "pause", "drain"][i % 3];
        cli(&lab, 1, &["node", "update", "--availability", a, "h1"]).unwrap();
    }
    let snap = info(&lab, 1)["swarm"]["raft"]["snapshot_index"]
        .as_u64()
        .unwrap();
    assert!(snap >= 100, "no snapshot taken on h1: {snap}");
    let token = cli(&lab, 1, &["swarm", "join-token", "-q", "manager"]).unwrap();
    cli(
        &lab,
        2,
        &[
            "swarm",
            "join",
            "--token",
            token.trim(),
            "--advertise-addr",
            "eth0",
            "10.77.0.1:2377",
        ],
    )
    .unwrap();
    // Both read fresh each time: the join itself goes on changing the
    // store for a moment (h2's role, its reported resources).
    wait_until("h2 to hold the same state", Duration::from_secs(15), || {
        let (a, b) = (nodes_of(&lab, 1).ok()?, nodes_of(&lab, 2).ok()?);
        (a == b && a.len() == 2).then_some(())
    });
    let s2 = info(&lab, 2)["swarm"]["raft"]["snapshot_index"]
        .as_u64()
        .unwrap();
    assert!(
        s2 >= 100,
        "h2 did not receive a snapshot (snapshot index {s2})"
    );
}

#[test]
fn bad_joins_are_refused_and_write_nothing() {
    let lab = lab(3, "");
    lab.form_swarm(1, 1).unwrap();
    let token = cli(&lab, 1, &["swarm", "join-token", "-q", "worker"]).unwrap();
    let token = token.trim();
    let before = nodes_of(&lab, 1).unwrap();
    let join = |t: &str, remote: &str| {
        cli(
            &lab,
            2,
            &[
                "swarm",
                "join",
                "--token",
                t,
                "--advertise-addr",
                "eth0",
                remote,
            ],
        )
    };

    // Wrong secret, right cluster.
    let (head, secret) = token.rsplit_once('-').unwrap();
    let wrong = format!("{head}-{}", "0".repeat(secret.len()));
    let e = join(&wrong, "10.77.0.1:2377").unwrap_err();
    assert!(e.contains("secret matches neither"), "{e}");

    // A token of another cluster: the digest does not match h1's CA.
    let digest = head.rsplit_once('-').unwrap().1;
    let other = token.replace(digest, &"1".repeat(digest.len()));
    let e = join(&other, "10.77.0.1:2377").unwrap_err();
    assert!(e.contains("does not match the join token"), "{e}");

    // Malformed.
    let e = join("SWMTKN-1-abc", "10.77.0.1:2377").unwrap_err();
    assert!(e.contains("invalid join token"), "{e}");
    let e = join("hello", "10.77.0.1:2377").unwrap_err();
    assert!(e.contains("invalid join token"), "{e}");

    // Nothing listens on h3.
    let e = join(token, "10.77.0.3:2377").unwrap_err();
    assert!(e.contains("cannot reach manager at 10.77.0.3:2377"), "{e}");
    // Packets vanish: a timeout naming the address.
    lab.partition(&[2], &[1]).unwrap();
    let e = join(token, "10.77.0.1:2377").unwrap_err();
    assert!(
        e.contains("10.77.0.1:2377") && e.contains("timed out"),
        "{e}"
    );
    lab.heal().unwrap();

    assert_eq!(
        nodes_of(&lab, 1).unwrap(),
        before,
        "a refused join wrote something"
    );
    assert_eq!(info(&lab, 2)["swarm"]["state"], "inactive");
    // And the right token still works.
    join(token, "10.77.0.1:2377").unwrap();
    assert_eq!(nodes_of(&lab, 1).unwrap().len(), 2);
}

#[test]
fn join_token_rotation_invalidates_the_old_token() {
    let lab = lab(3, "");
    lab.form_swarm(1, 1).unwrap();
    let old = cli(&lab, 1, &["swarm", "join-token", "-q", "worker"]).unwrap();
    let out = cli(&lab, 1, &["swarm", "join-token", "--rotate", "worker"]).unwrap();
    assert!(
        out.contains("Successfully rotated worker join token"),
        "{out}"
    );
    let new = cli(&lab, 1, &["swarm", "join-token", "-q", "worker"]).unwrap();
    assert_ne!(old, new);
    let join = |h: usize, t: &str| {
        cli(
            &lab,
            h,
            &["swarm", "join", "--token", t.trim(), "10.77.0.1:2377"],
        )
    };
    assert!(join(2, &old)
        .unwrap_err()
        .contains("secret matches neither"));
    join(3, &new).unwrap();
}

#[test]
fn leave_refuses_to_break_quorum_and_workers_leave() {
    let lab = lab(4, "");
    lab.init_swarm(3).unwrap();
    lab.kill(3).unwrap();
    wait_until("h2 to see h3 unreachable", Duration::from_secs(10), || {
        (info(&lab, 2)["swarm"]["raft"]["reachable"] == 2).then_some(())
    });
    let e = cli(&lab, 2, &["swarm", "leave"]).unwrap_err();
    assert!(
        e.contains("Removing this node leaves 1 managers out of 2"),
        "{e}"
    );
    lab.restart(3).unwrap();
    // A worker leaves; managers see it down and it can be removed.
    cli(&lab, 4, &["swarm", "leave"]).unwrap();
    assert_eq!(info(&lab, 4)["swarm"]["state"], "inactive");
    let (id, _) = wait_until("h4 down", Duration::from_secs(10), || {
        let n = nodes_of(&lab, 1).ok()?;
        n.values()
            .find(|v| v["hostname"] == "h4" && v["status"] == "down")
            .map(|v| v["id"].as_str().unwrap().to_string())
    });
    cli(&lab, 1, &["node", "rm", &id]).unwrap();
    assert_eq!(nodes_of(&lab, 1).unwrap().len(), 3);
    // A manager leaves when quorum survives: 3 -> 2 managers.
    cli(&lab, 3, &["swarm", "leave"]).unwrap();
    wait_until("h3 gone from the store", Duration::from_secs(10), || {
        (nodes_of(&lab, 1).ok()?.len() == 2).then_some(())
    });
    cli(
        &lab,
        1,
        &["node", "update", "--availability", "drain", "h2"],
    )
    .unwrap();
}

#[test]
fn promote_and_demote() {
    let lab = lab(3, "");
    lab.form_swarm(1, 1).unwrap();
    let token = cli(&lab, 1, &["swarm", "join-token", "-q", "worker"]).unwrap();
    for h in [2, 3] {
        cli(
            &lab,
            h,
            &["swarm", "join", "--token", token.trim(), "10.77.0.1:2377"],
        )
        .unwrap();
    }
    cli(&lab, 1, &["node", "promote", "h2", "h3"]).unwrap();
    for h in [2, 3] {
        wait_until(
            "promoted node to serve node ls",
            Duration::from_secs(15),
            || (nodes_of(&lab, h).ok()?.len() == 3).then_some(()),
        );
        assert_eq!(info(&lab, h)["swarm"]["role"], "manager");
    }
    cli(&lab, 2, &["node", "demote", "h3"]).unwrap();
    wait_until(
        "demoted node to be a worker",
        Duration::from_secs(15),
        || (info(&lab, 3)["swarm"]["role"] == "worker").then_some(()),
    );
    assert!(cli(&lab, 3, &["node", "ls"])
        .unwrap_err()
        .contains("not a swarm manager"));
    cli(
        &lab,
        1,
        &["node", "update", "--availability", "active", "h3"],
    )
    .unwrap();
}

#[test]
fn corrupted_raft_log_refuses_to_start() {
    let lab = lab(1, "");
    lab.init_swarm(1).unwrap();
    let h = lab.host(1).unwrap();
    lab.kill(1).unwrap();
    let db_dir = h.data_dir.join("swarm/raft");
    // Damage every file of the sled database.
    let mut damaged = 0;
    for e in walk(&db_dir) {
        let len = std::fs::metadata(&e).unwrap().len();
        if len > 0 {
            std::fs::write(&e, vec![0xA5u8; len as usize]).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no raft files under {}", db_dir.display());
    assert!(
        lab.restart(1).is_err(),
        "daemon started on a corrupted raft log"
    );
    assert!(matches!(
        lab.daemon_state(1).unwrap(),
        DaemonState::Exited(_)
    ));
    let log = std::fs::read_to_string(&h.log).unwrap();
    assert!(
        log.contains(db_dir.to_str().unwrap()),
        "error does not name the raft dir:\n{log}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn ca_rotation_reissues_every_node_then_drops_the_old_root() {
    let lab = lab(4, "");
    lab.form_swarm(3, 1).unwrap();
    let old_token = cli(&lab, 1, &["swarm", "join-token", "-q", "worker"]).unwrap();
    let old = info(&lab, 1)["swarm"]["ca_digest"]
        .as_str()
        .unwrap()
        .to_string();
    let out = cli(&lab, 1, &["swarm", "ca", "--rotate"]).unwrap();
    assert!(out.contains("Root CA rotated"), "{out}");
    // Every node gets a certificate from the new root; then the old root is
    // no longer trusted anywhere.
    wait_until(
        "every node re-issued and trusting only the new root",
        Duration::from_secs(20),
        || {
            let digests: Vec<Value> = (1..=3).map(|h| info(&lab, h)["swarm"].clone()).collect();
            let first = digests[0]["ca_digest"].as_str()?.to_string();
            (first != old
                && digests
                    .iter()
                    .all(|d| d["ca_digest"] == first.as_str() && d["trusted_roots"] == 1))
            .then_some(())
        },
    );
    // The old token names a CA nobody presents any more.
    let e = cli(
        &lab,
        4,
        &[
            "swarm",
            "join",
            "--token",
            old_token.trim(),
            "10.77.0.1:2377",
        ],
    )
    .unwrap_err();
    assert!(e.contains("does not match the join token"), "{e}");
    let new_token = cli(&lab, 1, &["swarm", "join-token", "-q", "worker"]).unwrap();
    cli(
        &lab,
        4,
        &[
            "swarm",
            "join",
            "--token",
            new_token.trim(),
            "10.77.0.1:2377",
        ],
    )
    .unwrap();
    wait_until("4 ready nodes", Duration::from_secs(10), || {
        let n = nodes_of(&lab, 1).ok()?;
        (n.len() == 4 && n.values().all(|v| v["status"] == "ready")).then_some(())
    });
}
