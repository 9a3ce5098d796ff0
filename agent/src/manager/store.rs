//! The store handle: the manager side's only door to Raft.
//!
//! [`StoreMachine`] adapts the domain state (`shoal-model`) to
//! raft-store's generic [`StateMachine`]; [`Store`] proposes commands and
//! reads the applied state, and turns Raft and apply errors into the
//! errors a user reads. Everything under `manager/` goes through it.

use std::net::SocketAddr;
use std::path::Path;

use shoal_api::{ApiError, ErrorCode};
use shoal_model::state::{ApplyError, ApplyResult, Command, State};
use shoal_raft_store::{RaftError, RaftNode, RaftStats, RaftStatus, StateMachine};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// The replicated state as raft-store applies it. Snapshots and log
/// entries are the model's own encoding ([`State::encode`],
/// [`Command::encode`]), which also reads the data dirs of older releases.
#[derive(Debug, Default, Clone)]
pub struct StoreMachine(pub State);

impl StateMachine for StoreMachine {
    type Command = Command;
    type Output = ApplyResult;

    fn apply(&mut self, index: u64, cmd: Command) -> ApplyResult {
        self.0.apply_command(index, cmd)
    }

    fn snapshot(&self) -> Result<Vec<u8>, String> {
        self.0.encode()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        self.0 = State::decode(data)?;
        Ok(())
    }

    fn encode_command(cmd: &Command) -> Result<Vec<u8>, String> {
        cmd.encode()
    }

    fn decode_command(data: &[u8]) -> Result<Command, String> {
        Command::decode(data)
    }
}

/// The Raft node of a manager, as the manager side uses it.
#[derive(Clone)]
pub struct Store {
    raft: RaftNode<StoreMachine>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// Errors from the store as the user should read them.
pub fn raft_err(e: RaftError) -> ApiError {
    let code = match e {
        RaftError::NoQuorum { .. }
        | RaftError::NoLeader(_)
        | RaftError::Timeout(_)
        | RaftError::Dropped(_)
        | RaftError::NotMember(_) => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    ApiError::new(code, e.to_string())
}

fn apply_err(e: ApplyError) -> ApiError {
    use shoal_model::configs::FileError as F;
    use shoal_model::network::NetworkError as N;
    use shoal_model::service::ServiceError as S;
    let code = match e {
        ApplyError::NoSuchNode(_)
        | ApplyError::Network(N::NotFound(_))
        | ApplyError::Service(S::NotFound(_))
        | ApplyError::File(F::NotFound(..)) => ErrorCode::NotFound,
        ApplyError::Network(N::NameInUse(_) | N::IngressExists(_))
        | ApplyError::Service(S::NameInUse(_) | S::PortInUse { .. })
        | ApplyError::File(F::NameInUse(..)) => ErrorCode::Conflict,
        _ => ErrorCode::Invalid,
    };
    ApiError::new(code, e.to_string())
}

impl Store {
    /// Wrap a started Raft node.
    pub fn new(raft: RaftNode<StoreMachine>) -> Store {
        Store { raft }
    }

    /// Whether `dir` holds a Raft log.
    pub fn exists(dir: &Path) -> bool {
        RaftNode::<StoreMachine>::exists(dir)
    }

    /// Propose a command and wait until it is applied here.
    pub async fn propose(&self, cmd: Command) -> Result<(), ApiError> {
        self.raft
            .propose(cmd)
            .await
            .map_err(raft_err)?
            .map_err(apply_err)
    }

    /// Propose `cmds` all at once: they are submitted in order and share
    /// Raft's next batch (one fsync) instead of a round trip each. Returns
    /// the errors, in no particular order.
    pub async fn propose_all(&self, cmds: Vec<Command>) -> Vec<ApiError> {
        futures::future::join_all(cmds.into_iter().map(|c| self.propose(c)))
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect()
    }

    /// A fresh (ReadIndex) read of the store.
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&State) -> R + Send + 'static,
    ) -> Result<R, ApiError> {
        self.raft.read_barrier().await.map_err(raft_err)?;
        self.read_local(f).await
    }

    /// A local read of the applied state (for loops that run on every
    /// change, and to resolve names before a write that apply checks
    /// again).
    pub async fn read_local<R: Send + 'static>(
        &self,
        f: impl FnOnce(&State) -> R + Send + 'static,
    ) -> Result<R, ApiError> {
        self.raft
            .read(move |m: &StoreMachine| f(&m.0))
            .await
            .map_err(raft_err)
    }

    /// Leader, term, indexes, voters.
    pub fn status(&self) -> RaftStatus {
        self.raft.status()
    }

    /// Counters for `/metrics`.
    pub fn stats(&self) -> RaftStats {
        self.raft.stats()
    }

    /// Fires on every applied change and status change.
    pub fn subscribe(&self) -> watch::Receiver<RaftStatus> {
        self.raft.subscribe()
    }

    /// Add a Raft voter.
    pub async fn add_voter(&self, id: u64, addr: SocketAddr) -> Result<(), RaftError> {
        self.raft.add_voter(id, addr).await
    }

    /// Remove a Raft voter.
    pub async fn remove_voter(&self, id: u64) -> Result<(), RaftError> {
        self.raft.remove_voter(id).await
    }

    /// Serve an inbound Raft stream from a manager whose raft id this node
    /// cannot know yet (it is still learning the log).
    pub async fn serve_peer<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        stream: T,
    ) -> Result<(), RaftError> {
        self.raft.serve_peer(stream).await
    }

    /// Serve an inbound Raft stream from the manager holding raft id
    /// `from` (known from its certificate); messages as anyone else end it.
    pub async fn serve_peer_as<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        stream: T,
        from: u64,
    ) -> Result<(), RaftError> {
        self.raft.serve_peer_as(stream, from).await
    }

    /// Stop the Raft loop; the log is flushed and closed.
    pub async fn shutdown(&self) -> Result<(), RaftError> {
        self.raft.clone().shutdown().await
    }
}
