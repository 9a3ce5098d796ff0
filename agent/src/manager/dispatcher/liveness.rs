//! Node liveness on the leader: when each node last sent a heartbeat, what
//! it reported, whether its session is open; [`judge`] decides from that
//! and from the leader's gossip view (pure, time as a parameter) and
//! [`watch`] records the decisions in the store.
//!
//! Two signals: SWIM's verdict comes first — a node whose gossip member is
//! down *and* whose session is gone is `Down` at once (a killed host is
//! noticed in about 3 s, not after three missed heartbeats); heartbeats
//! remain the judge for a node gossip still thinks alive, and the only one
//! for a node without gossip. Requiring both keeps a paused or briefly cut
//! off node (gossip suspects it, its QUIC session survives a few seconds)
//! from being misjudged.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use shoal_membership::MemberState;
use shoal_model::state::{Command, NodeStatus, NodeUpdate};
use shoal_model::{now_ms, NodeId};
use tracing::{info, warn};

use crate::manager::Manager;
use crate::proto::session::{NodeReport, MISSED_HEARTBEATS};

/// Liveness bookkeeping on the leader.
#[derive(Debug, Default)]
pub struct Liveness {
    last_seen: Mutex<HashMap<NodeId, Instant>>,
    reports: Mutex<HashMap<NodeId, NodeReport>>,
    /// Open sessions per node (a reconnect may overlap the old one).
    sessions: Mutex<HashMap<NodeId, usize>>,
    /// The newest session connection of each node: the leader's way to
    /// call the node (`service logs`).
    conns: Mutex<HashMap<NodeId, quinn::Connection>>,
    /// Nodes that left the swarm (`swarm leave`): down for good, whatever
    /// heartbeat was still on its way (a node that joins again gets a new
    /// id).
    left: Mutex<HashSet<NodeId>>,
}

/// An open session, counted in [`Liveness`] until dropped.
#[derive(Debug)]
pub struct SessionGuard<'a> {
    liveness: &'a Liveness,
    node: NodeId,
    conn: Option<usize>,
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        let mut m = self
            .liveness
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.node) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.node);
            }
        }
        drop(m);
        let mut c = self
            .liveness
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if c.get(&self.node)
            .is_some_and(|c| Some(c.stable_id()) == self.conn)
        {
            c.remove(&self.node);
        }
    }
}

impl Liveness {
    /// Count an open session of `node` for as long as the guard lives.
    /// `conn` is the session's connection, through which the leader can
    /// call the node.
    pub fn session(&self, node: &NodeId, conn: Option<&quinn::Connection>) -> SessionGuard<'_> {
        let mut m = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(node.clone()).or_insert(0) += 1;
        if let Some(c) = conn {
            self.conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(node.clone(), c.clone());
        }
        SessionGuard {
            liveness: self,
            node: node.clone(),
            conn: conn.map(|c| c.stable_id()),
        }
    }

    /// The session connection of `node`, if it has one with this manager.
    pub fn conn(&self, node: &NodeId) -> Option<quinn::Connection> {
        self.conns.lock().ok()?.get(node).cloned()
    }

    /// Whether `node` has an open session with this manager.
    pub fn has_session(&self, node: &NodeId) -> bool {
        self.sessions
            .lock()
            .map(|m| m.get(node).is_some_and(|n| *n > 0))
            .unwrap_or(false)
    }

    pub fn seen(&self, node: &NodeId, report: NodeReport) {
        if self.has_left(node) {
            return;
        }
        if let Ok(mut m) = self.last_seen.lock() {
            m.insert(node.clone(), Instant::now());
        }
        if let Ok(mut m) = self.reports.lock() {
            m.insert(node.clone(), report);
        }
    }

    /// `node` left the swarm: its last heartbeats must not bring it back
    /// up before it is removed.
    pub fn leave(&self, node: &NodeId) {
        if let Ok(mut l) = self.left.lock() {
            l.insert(node.clone());
        }
        if let Ok(mut m) = self.last_seen.lock() {
            m.remove(node);
        }
    }

    /// Whether `node` left the swarm.
    pub fn has_left(&self, node: &NodeId) -> bool {
        self.left.lock().map(|l| l.contains(node)).unwrap_or(false)
    }

    /// Nodes that sent a heartbeat within `within`.
    pub fn live_count(&self, within: Duration) -> u64 {
        self.last_seen
            .lock()
            .map(|m| m.values().filter(|t| t.elapsed() <= within).count() as u64)
            .unwrap_or(0)
    }

    /// When the node last sent a heartbeat to this leader.
    pub fn last_seen(&self, node: &NodeId) -> Option<Instant> {
        self.last_seen
            .lock()
            .ok()
            .and_then(|m| m.get(node).copied())
    }

    /// The node's last report.
    pub fn report(&self, node: &NodeId) -> Option<NodeReport> {
        self.reports.lock().ok().and_then(|m| m.get(node).cloned())
    }
}

/// The status a node should have, or `None` to leave it as it is.
///
/// `last_seen`: its last heartbeat to this leader; `leader_since`: when
/// this node became leader; `limit`: [`MISSED_HEARTBEATS`] periods;
/// `gone`: its gossip member is down and it has no session. A gone node is
/// `Down` at once; otherwise a node silent for longer than `limit` is
/// `Down`, but a new leader first gives every node a full `limit` of grace
/// (it has not heard anyone yet); a node heard within `limit` is `Ready`.
pub fn judge(
    last_seen: Option<Instant>,
    leader_since: Instant,
    now: Instant,
    limit: Duration,
    gone: bool,
) -> Option<NodeStatus> {
    if gone {
        return Some(NodeStatus::Down);
    }
    let since = |t: Instant| now.saturating_duration_since(t);
    let last = last_seen.unwrap_or(leader_since).max(leader_since);
    if since(last) > limit && since(leader_since) > limit {
        Some(NodeStatus::Down)
    } else if last_seen.is_some_and(|t| since(t) <= limit) {
        Some(NodeStatus::Ready)
    } else {
        None
    }
}

/// How often the leader judges at most (gossip verdicts arrive any time).
const JUDGE_EVERY: Duration = Duration::from_millis(250);

/// On the leader: mark nodes `Down` after [`MISSED_HEARTBEATS`] periods
/// without a heartbeat, and `Ready` again when they come back. Each change
/// is proposed once (the next check sees the applied status).
pub async fn watch(manager: Weak<Manager>, me: NodeId) {
    let mut leader_since: Option<Instant> = None;
    loop {
        let period = {
            let Some(store) = manager.upgrade().map(|m| m.store().clone()) else {
                return;
            };
            let Ok(ms) = store
                .read_local(|s| {
                    s.cluster
                        .as_ref()
                        .map(|c| c.heartbeat_period_ms)
                        .unwrap_or(5000)
                })
                .await
            else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            Duration::from_millis(ms.max(50))
        };
        tokio::time::sleep((period / 2).min(JUDGE_EVERY)).await;
        let Some(m) = manager.upgrade() else { return };
        let store = m.store();
        if !store.status().is_leader {
            leader_since = None;
            continue;
        }
        let since = *leader_since.get_or_insert_with(Instant::now);
        let Ok(nodes) = store
            .read_local(|s| s.nodes.values().cloned().collect::<Vec<_>>())
            .await
        else {
            continue;
        };
        let limit = period * MISSED_HEARTBEATS;
        let gossip_down: HashSet<String> = m
            .gossip
            .get()
            .map(|g| {
                g.members()
                    .into_iter()
                    .filter(|v| v.state == MemberState::Down)
                    .map(|v| v.info.node_id)
                    .collect()
            })
            .unwrap_or_default();
        for n in nodes {
            if n.id == me {
                // The leader is alive by definition (it may have been
                // marked down by an earlier leader while paused).
                if n.status != NodeStatus::Ready {
                    info!(node = %n.id, "leader marks itself ready");
                    let cmd = Command::UpdateNode {
                        id: n.id.clone(),
                        update: NodeUpdate {
                            status: Some(NodeStatus::Ready),
                            ..Default::default()
                        },
                        at: now_ms(),
                    };
                    if let Err(e) = store.propose(cmd).await {
                        warn!("cannot mark the leader ready: {e}");
                    }
                }
                continue;
            }
            let now = Instant::now();
            let last_seen = m.liveness.last_seen(&n.id);
            let gone = (gossip_down.contains(n.id.as_str()) && !m.liveness.has_session(&n.id))
                || m.liveness.has_left(&n.id);
            let Some(want) = judge(last_seen, since, now, limit, gone) else {
                continue;
            };
            let silent = now.saturating_duration_since(last_seen.unwrap_or(since).max(since));
            if n.status == want {
                continue;
            }
            info!(node = %n.id, status = %want, silent_ms = silent.as_millis() as u64, gossip_down_without_session = gone, "node status change");
            let cmd = Command::UpdateNode {
                id: n.id.clone(),
                update: NodeUpdate {
                    status: Some(want),
                    ..Default::default()
                },
                at: now_ms(),
            };
            if let Err(e) = store.propose(cmd).await {
                warn!(node = %n.id, "cannot record node status: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(15);

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn missed_heartbeats_mark_a_node_down() {
        let t0 = Instant::now();
        let seen = Some(at(t0, 100));
        assert_eq!(
            judge(seen, t0, at(t0, 110), LIMIT, false),
            Some(NodeStatus::Ready)
        );
        assert_eq!(
            judge(seen, t0, at(t0, 115), LIMIT, false),
            Some(NodeStatus::Ready)
        );
        assert_eq!(
            judge(seen, t0, at(t0, 116), LIMIT, false),
            Some(NodeStatus::Down)
        );
    }

    #[test]
    fn a_new_leader_gives_every_node_a_full_grace_period() {
        let t0 = Instant::now();
        // Never heard by this leader: no verdict during the grace period.
        assert_eq!(judge(None, t0, at(t0, 1), LIMIT, false), None);
        assert_eq!(judge(None, t0, at(t0, 15), LIMIT, false), None);
        assert_eq!(
            judge(None, t0, at(t0, 16), LIMIT, false),
            Some(NodeStatus::Down)
        );
        // Heard long ago (before this leadership): grace counts from the
        // leadership, not from the heartbeat.
        let old = Some(t0);
        let leader = at(t0, 100);
        assert_eq!(judge(old, leader, at(t0, 110), LIMIT, false), None);
        assert_eq!(
            judge(old, leader, at(t0, 116), LIMIT, false),
            Some(NodeStatus::Down)
        );
    }

    #[test]
    fn a_node_that_comes_back_is_ready() {
        let t0 = Instant::now();
        assert_eq!(
            judge(Some(at(t0, 200)), t0, at(t0, 201), LIMIT, false),
            Some(NodeStatus::Ready)
        );
    }

    #[test]
    fn a_node_gossip_declared_down_without_a_session_is_down_at_once() {
        let t0 = Instant::now();
        // Heard a second ago: heartbeats alone would wait 14 more seconds.
        let seen = Some(at(t0, 100));
        assert_eq!(
            judge(seen, t0, at(t0, 101), LIMIT, true),
            Some(NodeStatus::Down)
        );
        // Even during a new leader's grace period.
        assert_eq!(
            judge(None, t0, at(t0, 1), LIMIT, true),
            Some(NodeStatus::Down)
        );
    }

    #[test]
    fn sessions_are_counted_while_open() {
        let l = Liveness::default();
        let a = NodeId::generate();
        assert!(!l.has_session(&a));
        let first = l.session(&a, None);
        let second = l.session(&a, None); // a reconnect overlapping the old one
        drop(first);
        assert!(l.has_session(&a));
        drop(second);
        assert!(!l.has_session(&a));
    }

    #[test]
    fn liveness_counts_recent_heartbeats() {
        let l = Liveness::default();
        let a = NodeId::generate();
        l.seen(&a, NodeReport::default());
        assert_eq!(l.live_count(Duration::from_secs(60)), 1);
        assert!(l.last_seen(&a).is_some());
        assert_eq!(l.report(&a), Some(NodeReport::default()));
        assert_eq!(l.last_seen(&NodeId::generate()), None);
    }
}
