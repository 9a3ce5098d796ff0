//! `shoal-api`: the local API between the `shoal` CLI and its daemon, over
//! a unix socket: requests, responses, errors, the rows and documents the
//! daemon returns ([`dto`]), the frame codec and the client ([`client`]),
//! shared by the CLI, the lab and the tests.
//!
//! Every message is one frame: a 4-byte big-endian length followed by that
//! many bytes of JSON. A request carries the protocol version it speaks, so a
//! daemon and a CLI of different versions fail with a clear message instead of
//! misreading each other. The daemon answers every complete frame, including
//! malformed ones, and closes the connection only when it cannot find the next
//! frame boundary (an oversized length).

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use shoal_model::state::{Availability, Node};
use shoal_model::Role;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub mod client;
pub mod dto;
pub mod engine;

pub use dto::*;

/// Default path of the daemon's API socket.
pub const DEFAULT_SOCKET: &str = "/run/shoal/shoal.sock";

/// Version of the request/response protocol; bumped on incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame either side accepts. Requests are small; responses carry at
/// most a few thousand objects.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// A request as sent on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Protocol version the client speaks.
    pub version: u32,
    /// What the client asks for.
    pub request: Request,
}

/// A response as sent on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// Protocol version the daemon speaks.
    pub version: u32,
    /// The answer or why there is none.
    pub result: Result<Response, ApiError>,
}

/// Everything the CLI can ask the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Daemon version and build facts.
    Version,
    /// Node identity, addresses and swarm state.
    Info,
    /// `swarm init`.
    SwarmInit(SwarmInitArgs),
    /// `swarm join`.
    SwarmJoin(SwarmJoinArgs),
    /// `swarm join-token`.
    JoinToken {
        /// Which token.
        role: Role,
        /// Replace the secret first.
        rotate: bool,
    },
    /// `swarm leave`.
    SwarmLeave {
        /// Leave even if it breaks quorum or erases the swarm.
        force: bool,
    },
    /// `swarm ca --rotate`.
    CaRotate,
    /// `swarm rotate-keys`.
    RotateKeys,
    /// `gossip members`.
    GossipMembers,
    /// `gossip tables`.
    GossipTables {
        /// Only this table (`ep/<network>` for a network's endpoints).
        table: Option<String>,
    },
    /// `gossip put` (debugging): write an entry owned by this node.
    GossipPut {
        /// Table name.
        table: String,
        /// Key.
        key: String,
        /// Value (text).
        value: String,
    },
    /// `gossip rm` (debugging): delete an entry owned by this node.
    GossipDelete {
        /// Table name.
        table: String,
        /// Key.
        key: String,
    },
    /// `gossip metrics`.
    GossipMetrics,
    /// `network create`.
    NetworkCreate(shoal_model::network::NetworkSpec),
    /// `network ls`.
    NetworkList,
    /// `network inspect`.
    NetworkInspect {
        /// Names, ids or id prefixes.
        networks: Vec<String>,
        /// Add every node's view: peers, kernel vs desired.
        #[serde(default)]
        verbose: bool,
    },
    /// `shoal run`: a workload attached to an overlay network.
    Run {
        /// Network name or id (must be attachable).
        network: String,
        /// Workload name.
        name: Option<String>,
        /// Address in the network.
        ip: Option<std::net::Ipv4Addr>,
        /// Command and arguments (after the image's entrypoint).
        argv: Vec<String>,
        /// The image (empty: a host process).
        #[serde(default)]
        image: String,
        /// How the container runs (`None`: a host process).
        #[serde(default)]
        container: Option<Box<shoal_model::service::ContainerSpec>>,
        /// `K=V` on top of the image's env (containers).
        #[serde(default)]
        env: Vec<String>,
    },
    /// `shoal ps`.
    Ps,
    /// `shoal stop`.
    Stop {
        /// Workload id, id prefix or name.
        workload: String,
    },
    /// `shoal exec`: a command in a workload's container. The daemon
    /// answers [`Response::ExecStarted`]; from then on the connection
    /// carries [`ExecFrame`]s both ways until [`ExecFrame::Exit`].
    Exec {
        /// Workload or task id, id prefix or name.
        workload: String,
        /// The command and its arguments.
        argv: Vec<String>,
        /// `-i`: the client sends stdin.
        #[serde(default)]
        interactive: bool,
        /// `-t`: the command gets a terminal (stdout and stderr as one
        /// stream, resized by [`ExecFrame::Resize`]).
        #[serde(default)]
        tty: bool,
    },
    /// `service logs`: what a service's (or one task's) tasks wrote, from
    /// every node that holds one (served by the leader).
    ServiceLogs {
        /// Service name, id or id prefix; or a task id.
        service: String,
        /// Lines per task.
        tail: Option<usize>,
        /// `--follow`'s cursors: per task seen so far, the time of its
        /// last line (0: none yet); only newer lines come back, and all
        /// lines of tasks not named. Empty on the first call.
        #[serde(default)]
        after: BTreeMap<String, i64>,
    },
    /// `image ls`: the images on this node.
    ImageList,
    /// `image pull`.
    ImagePull {
        /// `[registry[:port]/]name[:tag|@sha256:…]`.
        reference: String,
    },
    /// `image import`: an image from an OCI or `docker save` archive on
    /// this node.
    ImageImport {
        /// The archive (an absolute path on this node).
        file: std::path::PathBuf,
        /// Its name, when the archive gives none (or another one).
        name: Option<String>,
    },
    /// `image rm`.
    ImageRemove {
        /// References.
        images: Vec<String>,
    },
    /// `shoal logs`: what a workload wrote to stdout and stderr.
    Logs {
        /// Workload or task id, id prefix or name.
        workload: String,
        /// Only the last N lines.
        tail: Option<usize>,
        /// Only lines after this time (`--follow`'s cursor).
        #[serde(default)]
        after: Option<i64>,
    },
    /// `network rm`.
    NetworkRemove {
        /// Names, ids or id prefixes.
        networks: Vec<String>,
    },
    /// `service create`.
    ServiceCreate {
        /// The service.
        spec: Box<shoal_model::service::ServiceSpec>,
        /// Pin the image's tag to the digest the registry has now
        /// (`--no-resolve-image` clears it).
        resolve_image: bool,
    },
    /// `service update` / `service scale` (one service).
    ServiceUpdate {
        /// Name, id or id prefix.
        service: String,
        /// What changes.
        update: Box<ServiceUpdate>,
    },
    /// `service rollback` / `service update --rollback`.
    ServiceRollback {
        /// Name, id or id prefix.
        service: String,
    },
    /// `service rm`.
    ServiceRemove {
        /// Names, ids or id prefixes.
        services: Vec<String>,
    },
    /// `service ls` (empty) / `service inspect`.
    ServiceList {
        /// Names, ids or id prefixes (all when empty).
        services: Vec<String>,
    },
    /// `service ps`.
    ServicePs {
        /// Names, ids or id prefixes.
        services: Vec<String>,
    },
    /// `events`: one long poll of the event log.
    Events {
        /// Events after this sequence number (the last one seen).
        after: Option<u64>,
        /// On the first poll: events since this unix ms.
        since_ms: Option<u64>,
    },
    /// `node ls`.
    NodeList,
    /// `node inspect`.
    NodeInspect {
        /// Node id, id prefix, host name or `self`.
        node: String,
    },
    /// `node promote` / `node demote`.
    NodeSetRole {
        /// Nodes to change.
        nodes: Vec<String>,
        /// The new role.
        role: Role,
    },
    /// `node update`.
    NodeUpdate {
        /// Node to change.
        node: String,
        /// New availability.
        availability: Option<Availability>,
        /// Labels to add or change.
        #[serde(default)]
        label_add: BTreeMap<String, String>,
        /// Labels to remove, by key.
        #[serde(default)]
        label_rm: Vec<String>,
    },
    /// `node rm`.
    NodeRemove {
        /// Nodes to remove.
        nodes: Vec<String>,
        /// Remove even if the node is not down.
        force: bool,
    },
    /// The cluster object: settings, join tokens, root CA (the Engine
    /// API's `GET /swarm`).
    SwarmInspect,
    /// The digest a registry names for an image reference now (the Engine
    /// API's `GET /distribution/{name}/json`); answers the pinned
    /// reference `name@sha256:…` as a [`Response::Message`].
    ImageResolve {
        /// `[registry[:port]/]name[:tag]`.
        reference: String,
    },
    /// `config create` / `secret create`.
    FileCreate {
        /// Config or secret.
        kind: shoal_model::configs::FileKind,
        /// Its name.
        name: String,
        /// Its labels.
        #[serde(default)]
        labels: BTreeMap<String, String>,
        /// Its content.
        data: Vec<u8>,
    },
    /// `config ls` / `secret ls` (empty) and `inspect`: secrets come back
    /// without their data.
    FileList {
        /// Config or secret.
        kind: shoal_model::configs::FileKind,
        /// Names, ids or id prefixes (all when empty).
        #[serde(default)]
        keys: Vec<String>,
    },
    /// The Engine API's config/secret update: labels only (the data, if
    /// sent, must be what is stored).
    FileUpdate {
        /// Config or secret.
        kind: shoal_model::configs::FileKind,
        /// Name, id or id prefix.
        key: String,
        /// Refuse unless the object is still at this version.
        version: Option<u64>,
        /// All its labels.
        labels: BTreeMap<String, String>,
        /// The data as sent back, if any.
        data: Option<Vec<u8>>,
    },
    /// `config rm` / `secret rm`.
    FileRemove {
        /// Config or secret.
        kind: shoal_model::configs::FileKind,
        /// Names, ids or id prefixes.
        keys: Vec<String>,
    },
    /// `network create -d bridge`: a local network of this node.
    LocalNetworkCreate(LocalNetworkSpec),
}

/// Arguments of `swarm init`, as typed (interfaces are resolved by the
/// daemon, in its own network namespace).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwarmInitArgs {
    /// `<ip|iface>[:port]`.
    pub advertise_addr: String,
    /// `<ip|iface>`, default: the advertise address.
    pub data_path_addr: Option<String>,
    /// `<ip|iface>[:port]`, default 0.0.0.0:2377.
    pub listen_addr: Option<String>,
    /// Overlay subnet pools (CIDR).
    pub default_addr_pool: Vec<String>,
    /// Prefix length of allocated subnets.
    pub default_addr_pool_mask_length: u8,
    /// VXLAN UDP port.
    pub data_path_port: u16,
    /// Node heartbeat period (ms); default: the daemon's `heartbeat_ms`.
    #[serde(default)]
    pub dispatcher_heartbeat_ms: Option<u64>,
    /// Gossip key rotation interval (ms); default 12 h.
    #[serde(default)]
    pub key_rotation_interval_ms: Option<u64>,
}

/// Arguments of `swarm join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwarmJoinArgs {
    /// `SWMTKN-1-...`.
    pub token: String,
    /// A manager's `host:port`.
    pub remote: String,
    /// `<ip|iface>[:port]`; default: the address that routes to the manager.
    pub advertise_addr: Option<String>,
    /// `<ip|iface>`.
    pub data_path_addr: Option<String>,
    /// `<ip|iface>[:port]`, default 0.0.0.0:2377.
    pub listen_addr: Option<String>,
}

/// One row of `node ls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRow {
    /// The stored node.
    #[serde(flatten)]
    pub node: Node,
    /// Leader / Reachable / Unreachable for managers, empty for workers.
    pub manager_status: String,
    /// Whether this is the node answering.
    pub is_self: bool,
    /// alive / suspect / down as this node's gossip sees it (empty before
    /// gossip runs).
    #[serde(default)]
    pub gossip: String,
    /// CPUs and memory it reported (`Description.Resources`).
    #[serde(default)]
    pub resources: Option<shoal_model::state::NodeResources>,
    /// Its labels (`Spec.Labels`), for placement constraints.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Answers, one variant per request kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Version`].
    Version(VersionInfo),
    /// Answer to [`Request::Info`].
    Info(Box<NodeInfo>),
    /// Free text for the user (init, join, leave, tokens...).
    Message(String),
    /// Answer to [`Request::NodeList`] and [`Request::NodeInspect`].
    Nodes(Vec<NodeRow>),
    /// Workloads on this node.
    Workloads(Vec<Workload>),
    /// Networks (ls / inspect), docker-like documents.
    Networks(Vec<serde_json::Value>),
    /// Services (ls / inspect).
    Services(Vec<ServiceRow>),
    /// Tasks (`service ps`).
    Tasks(Vec<TaskRow>),
    /// Events (`events`).
    Events {
        /// New events, oldest first.
        events: Vec<Event>,
        /// Newest sequence number of the log (poll after it next).
        last_seq: u64,
    },
    /// Gossip members.
    Members(Vec<GossipMember>),
    /// Gossip table entries.
    Entries(Vec<GossipEntry>),
    /// Gossip counters.
    Metrics(serde_json::Value),
    /// Answer to [`Request::ImageList`].
    Images(Vec<ImageRow>),
    /// Answer to [`Request::ServiceCreate`].
    Created {
        /// The new service's id.
        id: String,
        /// What the user should know (an image not pinned to a digest).
        warnings: Vec<String>,
    },
    /// Answer to [`Request::Logs`] and [`Request::ServiceLogs`].
    Logs {
        /// The lines, oldest first.
        lines: Vec<LogLine>,
        /// Per task, the time of its last line (send back to follow).
        cursors: BTreeMap<String, i64>,
        /// Nodes that could not answer.
        errors: Vec<String>,
    },
    /// Answer to [`Request::Exec`]: the command runs; [`ExecFrame`]s
    /// follow.
    ExecStarted,
    /// Answer to [`Request::SwarmInspect`].
    Swarm(Box<SwarmDoc>),
    /// Answer to [`Request::FileList`].
    Files(Vec<shoal_model::configs::StoredFile>),
    /// Answer to [`Request::JoinToken`].
    Token {
        /// The token alone (`-q`).
        token: String,
        /// The full instructions.
        message: String,
    },
}

/// Version facts of one side (client or daemon).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionInfo {
    /// Crate version of the binary.
    pub version: String,
    /// Local API protocol version.
    pub protocol: u32,
    /// Operating system and architecture.
    pub os_arch: String,
}

impl VersionInfo {
    /// The facts of the running binary.
    pub fn current() -> Self {
        VersionInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: PROTOCOL_VERSION,
            os_arch: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
        }
    }
}

/// What `shoal info` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// This node's id (kept in the data dir).
    pub node_id: String,
    /// Host name of the machine.
    pub hostname: String,
    /// IPv4 addresses of the interfaces in the daemon's network namespace
    /// (loopback excluded).
    pub addresses: Vec<String>,
    /// The daemon's data directory.
    pub data_dir: String,
    /// Daemon version.
    pub daemon_version: String,
    /// Swarm membership of this node.
    pub swarm: SwarmInfo,
}

/// Swarm part of [`NodeInfo`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SwarmInfo {
    /// `inactive`, `active`, ...
    pub state: SwarmState,
    /// Cluster id when active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Role of this node when active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Control address of this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_addr: Option<String>,
    /// Data-path address of this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_path_addr: Option<String>,
    /// Manager addresses known to this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managers: Vec<String>,
    /// Raft view when this node is a manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft: Option<RaftInfo>,
    /// Digest of the root CA that issued this node's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_digest: Option<String>,
    /// Number of root CAs this node trusts (2 during a rotation).
    #[serde(default)]
    pub trusted_roots: usize,
    /// Manager this node's session is connected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_manager: Option<String>,
    /// Gossip key ring held by this node (ids only, never key material).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyInfo>,
    /// Data-plane key ring of encrypted overlays held by this node (ids
    /// only), newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dataplane_keys: Vec<KeyInfo>,
}

/// A gossip key as `info` shows it: identity only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// Key id.
    pub id: u32,
    /// Lamport time (ring order).
    pub lamport: u64,
}

/// A manager's view of Raft for `info`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RaftInfo {
    /// This manager's raft id.
    pub id: u64,
    /// Current leader's raft id, if known.
    pub leader: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Voters in the configuration.
    pub voters: usize,
    /// Voters this node can reach (itself included).
    pub reachable: usize,
    /// Index of the latest snapshot stored here.
    pub snapshot_index: u64,
}

/// Whether the node is part of a swarm.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SwarmState {
    /// Not part of a swarm.
    #[default]
    Inactive,
    /// Member of a swarm.
    Active,
}

impl std::fmt::Display for SwarmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SwarmState::Inactive => "inactive",
            SwarmState::Active => "active",
        })
    }
}

/// Why a request failed, as the user should read it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// Machine-readable class.
    pub code: ErrorCode,
    /// What went wrong and what to do.
    pub message: String,
}

/// Classes of [`ApiError`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame could not be decoded.
    BadRequest,
    /// Client and daemon speak different protocol versions.
    UnsupportedVersion,
    /// The daemon failed to do what was asked.
    Internal,
    /// The request is invalid in the current state (not a manager, already
    /// in a swarm, bad flag value...).
    Invalid,
    /// The named object does not exist.
    NotFound,
    /// The cluster cannot commit writes now (no quorum, no leader).
    Unavailable,
    /// A name or port is taken by another object.
    Conflict,
}

impl ApiError {
    /// An [`ErrorCode::Invalid`] error.
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Invalid, message)
    }

    /// An [`ErrorCode::Internal`] error.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Internal, message)
    }

    /// Shorthand constructor.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

/// What an exec connection carries after [`Response::ExecStarted`]
/// (bytes as JSON arrays: interactive traffic is small).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecFrame {
    /// Client to daemon: bytes for the command's stdin (`-i`).
    Stdin(Vec<u8>),
    /// Client to daemon: stdin ended.
    StdinEnd,
    /// Client to daemon: the terminal's size (`-t`).
    Resize {
        /// Columns.
        width: u16,
        /// Rows.
        height: u16,
    },
    /// Daemon to client: the command wrote to stdout (or its terminal).
    Stdout(Vec<u8>),
    /// Daemon to client: the command wrote to stderr.
    Stderr(Vec<u8>),
    /// Daemon to client, last: the command's exit status.
    Exit(i32),
}

/// Errors reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection between frames.
    #[error("connection closed")]
    Closed,
    /// The length prefix is over [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME} byte limit")]
    TooLarge(usize),
    /// The body is not the expected JSON.
    #[error("malformed frame: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Socket error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Read one frame's raw body. `Closed` on a clean end of stream.
pub async fn read_frame_bytes<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(body)
}

/// Read and decode one frame.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<T, FrameError> {
    let body = read_frame_bytes(r).await?;
    Ok(serde_json::from_slice(&body)?)
}

/// Encode and write one frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    value: &T,
) -> Result<(), FrameError> {
    let body = serde_json::to_vec(value)?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut buf = Vec::with_capacity(body.len() + 4);
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frame_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let req = RequestFrame {
            version: PROTOCOL_VERSION,
            request: Request::Info,
        };
        write_frame(&mut a, &req).await.unwrap();
        let got: RequestFrame = read_frame(&mut b).await.unwrap();
        assert!(matches!(got.request, Request::Info));
    }

    #[tokio::test]
    async fn oversized_length_is_rejected_without_allocating() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_frame_bytes(&mut b).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(n) if n == u32::MAX as usize));
    }

    #[tokio::test]
    async fn truncated_and_garbage_frames_are_errors() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 0]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame_bytes(&mut b).await,
            Err(FrameError::Closed)
        ));

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&3u32.to_be_bytes()).await.unwrap();
        a.write_all(b"{x}").await.unwrap();
        let r: Result<RequestFrame, _> = read_frame(&mut b).await;
        assert!(matches!(r, Err(FrameError::Malformed(_))));
    }
}
