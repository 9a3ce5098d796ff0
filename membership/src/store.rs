//! The replicated tables: table -> key -> (value, owner, version, tombstone).
//!
//! Rules, in one place:
//! - Only the owner writes an entry. Versions come from a hybrid logical
//!   clock (`max(clock + 1, now_ms)`), so a restarted node's writes win over
//!   its previous life's. Order: (version, owner, generation, deleted).
//! - An entry carries its owner's generation. When an owner is declared down
//!   its entries of that generation (and older) are dropped at once and
//!   refused afterwards; a newer generation is accepted (the owner came back
//!   and re-announced).
//! - Tombstones live `tombstone_ttl` past their version (the version is a
//!   wall-clock-based HLC, so every node reaps at about the same time and a
//!   reaped tombstone is not resurrected by a peer's copy).
//! - Anti-entropy (TCP, push/pull): the initiator sends per-bucket summaries
//!   (xor of entry fingerprints + count); the responder answers, per
//!   differing bucket, with entries (initiator has none there), a want
//!   (responder has none) or digests; the initiator pushes what it has newer
//!   and asks for what it lacks. Never a full dump of both sides.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::Arc;

/// Deterministic iteration order (the simulation replays by seed).
type DetMap<K, V> = HashMap<K, V, BuildHasherDefault<DefaultHasher>>;
type DetSet<K> = HashSet<K, BuildHasherDefault<DefaultHasher>>;

use crate::auth::{AuthVerdict, EntryAuth};
use crate::codec::{CodecError, Digest, Frame, WireEntry, MAX_BUCKETS};
use crate::types::{Entry, Event};

/// Raw entries per sync frame (before compression).
const CHUNK_BYTES: usize = 256 * 1024;
/// Digests per sync frame.
const CHUNK_DIGESTS: usize = 16 * 1024;

/// Hash of (table, key): entry identity in digests and broadcast keys.
pub(crate) fn key_hash(table: &str, key: &str) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&(table.len() as u32).to_le_bytes());
    ctx.update(table.as_bytes());
    ctx.update(key.as_bytes());
    let d = ctx.finish();
    let mut a = [0u8; 8];
    a.copy_from_slice(&d.as_ref()[..8]);
    u64::from_le_bytes(a)
}

fn mix(mut z: u64) -> u64 {
    // splitmix64 finalizer
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

fn fnv(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf29ce484222325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

#[derive(Clone, Debug)]
pub(crate) struct Rec {
    pub(crate) table: String,
    pub(crate) key: String,
    pub(crate) owner: String,
    pub(crate) gen: u64,
    pub(crate) version: u64,
    pub(crate) deleted: bool,
    pub(crate) value: Vec<u8>,
    /// The owner's signature (see [`WireEntry::signed_bytes`]).
    pub(crate) sig: Vec<u8>,
}

impl Rec {
    fn from_wire(e: WireEntry) -> Rec {
        Rec {
            table: e.table,
            key: e.key,
            owner: e.owner,
            gen: e.gen,
            version: e.version,
            deleted: e.deleted,
            value: e.value,
            sig: e.sig,
        }
    }
    pub(crate) fn to_wire(&self) -> WireEntry {
        WireEntry {
            table: self.table.clone(),
            key: self.key.clone(),
            owner: self.owner.clone(),
            gen: self.gen,
            version: self.version,
            deleted: self.deleted,
            value: self.value.clone(),
            sig: self.sig.clone(),
        }
    }
    fn to_entry(&self) -> Entry {
        Entry {
            table: self.table.clone(),
            key: self.key.clone(),
            value: self.value.clone(),
            owner: self.owner.clone(),
            version: self.version,
            deleted: self.deleted,
        }
    }
    fn order(&self) -> (u64, &str, u64, bool) {
        (self.version, &self.owner, self.gen, self.deleted)
    }
    fn tag(&self) -> u32 {
        let h = fnv(
            self.owner.as_bytes(),
            self.gen ^ u64::from(self.deleted) << 63,
        );
        (mix(h) >> 32) as u32
    }
    fn fingerprint(&self, hash: u64) -> u64 {
        mix(hash ^ mix(self.version ^ (u64::from(self.tag()) << 17)))
    }
}

fn wire_order(e: &WireEntry) -> (u64, &str, u64, bool) {
    (e.version, &e.owner, e.gen, e.deleted)
}

/// What a remote update did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Newer than what we had: applied (and worth passing on).
    New,
    /// We already had it or something newer.
    Old,
    /// Refused: owner down, stale generation, expired tombstone, collision.
    Rejected,
}

#[derive(Clone, Copy, Debug)]
struct OwnerState {
    gen: u64,
    down: bool,
}

/// The tables of one node.
pub(crate) struct Store {
    me: String,
    my_gen: u64,
    clock: u64,
    pub(crate) now_ms: u64,
    tombstone_ttl_ms: u64,
    pub(crate) entries: DetMap<u64, Rec>,
    by_table: BTreeMap<String, DetSet<u64>>,
    owners: HashMap<String, OwnerState>,
    live: usize,
    /// Changes for the agent, drained by the node.
    pub(crate) events: Vec<Event>,
    /// Items this node must broadcast (own entries re-asserted), drained by the node.
    pub(crate) outbox: Vec<Vec<u8>>,
    /// Remote broadcast items that were news since the node last looked.
    pub(crate) news: usize,
    /// Signs our entries and checks the others' (`None`: unsigned, trusted).
    auth: Option<Arc<dyn EntryAuth>>,
    /// Entries whose owner's key is not known yet, retried when keys change.
    pending: VecDeque<WireEntry>,
    /// Refusals, for the metrics.
    pub(crate) refused: Refused,
}

/// Entries refused on arrival, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Refused {
    /// Signature not the owner's (forged or damaged).
    pub(crate) forged: u64,
    /// No key known for the owner.
    pub(crate) unknown_owner: u64,
    /// Version or generation too far in the future (would freeze clocks).
    pub(crate) bad_clock: u64,
}

/// How far in the future an entry's version or generation may be: they
/// are wall-clock milliseconds (a hybrid clock), and one set near
/// `u64::MAX` would freeze every clock that merges it.
pub(crate) const MAX_CLOCK_SKEW_MS: u64 = 10 * 60 * 1000;
/// Entries held while their owner's key is unknown.
const PENDING_MAX: usize = 4096;

impl Store {
    pub(crate) fn new(me: String, my_gen: u64, tombstone_ttl_ms: u64) -> Self {
        Store {
            me,
            my_gen,
            clock: 0,
            now_ms: 0,
            tombstone_ttl_ms,
            entries: DetMap::default(),
            by_table: BTreeMap::new(),
            owners: HashMap::new(),
            live: 0,
            events: Vec::new(),
            outbox: Vec::new(),
            news: 0,
            auth: None,
            pending: VecDeque::new(),
            refused: Refused::default(),
        }
    }

    /// Sign our entries and check everyone's from now on.
    pub(crate) fn set_auth(&mut self, auth: Option<Arc<dyn EntryAuth>>) {
        self.auth = auth;
    }

    /// Our signature over a record (empty without authentication).
    fn sign(&self, rec: &mut Rec) {
        if let Some(a) = &self.auth {
            rec.sig = a.sign(&rec.to_wire().signed_bytes());
        }
    }

    /// An entry claiming to be `owner`'s, signed with this node's key: what
    /// a hostile member can send. For attack tests only.
    pub(crate) fn forge(
        &mut self,
        table: &str,
        key: &str,
        owner: &str,
        gen: u64,
        value: Vec<u8>,
        deleted: bool,
    ) -> WireEntry {
        let version = self.tick();
        let mut rec = Rec {
            table: table.to_owned(),
            key: key.to_owned(),
            owner: owner.to_owned(),
            gen,
            version,
            deleted,
            value,
            sig: Vec::new(),
        };
        self.sign(&mut rec);
        rec.to_wire()
    }

    /// Keys changed: try again the entries held for unknown owners.
    pub(crate) fn retry_pending(&mut self) -> usize {
        let held: Vec<WireEntry> = self.pending.drain(..).collect();
        let mut applied = 0;
        for e in held {
            let item = e.to_item();
            if self.apply_remote(e) == Verdict::New {
                // News we could not check before: pass it on now.
                self.outbox.push(item);
                applied += 1;
            }
        }
        applied
    }

    pub(crate) fn live_count(&self) -> usize {
        self.live
    }

    #[cfg(test)]
    pub(crate) fn total_count(&self) -> usize {
        self.entries.len()
    }

    fn tick(&mut self) -> u64 {
        self.clock = self.clock.saturating_add(1).max(self.now_ms);
        self.clock
    }

    /// Inserts/replaces and raises an event when what the agent sees changed.
    fn install(&mut self, hash: u64, rec: Rec) {
        let was_live = match self.entries.get(&hash) {
            Some(old) => !old.deleted,
            None => false,
        };
        if rec.deleted && !was_live {
            // Tombstone over nothing visible: nothing to tell.
        } else {
            self.events.push(Event::EntryChanged(rec.to_entry()));
        }
        match (was_live, rec.deleted) {
            (false, false) => self.live += 1,
            (true, true) => self.live = self.live.saturating_sub(1),
            _ => {}
        }
        self.by_table
            .entry(rec.table.clone())
            .or_default()
            .insert(hash);
        self.entries.insert(hash, rec);
    }

    fn remove(&mut self, hash: u64, announce: bool) {
        if let Some(rec) = self.entries.remove(&hash) {
            if let Some(set) = self.by_table.get_mut(&rec.table) {
                set.remove(&hash);
                if set.is_empty() {
                    self.by_table.remove(&rec.table);
                }
            }
            if !rec.deleted {
                self.live = self.live.saturating_sub(1);
                if announce {
                    let mut e = rec.to_entry();
                    e.deleted = true;
                    e.value.clear();
                    self.events.push(Event::EntryChanged(e));
                }
            }
        }
    }

    /// A local write by this node (the owner).
    pub(crate) fn put(&mut self, table: &str, key: &str, value: Vec<u8>) -> WireEntry {
        let version = self.tick();
        let mut rec = Rec {
            table: table.to_owned(),
            key: key.to_owned(),
            owner: self.me.clone(),
            gen: self.my_gen,
            version,
            deleted: false,
            value,
            sig: Vec::new(),
        };
        self.sign(&mut rec);
        let wire = rec.to_wire();
        self.install(key_hash(table, key), rec);
        wire
    }

    /// A local deletion; only entries this node owns can be deleted.
    pub(crate) fn delete(&mut self, table: &str, key: &str) -> Option<WireEntry> {
        let hash = key_hash(table, key);
        let cur = self.entries.get(&hash)?;
        if cur.deleted || cur.owner != self.me || cur.table != table || cur.key != key {
            return None;
        }
        let version = self.tick();
        let mut rec = Rec {
            table: table.to_owned(),
            key: key.to_owned(),
            owner: self.me.clone(),
            gen: self.my_gen,
            version,
            deleted: true,
            value: Vec::new(),
            sig: Vec::new(),
        };
        self.sign(&mut rec);
        let wire = rec.to_wire();
        self.install(hash, rec);
        Some(wire)
    }

    /// An update from the network (broadcast item or sync frame).
    pub(crate) fn apply_remote(&mut self, e: WireEntry) -> Verdict {
        if self.now_ms > 0 {
            let limit = self.now_ms.saturating_add(MAX_CLOCK_SKEW_MS);
            if e.version > limit || e.gen > limit {
                self.refused.bad_clock += 1;
                tracing::debug!(owner = %e.owner, version = e.version, gen = e.gen, "entry from the far future refused");
                return Verdict::Rejected;
            }
        }
        if let Some(auth) = &self.auth {
            match auth.verify(&e.owner, &e.signed_bytes(), &e.sig) {
                AuthVerdict::Valid => {}
                AuthVerdict::Invalid => {
                    self.refused.forged += 1;
                    tracing::debug!(owner = %e.owner, table = %e.table, key = %e.key, "entry with a bad signature refused");
                    return Verdict::Rejected;
                }
                AuthVerdict::UnknownOwner => {
                    self.refused.unknown_owner += 1;
                    if self.pending.len() < PENDING_MAX {
                        self.pending.push_back(e);
                    }
                    return Verdict::Rejected;
                }
            }
        }
        self.clock = self.clock.max(e.version);
        let hash = key_hash(&e.table, &e.key);
        if let Some(cur) = self.entries.get(&hash) {
            if cur.table != e.table || cur.key != e.key {
                tracing::warn!(table = %e.table, key = %e.key, "key hash collision; update refused");
                return Verdict::Rejected;
            }
            if cur.order() >= wire_order(&e) {
                return Verdict::Old;
            }
        }
        if e.deleted && self.now_ms.saturating_sub(e.version) > self.tombstone_ttl_ms {
            return Verdict::Rejected;
        }
        if e.owner == self.me {
            // An echo of an entry we do not hold (or hold older): a copy from a
            // previous life of this node. Kill it with a newer tombstone.
            if e.deleted || e.gen > self.my_gen {
                return Verdict::Rejected;
            }
            let version = self.tick();
            let mut rec = Rec {
                table: e.table,
                key: e.key,
                owner: self.me.clone(),
                gen: self.my_gen,
                version,
                deleted: true,
                value: Vec::new(),
                sig: Vec::new(),
            };
            self.sign(&mut rec);
            self.outbox.push(rec.to_wire().to_item());
            self.install(hash, rec);
            return Verdict::Rejected;
        }
        if let Some(st) = self.owners.get(&e.owner) {
            if e.gen < st.gen || (e.gen == st.gen && st.down) {
                return Verdict::Rejected;
            }
        }
        self.install(hash, Rec::from_wire(e));
        Verdict::New
    }

    /// The member `node_id` is alive in generation `gen`: drop what older
    /// lives of it left behind.
    pub(crate) fn member_up(&mut self, node_id: &str, gen: u64) {
        if node_id == self.me {
            return;
        }
        let st = self
            .owners
            .entry(node_id.to_owned())
            .or_insert(OwnerState { gen, down: false });
        if gen < st.gen {
            return;
        }
        let newer = gen > st.gen;
        *st = OwnerState { gen, down: false };
        if newer {
            self.drop_owner(node_id, |g| g < gen);
        }
    }

    /// The member was declared down: its entries go at once.
    pub(crate) fn member_down(&mut self, node_id: &str, gen: u64) {
        if node_id == self.me {
            return;
        }
        let st = self
            .owners
            .entry(node_id.to_owned())
            .or_insert(OwnerState { gen, down: true });
        if gen < st.gen {
            return;
        }
        *st = OwnerState { gen, down: true };
        self.drop_owner(node_id, |g| g <= gen);
    }

    fn drop_owner(&mut self, node_id: &str, which: impl Fn(u64) -> bool) {
        let doomed: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, r)| r.owner == node_id && which(r.gen))
            .map(|(h, _)| *h)
            .collect();
        for h in doomed {
            self.remove(h, true);
        }
    }

    /// This node came back with a new generation after being declared down:
    /// re-stamp and re-announce its live entries (others dropped them).
    pub(crate) fn rejoin(&mut self, new_gen: u64) {
        self.my_gen = new_gen;
        let mine: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, r)| r.owner == self.me)
            .map(|(h, _)| *h)
            .collect();
        for h in mine {
            let version = self.tick();
            let Some(mut r) = self.entries.get(&h).cloned() else {
                continue;
            };
            r.gen = new_gen;
            r.version = version;
            self.sign(&mut r);
            if !r.deleted {
                self.outbox.push(r.to_wire().to_item());
            }
            self.entries.insert(h, r);
        }
    }

    /// Drops tombstones older than the TTL.
    pub(crate) fn reap(&mut self) -> usize {
        let now = self.now_ms;
        let ttl = self.tombstone_ttl_ms;
        let old: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, r)| r.deleted && now.saturating_sub(r.version) > ttl)
            .map(|(h, _)| *h)
            .collect();
        let n = old.len();
        for h in old {
            self.remove(h, false);
        }
        n
    }

    pub(crate) fn entries(&self, table: &str) -> Vec<Entry> {
        let mut out: Vec<Entry> = self
            .by_table
            .get(table)
            .into_iter()
            .flatten()
            .filter_map(|h| self.entries.get(h))
            .filter(|r| !r.deleted)
            .map(Rec::to_entry)
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    pub(crate) fn tables(&self) -> Vec<String> {
        self.by_table
            .iter()
            .filter(|(_, hs)| {
                hs.iter()
                    .any(|h| self.entries.get(h).is_some_and(|r| !r.deleted))
            })
            .map(|(t, _)| t.clone())
            .collect()
    }

    // ---- anti-entropy ----

    fn buckets(&self, nb: usize) -> Vec<Vec<u64>> {
        let mut b = vec![Vec::new(); nb];
        let mask = (nb - 1) as u64;
        for h in self.entries.keys() {
            if let Some(v) = b.get_mut((h & mask) as usize) {
                v.push(*h);
            }
        }
        b
    }

    fn summarize(&self, lists: &[Vec<u64>]) -> Vec<(u64, u32)> {
        lists
            .iter()
            .map(|hs| {
                let fp = hs
                    .iter()
                    .filter_map(|h| self.entries.get(h).map(|r| r.fingerprint(*h)))
                    .fold(0u64, |a, f| a ^ f);
                (fp, hs.len().min(u32::MAX as usize) as u32)
            })
            .collect()
    }

    fn entry_frames(&self, hashes: impl Iterator<Item = u64>, out: &mut Vec<Frame>) {
        let mut chunk = Vec::new();
        let mut size = 0;
        for h in hashes {
            if let Some(r) = self.entries.get(&h) {
                size += r.table.len() + r.key.len() + r.owner.len() + r.value.len() + 24;
                chunk.push(r.to_wire());
                if size >= CHUNK_BYTES {
                    out.push(Frame::Entries(std::mem::take(&mut chunk)));
                    size = 0;
                }
            }
        }
        if !chunk.is_empty() {
            out.push(Frame::Entries(chunk));
        }
    }

    /// Initiator: open a sync with our summary.
    pub(crate) fn sync_open(&self) -> (SyncSession, Frame) {
        let n = self.entries.len().div_ceil(32).max(1);
        let nb = n.next_power_of_two().min(MAX_BUCKETS);
        let lists = self.buckets(nb);
        let buckets = self.summarize(&lists);
        (
            SyncSession {
                initiator: true,
                lists,
                ends: 0,
                done: false,
                served_buckets: BTreeSet::new(),
                served: HashSet::new(),
            },
            Frame::Summary { buckets },
        )
    }

    /// One incoming frame of a sync exchange; returns the frames to send.
    pub(crate) fn sync_step(
        &mut self,
        s: &mut SyncSession,
        frame: Frame,
    ) -> Result<Vec<Frame>, CodecError> {
        let mut out = Vec::new();
        match frame {
            Frame::Summary { buckets } => {
                if s.initiator || !s.lists.is_empty() {
                    return Err(CodecError::Invalid("unexpected summary"));
                }
                s.lists = self.buckets(buckets.len());
                let mine = self.summarize(&s.lists);
                let mut digests = Vec::new();
                let mut ndig = 0;
                let mut want_buckets = Vec::new();
                let mut push = Vec::new();
                for (b, (theirs, mine)) in buckets.iter().zip(mine.iter()).enumerate() {
                    if theirs == mine {
                        continue;
                    }
                    if theirs.1 == 0 {
                        push.extend(s.lists[b].iter().copied());
                    } else if mine.1 == 0 {
                        want_buckets.push(b as u32);
                    } else {
                        let ds: Vec<Digest> = s.lists[b]
                            .iter()
                            .filter_map(|h| self.entries.get(h).map(|r| (h, r)))
                            .map(|(h, r)| Digest {
                                hash: *h,
                                version: r.version,
                                tag: r.tag(),
                            })
                            .collect();
                        ndig += ds.len();
                        digests.push((b as u32, ds));
                        if ndig >= CHUNK_DIGESTS {
                            out.push(Frame::Digests(std::mem::take(&mut digests)));
                            ndig = 0;
                        }
                    }
                }
                if !digests.is_empty() {
                    out.push(Frame::Digests(digests));
                }
                self.entry_frames(push.into_iter(), &mut out);
                if !want_buckets.is_empty() {
                    out.push(Frame::WantBuckets(want_buckets));
                }
                out.push(Frame::End);
            }
            Frame::Entries(es) => {
                for e in es {
                    self.apply_remote(e);
                }
            }
            Frame::Digests(bs) => {
                let mut want = Vec::new();
                let mut push = Vec::new();
                for (b, ds) in bs {
                    let theirs: HashMap<u64, Digest> = ds.iter().map(|d| (d.hash, *d)).collect();
                    for d in &ds {
                        match self.entries.get(&d.hash) {
                            None => want.push(d.hash),
                            Some(r) if r.version < d.version => want.push(d.hash),
                            Some(r) if r.version == d.version && r.tag() != d.tag => {
                                want.push(d.hash)
                            }
                            _ => {}
                        }
                    }
                    let Some(list) = s.lists.get(b as usize) else {
                        return Err(CodecError::Invalid("bucket out of range"));
                    };
                    for h in list {
                        let Some(r) = self.entries.get(h) else {
                            continue;
                        };
                        match theirs.get(h) {
                            None => push.push(*h),
                            Some(d) if r.version > d.version => push.push(*h),
                            Some(d) if r.version == d.version && r.tag() != d.tag => push.push(*h),
                            _ => {}
                        }
                    }
                }
                self.entry_frames(push.into_iter(), &mut out);
                for w in want.chunks(CHUNK_DIGESTS) {
                    out.push(Frame::Want(w.to_vec()));
                }
            }
            Frame::WantBuckets(bs) => {
                // Each bucket once per exchange: repeats must not multiply
                // what we send.
                let bs: BTreeSet<u32> = bs.into_iter().collect();
                let mut push = Vec::new();
                for b in bs {
                    if !s.served_buckets.insert(b) {
                        continue;
                    }
                    let Some(list) = s.lists.get(b as usize) else {
                        return Err(CodecError::Invalid("bucket out of range"));
                    };
                    push.extend(list.iter().copied());
                }
                self.entry_frames(push.into_iter(), &mut out);
            }
            Frame::Want(hs) => {
                // Each entry once per exchange, and no more than we hold.
                let fresh: Vec<u64> = hs
                    .into_iter()
                    .filter(|h| self.entries.contains_key(h) && s.served.insert(*h))
                    .collect();
                self.entry_frames(fresh.into_iter(), &mut out);
            }
            Frame::End => {
                s.ends += 1;
                if s.initiator {
                    if s.ends == 1 {
                        out.push(Frame::End);
                    } else {
                        s.done = true;
                    }
                } else {
                    out.push(Frame::End);
                    s.done = true;
                }
            }
        }
        Ok(out)
    }
}

/// State of one anti-entropy exchange (one TCP connection).
#[derive(Debug)]
pub struct SyncSession {
    initiator: bool,
    lists: Vec<Vec<u64>>,
    ends: u8,
    done: bool,
    /// Buckets and entries already sent whole in this exchange.
    served_buckets: BTreeSet<u32>,
    served: HashSet<u64>,
}

impl SyncSession {
    /// The answering side of an exchange, before the summary arrives.
    pub(crate) fn responder() -> Self {
        SyncSession {
            initiator: false,
            lists: Vec::new(),
            ends: 0,
            done: false,
            served_buckets: BTreeSet::new(),
            served: HashSet::new(),
        }
    }

    /// True once both sides have finished their turns.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(me: &str) -> Store {
        let mut s = Store::new(me.into(), 1, 60_000);
        s.now_ms = 1_000;
        s
    }

    /// Runs a full exchange in memory; returns bytes on the wire (raw, packed).
    pub(crate) fn sync(a: &mut Store, b: &mut Store) -> (usize, usize) {
        let (mut sa, open) = a.sync_open();
        let mut sb = SyncSession::responder();
        let mut raw = 0;
        let mut packed = 0;
        let mut to_b = vec![open];
        let mut to_a: Vec<Frame> = Vec::new();
        for _ in 0..10 {
            for f in std::mem::take(&mut to_b) {
                let bytes = f.encode();
                raw += bytes.len();
                packed += crate::codec::pack(&bytes).len() + 4 + crate::crypto::SEAL_OVERHEAD;
                let f = Frame::decode(&bytes).unwrap();
                to_a.extend(b.sync_step(&mut sb, f).unwrap());
            }
            for f in std::mem::take(&mut to_a) {
                let bytes = f.encode();
                raw += bytes.len();
                packed += crate::codec::pack(&bytes).len() + 4 + crate::crypto::SEAL_OVERHEAD;
                let f = Frame::decode(&bytes).unwrap();
                to_b.extend(a.sync_step(&mut sa, f).unwrap());
            }
            if sa.is_done() && sb.is_done() {
                return (raw, packed);
            }
        }
        panic!("sync did not finish");
    }

    fn same(a: &Store, b: &Store) -> bool {
        let ka: Vec<_> = a
            .entries
            .iter()
            .map(|(h, r)| (*h, r.order().0, r.deleted))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let kb: HashSet<_> = b
            .entries
            .iter()
            .map(|(h, r)| (*h, r.order().0, r.deleted))
            .collect();
        ka.len() == kb.len() && ka.iter().all(|x| kb.contains(x))
    }

    #[test]
    fn lww_and_events() {
        let mut a = store("a");
        let mut b = store("b");
        let e1 = a.put("t", "k", b"v1".to_vec());
        assert_eq!(b.apply_remote(e1.clone()), Verdict::New);
        assert_eq!(b.apply_remote(e1), Verdict::Old);
        a.now_ms += 5;
        let e2 = a.put("t", "k", b"v2".to_vec());
        assert_eq!(b.apply_remote(e2), Verdict::New);
        assert_eq!(b.entries("t")[0].value, b"v2");
        let d = a.delete("t", "k").unwrap();
        assert_eq!(b.apply_remote(d), Verdict::New);
        assert!(b.entries("t").is_empty());
        assert_eq!(b.events.len(), 3);
        // b cannot delete a's entry.
        assert!(b.delete("t", "k").is_none());
    }

    #[test]
    fn down_owner_dropped_and_refused_until_new_generation() {
        let mut a = store("a");
        let mut b = store("b");
        let e = a.put("t", "k", b"v".to_vec());
        b.apply_remote(e.clone());
        b.member_up("a", 1);
        b.events.clear();
        b.member_down("a", 1);
        assert!(b.entries("t").is_empty());
        assert!(matches!(&b.events[0], Event::EntryChanged(x) if x.deleted));
        assert_eq!(b.apply_remote(e), Verdict::Rejected);
        a.rejoin(2);
        let item = a.outbox.pop().unwrap();
        let e2 = WireEntry::from_item(&item).unwrap();
        assert_eq!(e2.gen, 2);
        assert_eq!(b.apply_remote(e2), Verdict::New);
        assert_eq!(b.entries("t").len(), 1);
    }

    #[test]
    fn echo_of_previous_life_is_killed() {
        let mut old = store("a");
        let e = old.put("t", "zombie", b"v".to_vec());
        let mut fresh = Store::new("a".into(), 5, 60_000);
        fresh.now_ms = 2_000;
        assert_eq!(fresh.apply_remote(e.clone()), Verdict::Rejected);
        let t = WireEntry::from_item(&fresh.outbox.pop().unwrap()).unwrap();
        assert!(t.deleted && t.version > e.version);
        let mut b = store("b");
        b.apply_remote(e);
        b.apply_remote(t);
        assert!(b.entries("t").is_empty());
    }

    #[test]
    fn tombstones_reaped_and_expired_ones_refused() {
        let mut a = store("a");
        a.put("t", "k", vec![1]);
        let d = a.delete("t", "k").unwrap();
        a.now_ms += 60_100;
        assert_eq!(a.reap(), 1);
        assert_eq!(a.total_count(), 0);
        let mut b = store("b");
        b.now_ms = a.now_ms;
        assert_eq!(b.apply_remote(d), Verdict::Rejected);
    }

    #[test]
    fn sync_converges_both_ways() {
        let mut a = store("a");
        let mut b = store("b");
        for i in 0..500 {
            a.put("t", &format!("a{i}"), vec![1; 10]);
        }
        for i in 0..300 {
            b.put("u", &format!("b{i}"), vec![2; 10]);
        }
        // A shared entry where b has the newer copy.
        let e = a.put("t", "shared", vec![0]);
        b.apply_remote(e);
        sync(&mut a, &mut b);
        assert!(same(&a, &b));
        assert_eq!(a.live_count(), 801);
        // In sync: the second exchange is tiny.
        let (raw, _) = sync(&mut a, &mut b);
        assert!(raw < 600, "in-sync exchange was {raw} bytes");
        // One change on b: found via digests.
        b.now_ms += 10;
        b.put("u", "b0", vec![9]);
        let (raw, _) = sync(&mut a, &mut b);
        assert!(same(&a, &b));
        assert!(raw < 2000, "one-change exchange was {raw} bytes");
    }

    /// Stores `a`, `b` and a forger `m` that all hold the same gossip key
    /// but each its own signing key; `a` and `b` know each other's (and
    /// `m`'s) public keys.
    fn signed() -> (Store, Store, Store) {
        use crate::auth::Ed25519Auth;
        let key =
            || Arc::new(Ed25519Auth::from_pkcs8(&Ed25519Auth::generate_pkcs8().unwrap()).unwrap());
        let (ka, kb, km) = (key(), key(), key());
        let peers: HashMap<String, Vec<u8>> = [
            ("a".to_string(), ka.public_key()),
            ("b".to_string(), kb.public_key()),
            ("m".to_string(), km.public_key()),
        ]
        .into();
        for k in [&ka, &kb, &km] {
            k.set_peers(peers.clone());
        }
        let (mut a, mut b, mut m) = (store("a"), store("b"), store("m"));
        a.set_auth(Some(ka));
        b.set_auth(Some(kb));
        m.set_auth(Some(km));
        (a, b, m)
    }

    #[test]
    fn a_member_cannot_write_another_members_entries() {
        let (mut a, mut b, mut m) = signed();
        let genuine = a.put("ep/n", "k", b"10.0.0.2".to_vec());
        assert_eq!(b.apply_remote(genuine.clone()), Verdict::New);
        // m rewrites a's entry (a newer version, its own value) and signs it
        // with its key; it then tries to erase it with a tombstone.
        let mut forged = genuine.clone();
        forged.version += 10;
        forged.value = b"6.6.6.6".to_vec();
        forged.sig = m.put("x", "y", vec![]).sig;
        assert_eq!(b.apply_remote(forged.clone()), Verdict::Rejected);
        let mut erase = genuine.clone();
        erase.version += 20;
        erase.deleted = true;
        erase.value.clear();
        assert_eq!(b.apply_remote(erase), Verdict::Rejected);
        // A genuine entry with a bit flipped, or no signature at all.
        let mut flipped = genuine.clone();
        flipped.gen += 1;
        assert_eq!(b.apply_remote(flipped), Verdict::Rejected);
        let mut unsigned = genuine;
        unsigned.sig.clear();
        unsigned.version += 30;
        assert_eq!(b.apply_remote(unsigned), Verdict::Rejected);
        assert_eq!(b.refused.forged, 4);
        let e = b.entries.values().find(|r| r.key == "k").unwrap();
        assert_eq!(e.value, b"10.0.0.2".to_vec());
        assert!(!e.deleted);
        // A forged echo of b's own entry does not make b tombstone it.
        let own = b.put("ep/n", "mine", b"1".to_vec());
        let mut echo = own.clone();
        echo.version += 5;
        echo.sig = m.put("x", "z", vec![]).sig;
        assert_eq!(b.apply_remote(echo), Verdict::Rejected);
        assert!(b.outbox.is_empty(), "no tombstone for a forged echo");
    }

    #[test]
    fn entries_of_an_unknown_owner_wait_for_its_key() {
        use crate::auth::Ed25519Auth;
        let (mut a, _, _) = signed();
        let kc =
            Arc::new(Ed25519Auth::from_pkcs8(&Ed25519Auth::generate_pkcs8().unwrap()).unwrap());
        let mut c = store("c");
        c.set_auth(Some(kc.clone()));
        let e = c.put("ep/n", "k", b"v".to_vec());
        assert_eq!(a.apply_remote(e), Verdict::Rejected);
        assert_eq!(a.refused.unknown_owner, 1);
        assert_eq!(a.live_count(), 0);
        // c's key arrives (registered in the store, delivered by the
        // session): the held entry is checked again, applied and passed on.
        let peers = [("c".to_string(), kc.public_key())].into();
        let auth =
            Arc::new(Ed25519Auth::from_pkcs8(&Ed25519Auth::generate_pkcs8().unwrap()).unwrap());
        auth.set_peers(peers);
        a.set_auth(Some(auth));
        assert_eq!(a.retry_pending(), 1);
        assert_eq!(a.live_count(), 1);
        assert_eq!(a.outbox.len(), 1);
    }

    #[test]
    fn versions_and_generations_from_the_far_future_are_refused() {
        let (mut a, mut b, _) = signed();
        b.now_ms = 1_000_000;
        a.now_ms = 1_000_000;
        let mut e = a.put("ep/n", "k", b"v".to_vec());
        assert_eq!(b.apply_remote(e.clone()), Verdict::New);
        // Even validly signed by its owner, a version near u64::MAX would
        // freeze every clock that merges it.
        a.clock = u64::MAX - 1;
        e = a.put("ep/n", "k2", b"v".to_vec());
        assert_eq!(b.apply_remote(e), Verdict::Rejected);
        assert_eq!(b.refused.bad_clock, 1);
        assert!(b.clock < 2_000_000, "the clock did not jump: {}", b.clock);
    }

    #[test]
    fn repeated_bucket_and_entry_requests_are_served_once() {
        let mut a = store("a");
        for i in 0..100 {
            a.put("t", &format!("k{i}"), vec![1; 100]);
        }
        let (mut s, _) = a.sync_open();
        s.initiator = false;
        let once = a.sync_step(&mut s, Frame::WantBuckets(vec![0])).unwrap();
        let again = a
            .sync_step(&mut s, Frame::WantBuckets(vec![0; 10_000]))
            .unwrap();
        assert!(!once.is_empty());
        assert!(again.is_empty(), "a bucket is sent once per exchange");
        let h = *a.entries.keys().next().unwrap();
        let mut s2 = SyncSession::responder();
        let out = a.sync_step(&mut s2, Frame::Want(vec![h; 50_000])).unwrap();
        let sent: usize = out
            .iter()
            .map(|f| match f {
                Frame::Entries(es) => es.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(sent, 1);
    }

    #[test]
    fn a_rejoining_owner_re_signs_what_it_re_announces() {
        let (mut a, mut b, _) = signed();
        a.put("ep/n", "k", b"v".to_vec());
        a.rejoin(2);
        let items = std::mem::take(&mut a.outbox);
        assert_eq!(items.len(), 1);
        let e = WireEntry::from_item(&items[0]).unwrap();
        assert_eq!(e.gen, 2);
        assert_eq!(b.apply_remote(e), Verdict::New);
        assert_eq!(b.refused.forged, 0);
    }
}
