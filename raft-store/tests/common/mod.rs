//! Shared test harness: a small KV state machine and a cluster of nodes on
//! the in-memory router (in the manner of raft-rs's `harness/`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shoal_raft_store::mem::MemRouter;
use shoal_raft_store::{RaftConfig, RaftNode, StateMachine, Transport};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Cmd {
    Put(String, String),
}

/// Applies puts; the output is the log index, so tests can check order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Kv {
    pub map: BTreeMap<String, String>,
    pub last_index: u64,
}

impl StateMachine for Kv {
    type Command = Cmd;
    type Output = u64;

    fn apply(&mut self, index: u64, cmd: Cmd) -> u64 {
        match cmd {
            Cmd::Put(k, v) => {
                self.map.insert(k, v);
            }
        }
        self.last_index = index;
        index
    }

    fn snapshot(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(&self.map).map_err(|e| e.to_string())
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        self.map = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        Ok(())
    }
}

pub fn put(k: impl Into<String>, v: impl Into<String>) -> Cmd {
    Cmd::Put(k.into(), v.into())
}

pub fn addr(id: u64) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 20_000 + id as u16))
}

/// Fast timings: 20 ms ticks, 200 ms election timeout.
pub fn test_config(id: u64, dir: &std::path::Path) -> RaftConfig {
    RaftConfig {
        id,
        data_dir: dir.to_path_buf(),
        tick: Duration::from_millis(20),
        election_ticks: 10,
        heartbeat_ticks: 1,
        propose_timeout: Duration::from_secs(5),
        leader_wait: Duration::from_secs(2),
        ..RaftConfig::default()
    }
}

/// `RAFT_TEST_LOG=debug cargo test ...` shows the nodes' logs.
pub fn init_log() {
    if let Ok(f) = std::env::var("RAFT_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(f))
            .with_test_writer()
            .try_init();
    }
}

pub async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub struct Cluster {
    pub router: MemRouter,
    pub dirs: HashMap<u64, tempfile::TempDir>,
    pub nodes: HashMap<u64, RaftNode<Kv>>,
    pub tweak: fn(&mut RaftConfig),
}

fn no_tweak(_: &mut RaftConfig) {}

impl Cluster {
    pub fn new() -> Self {
        Self::with_tweak(no_tweak)
    }

    pub fn with_tweak(tweak: fn(&mut RaftConfig)) -> Self {
        init_log();
        Cluster {
            router: MemRouter::new(),
            dirs: HashMap::new(),
            nodes: HashMap::new(),
            tweak,
        }
    }

    pub fn config(&mut self, id: u64) -> RaftConfig {
        let dir = self
            .dirs
            .entry(id)
            .or_insert_with(|| tempfile::tempdir().unwrap());
        let mut c = test_config(id, dir.path());
        (self.tweak)(&mut c);
        c
    }

    fn transport(&self, id: u64) -> Arc<dyn Transport> {
        self.router.endpoint(id)
    }

    fn register(&mut self, id: u64, n: RaftNode<Kv>) {
        self.router.register(id, n.inbox());
        self.nodes.insert(id, n);
    }

    pub async fn bootstrap(&mut self, id: u64) {
        let c = self.config(id);
        let n = RaftNode::bootstrap(c, addr(id), Kv::default(), self.transport(id))
            .await
            .unwrap();
        self.register(id, n);
    }

    /// Adds `id` as a voter through the current leader, then starts it.
    pub async fn add(&mut self, id: u64) {
        let leader = self.wait_leader(&self.ids()).await;
        self.nodes[&leader].add_voter(id, addr(id)).await.unwrap();
        let c = self.config(id);
        let n = RaftNode::join(c, Kv::default(), self.transport(id))
            .await
            .unwrap();
        self.register(id, n);
    }

    pub async fn start(n: u64) -> Self {
        let mut c = Self::new();
        c.start_n(n).await;
        c
    }

    pub async fn start_n(&mut self, n: u64) {
        self.bootstrap(1).await;
        for id in 2..=n {
            self.add(id).await;
        }
        let ids = self.ids();
        self.wait_converged(&ids).await;
    }

    pub fn ids(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.nodes.keys().copied().collect();
        v.sort_unstable();
        v
    }

    pub fn node(&self, id: u64) -> &RaftNode<Kv> {
        &self.nodes[&id]
    }

    /// A leader every listed node agrees on.
    pub async fn wait_leader(&self, ids: &[u64]) -> u64 {
        let mut found = 0;
        wait_for("an agreed leader", Duration::from_secs(10), || {
            let leaders: Vec<Option<u64>> =
                ids.iter().map(|i| self.nodes[i].status().leader).collect();
            match leaders[0] {
                Some(l) if leaders.iter().all(|x| *x == Some(l)) && ids.contains(&l) => {
                    found = l;
                    self.nodes[&l].status().is_leader
                }
                _ => false,
            }
        })
        .await;
        found
    }

    /// All listed nodes have applied the same index.
    pub async fn wait_converged(&self, ids: &[u64]) {
        wait_for(
            "applied indexes to converge",
            Duration::from_secs(10),
            || {
                let s: Vec<_> = ids.iter().map(|i| self.nodes[i].status()).collect();
                let a = s[0].applied;
                a > 0 && s.iter().all(|x| x.applied == a && x.commit == a)
            },
        )
        .await;
    }

    pub async fn state(&self, id: u64) -> BTreeMap<String, String> {
        self.nodes[&id].read(|kv| kv.map.clone()).await.unwrap()
    }

    pub async fn stop(&mut self, id: u64) {
        self.router.unregister(id);
        if let Some(n) = self.nodes.remove(&id) {
            n.shutdown().await.unwrap();
        }
    }

    pub async fn restart(&mut self, id: u64) {
        let c = self.config(id);
        let n = RaftNode::restart(c, Kv::default(), self.transport(id))
            .await
            .unwrap();
        self.register(id, n);
    }

    pub async fn shutdown(mut self) {
        for id in self.ids() {
            self.stop(id).await;
        }
    }
}
