//! The raft node: a raft-rs `RawNode` over [`SledStorage`], driven by one
//! loop thread, and a cheap cloneable async handle ([`RaftNode`]).
//!
//! Why a dedicated OS thread rather than a tokio task: the loop's one
//! blocking operation, the per-Ready sled flush (an fsync), would otherwise
//! stall a runtime worker; on 2 cores with 3 in-process nodes that starves
//! everything. The loop only talks to the async world through channels:
//! requests come in on an mpsc channel, answers go out on oneshots, status
//! on a watch channel, messages through the non-blocking [`Transport`].
//!
//! One pass of the loop: take every queued request and inbound message,
//! tick if due, then handle one Ready in the order raft-rs requires (send,
//! install snapshot, append + hard state, ONE flush, send persisted
//! messages, apply, advance, the same for the LightReady). Every proposal
//! queued since the last pass rides the same flush; that batching is what
//! makes thousands of commits per second possible with one fsync each.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use protobuf::Message as PbMessage;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType,
    Snapshot,
};
use raft::{RawNode, ReadState, SnapshotStatus, StateRole};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch, Semaphore};

use crate::codec::{read_frame, Batch};
use crate::error::{RaftError, StoreError};
use crate::storage::{decode_peers, encode_peers, PeerMap, SledStorage};
use crate::transport::Transport;
use crate::{RaftConfig, StateMachine};

/// Bound on a decoded command: entries come from the network and from disk.
const COMMAND_LIMIT: usize = 64 << 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

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
struct LatencyHistogram {
    inner: Mutex<LatencyInner>,
}

#[derive(Debug, Default)]
struct LatencyInner {
    counts: [u64; APPLY_LATENCY_BOUNDS.len() + 1],
    sum_nanos: u128,
    count: u64,
}

impl LatencyHistogram {
    fn observe(&self, d: Duration) {
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

    fn snapshot(&self) -> HistogramSnapshot {
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
struct Stats {
    proposals: AtomicU64,
    proposals_failed: AtomicU64,
    apply_latency: LatencyHistogram,
}

impl Stats {
    fn observe_apply(&self, d: Duration) {
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
    /// Seconds from a command's arrival at this node's loop to its apply
    /// here, for commands proposed on this node and applied.
    pub apply_latency: HistogramSnapshot,
}

/// A cheap cloneable way to hand inbound messages to a node without a
/// stream (the in-memory router; simulations).
#[derive(Clone)]
pub struct Inbox {
    deliver: Arc<dyn Fn(Batch) -> bool + Send + Sync>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox").finish_non_exhaustive()
    }
}

impl Inbox {
    /// Queues a batch for the node's loop; false if the node has stopped.
    pub fn deliver(&self, batch: Batch) -> bool {
        (self.deliver)(batch)
    }
}

type Reply<T> = oneshot::Sender<Result<T, RaftError>>;

enum Request<O> {
    Propose { data: Vec<u8>, reply: Reply<O> },
    Conf { cc: ConfChange, reply: Reply<()> },
    Read { reply: Reply<()> },
}

impl<O> Request<O> {
    fn fail(self, e: RaftError) {
        match self {
            Request::Propose { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Request::Conf { reply, .. } | Request::Read { reply } => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

enum Event<O> {
    Inbound(Batch),
    Request(Request<O>),
    Shutdown(oneshot::Sender<Result<(), RaftError>>),
}

/// An answer held until the status reflecting it has been published, so a
/// caller whose proposal resolved sees `status().applied` include it.
enum Done<O> {
    Cmd(Reply<O>, O),
    Unit(Reply<()>),
}

enum Waiter<O> {
    /// A command and when it was first submitted to the loop (for the
    /// apply-latency histogram).
    Cmd(Reply<O>, Instant),
    Unit(Reply<()>),
}

impl<O> Waiter<O> {
    fn fail(self, e: RaftError) {
        match self {
            Waiter::Cmd(r, _) => {
                let _ = r.send(Err(e));
            }
            Waiter::Unit(r) => {
                let _ = r.send(Err(e));
            }
        }
    }
}

/// Snapshot payload: the peer address map travels with the state so a node
/// restored from a snapshot can reach every member.
/// Layout: `u32 BE peers_len | peers (bincode) | state machine bytes`.
fn encode_envelope(peers: &PeerMap, state: &[u8]) -> Result<Vec<u8>, RaftError> {
    let p = encode_peers(peers).map_err(RaftError::Codec)?;
    let len = u32::try_from(p.len()).map_err(|_| RaftError::Codec("peer map too large".into()))?;
    let mut out = Vec::with_capacity(4 + p.len() + state.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&p);
    out.extend_from_slice(state);
    Ok(out)
}

fn decode_envelope(data: &[u8]) -> Result<(PeerMap, &[u8]), RaftError> {
    let bad = |w: &str| RaftError::Codec(format!("snapshot envelope: {w}"));
    let len = data.get(..4).ok_or_else(|| bad("truncated"))?;
    let mut b = [0u8; 4];
    b.copy_from_slice(len);
    let len = u32::from_be_bytes(b) as usize;
    let peers = data
        .get(4..4 + len)
        .ok_or_else(|| bad("truncated peer map"))?;
    let peers = decode_peers(peers).map_err(|e| bad(&e))?;
    Ok((peers, data.get(4 + len..).unwrap_or_default()))
}

/// Bridges raft-rs's slog records into `tracing`, one level quieter (raft's
/// "info" is chatty: every election and probe).
struct TracingDrain {
    id: u64,
}

struct KvString(String);

impl slog::Serializer for KvString {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        use std::fmt::Write;
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        use slog::KV;
        let enabled = match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::enabled!(tracing::Level::WARN),
            slog::Level::Warning | slog::Level::Info => tracing::enabled!(tracing::Level::DEBUG),
            _ => tracing::enabled!(tracing::Level::TRACE),
        };
        if !enabled {
            return Ok(());
        }
        let mut kv = KvString(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let id = self.id;
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::warn!(raft_id = id, "raft: {}{}", record.msg(), kv.0)
            }
            slog::Level::Warning | slog::Level::Info => {
                tracing::debug!(raft_id = id, "raft: {}{}", record.msg(), kv.0)
            }
            _ => tracing::trace!(raft_id = id, "raft: {}{}", record.msg(), kv.0),
        }
        Ok(())
    }
}

/// The loop's state: everything here lives on the loop thread.
struct Core<S: StateMachine> {
    id: u64,
    cfg: RaftConfig,
    node: RawNode<SledStorage>,
    sm: Arc<Mutex<S>>,
    transport: Arc<dyn Transport>,
    status_tx: watch::Sender<RaftStatus>,
    /// Random per-process value in proposal ids: entries proposed before a
    /// restart must not resolve proposals made after it.
    incarnation: u64,
    next_seq: u64,
    pending: HashMap<u64, (Waiter<S::Output>, Instant)>,
    waiting: VecDeque<(Request<S::Output>, Instant)>,
    read_waits: Vec<(u64, Reply<()>)>,
    done: Vec<Done<S::Output>>,
    last_heard: HashMap<u64, Instant>,
    started: Instant,
    hinted: HashMap<u64, SocketAddr>,
    applied: u64,
    ticks: u64,
    /// Leader seen at the previous tick, to notice leader changes.
    last_leader: u64,
    /// Leader each pending request was submitted under.
    submitted_under: HashMap<u64, u64>,
    /// Shared with the handle, for [`RaftNode::stats`].
    stats: Arc<Stats>,
}

const CTX_LEN: usize = 24;

impl<S: StateMachine> Core<S> {
    fn election_timeout(&self) -> Duration {
        self.cfg.tick * self.cfg.election_ticks as u32
    }

    fn ctx(&self, seq: u64) -> Vec<u8> {
        let mut c = Vec::with_capacity(CTX_LEN);
        c.extend_from_slice(&self.id.to_be_bytes());
        c.extend_from_slice(&self.incarnation.to_be_bytes());
        c.extend_from_slice(&seq.to_be_bytes());
        c
    }

    /// The sequence number of a context proposed by this very process.
    fn own_seq(&self, ctx: &[u8]) -> Option<u64> {
        if ctx.len() != CTX_LEN {
            return None;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&ctx[..8]);
        if u64::from_be_bytes(b) != self.id {
            return None;
        }
        b.copy_from_slice(&ctx[8..16]);
        if u64::from_be_bytes(b) != self.incarnation {
            return None;
        }
        b.copy_from_slice(&ctx[16..24]);
        Some(u64::from_be_bytes(b))
    }

    fn leader(&self) -> u64 {
        self.node.raft.leader_id
    }

    fn voters(&self) -> Vec<u64> {
        let mut v = self.node.store().conf_state().voters.clone();
        v.sort_unstable();
        v
    }

    fn is_member(&self) -> bool {
        self.node.store().conf_state().voters.contains(&self.id)
    }

    fn reachable(&self, id: u64, now: Instant) -> bool {
        if id == self.id {
            return true;
        }
        let t = self.last_heard.get(&id).copied().unwrap_or(self.started);
        now.saturating_duration_since(t) < self.election_timeout()
    }

    /// `NoQuorum` when this node can tell a majority of voters is unreachable.
    fn quorum_error(&self, now: Instant) -> Option<RaftError> {
        let voters = &self.node.store().conf_state().voters;
        if !voters.contains(&self.id) {
            // Not (yet) a member by its own log: it cannot judge.
            return None;
        }
        let total = voters.len();
        let reachable = voters.iter().filter(|v| self.reachable(**v, now)).count();
        (reachable * 2 <= total).then_some(RaftError::NoQuorum { reachable, total })
    }

    fn submit(&mut self, req: Request<S::Output>, since: Instant, now: Instant) {
        if let Some(e) = self.quorum_error(now) {
            req.fail(e);
            return;
        }
        let conf_busy = matches!(req, Request::Conf { .. })
            && self.node.raft.state == StateRole::Leader
            && self.node.raft.pending_conf_index > self.node.raft.raft_log.applied;
        // A manager that has not installed the cluster's state yet (just
        // joined) waits: its entry could otherwise commit inside the very
        // snapshot it is about to receive, and never be applied here.
        let member = self.is_member();
        // A leader we have not heard from within an election timeout is
        // probably dead: forwarding to it would only time out. Wait for
        // the next one instead.
        let leader = self.leader();
        let leader_gone = leader != raft::INVALID_ID && !self.reachable(leader, now);
        if leader == raft::INVALID_ID || leader_gone || conf_busy || !member {
            if now.saturating_duration_since(since) >= self.cfg.leader_wait {
                if conf_busy {
                    req.fail(RaftError::Dropped(
                        "another membership change is still being applied".into(),
                    ));
                } else if !member && self.leader() != raft::INVALID_ID {
                    req.fail(RaftError::NotMember(self.id));
                } else {
                    req.fail(RaftError::NoLeader(self.cfg.leader_wait));
                }
            } else {
                self.waiting.push_back((req, since));
            }
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let ctx = self.ctx(seq);
        self.submitted_under.insert(seq, leader);
        let deadline = now + self.cfg.propose_timeout;
        match req {
            Request::Propose { data, reply } => match self.node.propose(ctx, data) {
                Ok(()) => {
                    self.pending
                        .insert(seq, (Waiter::Cmd(reply, since), deadline));
                }
                Err(e) => {
                    let _ = reply.send(Err(RaftError::Dropped(e.to_string())));
                }
            },
            Request::Conf { cc, reply } => match self.node.propose_conf_change(ctx, cc) {
                Ok(()) => {
                    self.pending.insert(seq, (Waiter::Unit(reply), deadline));
                }
                Err(e) => {
                    let _ = reply.send(Err(RaftError::Dropped(e.to_string())));
                }
            },
            Request::Read { reply } => {
                self.node.read_index(ctx);
                self.pending.insert(seq, (Waiter::Unit(reply), deadline));
            }
        }
    }

    fn on_inbound(&mut self, batch: Batch, now: Instant) {
        if batch.from != raft::INVALID_ID && batch.from != self.id {
            self.last_heard.insert(batch.from, now);
            if let Some(addr) = batch.from_addr {
                let known = self.node.store().peers().contains_key(&batch.from);
                if !known && self.hinted.get(&batch.from) != Some(&addr) {
                    // A member we have no address for (we just joined): use
                    // the one it advertises until the log tells us.
                    self.transport.set_peer(batch.from, addr);
                    self.hinted.insert(batch.from, addr);
                }
            }
        }
        for m in batch.msgs {
            if m.to != self.id || m.from == self.id {
                continue;
            }
            self.last_heard.insert(m.from, now);
            if m.get_msg_type() == MessageType::MsgUnreachable {
                // Our liveness ping (a local-only type raft never sends).
                continue;
            }
            if let Err(e) = self.node.step(m) {
                tracing::trace!(raft_id = self.id, error = %e, "raft step");
            }
        }
    }

    fn on_tick(&mut self, now: Instant) {
        self.node.tick();
        self.ticks += 1;
        let pending = &self.pending;
        self.submitted_under
            .retain(|seq, _| pending.contains_key(seq));
        let leader = self.leader();
        if leader != self.last_leader {
            // Requests submitted under another leader went to (or through)
            // it, and it may have lost them: answer now so callers can
            // retry, instead of letting them wait for the timeout.
            let stale: Vec<u64> = self
                .submitted_under
                .iter()
                .filter(|(_, l)| **l != leader)
                .map(|(seq, _)| *seq)
                .collect();
            if !stale.is_empty() {
                tracing::debug!(
                    raft_id = self.id,
                    count = stale.len(),
                    "leader changed: failing requests in flight"
                );
            }
            for seq in stale {
                self.submitted_under.remove(&seq);
                if let Some((w, _)) = self.pending.remove(&seq) {
                    w.fail(RaftError::Dropped(
                        "the leader changed while the request was in flight; it may or may not \
                         have been applied"
                            .into(),
                    ));
                }
            }
            self.last_leader = leader;
        }
        // Followers never talk to each other in raft; without pings a
        // follower of 5 managers would think 3 of them unreachable.
        let every = (self.cfg.election_ticks as u64 / 4).max(1);
        if self.ticks.is_multiple_of(every) {
            let pings: Vec<Message> = self
                .voters()
                .into_iter()
                .filter(|v| *v != self.id)
                .map(|to| {
                    let mut m = Message::default();
                    m.set_msg_type(MessageType::MsgUnreachable);
                    m.from = self.id;
                    m.to = to;
                    m
                })
                .collect();
            if !pings.is_empty() {
                self.transport.send(pings);
            }
        }
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(s, _)| *s)
            .collect();
        if !expired.is_empty() {
            tracing::debug!(
                raft_id = self.id,
                count = expired.len(),
                leader = self.leader(),
                applied = self.applied,
                "raft requests timed out"
            );
        }
        for s in expired {
            if let Some((w, _)) = self.pending.remove(&s) {
                w.fail(RaftError::Timeout(self.cfg.propose_timeout));
            }
        }
        self.retry_waiting(now);
    }

    fn retry_waiting(&mut self, now: Instant) {
        let waiting = std::mem::take(&mut self.waiting);
        for (req, since) in waiting {
            self.submit(req, since, now);
        }
    }

    fn send(&mut self, msgs: Vec<Message>, snaps: &mut Vec<u64>) {
        if msgs.is_empty() {
            return;
        }
        for m in &msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                snaps.push(m.to);
            }
        }
        self.transport.send(msgs);
    }

    fn set_peers(&mut self, old: &PeerMap, new: &PeerMap) {
        for id in old.keys() {
            if !new.contains_key(id) && *id != self.id {
                self.transport.remove_peer(*id);
            }
        }
        self.transport
            .set_local(self.id, new.get(&self.id).copied());
        for (id, addr) in new {
            if *id != self.id && old.get(id) != Some(addr) {
                self.transport.set_peer(*id, *addr);
            }
            self.last_heard.entry(*id).or_insert_with(Instant::now);
        }
    }

    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), RaftError> {
        let (peers, state) = decode_envelope(&snap.data)?;
        lock(&self.sm)
            .restore(state)
            .map_err(RaftError::StateMachine)?;
        let old = self.node.store().peers().clone();
        self.node.mut_store().apply_snapshot(snap, peers.clone())?;
        self.set_peers(&old, &peers);
        self.applied = snap.get_metadata().index;
        tracing::info!(
            raft_id = self.id,
            index = self.applied,
            pending = self.pending.len(),
            "installed raft snapshot"
        );
        Ok(())
    }

    fn on_read_states(&mut self, states: Vec<ReadState>) {
        for rs in states {
            let Some(seq) = self.own_seq(&rs.request_ctx) else {
                continue;
            };
            if let Some((Waiter::Unit(reply), _)) = self.pending.remove(&seq) {
                if rs.index <= self.applied {
                    self.done.push(Done::Unit(reply));
                } else {
                    self.read_waits.push((rs.index, reply));
                }
            }
        }
    }

    fn apply_conf_change(&mut self, e: &Entry) -> Result<(), RaftError> {
        let waiter = self
            .own_seq(&e.context)
            .and_then(|s| self.pending.remove(&s));
        let result = if e.get_entry_type() == EntryType::EntryConfChangeV2 {
            ConfChangeV2::parse_from_bytes(&e.data)
                .map_err(|err| RaftError::Codec(err.to_string()))
                .and_then(|cc| self.node.apply_conf_change(&cc).map_err(RaftError::from))
                .map(|cs| (cs, None))
        } else {
            ConfChange::parse_from_bytes(&e.data)
                .map_err(|err| RaftError::Codec(err.to_string()))
                .and_then(|cc| {
                    let cs = self.node.apply_conf_change(&cc)?;
                    Ok((cs, Some(cc)))
                })
        };
        match result {
            Ok((cs, cc)) => {
                let old = self.node.store().peers().clone();
                let mut peers = old.clone();
                if let Some(cc) = cc {
                    match cc.get_change_type() {
                        ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                            let addr = std::str::from_utf8(&cc.context)
                                .ok()
                                .and_then(|s| s.parse::<SocketAddr>().ok());
                            match addr {
                                Some(a) => {
                                    peers.insert(cc.node_id, a);
                                    self.last_heard.insert(cc.node_id, Instant::now());
                                }
                                None => tracing::warn!(
                                    raft_id = self.id,
                                    node = cc.node_id,
                                    "conf change without a valid address"
                                ),
                            }
                        }
                        ConfChangeType::RemoveNode => {
                            peers.remove(&cc.node_id);
                            if cc.node_id == self.id {
                                tracing::warn!(
                                    raft_id = self.id,
                                    "this manager was removed from the raft cluster"
                                );
                            }
                        }
                    }
                }
                // Forget peers no longer in the configuration.
                peers.retain(|id, _| cs.voters.contains(id) || cs.learners.contains(id));
                self.set_peers(&old, &peers);
                self.node.mut_store().set_conf_state(cs, peers)?;
                if let Some(Waiter::Unit(r)) = waiter.map(|(w, _)| w) {
                    self.done.push(Done::Unit(r));
                }
            }
            Err(err) => {
                tracing::warn!(raft_id = self.id, index = e.index, error = %err, "conf change not applied");
                if let Some((w, _)) = waiter {
                    w.fail(err);
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), RaftError> {
        if entries.is_empty() {
            return Ok(());
        }
        let sm = self.sm.clone();
        let mut guard = lock(&sm);
        // One clock read per batch: the latencies it measures are
        // milliseconds, the batch takes microseconds.
        let now = Instant::now();
        let cfg = bincode::config::standard().with_limit::<COMMAND_LIMIT>();
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if !e.data.is_empty() {
                        let waiter = self
                            .own_seq(&e.context)
                            .and_then(|s| self.pending.remove(&s));
                        match bincode::serde::decode_from_slice::<S::Command, _>(&e.data, cfg) {
                            Ok((cmd, _)) => {
                                let out = guard.apply(e.index, cmd);
                                if let Some((Waiter::Cmd(r, since), _)) = waiter {
                                    self.stats
                                        .observe_apply(now.saturating_duration_since(since));
                                    self.done.push(Done::Cmd(r, out));
                                }
                            }
                            Err(err) => {
                                // Same bytes on every manager: all skip it alike.
                                tracing::error!(raft_id = self.id, index = e.index, error = %err, "committed command does not decode; skipped");
                                if let Some((w, _)) = waiter {
                                    w.fail(RaftError::Codec(err.to_string()));
                                }
                            }
                        }
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    drop(guard);
                    self.apply_conf_change(&e)?;
                    guard = lock(&sm);
                }
            }
            self.applied = e.index;
        }
        drop(guard);
        self.resolve_reads();
        Ok(())
    }

    fn resolve_reads(&mut self) {
        let applied = self.applied;
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.read_waits)
            .into_iter()
            .partition(|(idx, _)| *idx <= applied);
        self.read_waits = keep;
        self.done
            .extend(done.into_iter().map(|(_, r)| Done::Unit(r)));
    }

    fn send_replies(&mut self) {
        for d in self.done.drain(..) {
            match d {
                Done::Cmd(r, out) => {
                    let _ = r.send(Ok(out));
                }
                Done::Unit(r) => {
                    let _ = r.send(Ok(()));
                }
            }
        }
    }

    fn maybe_snapshot(&mut self) -> Result<(), RaftError> {
        let store = self.node.store();
        let snap_idx = store.snapshot_metadata().index;
        let wanted = store.take_snapshot_wanted();
        if self.applied <= snap_idx
            || (self.applied - snap_idx < self.cfg.snapshot_every && !wanted)
        {
            return Ok(());
        }
        let state = match lock(&self.sm).snapshot() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(raft_id = self.id, error = %e, "state machine snapshot failed; log not compacted");
                return Ok(());
            }
        };
        let data = encode_envelope(store.peers(), &state)?;
        let cs: ConfState = store.conf_state().clone();
        let applied = self.applied;
        let keep = self.cfg.compact_keep;
        self.node
            .mut_store()
            .create_snapshot(applied, cs, data, keep)?;
        tracing::debug!(
            raft_id = self.id,
            index = applied,
            "raft snapshot taken, log compacted"
        );
        Ok(())
    }

    fn on_ready(&mut self) -> Result<(), RaftError> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut rd = self.node.ready();
        let mut snaps = Vec::new();
        self.send(rd.take_messages(), &mut snaps);
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            self.install_snapshot(&snap)?;
        }
        self.on_read_states(rd.take_read_states());
        let committed = rd.take_committed_entries();
        let mut dirty = !rd.snapshot().is_empty();
        if !rd.entries().is_empty() {
            self.node.mut_store().append(rd.entries())?;
            dirty = true;
        }
        if let Some(hs) = rd.hs() {
            self.node.mut_store().set_hard_state(hs)?;
            dirty = true;
        }
        if dirty {
            self.node.mut_store().flush()?;
        }
        self.send(rd.take_persisted_messages(), &mut snaps);
        self.apply(committed)?;
        let mut light = self.node.advance(rd);
        if let Some(c) = light.commit_index() {
            self.node.mut_store().set_commit(c)?;
        }
        self.send(light.take_messages(), &mut snaps);
        self.apply(light.take_committed_entries())?;
        self.node.advance_apply();
        // The transport is fire-and-forget: call the snapshot delivered. If
        // it was lost, the follower rejects the next append and the leader
        // sends the snapshot again.
        for to in snaps {
            self.node.report_snapshot(to, SnapshotStatus::Finish);
        }
        self.resolve_reads();
        self.maybe_snapshot()
    }

    fn status(&self, now: Instant) -> RaftStatus {
        let peers = self.node.store().peers();
        let leader = self.leader();
        RaftStatus {
            id: self.id,
            leader: (leader != raft::INVALID_ID).then_some(leader),
            term: self.node.raft.term,
            is_leader: self.node.raft.state == StateRole::Leader,
            commit: self.node.raft.raft_log.committed,
            applied: self.applied,
            voters: self
                .voters()
                .into_iter()
                .map(|id| VoterStatus {
                    id,
                    addr: peers.get(&id).copied(),
                    reachable: self.reachable(id, now),
                })
                .collect(),
            snapshot_index: self.node.store().snapshot_metadata().index,
        }
    }

    fn publish(&self, now: Instant) {
        let st = self.status(now);
        self.status_tx.send_if_modified(|cur| {
            if *cur != st {
                *cur = st;
                true
            } else {
                false
            }
        });
    }

    fn fail_all(&mut self) {
        for (_, (w, _)) in self.pending.drain() {
            w.fail(RaftError::Stopped);
        }
        for (req, _) in self.waiting.drain(..) {
            req.fail(RaftError::Stopped);
        }
        for (_, r) in self.read_waits.drain(..) {
            let _ = r.send(Err(RaftError::Stopped));
        }
    }

    fn handle(
        &mut self,
        ev: Event<S::Output>,
        now: Instant,
        stop: &mut Option<oneshot::Sender<Result<(), RaftError>>>,
    ) {
        match ev {
            Event::Inbound(b) => self.on_inbound(b, now),
            Event::Request(r) => self.submit(r, now, now),
            Event::Shutdown(tx) => *stop = Some(tx),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Event<S::Output>>) {
        let tick = self.cfg.tick;
        let mut next_tick = Instant::now() + tick;
        let mut stop = None;
        let mut fatal: Option<RaftError> = None;
        self.publish(Instant::now());
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(ev) => {
                    let now = Instant::now();
                    self.handle(ev, now, &mut stop);
                    // Drain what else is queued so it shares this Ready.
                    for _ in 0..65_536 {
                        match rx.try_recv() {
                            Ok(ev) => self.handle(ev, now, &mut stop),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if now >= next_tick {
                self.on_tick(now);
                next_tick += tick;
                if next_tick < now {
                    next_tick = now + tick;
                }
            }
            if let Err(e) = self.on_ready() {
                tracing::error!(raft_id = self.id, error = %e, "raft node stopping on a fatal error");
                fatal = Some(e);
                break;
            }
            if !self.waiting.is_empty() && self.leader() != raft::INVALID_ID && self.is_member() {
                self.retry_waiting(now);
            }
            self.publish(now);
            self.send_replies();
            if stop.is_some() {
                break;
            }
        }
        self.send_replies();
        self.fail_all();
        let flushed = self.node.mut_store().sync().map_err(RaftError::from);
        let mut st = self.status(Instant::now());
        st.leader = None;
        st.is_leader = false;
        let status_tx = self.status_tx.clone();
        // Close sled before answering, so a restart on the same directory
        // can open it right away.
        drop(self);
        status_tx.send_replace(st);
        if let Some(tx) = stop {
            let _ = tx.send(match fatal {
                Some(e) => Err(e),
                None => flushed,
            });
        }
    }
}

struct Shared<S: StateMachine> {
    id: u64,
    tx: mpsc::Sender<Event<S::Output>>,
    sm: Arc<Mutex<S>>,
    status: watch::Receiver<RaftStatus>,
    inflight: Arc<Semaphore>,
    /// Bound on how long a caller waits, past the loop's own deadlines.
    max_wait: Duration,
    stats: Arc<Stats>,
}

/// A manager's raft node: a cheap cloneable handle; the Ready loop runs on
/// its own thread (see the module docs for why).
pub struct RaftNode<S: StateMachine> {
    inner: Arc<Shared<S>>,
}

impl<S: StateMachine> Clone for RaftNode<S> {
    fn clone(&self) -> Self {
        RaftNode {
            inner: self.inner.clone(),
        }
    }
}

impl<S: StateMachine> std::fmt::Debug for RaftNode<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("id", &self.inner.id)
            .finish()
    }
}

fn validate(cfg: &RaftConfig) -> Result<(), RaftError> {
    if cfg.id == 0 {
        return Err(RaftError::Config("raft id must be nonzero".into()));
    }
    if cfg.tick.is_zero() {
        return Err(RaftError::Config("tick must be positive".into()));
    }
    if cfg.election_ticks <= cfg.heartbeat_ticks {
        return Err(RaftError::Config(format!(
            "election_ticks ({}) must exceed heartbeat_ticks ({})",
            cfg.election_ticks, cfg.heartbeat_ticks
        )));
    }
    if cfg.snapshot_every == 0 {
        return Err(RaftError::Config("snapshot_every must be positive".into()));
    }
    Ok(())
}

impl<S: StateMachine> RaftNode<S> {
    /// First manager of a new cluster: a fresh log holding a snapshot at
    /// index 1 whose conf state is {self} and whose peer map records
    /// `self_addr`. (Starting at index 1 rather than 0 means a joining
    /// manager always gets a snapshot first, so it learns the founding
    /// membership and the addresses.) Error if the data dir holds a log.
    pub async fn bootstrap(
        cfg: RaftConfig,
        self_addr: SocketAddr,
        sm: S,
        transport: Arc<dyn Transport>,
    ) -> Result<Self, RaftError> {
        validate(&cfg)?;
        let mut storage = SledStorage::create(&cfg.data_dir)?;
        let state = sm.snapshot().map_err(RaftError::StateMachine)?;
        let mut peers = PeerMap::new();
        peers.insert(cfg.id, self_addr);
        let mut snap = Snapshot::default();
        {
            let meta = snap.mut_metadata();
            meta.index = 1;
            meta.term = 1;
            meta.mut_conf_state().voters = vec![cfg.id];
        }
        snap.data = encode_envelope(&peers, &state)?.into();
        storage.apply_snapshot(&snap, peers)?;
        storage.sync()?;
        Self::start(cfg, storage, sm, transport, 1, true)
    }

    /// A manager joining an existing cluster (the leader added it with
    /// [`RaftNode::add_voter`]): an empty log; everything comes from the
    /// leader (a snapshot first). Error if the data dir holds a log.
    pub async fn join(
        cfg: RaftConfig,
        sm: S,
        transport: Arc<dyn Transport>,
    ) -> Result<Self, RaftError> {
        validate(&cfg)?;
        let storage = SledStorage::create(&cfg.data_dir)?;
        Self::start(cfg, storage, sm, transport, 0, false)
    }

    /// Restart from disk after a crash or kill -9: hard state, conf state,
    /// snapshot and entries; the snapshot is restored into `sm` and the
    /// committed entries after it are replayed. Error naming the path if
    /// the log is missing or corrupt.
    pub async fn restart(
        cfg: RaftConfig,
        sm: S,
        transport: Arc<dyn Transport>,
    ) -> Result<Self, RaftError> {
        validate(&cfg)?;
        let dir = cfg.data_dir.clone();
        let (storage, sm) = tokio::task::spawn_blocking(move || -> Result<_, RaftError> {
            let storage = SledStorage::open(&dir)?;
            let mut sm = sm;
            let meta = storage.snapshot_metadata().clone();
            if meta.index > 0 {
                let data = storage.snapshot_data()?;
                let (_, state) = decode_envelope(&data).map_err(|e| {
                    RaftError::Store(StoreError::Corrupt {
                        path: storage.path().to_path_buf(),
                        reason: format!("stored snapshot: {e}"),
                    })
                })?;
                sm.restore(state).map_err(RaftError::StateMachine)?;
            }
            Ok((storage, sm))
        })
        .await
        .map_err(|e| RaftError::Config(format!("restart task failed: {e}")))??;
        let applied = storage.snapshot_metadata().index;
        Self::start(cfg, storage, sm, transport, applied, false)
    }

    /// Whether `data_dir` holds a raft log, so the caller can choose
    /// bootstrap/join versus restart.
    pub fn exists(data_dir: &Path) -> bool {
        SledStorage::exists(data_dir)
    }

    fn start(
        cfg: RaftConfig,
        storage: SledStorage,
        sm: S,
        transport: Arc<dyn Transport>,
        applied: u64,
        campaign: bool,
    ) -> Result<Self, RaftError> {
        let rc = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied,
            check_quorum: true,
            pre_vote: true,
            read_only_option: raft::ReadOnlyOption::Safe,
            max_size_per_msg: cfg.max_size_per_msg,
            max_inflight_msgs: cfg.max_inflight_msgs,
            ..Default::default()
        };
        rc.validate()?;
        let logger = slog::Logger::root(TracingDrain { id: cfg.id }, slog::o!());
        let peers = storage.peers().clone();
        let mut node = RawNode::new(&rc, storage, &logger)?;
        if campaign {
            node.campaign()?;
        }
        transport.set_local(cfg.id, peers.get(&cfg.id).copied());
        for (id, addr) in &peers {
            if *id != cfg.id {
                transport.set_peer(*id, *addr);
            }
        }
        let (status_tx, status_rx) = watch::channel(RaftStatus {
            id: cfg.id,
            applied,
            ..Default::default()
        });
        let sm = Arc::new(Mutex::new(sm));
        let (tx, rx) = mpsc::channel();
        let id = cfg.id;
        let max_wait = cfg.propose_timeout + cfg.leader_wait + Duration::from_secs(1);
        let inflight = Arc::new(Semaphore::new(cfg.max_inflight_proposals.max(1)));
        let stats = Arc::new(Stats::default());
        let core = Core {
            stats: stats.clone(),
            id,
            node,
            sm: sm.clone(),
            transport,
            status_tx,
            incarnation: rand::random(),
            next_seq: 1,
            pending: HashMap::new(),
            waiting: VecDeque::new(),
            read_waits: Vec::new(),
            done: Vec::new(),
            last_heard: HashMap::new(),
            started: Instant::now(),
            hinted: HashMap::new(),
            applied,
            ticks: 0,
            last_leader: raft::INVALID_ID,
            submitted_under: HashMap::new(),
            cfg,
        };
        std::thread::Builder::new()
            .name(format!("raft-{id}"))
            .spawn(move || core.run(rx))
            .map_err(|e| RaftError::Config(format!("cannot start the raft thread: {e}")))?;
        Ok(RaftNode {
            inner: Arc::new(Shared {
                id,
                tx,
                sm,
                status: status_rx,
                inflight,
                max_wait,
                stats,
            }),
        })
    }

    /// This node's raft id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// A handle for delivering inbound messages without a stream (the
    /// in-memory router, simulations).
    pub fn inbox(&self) -> Inbox {
        let tx = Mutex::new(self.inner.tx.clone());
        Inbox {
            deliver: Arc::new(move |b| lock(&tx).send(Event::Inbound(b)).is_ok()),
        }
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Request<S::Output>,
    ) -> Result<T, RaftError> {
        let _permit = self
            .inner
            .inflight
            .acquire()
            .await
            .map_err(|_| RaftError::Stopped)?;
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Event::Request(make(tx)))
            .map_err(|_| RaftError::Stopped)?;
        match tokio::time::timeout(self.inner.max_wait, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(RaftError::Stopped),
            Err(_) => Err(RaftError::Timeout(self.inner.max_wait)),
        }
    }

    /// Proposes a command on any manager (followers forward to the leader).
    /// Resolves with the state machine's output once THIS node has applied
    /// the entry, so the caller's next local read sees it. Fails fast with
    /// `NoQuorum` when a majority is visibly unreachable, with `NoLeader`
    /// after `leader_wait` without a leader, else with `Timeout`.
    pub async fn propose(&self, cmd: S::Command) -> Result<S::Output, RaftError> {
        let stats = &self.inner.stats;
        stats.proposals.fetch_add(1, Relaxed);
        let r = match bincode::serde::encode_to_vec(&cmd, bincode::config::standard()) {
            Ok(data) => self.request(|reply| Request::Propose { data, reply }).await,
            Err(e) => Err(RaftError::Codec(e.to_string())),
        };
        if r.is_err() {
            stats.proposals_failed.fetch_add(1, Relaxed);
        }
        r
    }

    /// Linearizable read barrier (ReadIndex): resolves once this node has
    /// applied up to the leader's commit index at the time of the call.
    pub async fn read_barrier(&self) -> Result<(), RaftError> {
        self.request(|reply| Request::Read { reply }).await
    }

    /// Runs a closure over the applied state (a local read; call
    /// [`RaftNode::read_barrier`] first when freshness matters).
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&S) -> R + Send + 'static,
    ) -> Result<R, RaftError> {
        let g = lock(&self.inner.sm);
        Ok(f(&g))
    }

    /// Adds a voter; its address travels in the conf change so every member
    /// (and every later snapshot) knows it. Resolves when applied here.
    pub async fn add_voter(&self, id: u64, addr: SocketAddr) -> Result<(), RaftError> {
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::AddNode);
        cc.node_id = id;
        cc.context = addr.to_string().into_bytes().into();
        self.request(|reply| Request::Conf { cc, reply }).await
    }

    /// Removes a voter. Resolves when applied here.
    pub async fn remove_voter(&self, id: u64) -> Result<(), RaftError> {
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::RemoveNode);
        cc.node_id = id;
        self.request(|reply| Request::Conf { cc, reply }).await
    }

    /// Serves one inbound raft stream (the agent's TCP 2377 listener hands
    /// authenticated streams here). Returns when the peer closes; an error
    /// for a malformed frame (the connection should then be dropped).
    pub async fn serve_peer<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        mut stream: T,
    ) -> Result<(), RaftError> {
        while let Some(batch) = read_frame(&mut stream).await? {
            self.inner
                .tx
                .send(Event::Inbound(batch))
                .map_err(|_| RaftError::Stopped)?;
        }
        Ok(())
    }

    /// The current status (id, leader, term, indexes, voters and whether
    /// this node hears from them).
    pub fn status(&self) -> RaftStatus {
        self.inner.status.borrow().clone()
    }

    /// Status and counters for the metrics endpoint. Cheap (a clone of the
    /// status and a copy of the histogram); call it at scrape time.
    pub fn stats(&self) -> RaftStats {
        let st = self.status();
        let s = &self.inner.stats;
        RaftStats {
            id: st.id,
            term: st.term,
            commit_index: st.commit,
            applied_index: st.applied,
            snapshot_index: st.snapshot_index,
            is_leader: st.is_leader,
            leader_id: st.leader,
            voters: st.voters.len() as u64,
            voters_reachable: st.voters.iter().filter(|v| v.reachable).count() as u64,
            proposals_total: s.proposals.load(Relaxed),
            proposals_failed_total: s.proposals_failed.load(Relaxed),
            apply_latency: s.apply_latency.snapshot(),
        }
    }

    /// A watch channel that fires when the leader, term, commit or applied
    /// index, membership or reachability changes.
    pub fn subscribe(&self) -> watch::Receiver<RaftStatus> {
        self.inner.status.clone()
    }

    /// Stops the loop, flushes and closes the log (so a restart on the same
    /// directory works in-process). Other handles then get `Stopped`.
    pub async fn shutdown(self) -> Result<(), RaftError> {
        let (tx, rx) = oneshot::channel();
        if self.inner.tx.send(Event::Shutdown(tx)).is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemRouter;

    /// Counts applied commands; enough to drive a node.
    #[derive(Default)]
    struct Count(u64);

    impl StateMachine for Count {
        type Command = u64;
        type Output = u64;
        fn apply(&mut self, _index: u64, cmd: u64) -> u64 {
            self.0 += cmd;
            self.0
        }
        fn snapshot(&self) -> Result<Vec<u8>, String> {
            Ok(self.0.to_be_bytes().to_vec())
        }
        fn restore(&mut self, data: &[u8]) -> Result<(), String> {
            let b: [u8; 8] = data.try_into().map_err(|_| "bad snapshot".to_string())?;
            self.0 = u64::from_be_bytes(b);
            Ok(())
        }
    }

    #[test]
    fn histogram_buckets_values_by_upper_bound() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(100)); // <= 0.0005
        h.observe(Duration::from_micros(500)); // exactly on 0.0005: le is inclusive
        h.observe(Duration::from_millis(3)); // <= 0.005
        h.observe(Duration::from_secs(60)); // overflow
        let s = h.snapshot();
        assert_eq!(s.bounds, APPLY_LATENCY_BOUNDS.to_vec());
        assert_eq!(s.counts.len(), APPLY_LATENCY_BOUNDS.len() + 1);
        assert_eq!(s.counts[0], 2);
        assert_eq!(s.counts[3], 1);
        assert_eq!(s.counts[APPLY_LATENCY_BOUNDS.len()], 1);
        assert_eq!(s.count, 4);
        assert_eq!(s.counts.iter().sum::<u64>(), s.count);
        assert!((s.sum - 60.0036).abs() < 1e-9, "sum {}", s.sum);
        let cum = s.cumulative();
        assert!(cum.windows(2).all(|w| w[0] <= w[1]), "{cum:?}");
        assert_eq!(cum[0], 2);
        assert_eq!(cum[3], 3);
        assert_eq!(cum.last().copied(), Some(4));
    }

    #[tokio::test]
    async fn stats_count_proposals_latency_and_failures() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RaftConfig {
            id: 1,
            data_dir: dir.path().to_path_buf(),
            tick: Duration::from_millis(20),
            leader_wait: Duration::from_secs(2),
            propose_timeout: Duration::from_secs(5),
            ..RaftConfig::default()
        };
        let router = MemRouter::new();
        let addr = SocketAddr::from(([127, 0, 0, 1], 20_001));
        let node = RaftNode::bootstrap(cfg, addr, Count::default(), router.endpoint(1))
            .await
            .unwrap();
        router.register(1, node.inbox());

        let before = node.stats();
        assert_eq!(before.proposals_total, 0);
        assert_eq!(before.apply_latency.count, 0);

        for i in 1..=5u64 {
            node.propose(i).await.unwrap();
        }
        let s = node.stats();
        assert_eq!(s.id, 1);
        assert!(s.is_leader);
        assert_eq!(s.leader_id, Some(1));
        assert!(s.term >= 1);
        assert_eq!(s.voters, 1);
        assert_eq!(s.voters_reachable, 1);
        assert!(s.applied_index >= 6, "bootstrap snapshot at 1 + 5 entries");
        assert!(s.commit_index >= s.applied_index);
        assert_eq!(s.proposals_total, 5);
        assert_eq!(s.proposals_failed_total, 0);
        // Every own proposal resolved after its apply was observed.
        assert_eq!(s.apply_latency.count, 5);
        assert_eq!(s.apply_latency.counts.iter().sum::<u64>(), 5);
        assert!(s.apply_latency.sum > 0.0 && s.apply_latency.sum < 25.0);

        let other = node.clone();
        node.shutdown().await.unwrap();
        assert!(other.propose(7).await.is_err());
        let s = other.stats();
        assert_eq!(s.proposals_total, 6);
        assert_eq!(s.proposals_failed_total, 1);
        assert_eq!(s.apply_latency.count, 5);
        assert!(!s.is_leader);
    }
}
