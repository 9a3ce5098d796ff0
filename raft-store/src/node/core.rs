//! The loop thread of a raft node: owns the raft-rs `RawNode`, takes
//! requests and inbound messages from its channel, ticks, and handles each
//! Ready in the order raft-rs requires (see the parent module).

use super::*;

/// A cheap cloneable way to hand inbound messages to a node without a
/// stream (the in-memory router; simulations).
#[derive(Clone)]
pub struct Inbox {
    pub(super) deliver: Arc<dyn Fn(Batch) -> bool + Send + Sync>,
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

pub(super) type Reply<T> = oneshot::Sender<Result<T, RaftError>>;

pub(super) enum Request<O> {
    Propose { data: Vec<u8>, reply: Reply<O> },
    Conf { cc: ConfChange, reply: Reply<()> },
    Read { reply: Reply<()> },
}

impl<O> Request<O> {
    pub(super) fn fail(self, e: RaftError) {
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

pub(super) enum Event<O> {
    Inbound(Batch),
    Request(Request<O>),
    Shutdown(oneshot::Sender<Result<(), RaftError>>),
}

/// An answer held until the status reflecting it has been published, so a
/// caller whose proposal resolved sees `status().applied` include it.
pub(super) enum Done<O> {
    Cmd(Reply<O>, O),
    Unit(Reply<()>),
}

pub(super) enum Waiter<O> {
    /// A command and when it was first submitted to the loop (for the
    /// apply-latency histogram).
    Cmd(Reply<O>, Instant),
    Unit(Reply<()>),
}

impl<O> Waiter<O> {
    pub(super) fn fail(self, e: RaftError) {
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

/// The loop's state: everything here lives on the loop thread.
pub(super) struct Core<S: StateMachine> {
    /// Inbound batches queued (see `Shared::deliver`).
    pub(super) inbound: Arc<AtomicUsize>,
    pub(super) id: u64,
    pub(super) cfg: RaftConfig,
    pub(super) node: RawNode<SledStorage>,
    pub(super) sm: super::SharedState<S>,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) status_tx: watch::Sender<RaftStatus>,
    /// Random per-process value in proposal ids: entries proposed before a
    /// restart must not resolve proposals made after it.
    pub(super) incarnation: u64,
    pub(super) next_seq: u64,
    pub(super) pending: HashMap<u64, (Waiter<S::Output>, Instant)>,
    pub(super) waiting: VecDeque<(Request<S::Output>, Instant)>,
    pub(super) read_waits: Vec<(u64, Reply<()>)>,
    pub(super) done: Vec<Done<S::Output>>,
    pub(super) last_heard: HashMap<u64, Instant>,
    pub(super) started: Instant,
    pub(super) hinted: HashMap<u64, SocketAddr>,
    pub(super) applied: u64,
    pub(super) ticks: u64,
    /// Leader seen at the previous tick, to notice leader changes.
    pub(super) last_leader: u64,
    /// Leader each pending request was submitted under.
    pub(super) submitted_under: HashMap<u64, u64>,
    /// Shared with the handle, for [`RaftNode::stats`].
    pub(super) stats: Arc<Stats>,
}

pub(super) const CTX_LEN: usize = 24;

impl<S: StateMachine> Core<S> {
    pub(super) fn election_timeout(&self) -> Duration {
        self.cfg.tick * self.cfg.election_ticks as u32
    }

    pub(super) fn ctx(&self, seq: u64) -> Vec<u8> {
        let mut c = Vec::with_capacity(CTX_LEN);
        c.extend_from_slice(&self.id.to_be_bytes());
        c.extend_from_slice(&self.incarnation.to_be_bytes());
        c.extend_from_slice(&seq.to_be_bytes());
        c
    }

    /// The sequence number of a context proposed by this very process.
    pub(super) fn own_seq(&self, ctx: &[u8]) -> Option<u64> {
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

    pub(super) fn leader(&self) -> u64 {
        self.node.raft.leader_id
    }

    pub(super) fn voters(&self) -> Vec<u64> {
        let mut v = self.node.store().conf_state().voters.clone();
        v.sort_unstable();
        v
    }

    pub(super) fn is_member(&self) -> bool {
        self.node.store().conf_state().voters.contains(&self.id)
    }

    pub(super) fn reachable(&self, id: u64, now: Instant) -> bool {
        if id == self.id {
            return true;
        }
        let t = self.last_heard.get(&id).copied().unwrap_or(self.started);
        now.saturating_duration_since(t) < self.election_timeout()
    }

    /// `NoQuorum` when this node can tell a majority of voters is unreachable.
    pub(super) fn quorum_error(&self, now: Instant) -> Option<RaftError> {
        let voters = &self.node.store().conf_state().voters;
        if !voters.contains(&self.id) {
            // Not (yet) a member by its own log: it cannot judge.
            return None;
        }
        let total = voters.len();
        let reachable = voters.iter().filter(|v| self.reachable(**v, now)).count();
        (reachable * 2 <= total).then_some(RaftError::NoQuorum { reachable, total })
    }

    pub(super) fn submit(&mut self, req: Request<S::Output>, since: Instant, now: Instant) {
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

    pub(super) fn on_inbound(&mut self, batch: Batch, now: Instant) {
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

    pub(super) fn on_tick(&mut self, now: Instant) {
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

    pub(super) fn retry_waiting(&mut self, now: Instant) {
        let waiting = std::mem::take(&mut self.waiting);
        for (req, since) in waiting {
            self.submit(req, since, now);
        }
    }

    pub(super) fn send(&mut self, msgs: Vec<Message>, snaps: &mut Vec<u64>) {
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

    pub(super) fn set_peers(&mut self, old: &PeerMap, new: &PeerMap) {
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

    pub(super) fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), RaftError> {
        let (peers, state) = decode_envelope(&snap.data)?;
        Arc::make_mut(&mut lock(&self.sm))
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

    pub(super) fn on_read_states(&mut self, states: Vec<ReadState>) {
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

    pub(super) fn apply_conf_change(&mut self, e: &Entry) -> Result<(), RaftError> {
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

    pub(super) fn apply(&mut self, entries: Vec<Entry>) -> Result<(), RaftError> {
        if entries.is_empty() {
            return Ok(());
        }
        let sm = self.sm.clone();
        let mut guard = lock(&sm);
        // One clock read per batch: the latencies it measures are
        // milliseconds, the batch takes microseconds.
        let now = Instant::now();
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
                        match S::decode_command(&e.data) {
                            Ok(cmd) => {
                                let out = Arc::make_mut(&mut guard).apply(e.index, cmd);
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
                                    w.fail(RaftError::Codec(err));
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

    pub(super) fn resolve_reads(&mut self) {
        let applied = self.applied;
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.read_waits)
            .into_iter()
            .partition(|(idx, _)| *idx <= applied);
        self.read_waits = keep;
        self.done
            .extend(done.into_iter().map(|(_, r)| Done::Unit(r)));
    }

    pub(super) fn send_replies(&mut self) {
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

    pub(super) fn maybe_snapshot(&mut self) -> Result<(), RaftError> {
        let store = self.node.store();
        let snap_idx = store.snapshot_metadata().index;
        let wanted = store.take_snapshot_wanted();
        if self.applied <= snap_idx
            || (self.applied - snap_idx < self.cfg.snapshot_every && !wanted)
        {
            return Ok(());
        }
        let current = lock(&self.sm).clone();
        let state = match current.snapshot() {
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

    pub(super) fn on_ready(&mut self) -> Result<(), RaftError> {
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

    pub(super) fn status(&self, now: Instant) -> RaftStatus {
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
            fatal: None,
        }
    }

    pub(super) fn publish(&self, now: Instant) {
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

    pub(super) fn fail_all(&mut self) {
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

    pub(super) fn handle(
        &mut self,
        ev: Event<S::Output>,
        now: Instant,
        stop: &mut Option<oneshot::Sender<Result<(), RaftError>>>,
    ) {
        match ev {
            Event::Inbound(b) => {
                self.inbound.fetch_sub(1, Relaxed);
                self.on_inbound(b, now)
            }
            Event::Request(r) => self.submit(r, now, now),
            Event::Shutdown(tx) => *stop = Some(tx),
        }
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<Event<S::Output>>) {
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
        st.fatal = fatal.as_ref().map(|e| e.to_string());
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
