//! Whole clusters on the in-memory router: election, forwarding, failover,
//! partitions, restarts, snapshots and membership changes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

mod common;

use std::time::{Duration, Instant};

use common::*;
use shoal_raft_store::{RaftError, RaftNode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_and_forwarded_propose() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let follower = *c.ids().iter().find(|i| **i != leader).unwrap();
    // Proposed on a follower: forwarded to the leader, resolved once applied here.
    let idx = c.node(follower).propose(put("k", "v")).await.unwrap();
    assert!(idx > 1);
    let seen = c
        .node(follower)
        .read(|kv| kv.map.get("k").cloned())
        .await
        .unwrap();
    assert_eq!(
        seen.as_deref(),
        Some("v"),
        "the proposer reads its own write"
    );
    // Many writes from every node, in parallel.
    let mut tasks = Vec::new();
    for id in c.ids() {
        for j in 0..20 {
            let n = c.node(id).clone();
            tasks.push(tokio::spawn(async move {
                n.propose(put(format!("{id}-{j}"), "x")).await
            }));
        }
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    c.wait_converged(&[1, 2, 3]).await;
    let s1 = c.state(1).await;
    assert_eq!(s1.len(), 61);
    assert_eq!(s1, c.state(2).await);
    assert_eq!(s1, c.state(3).await);
    let st = c.node(follower).status();
    assert_eq!(st.voters.len(), 3);
    assert!(st.voters.iter().all(|v| v.reachable && v.addr.is_some()));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_barrier_on_a_follower_sees_committed_writes() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let follower = *c.ids().iter().find(|i| **i != leader).unwrap();
    for i in 0..10 {
        c.node(leader)
            .propose(put(format!("r{i}"), "1"))
            .await
            .unwrap();
    }
    c.node(follower).read_barrier().await.unwrap();
    let n = c.node(follower).read(|kv| kv.map.len()).await.unwrap();
    assert_eq!(n, 10);
    c.node(leader).read_barrier().await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_a_new_one() {
    let mut c = Cluster::start(3).await;
    let old = c.wait_leader(&[1, 2, 3]).await;
    c.node(old).propose(put("before", "1")).await.unwrap();
    c.stop(old).await;
    let rest: Vec<u64> = c.ids();
    let new = c.wait_leader(&rest).await;
    assert_ne!(new, old);
    for id in &rest {
        c.node(*id)
            .propose(put(format!("after{id}"), "1"))
            .await
            .unwrap();
    }
    c.wait_converged(&rest).await;
    let s = c.state(rest[0]).await;
    assert!(s.contains_key("before") && s.len() == 3);
    assert_eq!(s, c.state(rest[1]).await);
    // The old leader comes back from disk and catches up.
    c.restart(old).await;
    c.node(new).propose(put("back", "1")).await.unwrap();
    c.wait_converged(&[1, 2, 3]).await;
    assert_eq!(c.state(old).await, c.state(new).await);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_side_fails_fast_with_no_quorum() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let lonely = *c.ids().iter().find(|i| **i != leader).unwrap();
    c.router.isolate(lonely, &[1, 2, 3]);
    // After an election timeout (200 ms) it can tell.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t = Instant::now();
    let err = c.node(lonely).propose(put("x", "y")).await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "fails fast: {:?}",
        t.elapsed()
    );
    match err {
        RaftError::NoQuorum { reachable, total } => {
            assert_eq!((reachable, total), (1, 3));
            assert_eq!(err.to_string(), "no quorum: 1 of 3 managers reachable");
        }
        other => panic!("expected NoQuorum, got {other:?}"),
    }
    assert!(matches!(
        c.node(lonely).read_barrier().await,
        Err(RaftError::NoQuorum { .. })
    ));
    let st = c.node(lonely).status();
    assert_eq!(st.voters.iter().filter(|v| v.reachable).count(), 1);
    // The majority side keeps working.
    let majority: Vec<u64> = c.ids().into_iter().filter(|i| *i != lonely).collect();
    let l = c.wait_leader(&majority).await;
    c.node(l).propose(put("majority", "1")).await.unwrap();
    // Heal: the lonely node catches up, and pre-vote kept it from disrupting.
    c.router.heal();
    c.wait_converged(&[1, 2, 3]).await;
    assert_eq!(c.state(lonely).await, c.state(l).await);
    c.node(lonely).propose(put("healed", "1")).await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_in_minority_steps_down_and_majority_elects() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    c.router.isolate(leader, &[1, 2, 3]);
    let majority: Vec<u64> = c.ids().into_iter().filter(|i| *i != leader).collect();
    let new = c.wait_leader(&majority).await;
    assert_ne!(new, leader);
    wait_for("old leader steps down", Duration::from_secs(5), || {
        !c.node(leader).status().is_leader
    })
    .await;
    let err = c.node(leader).propose(put("x", "y")).await.unwrap_err();
    assert!(matches!(err, RaftError::NoQuorum { .. }), "{err:?}");
    c.node(new).propose(put("y", "z")).await.unwrap();
    c.router.heal();
    c.wait_converged(&[1, 2, 3]).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_all_nodes_from_disk_keeps_state() {
    let mut c = Cluster::start(3).await;
    for i in 0..50 {
        let id = 1 + (i % 3);
        c.node(id)
            .propose(put(format!("k{i}"), format!("v{i}")))
            .await
            .unwrap();
    }
    c.wait_converged(&[1, 2, 3]).await;
    let before = c.state(1).await;
    let applied = c.node(1).status().applied;
    for id in [1, 2, 3] {
        c.stop(id).await;
    }
    for id in [1, 2, 3] {
        assert!(RaftNode::<Kv>::exists(c.dirs[&id].path()));
        c.restart(id).await;
    }
    // Replay happens before anything new commits.
    for id in [1, 2, 3] {
        wait_for("replay", Duration::from_secs(5), || {
            c.node(id).status().applied >= applied
        })
        .await;
        assert_eq!(c.state(id).await, before);
    }
    c.wait_leader(&[1, 2, 3]).await;
    c.node(2).propose(put("after-restart", "1")).await.unwrap();
    c.wait_converged(&[1, 2, 3]).await;
    assert_eq!(c.state(3).await.len(), 51);
    // Bootstrap or join over an existing log is refused.
    let cfg = c.config(1);
    let err = RaftNode::bootstrap(cfg, addr(1), Kv::default(), c.router.endpoint(1))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("already holds a raft log"),
        "{err}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_of_missing_log_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(1, dir.path());
    let router = shoal_raft_store::mem::MemRouter::new();
    let err = RaftNode::restart(cfg, Kv::default(), router.endpoint(1))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
}

fn small_snapshots(c: &mut shoal_raft_store::RaftConfig) {
    c.snapshot_every = 50;
    c.compact_keep = 0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_voter_catches_up_from_a_snapshot_then_is_removed() {
    let mut c = Cluster::with_tweak(small_snapshots);
    c.start_n(3).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    for i in 0..200 {
        c.node(leader)
            .propose(put(format!("k{i}"), format!("v{i}")))
            .await
            .unwrap();
    }
    c.wait_converged(&[1, 2, 3]).await;
    assert!(c.node(leader).status().snapshot_index >= 150);
    c.add(4).await;
    c.wait_converged(&[1, 2, 3, 4]).await;
    let st4 = c.node(4).status();
    assert!(
        st4.snapshot_index >= 150,
        "node 4 was installed from a snapshot: {st4:?}"
    );
    assert_eq!(st4.voters.len(), 4);
    // Addresses came with the snapshot and the conf change.
    assert!(
        st4.voters.iter().all(|v| v.addr == Some(addr(v.id))),
        "{st4:?}"
    );
    assert_eq!(c.state(4).await, c.state(leader).await);
    // Node 4 takes writes, and is a full voter.
    c.node(4).propose(put("from4", "1")).await.unwrap();
    // Node 4 restarts from its own snapshot + log.
    c.stop(4).await;
    c.restart(4).await;
    c.wait_converged(&[1, 2, 3, 4]).await;
    assert_eq!(c.state(4).await.len(), 201);
    // Remove it again.
    let leader = c.wait_leader(&[1, 2, 3]).await;
    c.node(leader).remove_voter(4).await.unwrap();
    wait_for("3 voters everywhere", Duration::from_secs(5), || {
        [1, 2, 3]
            .iter()
            .all(|i| c.node(*i).status().voters.len() == 3)
    })
    .await;
    c.stop(4).await;
    c.node(1).propose(put("after-removal", "1")).await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_leader_fails_with_no_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(9, dir.path());
    cfg.leader_wait = Duration::from_millis(300);
    let router = shoal_raft_store::mem::MemRouter::new();
    let n = RaftNode::join(cfg, Kv::default(), router.endpoint(9))
        .await
        .unwrap();
    let t = Instant::now();
    let err = n.propose(put("a", "b")).await.unwrap_err();
    assert!(matches!(err, RaftError::NoLeader(_)), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
    n.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_sees_applied_index_move() {
    let c = Cluster::start(3).await;
    let mut rx = c.node(2).subscribe();
    let before = rx.borrow_and_update().applied;
    c.node(1).propose(put("w", "1")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            rx.changed().await.unwrap();
            if rx.borrow().applied > before {
                break;
            }
        }
    })
    .await
    .unwrap();
    c.shutdown().await;
}

/// Throughput through 3 in-process managers on the in-memory router, with a
/// real sled flush per Ready on every node. Printed, not asserted:
/// `cargo test -p shoal-raft-store --release --test cluster -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    let c = Cluster::start(3).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    for proposers in [64usize, 256] {
        let dur = Duration::from_secs(3);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for p in 0..proposers {
            // Spread proposers over all managers, as the agent would.
            let n = c.node(1 + (p as u64 % 3)).clone();
            tasks.push(tokio::spawn(async move {
                let mut done = 0u64;
                while start.elapsed() < dur {
                    n.propose(put(format!("p{p}"), format!("{done}")))
                        .await
                        .unwrap();
                    done += 1;
                }
                done
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "throughput: {proposers} proposers over 3 managers (leader {leader}): {total} commits in {secs:.2}s = {:.0} commits/s",
            total as f64 / secs
        );
    }
    c.shutdown().await;
}
