//! An in-memory message router, in the manner of raft-rs's `harness/`: whole
//! clusters in one process, with links that can be cut to drop or partition.
//! Used by this crate's tests and available to the agent's simulations.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use raft::eraftpb::Message;

use crate::codec::Batch;
use crate::node::Inbox;
use crate::transport::Transport;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct Inner {
    inboxes: HashMap<u64, Inbox>,
    /// Directed links that drop everything: (from, to).
    cut: HashSet<(u64, u64)>,
}

/// The shared router; [`MemRouter::endpoint`] gives each node its transport.
#[derive(Default, Clone)]
pub struct MemRouter {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for MemRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemRouter").finish_non_exhaustive()
    }
}

impl MemRouter {
    /// A router with no nodes.
    pub fn new() -> Self {
        Self::default()
    }

    /// The transport of node `id`.
    pub fn endpoint(&self, id: u64) -> Arc<MemTransport> {
        Arc::new(MemTransport {
            id,
            router: self.clone(),
        })
    }

    /// Where messages to `id` are delivered (replace on restart).
    pub fn register(&self, id: u64, inbox: Inbox) {
        lock(&self.inner).inboxes.insert(id, inbox);
    }

    /// Stops delivering to `id` (a stopped node).
    pub fn unregister(&self, id: u64) {
        lock(&self.inner).inboxes.remove(&id);
    }

    /// Drops messages from `a` to `b` and from `b` to `a`.
    pub fn cut(&self, a: u64, b: u64) {
        let mut g = lock(&self.inner);
        g.cut.insert((a, b));
        g.cut.insert((b, a));
    }

    /// Cuts `id` off from every other node (known now or later).
    pub fn isolate(&self, id: u64, others: &[u64]) {
        for o in others {
            if *o != id {
                self.cut(id, *o);
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        lock(&self.inner).cut.clear();
    }

    fn deliver(&self, from: u64, msgs: Vec<Message>) {
        let mut by_to: HashMap<u64, Vec<Message>> = HashMap::new();
        for m in msgs {
            by_to.entry(m.to).or_default().push(m);
        }
        let g = lock(&self.inner);
        let mut out = Vec::new();
        for (to, msgs) in by_to {
            if g.cut.contains(&(from, to)) {
                continue;
            }
            if let Some(inbox) = g.inboxes.get(&to) {
                out.push((inbox.clone(), msgs));
            }
        }
        drop(g);
        for (inbox, msgs) in out {
            inbox.deliver(Batch {
                from,
                from_addr: None,
                msgs,
            });
        }
    }
}

/// One node's view of a [`MemRouter`].
pub struct MemTransport {
    id: u64,
    router: MemRouter,
}

impl Transport for MemTransport {
    fn send(&self, msgs: Vec<Message>) {
        self.router.deliver(self.id, msgs);
    }

    fn set_peer(&self, _id: u64, _addr: SocketAddr) {}

    fn remove_peer(&self, _id: u64) {}
}
