//! A panic in the raft thread (here: the state machine's apply) must not
//! leave a node that answers but never commits: its status says fatal, so
//! the owner can stop the process, and callers get errors, not hangs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{addr, test_config};
use shoal_raft_store::mem::MemRouter;
use shoal_raft_store::{RaftNode, StateMachine};

#[derive(Default, Clone)]
struct Boom;

impl StateMachine for Boom {
    type Command = String;
    type Output = ();
    fn apply(&mut self, _index: u64, cmd: String) {
        if cmd == "boom" {
            panic!("the state machine blew up");
        }
    }
    fn snapshot(&self) -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }
    fn restore(&mut self, _data: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

#[tokio::test]
async fn a_panic_in_the_raft_thread_is_reported_as_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let router = MemRouter::new();
    let node = RaftNode::bootstrap(
        test_config(1, dir.path()),
        addr(1),
        Boom,
        router.endpoint(1),
    )
    .await
    .unwrap();
    router.register(1, node.inbox());
    node.propose("fine".to_string()).await.unwrap();
    assert_eq!(node.status().fatal, None);

    let r = tokio::time::timeout(Duration::from_secs(10), node.propose("boom".into())).await;
    assert!(matches!(r, Ok(Err(_))), "the proposer gets an error: {r:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let fatal = loop {
        if let Some(f) = node.status().fatal {
            break f;
        }
        assert!(Instant::now() < deadline, "no fatal status");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(fatal.contains("the state machine blew up"), "{fatal}");
    assert!(!node.status().is_leader);
    // Later requests fail at once instead of waiting for a dead loop.
    let r = tokio::time::timeout(Duration::from_secs(10), node.propose("again".into())).await;
    assert!(matches!(r, Ok(Err(_))), "{r:?}");
}
