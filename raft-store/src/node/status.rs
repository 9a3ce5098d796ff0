//! What a raft node tells the outside: its status (leader, term, indexes,
//! voters and their reachability) and counters for `/metrics`.

use super::*;

/// What a voter looks like from this node, for `shoal node ls` and for the
/// agent's decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoterStatus {
    /// Raft id.
    pub id: u64,
    /// Raft address, if this node has learned it.
    pub addr: Option<SocketAddr>,
    /// Heard from within an election timeout (always true for this node).
    pub reachable: bool,
}

/// A point-in-time view of the node, published on every change of leader,
/// term, commit or applied index, membership or reachability.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    /// This node's raft id.
    pub id: u64,
    /// The leader this node knows of.
    pub leader: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Whether this node is the leader.
    pub is_leader: bool,
    /// Highest index known committed.
    pub commit: u64,
    /// Highest index applied to the state machine here.
    pub applied: u64,
    /// Voters of the applied configuration, sorted by id.
    pub voters: Vec<VoterStatus>,
    /// Index of the latest stored snapshot.
    pub snapshot_index: u64,
    /// Set once the loop has stopped on a fatal error (storage failure, a
    /// panic in the loop or the state machine): this node will never commit
    /// again, and its owner should stop the process so it is restarted.
    #[serde(default)]
    pub fatal: Option<String>,
}

/// Upper bounds, in seconds, of the apply-latency histogram buckets
/// (an overflow bucket above the last one is implicit). From half a
/// millisecond (a batched commit on a fast disk) to 10 s (the default
/// propose timeout).
pub const APPLY_LATENCY_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram at one instant, as plain data for exporters (Prometheus)
/// and for `--format json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    /// Upper bounds of the buckets, ascending, in the histogram's unit
    /// (seconds here); the `+Inf` bucket is not listed.
    pub bounds: Vec<f64>,
    /// Observations per bucket, NOT cumulative: `counts[i]` counts values
    /// in `(bounds[i-1], bounds[i]]`; one more element than `bounds`, the
    /// last counting values above the highest bound.
    pub counts: Vec<u64>,
    /// Sum of all observed values.
    pub sum: f64,
    /// Number of observations (equals the sum of `counts`).
    pub count: u64,
}

impl HistogramSnapshot {
    /// Cumulative counts per bound, as Prometheus `_bucket{le=..}` wants
    /// them; the last element (for `+Inf`) equals `count`.
    pub fn cumulative(&self) -> Vec<u64> {
        let mut acc = 0u64;
        self.counts
            .iter()
            .map(|c| {
                acc = acc.saturating_add(*c);
                acc
            })
            .collect()
    }
}

/// Fixed-bucket latency histogram. Written by the loop thread once per
/// applied own proposal, read at scrape time; a mutex (never contended in
/// practice) keeps count, sum and buckets consistent with each other.
#[derive(Debug, Default)]
pub(crate) struct LatencyHistogram {
    inner: Mutex<LatencyInner>,
}

#[derive(Debug, Default)]
pub(crate) struct LatencyInner {
    counts: [u64; APPLY_LATENCY_BOUNDS.len() + 1],
    sum_nanos: u128,
    count: u64,
}

impl LatencyHistogram {
    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = APPLY_LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(APPLY_LATENCY_BOUNDS.len());
        let mut g = lock(&self.inner);
        if let Some(c) = g.counts.get_mut(i) {
            *c += 1;
        }
        g.sum_nanos += d.as_nanos();
        g.count += 1;
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let g = lock(&self.inner);
        HistogramSnapshot {
            bounds: APPLY_LATENCY_BOUNDS.to_vec(),
            counts: g.counts.to_vec(),
            sum: g.sum_nanos as f64 / 1e9,
            count: g.count,
        }
    }
}

/// Counters shared by the handle (proposal outcomes, as callers see them)
/// and the loop thread (apply latency).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) proposals: AtomicU64,
    pub(crate) proposals_failed: AtomicU64,
    pub(crate) inbound_dropped: AtomicU64,
    pub(crate) apply_latency: LatencyHistogram,
}

impl Stats {
    pub(crate) fn observe_apply(&self, d: Duration) {
        self.apply_latency.observe(d);
    }
}

/// What the Prometheus endpoint shows of a raft node: the status plus
/// counters since the process started. Built by [`RaftNode::stats`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RaftStats {
    /// This node's raft id.
    pub id: u64,
    /// Current term.
    pub term: u64,
    /// Highest index known committed.
    pub commit_index: u64,
    /// Highest index applied to the state machine here.
    pub applied_index: u64,
    /// Index of the latest stored snapshot.
    pub snapshot_index: u64,
    /// Whether this node is the leader.
    pub is_leader: bool,
    /// The leader this node knows of.
    pub leader_id: Option<u64>,
    /// Voters in the applied configuration.
    pub voters: u64,
    /// Voters this node heard from within an election timeout (itself
    /// included).
    pub voters_reachable: u64,
    /// Commands proposed through this handle ([`RaftNode::propose`]),
    /// whatever their outcome.
    pub proposals_total: u64,
    /// Of those, the ones that resolved with an error (no quorum, no
    /// leader, timeout, leader change, stopped...).
    pub proposals_failed_total: u64,
    /// Inbound raft batches dropped because the loop's queue was full.
    #[serde(default)]
    pub inbound_dropped_total: u64,
    /// Seconds from a command's arrival at this node's loop to its apply
    /// here, for commands proposed on this node and applied.
    pub apply_latency: HistogramSnapshot,
}
