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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

mod core;
mod log;
mod status;

pub use self::core::Inbox;
use self::core::*;
use self::log::TracingDrain;
pub use self::status::*;

/// Snapshot payload: the peer address map travels with the state so a node
/// restored from a snapshot can reach every member.
/// Layout: `u32 BE peers_len | peers (bincode) | state machine bytes`.
pub(super) fn encode_envelope(peers: &PeerMap, state: &[u8]) -> Result<Vec<u8>, RaftError> {
    let p = encode_peers(peers).map_err(RaftError::Codec)?;
    let len = u32::try_from(p.len()).map_err(|_| RaftError::Codec("peer map too large".into()))?;
    let mut out = Vec::with_capacity(4 + p.len() + state.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&p);
    out.extend_from_slice(state);
    Ok(out)
}

pub(super) fn decode_envelope(data: &[u8]) -> Result<(PeerMap, &[u8]), RaftError> {
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

/// The applied state: apply changes it in place unless a reader still
/// holds the previous version (then it is copied first, once per batch);
/// a reader takes the current version and reads it without the lock.
pub(super) type SharedState<S> = Arc<Mutex<Arc<S>>>;

struct Shared<S: StateMachine> {
    id: u64,
    /// Bounded: [`INBOUND_QUEUE`] inbound batches plus room for every
    /// request in flight (and a shutdown).
    tx: mpsc::SyncSender<Event<S::Output>>,
    /// Inbound batches queued and not yet taken by the loop.
    inbound: Arc<AtomicUsize>,
    sm: SharedState<S>,
    status: watch::Receiver<RaftStatus>,
    inflight: Arc<Semaphore>,
    /// Bound on how long a caller waits, past the loop's own deadlines.
    max_wait: Duration,
    stats: Arc<Stats>,
}

/// Inbound batches queued for the loop before more are dropped: a peer (or
/// anyone holding a manager certificate) sending faster than the loop can
/// step must not grow memory without bound. Raft tolerates the loss.
pub const INBOUND_QUEUE: usize = 4096;

impl<S: StateMachine> Shared<S> {
    /// Queue an inbound batch, or drop it (counted) when the queue is full.
    fn deliver(&self, batch: Batch) -> Result<(), RaftError> {
        if self.inbound.fetch_add(1, Relaxed) >= INBOUND_QUEUE {
            self.inbound.fetch_sub(1, Relaxed);
            self.stats.inbound_dropped.fetch_add(1, Relaxed);
            return Ok(());
        }
        self.tx.try_send(Event::Inbound(batch)).map_err(|e| {
            self.inbound.fetch_sub(1, Relaxed);
            match e {
                mpsc::TrySendError::Full(_) => {
                    self.stats.inbound_dropped.fetch_add(1, Relaxed);
                    RaftError::Dropped("the raft queue is full".into())
                }
                mpsc::TrySendError::Disconnected(_) => RaftError::Stopped,
            }
        })
    }
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

/// The sender a batch claims when it is not `id` (the batch header or any
/// message in it).
fn impersonated(batch: &Batch, id: u64) -> Option<u64> {
    if batch.from != id {
        return Some(batch.from);
    }
    batch.msgs.iter().map(|m| m.from).find(|f| *f != id)
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
        let sm = Arc::new(Mutex::new(Arc::new(sm)));
        let (tx, rx) = mpsc::sync_channel(INBOUND_QUEUE + cfg.max_inflight_proposals.max(1) + 1);
        let inbound = Arc::new(AtomicUsize::new(0));
        let id = cfg.id;
        let max_wait = cfg.propose_timeout + cfg.leader_wait + Duration::from_secs(1);
        let inflight = Arc::new(Semaphore::new(cfg.max_inflight_proposals.max(1)));
        let stats = Arc::new(Stats::default());
        let core = Core {
            stats: stats.clone(),
            inbound: inbound.clone(),
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
        let on_panic = core.status_tx.clone();
        std::thread::Builder::new()
            .name(format!("raft-{id}"))
            .spawn(move || {
                // A panic here (the loop, raft-rs, the state machine) must
                // not leave a manager that answers but never commits.
                let run = std::panic::AssertUnwindSafe(|| core.run(rx));
                if let Err(p) = std::panic::catch_unwind(run) {
                    let what = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    tracing::error!(raft_id = id, "raft loop panicked: {what}");
                    on_panic.send_modify(|st| {
                        st.leader = None;
                        st.is_leader = false;
                        st.fatal = Some(format!("raft loop panicked: {what}"));
                    });
                }
            })
            .map_err(|e| RaftError::Config(format!("cannot start the raft thread: {e}")))?;
        Ok(RaftNode {
            inner: Arc::new(Shared {
                id,
                tx,
                inbound,
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
        let inner = self.inner.clone();
        Inbox {
            deliver: Arc::new(move |b| inner.deliver(b).is_ok()),
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
        // Room is reserved: at most `inflight` requests are queued.
        self.inner
            .tx
            .try_send(Event::Request(make(tx)))
            .map_err(|e| match e {
                mpsc::TrySendError::Full(_) => RaftError::Dropped("the raft queue is full".into()),
                mpsc::TrySendError::Disconnected(_) => RaftError::Stopped,
            })?;
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
        let r = match S::encode_command(&cmd) {
            Ok(data) => self.request(|reply| Request::Propose { data, reply }).await,
            Err(e) => Err(RaftError::Codec(e)),
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
        // The applied state as of now, shared: `f` runs without holding
        // the lock apply needs, however long it takes.
        let snapshot = lock(&self.inner.sm).clone();
        Ok(f(&snapshot))
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
        stream: T,
    ) -> Result<(), RaftError> {
        self.serve_stream(stream, None).await
    }

    /// [`RaftNode::serve_peer`] for a stream whose sender is known from its
    /// certificate to be raft id `from`: a batch or message claiming any
    /// other sender is an impersonation, and ends the stream with an error.
    pub async fn serve_peer_as<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        stream: T,
        from: u64,
    ) -> Result<(), RaftError> {
        self.serve_stream(stream, Some(from)).await
    }

    async fn serve_stream<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        mut stream: T,
        from: Option<u64>,
    ) -> Result<(), RaftError> {
        while let Some(batch) = read_frame(&mut stream).await? {
            if let Some(id) = from {
                if let Some(claimed) = impersonated(&batch, id) {
                    return Err(RaftError::Impersonation { peer: id, claimed });
                }
            }
            self.inner.deliver(batch)?;
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
            inbound_dropped_total: s.inbound_dropped.load(Relaxed),
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
        if self.inner.tx.try_send(Event::Shutdown(tx)).is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_claiming_another_sender_is_an_impersonation() {
        let msg = |from: u64| Message {
            from,
            ..Default::default()
        };
        let batch = |from: u64, msgs: Vec<Message>| Batch {
            from,
            from_addr: None,
            msgs,
        };
        assert_eq!(impersonated(&batch(7, vec![msg(7), msg(7)]), 7), None);
        assert_eq!(impersonated(&batch(8, vec![msg(7)]), 7), Some(8));
        assert_eq!(impersonated(&batch(7, vec![msg(7), msg(9)]), 7), Some(9));
        assert_eq!(impersonated(&batch(7, vec![]), 7), None);
    }
    use crate::mem::MemRouter;

    /// Counts applied commands; enough to drive a node.
    #[derive(Default, Clone)]
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

    /// A one-voter node on the in-memory transport (keep the dir and the
    /// router alive as long as the node).
    async fn single_node(port: u16) -> (tempfile::TempDir, MemRouter, RaftNode<Count>) {
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
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let node = RaftNode::bootstrap(cfg, addr, Count::default(), router.endpoint(1))
            .await
            .unwrap();
        router.register(1, node.inbox());
        (dir, router, node)
    }

    /// A reader sees the state as of when it started and does not hold
    /// up apply: proposals commit while a slow reader is still reading.
    #[tokio::test]
    async fn a_slow_reader_never_holds_up_apply() {
        let (_dir, _router, node) = single_node(20_002).await;
        node.propose(1).await.unwrap();
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let reader = {
            let node = node.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                rt.block_on(node.read(move |c: &Count| {
                    entered_tx.send(c.0).unwrap();
                    // Held until the writes below are applied.
                    release_rx.recv_timeout(Duration::from_secs(30)).unwrap();
                    c.0
                }))
                .unwrap()
            })
        };
        assert_eq!(entered_rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        for i in 2..=4u64 {
            tokio::time::timeout(Duration::from_secs(5), node.propose(i))
                .await
                .expect("apply waited for the reader")
                .unwrap();
        }
        assert_eq!(node.read(|c: &Count| c.0).await.unwrap(), 1 + 2 + 3 + 4);
        release_tx.send(()).unwrap();
        assert_eq!(reader.join().unwrap(), 1, "the reader kept its version");
    }

    #[tokio::test]
    async fn stats_count_proposals_latency_and_failures() {
        let (_dir, _router, node) = single_node(20_001).await;

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
