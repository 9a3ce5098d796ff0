//! Error types of the raft store. Every error a user can see names what was
//! wrong (and, for disk errors, which path) so an operator knows what to fix.

use std::path::PathBuf;
use std::time::Duration;

/// Failures of the sled-backed raft log. Kept apart from [`RaftError`] so the
/// storage can be tested (and swapped) on its own.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled could not open the database (permissions, lock held by another
    /// process, unreadable files).
    #[error("cannot open raft log at {path}: {source}")]
    Open {
        /// The database directory.
        path: PathBuf,
        /// What sled reported.
        #[source]
        source: sled::Error,
    },
    /// sled panicked while opening: its recovery code asserts on some kinds
    /// of damaged files, and a damaged file must be an error, not a crash.
    #[error("cannot open raft log at {path}: the database is damaged ({reason})")]
    OpenPanicked {
        /// The database directory.
        path: PathBuf,
        /// The panic message.
        reason: String,
    },
    /// The database opened but its content is not a valid raft log (missing
    /// or undecodable state, gaps in the log). Never treated as an empty log:
    /// starting from nothing would let this manager vote and forget commits.
    #[error("raft log at {path} is corrupt: {reason}; restore the data directory from a backup or remove this manager and join it again")]
    Corrupt {
        /// The database directory.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A read or write failed after the database was opened.
    #[error("raft log at {path}: {source}")]
    Io {
        /// The database directory.
        path: PathBuf,
        /// What sled reported.
        #[source]
        source: sled::Error,
    },
    /// A plain file beside the database (the commit watermark).
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What the OS reported.
        #[source]
        source: std::io::Error,
    },
    /// `bootstrap`/`join` on a directory that already holds a log.
    #[error("{path} already holds a raft log; restart from it instead of creating a new one")]
    AlreadyExists {
        /// The database directory.
        path: PathBuf,
    },
    /// `restart` on a directory without a log.
    #[error("no raft log at {path}; bootstrap a new cluster or join an existing one")]
    Missing {
        /// The database directory.
        path: PathBuf,
    },
    /// The caller asked for something the log cannot do (e.g. append entries
    /// that leave a gap); a bug in the caller, reported instead of panicking.
    #[error("raft log at {path}: {reason}")]
    Invalid {
        /// The database directory.
        path: PathBuf,
        /// What was asked.
        reason: String,
    },
}

/// Errors of frame encoding/decoding on the raft transport. Frames come from
/// the network, so every malformed input maps to one of these.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than [`crate::codec::MAX_FRAME`]; the
    /// peer is broken or hostile, nothing is allocated.
    #[error("raft frame of {len} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The frame ended before the structure it announced.
    #[error("truncated raft frame: {0}")]
    Truncated(&'static str),
    /// Unknown frame version byte.
    #[error("unsupported raft frame version {0}")]
    Version(u8),
    /// The sender address is not valid UTF-8 / not a socket address.
    #[error("bad sender address in raft frame")]
    BadAddr,
    /// Bytes left over after the last message.
    #[error("{0} trailing bytes after the last message of a raft frame")]
    Trailing(usize),
    /// A message did not decode as protobuf.
    #[error("bad raft message in frame: {0}")]
    Protobuf(#[from] protobuf::ProtobufError),
    /// Reading or writing the stream failed.
    #[error("raft stream: {0}")]
    Io(#[from] std::io::Error),
    /// A chunk of a large batch that does not continue the one being
    /// assembled (wrong offset or total, or a normal frame in between).
    #[error("raft frame chunk out of order: {0}")]
    Chunk(&'static str),
}

/// Errors returned by [`crate::RaftNode`]. The agent shows these to users
/// (e.g. `shoal service create` while managers are down), so they say what
/// happened in cluster terms.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// This node can see that a majority of managers is unreachable: the
    /// write cannot commit, so it fails now instead of hanging.
    #[error("no quorum: {reachable} of {total} managers reachable")]
    NoQuorum {
        /// Voters (this node included) heard from within an election timeout.
        reachable: usize,
        /// Number of voters.
        total: usize,
    },
    /// No leader became known within the bounded wait.
    #[error("no raft leader elected within {0:?}; check that a majority of managers is running")]
    NoLeader(Duration),
    /// This manager is not (or not yet) a voter in the configuration it has
    /// applied: a joining manager still waiting for the leader's snapshot, or
    /// one that was removed.
    #[error("this manager (raft id {0}) is not a member of the raft cluster; if it is joining, wait for it to catch up")]
    NotMember(u64),
    /// The request was accepted but not applied here in time (leader change,
    /// lost message); it may or may not have been committed.
    #[error("raft request not applied within {0:?}; it may or may not have taken effect")]
    Timeout(Duration),
    /// The leader dropped a configuration change (another one is pending).
    #[error("raft dropped the request: {0}")]
    Dropped(String),
    /// The node's loop has stopped (shutdown or fatal storage error).
    #[error("raft node stopped")]
    Stopped,
    /// The log on disk.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// raft-rs rejected an operation.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// A command could not be (de)serialized.
    #[error("raft command encoding: {0}")]
    Codec(String),
    /// The state machine failed to snapshot or restore.
    #[error("state machine: {0}")]
    StateMachine(String),
    /// Frames on a peer stream.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Invalid configuration (zero id, election ticks not above heartbeat ticks).
    #[error("invalid raft configuration: {0}")]
    Config(String),
    /// A peer authenticated as raft id `peer` sent messages as `claimed`.
    #[error("raft peer {peer} sent messages as raft id {claimed}: refused")]
    Impersonation {
        /// The raft id its certificate's node holds.
        peer: u64,
        /// The sender it claimed.
        claimed: u64,
    },
}
