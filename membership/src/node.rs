//! The sans-IO core of one gossip member: foca (SWIM) plus the replicated
//! tables. It never touches a socket, a clock or the OS RNG: callers pass
//! the wall-clock time in milliseconds (for versions and tombstones), feed it
//! datagrams, fired timers and sync frames, and execute the [`Output`]s it
//! returns. The tokio driver and the simulation both drive this same type.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use foca::{
    AccumulatingRuntime, BroadcastHandler, Foca, Invalidates, OwnedNotification, PostcardCodec,
};
use rand10::rngs::SmallRng;
use rand10::{RngExt, SeedableRng};

use crate::auth::EntryAuth;
use crate::codec::{CodecError, Frame, WireEntry};
pub use crate::ident::Ident;
pub use crate::store::SyncSession;
use crate::store::{key_hash, Store, Verdict};
use crate::types::{
    check_len, Entry, Event, GossipError, MemberInfo, MemberState, MemberView, MAX_KEY_LEN,
    MAX_NODE_ID_LEN, MAX_TABLE_LEN, MAX_VALUE_LEN,
};
use crate::GossipConfig;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A foca timer the driver must hand back after the delay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTimer(foca::Timer<Ident>);

/// Something the driver must do.
#[derive(Clone, Debug)]
pub enum Output {
    /// Send this plaintext datagram (seal it first) to `to`.
    Send {
        /// Destination gossip address.
        to: SocketAddr,
        /// Plaintext, at most `max_packet - SEAL_OVERHEAD` bytes.
        data: Bytes,
    },
    /// Call [`Node::handle_timer`] with `timer` after `after`.
    Schedule {
        /// Delay.
        after: Duration,
        /// The timer to hand back.
        timer: NodeTimer,
    },
    /// Tell subscribers.
    Event(Event),
}

/// Broadcast key: a newer update of the same entry replaces the older one
/// still waiting in foca's backlog.
#[derive(Debug)]
pub(crate) struct ItemKey(u64);

impl Invalidates for ItemKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

/// foca's custom-broadcast hook: applies table updates and says which are news.
pub(crate) struct Handler {
    store: Arc<Mutex<Store>>,
}

impl BroadcastHandler<Ident> for Handler {
    type Key = ItemKey;
    type Error = CodecError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&Ident>,
    ) -> Result<Option<ItemKey>, CodecError> {
        let e = WireEntry::from_item(data)?;
        let key = ItemKey(key_hash(&e.table, &e.key));
        if sender.is_none() {
            // Our own write (already applied by the node): always news.
            return Ok(Some(key));
        }
        let mut s = lock(&self.store);
        match s.apply_remote(e) {
            Verdict::New => {
                s.news += 1;
                Ok(Some(key))
            }
            Verdict::Old | Verdict::Rejected => Ok(None),
        }
    }
}

type Swim = Foca<Ident, PostcardCodec, SmallRng, Handler>;

/// One gossip member's protocol state.
pub struct Node {
    foca: Swim,
    rt: AccumulatingRuntime<Ident>,
    store: Arc<Mutex<Store>>,
    rng: SmallRng,
    joined: bool,
    /// `broadcast()` calls that spend an update's whole retransmit budget.
    push_rounds: usize,
    out: Vec<Output>,
}

impl Node {
    /// A member `info` in its `generation`-th life (use the start time in ms
    /// so restarts grow it), with all randomness derived from `seed`.
    pub fn new(
        cfg: &GossipConfig,
        info: MemberInfo,
        generation: u64,
        seed: u64,
    ) -> Result<Self, GossipError> {
        cfg.validate()?;
        check_len("node id", info.node_id.as_bytes(), MAX_NODE_ID_LEN)?;
        if info.node_id.is_empty() {
            return Err(GossipError::Config("node id is empty".into()));
        }
        let store = Arc::new(Mutex::new(Store::new(
            info.node_id.clone(),
            generation,
            cfg.tombstone_ttl.as_millis().min(u128::from(u64::MAX)) as u64,
        )));
        let foca = Foca::with_custom_broadcast(
            Ident::new(info, generation),
            cfg.to_foca(),
            SmallRng::seed_from_u64(seed),
            PostcardCodec,
            Handler {
                store: store.clone(),
            },
        );
        Ok(Node {
            foca,
            rt: AccumulatingRuntime::new(),
            store,
            rng: SmallRng::seed_from_u64(seed ^ 0x5eed),
            joined: false,
            push_rounds: usize::from(cfg.max_transmissions()).div_ceil(cfg.indirect_probes.max(1)),
            out: Vec::new(),
        })
    }

    /// Current identity (the generation grows on rejoin).
    pub fn identity(&self) -> &Ident {
        self.foca.identity()
    }

    /// True once at least one other member answered.
    pub fn is_joined(&self) -> bool {
        self.joined
    }

    /// Takes what the driver must do now.
    pub fn drain(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    fn set_now(&self, now_ms: u64) {
        lock(&self.store).now_ms = now_ms;
    }

    /// Asks the member at `addr` (a seed) to let us in.
    pub fn announce(&mut self, now_ms: u64, addr: SocketAddr) {
        self.set_now(now_ms);
        if let Err(e) = self.foca.announce(Ident::seed(addr), &mut self.rt) {
            tracing::debug!(%addr, error = %e, "announce failed");
        }
        self.settle();
    }

    /// A datagram arrived (already opened). Errors mean a malformed packet.
    pub fn handle_data(&mut self, now_ms: u64, data: &[u8]) -> Result<(), GossipError> {
        self.set_now(now_ms);
        let r = self.foca.handle_data(data, &mut self.rt);
        self.settle();
        r.map_err(|e| GossipError::Swim(e.to_string()))
    }

    /// A timer scheduled through [`Output::Schedule`] fired.
    pub fn handle_timer(&mut self, now_ms: u64, timer: NodeTimer) {
        self.set_now(now_ms);
        if let Err(e) = self.foca.handle_timer(timer.0, &mut self.rt) {
            tracing::debug!(error = %e, "timer");
        }
        self.settle();
    }

    /// Sign this node's entries with `auth` and accept others' only with
    /// their owner's signature (see [`crate::auth`]). Set it before the
    /// first announce.
    pub fn set_auth(&mut self, auth: Option<Arc<dyn EntryAuth>>) {
        lock(&self.store).set_auth(auth);
    }

    /// The members' keys changed: entries held for an unknown owner are
    /// checked again (and passed on when now valid).
    pub fn keys_changed(&mut self, now_ms: u64) {
        self.set_now(now_ms);
        lock(&self.store).retry_pending();
        self.settle();
    }

    /// Broadcast an entry claiming to be `owner`'s, signed with this
    /// node's own key: what a hostile member would send. Attack tests only.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub fn forge(
        &mut self,
        now_ms: u64,
        table: &str,
        key: &str,
        owner: &str,
        gen: u64,
        value: Vec<u8>,
        deleted: bool,
    ) {
        self.set_now(now_ms);
        let e = lock(&self.store).forge(table, key, owner, gen, value, deleted);
        self.push(&e.to_item());
    }

    /// Entries refused on arrival: (bad signature, unknown owner, clock
    /// too far ahead).
    pub fn refused(&self) -> (u64, u64, u64) {
        let r = lock(&self.store).refused;
        (r.forged, r.unknown_owner, r.bad_clock)
    }

    /// Writes an entry owned by this node and pushes it at once.
    pub fn put(
        &mut self,
        now_ms: u64,
        table: &str,
        key: &str,
        value: Vec<u8>,
    ) -> Result<(), GossipError> {
        check_len("table name", table.as_bytes(), MAX_TABLE_LEN)?;
        check_len("key", key.as_bytes(), MAX_KEY_LEN)?;
        check_len("value", &value, MAX_VALUE_LEN)?;
        self.set_now(now_ms);
        let e = lock(&self.store).put(table, key, value);
        self.push(&e.to_item());
        Ok(())
    }

    /// Deletes an entry owned by this node (no-op for others' or missing ones).
    pub fn delete(&mut self, now_ms: u64, table: &str, key: &str) {
        self.set_now(now_ms);
        let e = lock(&self.store).delete(table, key);
        if let Some(e) = e {
            self.push(&e.to_item());
        }
    }

    fn push(&mut self, item: &[u8]) {
        if let Err(e) = self.foca.add_broadcast(item) {
            tracing::warn!(error = %e, "broadcast refused");
        }
        self.push_now();
        self.settle();
    }

    /// Sends pending updates at once, spending their whole retransmit budget
    /// (`max_transmissions` sends, `indirect_probes` members per round) now
    /// rather than over the next gossip rounds: a push to f random members
    /// misses about e^-f of the cluster, so a single round of 3 would leave
    /// ~5 % waiting for the periodic gossip.
    fn push_now(&mut self) {
        for _ in 0..self.push_rounds {
            if self.foca.custom_broadcast_backlog() == 0 {
                break;
            }
            if let Err(e) = self.foca.broadcast(&mut self.rt) {
                tracing::debug!(error = %e, "broadcast");
                break;
            }
        }
    }

    /// Adds members we already know of without announcing to them: the
    /// simulation starts from a formed cluster this way (and a restart could
    /// restore a saved view).
    pub fn add_members(&mut self, ids: Vec<Ident>) {
        let me = self.foca.identity().gossip_addr;
        let members = ids
            .into_iter()
            .filter(|i| i.gossip_addr != me)
            .map(foca::Member::alive);
        if let Err(e) = self.foca.apply_many(members, false, &mut self.rt) {
            tracing::debug!(error = %e, "add members");
        }
        self.settle();
    }

    /// Announces our departure; the node should be dropped afterwards.
    pub fn leave(&mut self) {
        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
            tracing::debug!(error = %e, "leave");
        }
        self.settle();
    }

    /// Drops expired tombstones; returns how many.
    pub fn reap(&mut self, now_ms: u64) -> usize {
        let mut s = lock(&self.store);
        s.now_ms = now_ms;
        s.reap()
    }

    /// A random active member to run anti-entropy with.
    pub fn pick_sync_peer(&mut self) -> Option<SocketAddr> {
        let n = self.foca.num_members();
        if n == 0 {
            return None;
        }
        let i = self.rng.random_range(0..n);
        self.foca.iter_members().nth(i).map(|m| m.id().gossip_addr)
    }

    /// Opens an anti-entropy exchange: the session and the first frame.
    pub fn sync_open(&mut self) -> (SyncSession, Vec<u8>) {
        let (s, f) = lock(&self.store).sync_open();
        (s, f.encode())
    }

    /// The answering side of an exchange.
    pub fn sync_accept(&self) -> SyncSession {
        SyncSession::responder()
    }

    /// One received frame (raw, unpacked) of an exchange; returns frames to send.
    pub fn sync_frame(
        &mut self,
        now_ms: u64,
        s: &mut SyncSession,
        frame: &[u8],
    ) -> Result<Vec<Vec<u8>>, GossipError> {
        let f = Frame::decode(frame).map_err(|e| GossipError::Swim(format!("sync frame: {e}")))?;
        let out = {
            let mut st = lock(&self.store);
            st.now_ms = now_ms;
            st.sync_step(s, f)
        };
        self.settle();
        let out = out.map_err(|e| GossipError::Swim(format!("sync frame: {e}")))?;
        Ok(out.iter().map(Frame::encode).collect())
    }

    /// Live entries of `table`, sorted by key.
    pub fn entries(&self, table: &str) -> Vec<Entry> {
        lock(&self.store).entries(table)
    }

    /// Tables with at least one live entry.
    pub fn tables(&self) -> Vec<String> {
        lock(&self.store).tables()
    }

    /// Live entries in all tables.
    pub fn live_entries(&self) -> usize {
        lock(&self.store).live_count()
    }

    /// The local membership view, self included.
    pub fn members(&self) -> Vec<MemberView> {
        let me = self.foca.identity();
        let mut v = vec![MemberView {
            info: me.info(),
            state: MemberState::Alive,
            incarnation: me.generation,
        }];
        for m in self.foca.iter_membership_state() {
            v.push(MemberView {
                info: m.id().info(),
                state: match m.state() {
                    foca::State::Alive => MemberState::Alive,
                    foca::State::Suspect => MemberState::Suspect,
                    foca::State::Down => MemberState::Down,
                },
                incarnation: m.id().generation,
            });
        }
        v
    }

    /// Active members other than us.
    pub fn num_members(&self) -> usize {
        self.foca.num_members()
    }

    /// Runs the consequences of the last call until nothing is left:
    /// membership notifications into the store, re-announcements and
    /// immediate pushes of news, then hands sends/timers/events to `out`.
    fn settle(&mut self) {
        for _ in 0..64 {
            while let Some(n) = self.rt.to_notify() {
                self.notified(n);
            }
            let (outbox, news) = {
                let mut s = lock(&self.store);
                (std::mem::take(&mut s.outbox), std::mem::take(&mut s.news))
            };
            if outbox.is_empty() && news == 0 {
                break;
            }
            for item in &outbox {
                if let Err(e) = self.foca.add_broadcast(item) {
                    tracing::warn!(error = %e, "re-announce refused");
                }
            }
            // Push news on at once instead of waiting for the next gossip round.
            self.push_now();
        }
        while let Some((to, data)) = self.rt.to_send() {
            self.out.push(Output::Send {
                to: to.gossip_addr,
                data,
            });
        }
        while let Some((after, timer)) = self.rt.to_schedule() {
            self.out.push(Output::Schedule {
                after,
                timer: NodeTimer(timer),
            });
        }
        let events = std::mem::take(&mut lock(&self.store).events);
        self.out.extend(events.into_iter().map(Output::Event));
    }

    fn notified(&mut self, n: OwnedNotification<Ident>) {
        match n {
            OwnedNotification::MemberUp(id) => {
                lock(&self.store).member_up(&id.node_id, id.generation);
                self.out.push(Output::Event(Event::MemberUp(id.info())));
            }
            OwnedNotification::MemberDown(id) => {
                lock(&self.store).member_down(&id.node_id, id.generation);
                self.out.push(Output::Event(Event::MemberDown(id.info())));
            }
            OwnedNotification::Rename(old, new) => {
                let mut s = lock(&self.store);
                if old.node_id != new.node_id {
                    s.member_down(&old.node_id, old.generation);
                }
                s.member_up(&new.node_id, new.generation);
                drop(s);
                self.out.push(Output::Event(Event::MemberUp(new.info())));
            }
            OwnedNotification::Rejoin(me) => {
                tracing::info!(
                    generation = me.generation,
                    "declared down by the cluster; rejoined"
                );
                lock(&self.store).rejoin(me.generation);
            }
            OwnedNotification::Active => self.joined = true,
            OwnedNotification::Idle | OwnedNotification::Defunct => self.joined = false,
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::pack;
    use crate::crypto::SEAL_OVERHEAD;
    use crate::EndpointRecord;
    use std::net::{IpAddr, Ipv4Addr};

    fn node(i: u8) -> Node {
        let a = SocketAddr::from(([10, 0, 0, i], 7946));
        let info = MemberInfo {
            node_id: format!("node{i}"),
            gossip_addr: a,
            advertise_addr: a.ip(),
            data_path_addr: a.ip(),
        };
        Node::new(&GossipConfig::lan(a), info, 1_700_000_000_000, u64::from(i)).unwrap()
    }

    /// Runs one exchange a -> b; returns wire bytes (length prefix + sealed packed frames).
    fn exchange(a: &mut Node, b: &mut Node, now: u64) -> u64 {
        let (mut sa, first) = a.sync_open();
        let mut sb = b.sync_accept();
        let wire = |f: &Vec<u8>| (4 + SEAL_OVERHEAD + pack(f).len()) as u64;
        let mut bytes = wire(&first);
        let mut to_b = vec![first];
        while !(sa.is_done() && sb.is_done()) {
            let mut to_a = Vec::new();
            for f in to_b.drain(..) {
                to_a.extend(b.sync_frame(now, &mut sb, &f).unwrap());
            }
            bytes += to_a.iter().map(wire).sum::<u64>();
            for f in to_a {
                to_b.extend(a.sync_frame(now, &mut sa, &f).unwrap());
            }
            bytes += to_b.iter().map(wire).sum::<u64>();
        }
        bytes
    }

    /// Hostile plaintext (as from a key holder gone bad) and replays never
    /// panic the core; replays change nothing.
    #[test]
    fn hostile_and_replayed_datagrams() {
        use rand10::{Rng, RngExt, SeedableRng};
        let mut a = node(1);
        let mut b = node(2);
        a.add_members(vec![b.identity().clone()]);
        b.add_members(vec![a.identity().clone()]);
        a.put(1_700_000_000_000, "ep/x", "k", vec![1; 100]).unwrap();
        let mut captured: Vec<Bytes> = Vec::new();
        for o in a.drain() {
            if let Output::Send { data, .. } = o {
                captured.push(data);
            }
        }
        assert!(!captured.is_empty());
        for d in &captured {
            let _ = b.handle_data(1_700_000_000_001, d);
        }
        assert_eq!(b.entries("ep/x").len(), 1);
        b.drain();
        // Replays: nothing new happens.
        for _ in 0..50 {
            for d in &captured {
                let _ = b.handle_data(1_700_000_000_002, d);
            }
        }
        let events: Vec<_> = b
            .drain()
            .into_iter()
            .filter(|o| matches!(o, Output::Event(_)))
            .collect();
        assert!(events.is_empty(), "{events:?}");
        let mut rng = SmallRng::seed_from_u64(99);
        for i in 0..20_000 {
            let mut p = captured[i % captured.len()].to_vec();
            match i % 5 {
                0 => p.truncate(rng.random_range(0..p.len())),
                1 => {
                    for _ in 0..rng.random_range(1..5) {
                        let bit = rng.random_range(0..p.len() * 8);
                        p[bit / 8] ^= 1 << (bit % 8);
                    }
                }
                2 => {
                    p = (0..rng.random_range(0..1400))
                        .map(|_| rng.next_u32() as u8)
                        .collect()
                }
                3 => p.extend((0..rng.random_range(1..3000)).map(|_| 0xffu8)),
                _ => {
                    let at = rng.random_range(0..p.len());
                    p[at..].iter_mut().for_each(|x| *x = 0xff);
                }
            }
            let _ = b.handle_data(1_700_000_000_003, &p);
            b.drain();
        }
        assert!(b.entries("ep/x").len() <= 1);
    }

    /// 100,000 endpoint entries (64-hex endpoint ids, 25-char network and
    /// node ids as Docker uses, 100 networks, 20 owners) synced to an empty
    /// node, then an in-sync round and a 1 % difference round.
    #[test]
    fn full_sync_of_100k_entries_is_under_4_mb() {
        let now = 1_700_000_100_000u64;
        let mut a = node(1);
        let mut b = node(2);
        let hex = |n: u64| {
            format!(
                "{:016x}{:016x}{:016x}{:016x}",
                n,
                n.wrapping_mul(0x9e3779b97f4a7c15),
                n ^ 0xdead_beef_cafe_f00d,
                n.wrapping_mul(31).rotate_left(17) ^ 0x1234_5678_9abc_def0
            )
        };
        let ids25 = |p: &str, n: u64| {
            let h = n.wrapping_add(1).wrapping_mul(0x2545f4914f6cdd1d);
            format!("{p}{:016x}{:016x}", h, h.rotate_left(29) ^ 0x9e37_79b9)[..25].to_string()
        };
        {
            let mut s = lock(&a.store);
            s.now_ms = now;
            for i in 0..100_000u64 {
                let net = ids25("net", i % 100);
                let owner = ids25("nd", i % 20);
                let rec = EndpointRecord {
                    network: net.clone(),
                    ip: Ipv4Addr::from(0x0a00_0000 + i as u32),
                    mac: [2, 0x42, 0x0a, (i >> 16) as u8, (i >> 8) as u8, i as u8],
                    vtep: Ipv4Addr::new(192, 168, 0, (i % 20) as u8),
                    owner: owner.clone(),
                };
                let e = WireEntry {
                    table: EndpointRecord::table(&net),
                    key: hex(i),
                    owner,
                    gen: 1_699_999_000_000,
                    version: now - 100_000 + i,
                    deleted: false,
                    value: rec.encode(),
                    sig: Vec::new(),
                };
                assert_eq!(s.apply_remote(e), Verdict::New);
            }
            s.events.clear();
        }
        let _ = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let t = std::time::Instant::now();
        let cold = exchange(&mut b, &mut a, now);
        let cold_t = t.elapsed();
        assert_eq!(b.live_entries(), 100_000);
        let cold_rev = {
            let mut c = node(3);
            exchange(&mut a, &mut c, now)
        };
        let idle = exchange(&mut a, &mut b, now);
        {
            let mut s = lock(&a.store);
            for i in 0..1000u64 {
                let mut e = s.entries.values().nth(i as usize * 97).unwrap().to_wire();
                e.version += 1_000_000;
                s.apply_remote(e);
            }
        }
        let diff = exchange(&mut b, &mut a, now);
        println!(
            "full sync of 100,000 entries: joiner pulls {cold} B ({:.2} MB, {cold_t:?}); \
             joiner pushes {cold_rev} B; in-sync round {idle} B; 1 % changed {diff} B",
            cold as f64 / 1e6
        );
        assert!(cold < 4_000_000, "full sync took {cold} bytes");
        assert!(cold_rev < 4_000_000, "full sync took {cold_rev} bytes");
        assert!(idle < 100_000);
        assert_eq!(b.live_entries(), 100_000);
    }
}
