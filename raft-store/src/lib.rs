//! The replicated log of Shoal managers: a raft-rs `RawNode` over a
//! sled-backed log with snapshots and a mutual-TLS transport on TCP 2377,
//! generic over the state machine it feeds ([`StateMachine`]). It knows
//! nothing of Shoal's domain: the typed state lives in `shoal-model`.
//!
//! Data flow: the agent calls [`RaftNode::propose`] on any manager; the
//! command is bincode-encoded into a raft entry, forwarded to the leader by
//! raft-rs, replicated through a [`Transport`], made durable by
//! [`SledStorage`] (one flush per Ready), and applied to the agent's
//! [`StateMachine`] on every manager in the same order. The generic
//! machinery lives here; the agent adapts Shoal's state to [`StateMachine`].
//!
//! Modules: [`storage`] (the log on disk), [`codec`] (frames on the wire),
//! [`transport`] (outbound delivery, TLS), [`mem`] (in-memory router for
//! tests), and the node itself.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod codec;
mod error;
pub mod mem;
mod node;
pub mod storage;
pub mod transport;
mod watermark;

pub use codec::{
    decode_batch, decode_frame, encode_batch, encode_frames, Batch, MAX_BATCH, MAX_FRAME,
};
pub use error::{FrameError, RaftError, StoreError};
pub use node::{
    HistogramSnapshot, Inbox, RaftNode, RaftStats, RaftStatus, VoterStatus, APPLY_LATENCY_BOUNDS,
};
pub use storage::{PeerMap, SledStorage};
pub use transport::{TlsTransport, Transport, MANAGER_SERVER_NAME};

/// Re-exported so callers name raft messages without depending on raft.
pub use raft::eraftpb;

/// The replicated state: implemented by the typed Shoal state and by a
/// small KV machine in the tests. Lives behind a mutex owned by the node.
pub trait StateMachine: Clone + Send + Sync + 'static {
    /// What is proposed; written into the raft entry by
    /// [`StateMachine::encode_command`].
    type Command: serde::Serialize + serde::de::DeserializeOwned + Send + 'static;
    /// What applying a command returns to the proposer on its own manager.
    type Output: Send + 'static;
    /// Deterministic: same commands in the same order => same state and
    /// outputs on every manager. `index` is the raft log index.
    fn apply(&mut self, index: u64, cmd: Self::Command) -> Self::Output;
    /// Serializes the whole state, for log compaction and new managers.
    fn snapshot(&self) -> Result<Vec<u8>, String>;
    /// Replaces the whole state with a snapshot.
    fn restore(&mut self, data: &[u8]) -> Result<(), String>;
    /// The bytes of a command in the log: bincode unless the machine
    /// versions its format (then it overrides both this and
    /// [`StateMachine::decode_command`]).
    fn encode_command(cmd: &Self::Command) -> Result<Vec<u8>, String> {
        bincode::serde::encode_to_vec(cmd, bincode::config::standard()).map_err(|e| e.to_string())
    }
    /// Reads a committed entry's command. The bytes come from disk and
    /// from the leader: what decoding allocates must be bounded.
    fn decode_command(data: &[u8]) -> Result<Self::Command, String> {
        let cfg = bincode::config::standard().with_limit::<COMMAND_LIMIT>();
        bincode::serde::decode_from_slice(data, cfg)
            .map(|(c, _)| c)
            .map_err(|e| e.to_string())
    }
}

/// Bound on what the default command decoder may allocate.
pub const COMMAND_LIMIT: usize = 64 << 20;

/// Settings of one raft node. Defaults are production values; tests shrink
/// the timings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RaftConfig {
    /// Raft id of this manager (nonzero, unique in the cluster).
    pub id: u64,
    /// The manager's data directory; the log lives in `data_dir/raft`.
    pub data_dir: PathBuf,
    /// Length of one raft tick.
    pub tick: Duration,
    /// Ticks without a leader before an election (randomized by raft-rs in
    /// `[election_ticks, 2 * election_ticks)`); also the reachability window.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Applied entries between snapshots (each snapshot compacts the log).
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot, so a follower that lags
    /// a little catches up from the log instead of a full snapshot.
    pub compact_keep: u64,
    /// Proposals, conf changes and reads in flight per node before callers wait.
    pub max_inflight_proposals: usize,
    /// How long a submitted request may take to apply here.
    pub propose_timeout: Duration,
    /// How long a request waits for a leader to be known.
    pub leader_wait: Duration,
    /// Bytes of entries per append message (raft-rs `max_size_per_msg`).
    pub max_size_per_msg: u64,
    /// Append messages in flight per follower (raft-rs `max_inflight_msgs`).
    pub max_inflight_msgs: usize,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            id: 0,
            data_dir: PathBuf::from("/var/lib/shoal"),
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 1,
            snapshot_every: 10_000,
            compact_keep: 1_000,
            max_inflight_proposals: 4_096,
            propose_timeout: Duration::from_secs(10),
            leader_wait: Duration::from_secs(3),
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
        }
    }
}
