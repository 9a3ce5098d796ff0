//! The raft log on disk: a `raft::Storage` over one sled tree.
//!
//! raft-rs reads the log through [`raft::Storage`]; the node's Ready loop
//! writes it through the inherent methods here and calls [`SledStorage::flush`]
//! once per Ready, which is the only fsync on the write path.
//!
//! Layout: one tree, `raft`, with two key spaces, so that every change a
//! Ready makes (truncate a conflicting suffix + append, install a snapshot +
//! drop the log, compact) is one atomic sled batch:
//! - `e` + index (u64 big-endian): a protobuf `Entry`;
//! - `m:<name>`: hard state, conf state, truncation point (index and term of
//!   the last compacted entry), snapshot metadata and data, peer addresses,
//!   and a format marker whose absence means "not a raft log" (never "empty").
//!
//! Terms of the live log are cached in memory because raft-rs asks for them
//! on every append response; entries themselves are read from sled.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage};

use crate::error::StoreError;
use crate::watermark::Watermark;

const FORMAT_VERSION: &[u8] = b"shoal-raft-1";
const K_FORMAT: &[u8] = b"m:format";
const K_HARD_STATE: &[u8] = b"m:hard_state";
const K_CONF_STATE: &[u8] = b"m:conf_state";
const K_TRUNCATED: &[u8] = b"m:truncated";
const K_SNAP_META: &[u8] = b"m:snapshot_meta";
const K_SNAP_DATA: &[u8] = b"m:snapshot_data";
const K_PEERS: &[u8] = b"m:peers";
const ENTRY_PREFIX: u8 = b'e';
/// Bound on what bincode may allocate while decoding the peer map: the map
/// comes from disk or from a snapshot sent by a peer.
const DECODE_LIMIT: usize = 64 << 20;

/// Peer addresses by raft id, as learned from conf changes and snapshots.
pub type PeerMap = BTreeMap<u64, SocketAddr>;

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = ENTRY_PREFIX;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Encodes the peer map (used in the log and in snapshot envelopes).
pub(crate) fn encode_peers(peers: &PeerMap) -> Result<Vec<u8>, String> {
    bincode::serde::encode_to_vec(peers, bincode::config::standard()).map_err(|e| e.to_string())
}

/// Decodes a peer map with a bounded allocation.
pub(crate) fn decode_peers(bytes: &[u8]) -> Result<PeerMap, String> {
    let cfg = bincode::config::standard().with_limit::<DECODE_LIMIT>();
    bincode::serde::decode_from_slice(bytes, cfg)
        .map(|(p, _)| p)
        .map_err(|e| e.to_string())
}

/// The sled-backed raft log of one manager. Owned by the node's `RawNode`.
pub struct SledStorage {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    hard_state: HardState,
    conf_state: ConfState,
    truncated_index: u64,
    truncated_term: u64,
    /// Terms of entries `truncated_index + 1 ..= last_index`.
    terms: VecDeque<u64>,
    snap_meta: SnapshotMetadata,
    peers: PeerMap,
    /// Set when raft asked for a snapshot newer than the stored one; the node
    /// takes a fresh one on its next pass.
    snapshot_wanted: AtomicBool,
    watermark: Watermark,
}

impl std::fmt::Debug for SledStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStorage")
            .field("path", &self.path)
            .field("first_index", &self.first())
            .field("last_index", &self.last())
            .finish()
    }
}

/// Opens sled, waiting briefly for its file lock: after a `Db` is dropped,
/// sled's IO threads may hold the lock for a few more milliseconds, which
/// matters when a node restarts in-process on the same directory.
fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match open_db_once(path) {
            Err(StoreError::Open {
                source: sled::Error::Io(e),
                ..
            }) if e.to_string().contains("could not acquire lock")
                && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn open_db_once(path: &Path) -> Result<sled::Db, StoreError> {
    let cfg = sled::Config::new().path(path).flush_every_ms(None);
    // sled asserts on some damaged files; a damaged file is an error here.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || cfg.open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(source)) => Err(StoreError::Open {
            path: path.to_path_buf(),
            source,
        }),
        Err(panic) => {
            let reason = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic while recovering".to_string());
            Err(StoreError::OpenPanicked {
                path: path.to_path_buf(),
                reason,
            })
        }
    }
}

impl SledStorage {
    /// Where the log of a manager lives inside its data directory.
    pub fn db_path(data_dir: &Path) -> PathBuf {
        data_dir.join("raft")
    }

    /// Whether `data_dir` holds a raft log (even a damaged one), so callers
    /// never create a fresh log over an old one.
    pub fn exists(data_dir: &Path) -> bool {
        Self::db_path(data_dir).exists()
    }

    /// Creates an empty, uninitialized log (a joining manager's). Fails if one
    /// already exists.
    pub fn create(data_dir: &Path) -> Result<Self, StoreError> {
        let path = Self::db_path(data_dir);
        if path.exists() {
            return Err(StoreError::AlreadyExists { path });
        }
        let db = open_db(&path)?;
        let tree = db.open_tree("raft").map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        let s = SledStorage {
            watermark: Watermark::new(&path),
            path,
            db,
            tree,
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            truncated_index: 0,
            truncated_term: 0,
            terms: VecDeque::new(),
            snap_meta: SnapshotMetadata::default(),
            peers: PeerMap::new(),
            snapshot_wanted: AtomicBool::new(false),
        };
        let mut b = sled::Batch::default();
        b.insert(K_HARD_STATE, s.pb(&s.hard_state)?);
        b.insert(K_CONF_STATE, s.pb(&s.conf_state)?);
        b.insert(K_TRUNCATED, trunc_bytes(0, 0).to_vec());
        b.insert(K_SNAP_META, s.pb(&s.snap_meta)?);
        b.insert(K_SNAP_DATA, Vec::new());
        b.insert(K_PEERS, s.peers_bytes()?);
        // The marker goes last: a log without it is refused, never read as empty.
        b.insert(K_FORMAT, FORMAT_VERSION);
        s.apply(b)?;
        let mut s = s;
        s.flush()?;
        Ok(s)
    }

    /// Opens an existing log and checks it: the format marker, every record
    /// decodes, the log has no gaps, the commit index is inside the log.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = Self::db_path(data_dir);
        if !path.join("db").exists() && !path.join("conf").exists() {
            return Err(StoreError::Missing { path });
        }
        let db = open_db(&path)?;
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.clone(),
            reason,
        };
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let tree = db.open_tree("raft").map_err(io)?;
        let get = |key: &[u8]| -> Result<sled::IVec, StoreError> {
            tree.get(key)
                .map_err(|source| StoreError::Io {
                    path: path.clone(),
                    source,
                })?
                .ok_or_else(|| StoreError::Corrupt {
                    path: path.clone(),
                    reason: format!("record {} missing", String::from_utf8_lossy(key)),
                })
        };
        match tree.get(K_FORMAT).map_err(io)? {
            Some(v) if v.as_ref() == FORMAT_VERSION => {}
            Some(v) => {
                return Err(corrupt(format!(
                    "unknown format {:?}",
                    String::from_utf8_lossy(&v)
                )))
            }
            None => {
                return Err(corrupt(
                    "no raft state found (format marker missing)".to_string(),
                ))
            }
        }
        let mut hard_state: HardState =
            decode_pb(&get(K_HARD_STATE)?, "hard state").map_err(corrupt)?;
        let conf_state: ConfState =
            decode_pb(&get(K_CONF_STATE)?, "conf state").map_err(corrupt)?;
        let snap_meta: SnapshotMetadata =
            decode_pb(&get(K_SNAP_META)?, "snapshot metadata").map_err(corrupt)?;
        let peers = decode_peers(&get(K_PEERS)?)
            .map_err(|e| corrupt(format!("peer addresses do not decode: {e}")))?;
        let t = get(K_TRUNCATED)?;
        let t: [u8; 16] = t
            .as_ref()
            .try_into()
            .map_err(|_| corrupt("truncation record has the wrong size".to_string()))?;
        let (truncated_index, truncated_term) = untrunc(&t);
        if snap_meta.index < truncated_index {
            return Err(corrupt(format!(
                "snapshot index {} below compacted index {truncated_index}",
                snap_meta.index
            )));
        }

        let mut terms = VecDeque::new();
        let mut stale = Vec::new();
        let mut last_term = truncated_term;
        for item in tree.scan_prefix([ENTRY_PREFIX]) {
            let (k, v) = item.map_err(io)?;
            let idx: [u8; 8] = k
                .get(1..)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| corrupt("malformed entry key".to_string()))?;
            let idx = u64::from_be_bytes(idx);
            if idx <= truncated_index {
                // Left over from a compaction that was cut short; harmless.
                stale.push(k);
                continue;
            }
            let expected = truncated_index + 1 + terms.len() as u64;
            if idx != expected {
                return Err(corrupt(format!(
                    "log gap: expected entry {expected}, found {idx}"
                )));
            }
            let e: Entry =
                decode_pb(&v, "entry").map_err(|r| corrupt(format!("{r} at index {idx}")))?;
            if e.index != idx {
                return Err(corrupt(format!(
                    "entry stored at {idx} says index {}",
                    e.index
                )));
            }
            if e.term < last_term {
                return Err(corrupt(format!(
                    "term goes back from {last_term} to {} at index {idx}",
                    e.term
                )));
            }
            last_term = e.term;
            terms.push_back(e.term);
        }
        let last = truncated_index + terms.len() as u64;
        if hard_state.commit > last {
            return Err(corrupt(format!(
                "commit index {} beyond the last log index {last}",
                hard_state.commit
            )));
        }
        // The snapshot only holds committed state.
        hard_state.commit = hard_state.commit.max(snap_meta.index);
        let watermark = Watermark::read(&path)?;
        if hard_state.commit < watermark.value() {
            return Err(corrupt(format!(
                "the log was cut short: it holds commits up to {} but {} had been committed ({} says so)",
                hard_state.commit,
                watermark.value(),
                watermark.path().display()
            )));
        }
        let s = SledStorage {
            path: path.clone(),
            db,
            tree,
            hard_state,
            conf_state,
            truncated_index,
            truncated_term,
            terms,
            snap_meta,
            peers,
            snapshot_wanted: AtomicBool::new(false),
            watermark,
        };
        if !stale.is_empty() {
            let mut b = sled::Batch::default();
            for k in stale {
                b.remove(k);
            }
            s.apply(b)?;
        }
        Ok(s)
    }

    /// The database directory, for error messages and logs.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes every write so far durable (one fsync). Called once per Ready,
    /// before messages that depend on it are sent and before proposals resolve.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.db.flush().map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.watermark.record(self.hard_state.commit, false)
    }

    /// Flushes, then records the durable commit index in the watermark file,
    /// durably (on close).
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.db.flush().map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.watermark.record(self.hard_state.commit, true)
    }

    /// The persisted hard state (term, vote, commit).
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The conf state as of the last applied conf change or snapshot.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Addresses of the members, persisted with the conf state.
    pub fn peers(&self) -> &PeerMap {
        &self.peers
    }

    /// Metadata of the stored snapshot (index 0 if none).
    pub fn snapshot_metadata(&self) -> &SnapshotMetadata {
        &self.snap_meta
    }

    /// Data of the stored snapshot (empty if none).
    pub fn snapshot_data(&self) -> Result<Vec<u8>, StoreError> {
        Ok(self
            .tree
            .get(K_SNAP_DATA)
            .map_err(|source| StoreError::Io {
                path: self.path.clone(),
                source,
            })?
            .map(|v| v.to_vec())
            .unwrap_or_default())
    }

    /// Whether raft asked for a snapshot newer than the stored one (and
    /// clears the request).
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::Relaxed)
    }

    fn first(&self) -> u64 {
        self.truncated_index + 1
    }

    fn last(&self) -> u64 {
        self.truncated_index + self.terms.len() as u64
    }

    fn term_of(&self, idx: u64) -> Option<u64> {
        if idx == self.truncated_index {
            return Some(self.truncated_term);
        }
        if idx < self.first() {
            return None;
        }
        self.terms.get((idx - self.first()) as usize).copied()
    }

    fn pb<M: PbMessage>(&self, m: &M) -> Result<Vec<u8>, StoreError> {
        m.write_to_bytes().map_err(|e| StoreError::Invalid {
            path: self.path.clone(),
            reason: format!("cannot encode record: {e}"),
        })
    }

    fn peers_bytes(&self) -> Result<Vec<u8>, StoreError> {
        encode_peers(&self.peers).map_err(|reason| StoreError::Invalid {
            path: self.path.clone(),
            reason,
        })
    }

    fn apply(&self, b: sled::Batch) -> Result<(), StoreError> {
        self.tree.apply_batch(b).map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })
    }

    fn invalid(&self, reason: String) -> StoreError {
        StoreError::Invalid {
            path: self.path.clone(),
            reason,
        }
    }

    /// Appends entries from a Ready, first dropping any suffix they replace
    /// (a new leader overwriting uncommitted entries), in one atomic batch.
    pub fn append(&mut self, ents: &[Entry]) -> Result<(), StoreError> {
        let Some(first_new) = ents.first().map(|e| e.index) else {
            return Ok(());
        };
        if first_new < self.first() {
            return Err(self.invalid(format!(
                "append at {first_new} overwrites compacted entries (first index {})",
                self.first()
            )));
        }
        if first_new > self.last() + 1 {
            return Err(self.invalid(format!(
                "append at {first_new} leaves a gap after last index {}",
                self.last()
            )));
        }
        let mut b = sled::Batch::default();
        for idx in first_new..=self.last() {
            b.remove(&entry_key(idx));
        }
        for (expected, e) in (first_new..).zip(ents.iter()) {
            if e.index != expected {
                return Err(self.invalid(format!(
                    "entries not contiguous: {} after {}",
                    e.index,
                    expected - 1
                )));
            }
            b.insert(&entry_key(e.index), self.pb(e)?);
        }
        self.apply(b)?;
        self.terms.truncate((first_new - self.first()) as usize);
        self.terms.extend(ents.iter().map(|e| e.term));
        Ok(())
    }

    /// Persists a new hard state from a Ready.
    pub fn set_hard_state(&mut self, hs: &HardState) -> Result<(), StoreError> {
        let bytes = self.pb(hs)?;
        self.tree
            .insert(K_HARD_STATE, bytes)
            .map_err(|source| StoreError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.hard_state = hs.clone();
        Ok(())
    }

    /// Records a commit index learned from a LightReady.
    pub fn set_commit(&mut self, commit: u64) -> Result<(), StoreError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    /// Persists the conf state and peer addresses after a conf change applied.
    pub fn set_conf_state(&mut self, cs: ConfState, peers: PeerMap) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        b.insert(K_CONF_STATE, self.pb(&cs)?);
        self.conf_state = cs;
        self.peers = peers;
        b.insert(K_PEERS, self.peers_bytes()?);
        self.apply(b)
    }

    /// Installs a snapshot (received from the leader, or the bootstrap one):
    /// replaces the whole log, conf state and peers in one atomic batch.
    pub fn apply_snapshot(&mut self, snap: &Snapshot, peers: PeerMap) -> Result<(), StoreError> {
        let meta = snap.get_metadata();
        if meta.index < self.snap_meta.index {
            return Err(self.invalid(format!(
                "snapshot at {} is older than the stored one at {}",
                meta.index, self.snap_meta.index
            )));
        }
        let mut b = sled::Batch::default();
        for idx in self.first()..=self.last() {
            b.remove(&entry_key(idx));
        }
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        b.insert(K_HARD_STATE, self.pb(&hs)?);
        b.insert(K_CONF_STATE, self.pb(meta.get_conf_state())?);
        b.insert(K_TRUNCATED, trunc_bytes(meta.index, meta.term).to_vec());
        b.insert(K_SNAP_META, self.pb(meta)?);
        b.insert(K_SNAP_DATA, snap.data.to_vec());
        let old_peers = std::mem::replace(&mut self.peers, peers);
        let pb = self.peers_bytes();
        let pb = match pb {
            Ok(p) => p,
            Err(e) => {
                self.peers = old_peers;
                return Err(e);
            }
        };
        b.insert(K_PEERS, pb);
        if let Err(e) = self.apply(b) {
            self.peers = old_peers;
            return Err(e);
        }
        self.hard_state = hs;
        self.conf_state = meta.get_conf_state().clone();
        self.truncated_index = meta.index;
        self.truncated_term = meta.term;
        self.terms.clear();
        self.snap_meta = meta.clone();
        Ok(())
    }

    /// Stores a snapshot of the state machine taken at `index` (already
    /// applied) and compacts the log up to `index - keep`, atomically.
    /// `data` is the full snapshot payload (the node's envelope).
    pub fn create_snapshot(
        &mut self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
        keep: u64,
    ) -> Result<(), StoreError> {
        let term = self
            .term_of(index)
            .ok_or_else(|| self.invalid(format!("snapshot at {index}: no such entry")))?;
        if index < self.snap_meta.index {
            return Err(self.invalid(format!(
                "snapshot at {index} older than stored snapshot at {}",
                self.snap_meta.index
            )));
        }
        let meta = SnapshotMetadata {
            index,
            term,
            conf_state: Some(conf_state).into(),
            ..Default::default()
        };
        let compact_to = index.saturating_sub(keep).max(self.truncated_index);
        let compact_term = self
            .term_of(compact_to)
            .ok_or_else(|| self.invalid(format!("compact to {compact_to}: no such entry")))?;
        let mut b = sled::Batch::default();
        b.insert(K_SNAP_META, self.pb(&meta)?);
        b.insert(K_SNAP_DATA, data);
        b.insert(K_TRUNCATED, trunc_bytes(compact_to, compact_term).to_vec());
        for idx in self.first()..=compact_to {
            b.remove(&entry_key(idx));
        }
        self.apply(b)?;
        let drop_n = (compact_to - self.truncated_index) as usize;
        self.terms.drain(..drop_n.min(self.terms.len()));
        self.truncated_index = compact_to;
        self.truncated_term = compact_term;
        self.snap_meta = meta;
        Ok(())
    }

    /// Drops entries up to and including `to` (must not pass the stored
    /// snapshot: a follower that needs them is then sent the snapshot).
    pub fn compact(&mut self, to: u64) -> Result<(), StoreError> {
        if to <= self.truncated_index {
            return Ok(());
        }
        if to > self.snap_meta.index || to > self.last() {
            return Err(self.invalid(format!(
                "compact to {to} past snapshot {} / last index {}",
                self.snap_meta.index,
                self.last()
            )));
        }
        let term = self
            .term_of(to)
            .ok_or_else(|| self.invalid(format!("compact to {to}: no such entry")))?;
        let mut b = sled::Batch::default();
        b.insert(K_TRUNCATED, trunc_bytes(to, term).to_vec());
        for idx in self.first()..=to {
            b.remove(&entry_key(idx));
        }
        self.apply(b)?;
        let drop_n = (to - self.truncated_index) as usize;
        self.terms.drain(..drop_n.min(self.terms.len()));
        self.truncated_index = to;
        self.truncated_term = term;
        Ok(())
    }

    fn store_err(&self, e: StoreError) -> raft::Error {
        raft::Error::Store(raft::StorageError::Other(Box::new(e)))
    }
}

fn trunc_bytes(index: u64, term: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&index.to_be_bytes());
    b[8..].copy_from_slice(&term.to_be_bytes());
    b
}

fn untrunc(b: &[u8; 16]) -> (u64, u64) {
    let mut i = [0u8; 8];
    let mut t = [0u8; 8];
    i.copy_from_slice(&b[..8]);
    t.copy_from_slice(&b[8..]);
    (u64::from_be_bytes(i), u64::from_be_bytes(t))
}

fn decode_pb<M: PbMessage>(bytes: &[u8], what: &str) -> Result<M, String> {
    M::parse_from_bytes(bytes).map_err(|e| format!("{what} does not decode: {e}"))
}

impl Storage for SledStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into().unwrap_or(u64::MAX);
        if low < self.first() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let mut out = Vec::with_capacity((high.saturating_sub(low)).min(1024) as usize);
        let mut size = 0u64;
        let mut cut = false;
        for item in self.tree.range(entry_key(low)..entry_key(high)) {
            let (_, v) = item.map_err(|source| {
                self.store_err(StoreError::Io {
                    path: self.path.clone(),
                    source,
                })
            })?;
            let e = Entry::parse_from_bytes(&v).map_err(|err| {
                self.store_err(StoreError::Corrupt {
                    path: self.path.clone(),
                    reason: format!("entry does not decode: {err}"),
                })
            })?;
            size += u64::from(e.compute_size());
            if !out.is_empty() && size > max_size {
                cut = true;
                break;
            }
            out.push(e);
        }
        let expected = high - low;
        if !cut && (out.len() as u64) < expected {
            return Err(self.store_err(StoreError::Corrupt {
                path: self.path.clone(),
                reason: format!("entries {low}..{high} missing from the log"),
            }));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if let Some(t) = self.term_of(idx) {
            return Ok(t);
        }
        if idx < self.truncated_index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        Err(raft::Error::Store(raft::StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let cs = self.snap_meta.get_conf_state();
        // raft-rs refuses a snapshot whose configuration does not include the
        // receiver (a manager that just joined): a newer one is needed.
        let knows_to = cs.voters.contains(&to) || cs.learners.contains(&to);
        if self.snap_meta.index < request_index || self.snap_meta.index == 0 || !knows_to {
            // raft-rs retries later; the node takes a fresh snapshot meanwhile.
            self.snapshot_wanted.store(true, Ordering::Relaxed);
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot::default();
        snap.set_metadata(self.snap_meta.clone());
        snap.data = self.snapshot_data().map_err(|e| self.store_err(e))?.into();
        Ok(snap)
    }
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)] // protobuf structs, built step by step
mod tests {
    use super::*;

    fn ent(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = format!("e{index}t{term}").into_bytes().into();
        e
    }

    fn ents(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        range.map(|i| ent(i, term)).collect()
    }

    fn all(s: &SledStorage) -> Vec<(u64, u64)> {
        let (lo, hi) = (s.first_index().unwrap(), s.last_index().unwrap());
        s.entries(lo, hi + 1, None, GetEntriesContext::empty(false))
            .unwrap()
            .iter()
            .map(|e| (e.index, e.term))
            .collect()
    }

    fn store_err(r: raft::Result<u64>) -> raft::StorageError {
        match r {
            Err(raft::Error::Store(e)) => e,
            other => panic!("expected a storage error, got {other:?}"),
        }
    }

    #[test]
    fn fresh_log_is_empty_and_refuses_recreation() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!SledStorage::exists(dir.path()));
        let s = SledStorage::create(dir.path()).unwrap();
        assert!(SledStorage::exists(dir.path()));
        assert_eq!(s.first_index().unwrap(), 1);
        assert_eq!(s.last_index().unwrap(), 0);
        assert_eq!(s.term(0).unwrap(), 0);
        assert!(!s.initial_state().unwrap().initialized());
        assert!(matches!(
            s.snapshot(0, 2),
            Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable
            ))
        ));
        drop(s);
        let err = SledStorage::create(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists { .. }));
    }

    #[test]
    fn append_overwrites_conflicting_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SledStorage::create(dir.path()).unwrap();
        s.append(&ents(1..=5, 1)).unwrap();
        assert_eq!(s.last_index().unwrap(), 5);
        // A new leader at term 2 overwrites from index 3.
        s.append(&ents(3..=4, 2)).unwrap();
        assert_eq!(all(&s), vec![(1, 1), (2, 1), (3, 2), (4, 2)]);
        assert_eq!(s.term(4).unwrap(), 2);
        assert_eq!(store_err(s.term(5)), raft::StorageError::Unavailable);
        // Appending past the end leaves a gap: refused, not a panic.
        assert!(s.append(&ents(7..=7, 2)).is_err());
        // Non-contiguous input: refused.
        assert!(s.append(&[ent(5, 2), ent(7, 2)]).is_err());
        assert_eq!(s.last_index().unwrap(), 4);
        // The same after a reopen.
        drop(s);
        let s = SledStorage::open(dir.path()).unwrap();
        assert_eq!(all(&s), vec![(1, 1), (2, 1), (3, 2), (4, 2)]);
    }

    #[test]
    fn entries_respect_max_size_and_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SledStorage::create(dir.path()).unwrap();
        s.append(&ents(1..=10, 1)).unwrap();
        let one = u64::from(ent(1, 1).compute_size());
        let got = s
            .entries(1, 11, one * 3, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got.len(), 3);
        // Always at least one entry.
        let got = s
            .entries(2, 11, 0, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].index, 2);
        assert!(s
            .entries(1, 12, None, GetEntriesContext::empty(false))
            .is_err());
    }

    #[test]
    fn snapshot_compaction_and_term_lookups() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SledStorage::create(dir.path()).unwrap();
        s.append(&ents(1..=3, 1)).unwrap();
        s.append(&ents(4..=10, 2)).unwrap();
        let mut cs = ConfState::default();
        cs.voters = vec![1, 2, 3];
        let mut hs = HardState::default();
        hs.term = 2;
        hs.commit = 8;
        s.set_hard_state(&hs).unwrap();
        s.create_snapshot(8, cs.clone(), b"state@8".to_vec(), 2)
            .unwrap();
        // Compacted up to 8 - 2 = 6; the snapshot is at 8.
        assert_eq!(s.first_index().unwrap(), 7);
        assert_eq!(s.last_index().unwrap(), 10);
        assert_eq!(s.term(6).unwrap(), 2, "term before first index is kept");
        assert_eq!(s.term(8).unwrap(), 2);
        assert_eq!(store_err(s.term(5)), raft::StorageError::Compacted);
        assert!(matches!(
            s.entries(5, 8, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(raft::StorageError::Compacted))
        ));
        let snap = s.snapshot(0, 2).unwrap();
        assert_eq!(snap.get_metadata().index, 8);
        // Not for a node outside the snapshot's configuration.
        assert!(matches!(
            s.snapshot(0, 7),
            Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable
            ))
        ));
        assert!(s.take_snapshot_wanted());
        assert_eq!(snap.get_metadata().term, 2);
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2, 3]);
        assert_eq!(&snap.data[..], b"state@8");
        // A request for a newer snapshot than stored: temporarily unavailable.
        assert!(matches!(
            s.snapshot(9, 2),
            Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable
            ))
        ));
        assert!(s.take_snapshot_wanted());
        // Compact further, up to the snapshot but not beyond it.
        s.compact(8).unwrap();
        assert_eq!(s.first_index().unwrap(), 9);
        assert_eq!(s.term(8).unwrap(), 2);
        assert!(s.compact(9).is_err());
        // Everything survives a reopen.
        drop(s);
        let s = SledStorage::open(dir.path()).unwrap();
        assert_eq!(s.first_index().unwrap(), 9);
        assert_eq!(s.last_index().unwrap(), 10);
        assert_eq!(s.term(8).unwrap(), 2);
        assert_eq!(s.hard_state().commit, 8);
        assert_eq!(s.snapshot(0, 2).unwrap().get_metadata().index, 8);
        assert_eq!(all(&s), vec![(9, 2), (10, 2)]);
    }

    #[test]
    fn apply_snapshot_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SledStorage::create(dir.path()).unwrap();
        s.append(&ents(1..=5, 1)).unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 20;
        snap.mut_metadata().term = 3;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 4];
        snap.data = b"state@20".to_vec().into();
        let mut peers = PeerMap::new();
        peers.insert(1, "10.0.0.1:2377".parse().unwrap());
        peers.insert(4, "10.0.0.4:2377".parse().unwrap());
        s.apply_snapshot(&snap, peers.clone()).unwrap();
        assert_eq!(s.first_index().unwrap(), 21);
        assert_eq!(s.last_index().unwrap(), 20);
        assert_eq!(s.term(20).unwrap(), 3);
        assert_eq!(s.hard_state().commit, 20);
        assert_eq!(s.hard_state().term, 3);
        s.append(&ents(21..=22, 3)).unwrap();
        drop(s);
        let s = SledStorage::open(dir.path()).unwrap();
        assert_eq!(s.peers(), &peers);
        assert_eq!(s.conf_state().voters, vec![1, 4]);
        assert_eq!(all(&s), vec![(21, 3), (22, 3)]);
        assert_eq!(s.snapshot_data().unwrap(), b"state@20");
        assert!(s.initial_state().unwrap().initialized());
    }

    #[test]
    fn reopen_preserves_hard_state_conf_state_and_peers() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SledStorage::create(dir.path()).unwrap();
        s.append(&ents(1..=100, 4)).unwrap();
        let mut hs = HardState::default();
        hs.term = 4;
        hs.vote = 2;
        hs.commit = 99;
        s.set_hard_state(&hs).unwrap();
        let mut cs = ConfState::default();
        cs.voters = vec![1, 2, 3];
        let mut peers = PeerMap::new();
        peers.insert(2, "127.0.0.1:9".parse().unwrap());
        s.set_conf_state(cs.clone(), peers.clone()).unwrap();
        s.flush().unwrap();
        drop(s);
        let s = SledStorage::open(dir.path()).unwrap();
        assert_eq!(s.hard_state(), &hs);
        assert_eq!(s.conf_state(), &cs);
        assert_eq!(s.peers(), &peers);
        assert_eq!(s.last_index().unwrap(), 100);
        assert_eq!(s.term(100).unwrap(), 4);
    }

    #[test]
    fn missing_log_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = SledStorage::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Missing { .. }));
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }

    fn corrupt_files(db: &Path, f: &dyn Fn(&Path)) {
        for entry in std::fs::read_dir(db).unwrap() {
            let p = entry.unwrap().path();
            let keep = ["conf", crate::watermark::FILE];
            if p.is_file() && p.file_name().is_some_and(|n| !keep.iter().any(|k| n == *k)) {
                f(&p);
            }
        }
    }

    fn assert_corrupt_is_error(damage: &dyn Fn(&Path)) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SledStorage::create(dir.path()).unwrap();
        s.append(&ents(1..=50, 1)).unwrap();
        let mut hs = HardState::default();
        hs.term = 1;
        hs.commit = 50;
        s.set_hard_state(&hs).unwrap();
        s.sync().unwrap();
        drop(s);
        let db = SledStorage::db_path(dir.path());
        corrupt_files(&db, damage);
        let err = SledStorage::open(dir.path()).expect_err("a damaged log must not open");
        let msg = err.to_string();
        assert!(msg.contains(&db.display().to_string()), "{msg}");
    }

    #[test]
    fn garbage_db_file_is_an_error_naming_the_path() {
        assert_corrupt_is_error(&|p| {
            let len = std::fs::metadata(p).unwrap().len().max(4096) as usize;
            let junk: Vec<u8> = (0..len).map(|i| (i * 7 + 13) as u8).collect();
            std::fs::write(p, junk).unwrap();
        });
    }

    #[test]
    fn truncated_db_file_is_an_error_naming_the_path() {
        assert_corrupt_is_error(&|p| {
            std::fs::write(p, b"").unwrap();
        });
    }

    #[test]
    fn flipped_bytes_never_read_as_an_empty_log() {
        // Flip bytes in the middle of the data file: whatever sled makes of
        // it, opening must either fail or yield the full log.
        let dir = tempfile::tempdir().unwrap();
        let mut s = SledStorage::create(dir.path()).unwrap();
        s.append(&ents(1..=50, 1)).unwrap();
        let mut hs = HardState::default();
        hs.term = 1;
        hs.commit = 50;
        s.set_hard_state(&hs).unwrap();
        s.sync().unwrap();
        drop(s);
        let db = SledStorage::db_path(dir.path());
        corrupt_files(&db, &|p| {
            let mut b = std::fs::read(p).unwrap();
            let n = b.len();
            for i in (n / 3..n).step_by(97) {
                b[i] ^= 0x5a;
            }
            std::fs::write(p, b).unwrap();
        });
        match SledStorage::open(dir.path()) {
            Ok(s) => assert_eq!(s.last_index().unwrap(), 50),
            Err(e) => assert!(e.to_string().contains(&db.display().to_string()), "{e}"),
        }
    }
}
