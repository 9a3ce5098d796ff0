//! Messages of the node session (QUIC, UDP 2377) between every node and
//! the Raft leader: heartbeats with the node's report one way, the node's
//! assignments the other. The leader computes assignments
//! (`manager::dispatcher`); the node's session client applies them
//! (`worker::session`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shoal_api::FrameError;
use shoal_model::network::{Endpoint, Network};
use shoal_model::service::{EndpointMode, PortConfig, Task, TaskState};
use shoal_model::state::{GossipKey, Node};
use shoal_model::NodeId;

/// ALPN of the node session.
pub const ALPN_SESSION: &[u8] = b"shoal-session/1";
/// Missed heartbeats before the leader marks a node down.
pub const MISSED_HEARTBEATS: u32 = 3;

/// A call from the leader to a node, on a stream the leader opens in the
/// node's session (`service logs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ManagerCall {
    /// What these tasks wrote (the last `tail` lines of each, if given).
    Logs {
        /// Task ids.
        tasks: Vec<String>,
        /// Lines per task.
        tail: Option<usize>,
        /// Per task, only lines after this time (`--follow`).
        #[serde(default)]
        after: std::collections::BTreeMap<String, i64>,
    },
}

/// A node's answer to a [`ManagerCall`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CallReply {
    /// (task id, its lines, its cursor: the time of its newest line) per
    /// task the node has.
    Logs(Vec<(String, Vec<shoal_runtime::logfile::Record>, i64)>),
    /// The call failed on the node.
    Error(String),
}

/// A log record as `logs` and `service logs` answer it, under `context`
/// (`web.1.<task id>@<node>`, or empty).
pub fn log_line(context: String, r: shoal_runtime::logfile::Record) -> shoal_api::LogLine {
    shoal_api::LogLine {
        context,
        time: r.time,
        stamp: r.stamp(),
        stream: r.stream,
        line: r.line,
    }
}

/// What a node reports with every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The kernel can create VXLAN devices.
    pub vxlan: bool,
    /// The kernel can install an `rfc4106(gcm(aes))` ESP SA (probed in a
    /// scratch namespace); reported only.
    pub esp: bool,
    /// Digest of the root CA that issued the node's certificate (the leader
    /// ends a CA rotation once every live node reports the new one).
    #[serde(default)]
    pub ca_digest: String,
    /// State of every service task this node holds.
    #[serde(default)]
    pub tasks: Vec<TaskReport>,
    /// The node's CPUs and memory.
    #[serde(default)]
    pub resources: Option<shoal_model::state::NodeResources>,
}

/// A task's state as its node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    /// Task id.
    pub id: String,
    /// Its state.
    pub state: TaskState,
    /// Exit code once exited.
    pub exit_code: Option<i32>,
    /// Why (errors).
    pub message: String,
}

/// A task to run (or stop) on the node, with what it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignedTask {
    /// The task as stored.
    pub task: Task,
    /// Its command.
    pub command: Vec<String>,
    /// `K=V` environment.
    pub env: Vec<String>,
    /// The image (empty with the host runtime).
    #[serde(default)]
    pub image: String,
    /// How the container runs; `None` from a manager that predates
    /// containers (its tasks were host processes).
    #[serde(default)]
    pub container: Option<shoal_model::service::ContainerSpec>,
    /// The configs and secrets it mounts, with their data.
    #[serde(default)]
    pub files: Vec<TaskFile>,
}

/// A config or secret as a file in a task's container.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFile {
    /// Absolute path in the container.
    pub path: String,
    /// The content.
    pub data: Vec<u8>,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Permission bits.
    pub mode: u32,
}

impl std::fmt::Debug for TaskFile {
    // The data may be a secret: only its size.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFile")
            .field("path", &self.path)
            .field("bytes", &self.data.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .finish_non_exhaustive()
    }
}

/// What a node needs to know of a service its tasks can reach (VIP load
/// balancing, DNS) or that publishes ports (routing mesh).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    /// Id.
    pub id: String,
    /// Name (the DNS name).
    pub name: String,
    /// VIP or DNS round robin.
    pub endpoint_mode: EndpointMode,
    /// VIP per network id.
    pub vips: BTreeMap<String, Ipv4Addr>,
    /// Published ports.
    pub ports: Vec<PortConfig>,
    /// Running tasks' addresses: (network id, ip), on nodes that are up.
    pub backends: Vec<(String, Ipv4Addr)>,
    /// Its other DNS names, per network id (docker's network aliases).
    #[serde(default)]
    pub aliases: BTreeMap<String, Vec<String>>,
}

/// What the leader wants a node to have.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignments {
    /// Store index it was computed at.
    pub version: u64,
    /// The node's own record.
    pub node: Option<Node>,
    /// Managers (raft id, control address).
    pub managers: Vec<(u64, SocketAddr)>,
    /// Trusted roots (PEM), the current one first.
    pub roots_pem: Vec<String>,
    /// Gossip key ring, newest first.
    pub keys: Vec<GossipKey>,
    /// Heartbeat period the leader expects, in milliseconds.
    pub heartbeat_ms: u64,
    /// VXLAN UDP port of the cluster.
    #[serde(default)]
    pub data_path_port: u16,
    /// Service tasks this node must run, or stop (not yet ended).
    #[serde(default)]
    pub tasks: Vec<AssignedTask>,
    /// The networks of those tasks (and the ingress network), without
    /// their endpoint lists.
    #[serde(default)]
    pub networks: BTreeMap<String, Network>,
    /// Services those tasks can reach, and those publishing ports.
    #[serde(default)]
    pub services: Vec<ServiceView>,
    /// This node's routing-mesh endpoint on the ingress network.
    #[serde(default)]
    pub ingress_endpoint: Option<Endpoint>,
    /// Every node's gossip signing key (node id -> Ed25519 public key):
    /// gossip entries count only with their owner's signature.
    #[serde(default)]
    pub gossip_keys: BTreeMap<String, Vec<u8>>,
    /// Data-plane key ring of encrypted overlays, newest first.
    #[serde(default)]
    pub dataplane_keys: Vec<GossipKey>,
}

impl std::fmt::Debug for Assignments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assignments")
            .field("version", &self.version)
            .field("managers", &self.managers.len())
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Assignments {
    /// Same content, ignoring the version.
    pub fn same_as(&self, other: &Assignments) -> bool {
        self.node == other.node
            && self.managers == other.managers
            && self.roots_pem == other.roots_pem
            && self.keys == other.keys
            && self.heartbeat_ms == other.heartbeat_ms
            && self.data_path_port == other.data_path_port
            && self.tasks == other.tasks
            && self.networks == other.networks
            && self.services == other.services
            && self.ingress_endpoint == other.ingress_endpoint
            && self.gossip_keys == other.gossip_keys
            && self.dataplane_keys == other.dataplane_keys
    }
}

/// Id of a node's routing-mesh endpoint on the ingress network.
pub fn ingress_endpoint_id(node: &NodeId) -> String {
    format!("ingress-sbox-{node}")
}

/// Node -> leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToManager {
    /// A heartbeat with the node's report.
    Heartbeat(NodeReport),
}

/// Leader -> node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToNode {
    /// Not the leader: go there (if known).
    Redirect(Option<SocketAddr>),
    /// Assignments, in full.
    Assign(Box<Assignments>),
}

/// QUIC transport settings of both ends of the session.
pub fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // A dead manager is noticed within the idle timeout (QUIC keep-alives
    // keep a live session busy), so the node fails over in seconds.
    t.keep_alive_interval(Some(Duration::from_millis(500)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(3)) {
        t.max_idle_timeout(Some(idle));
    }
    t.max_concurrent_uni_streams(0u8.into());
    t.max_concurrent_bidi_streams(4u8.into());
    t
}

/// Frames read off a stream by a task of their own, so that waiting for
/// the next one is cancellation-safe.
///
/// `shoal_api::read_frame` reads a length and then a body; dropped half
/// way (another branch of a `tokio::select!` won), it loses the bytes it
/// had read and the stream is out of step from then on. The task owns the
/// stream and reads whole frames whatever the consumer does; the consumer
/// waits on a channel, whose `recv` loses nothing when dropped. The first
/// error (end of stream included) is passed on and ends the task; dropping
/// the reader ends it too (and with it the stream).
#[derive(Debug)]
pub struct FrameReader<T> {
    rx: tokio::sync::mpsc::Receiver<Result<T, FrameError>>,
    task: tokio::task::JoinHandle<()>,
}

impl<T: DeserializeOwned + Send + 'static> FrameReader<T> {
    /// Start reading `stream` on a task of its own.
    pub fn spawn<R>(mut stream: R) -> FrameReader<T>
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
    {
        // Room for a few frames: the reader keeps a frame's worth ahead of
        // a busy consumer, no more.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let task = tokio::spawn(async move {
            loop {
                let frame = shoal_api::read_frame::<_, T>(&mut stream).await;
                let failed = frame.is_err();
                if tx.send(frame).await.is_err() || failed {
                    return;
                }
            }
        });
        FrameReader { rx, task }
    }

    /// The next frame. Cancellation-safe: a call dropped before it returns
    /// loses nothing. After the stream ended it keeps saying `Closed`.
    pub async fn recv(&mut self) -> Result<T, FrameError> {
        self.rx.recv().await.unwrap_or(Err(FrameError::Closed))
    }
}

impl<T> Drop for FrameReader<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::time::{sleep, timeout};

    const FRAMES: usize = 20;

    fn heartbeat(i: usize) -> ToManager {
        ToManager::Heartbeat(NodeReport {
            ca_digest: format!("frame-{i}"),
            ..NodeReport::default()
        })
    }

    /// Writes `FRAMES` heartbeats, each in three pieces (half the length
    /// prefix, the rest of it with half the body, the rest) 5 ms apart,
    /// then closes the stream.
    async fn slow_writer(mut w: tokio::io::DuplexStream) {
        for i in 0..FRAMES {
            let body = serde_json::to_vec(&heartbeat(i)).unwrap();
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&body);
            let cut = 4 + body.len() / 2;
            for piece in [&frame[..2], &frame[2..cut], &frame[cut..]] {
                w.write_all(piece).await.unwrap();
                w.flush().await.unwrap();
                sleep(Duration::from_millis(5)).await;
            }
        }
    }

    fn digest(m: &ToManager) -> String {
        let ToManager::Heartbeat(r) = m;
        r.ca_digest.clone()
    }

    fn expected() -> Vec<String> {
        (0..FRAMES).map(|i| format!("frame-{i}")).collect()
    }

    /// A session loop's shape: a 1 ms timer keeps winning the select while
    /// frames trickle in; every frame still arrives whole and in order.
    #[tokio::test(start_paused = true)]
    async fn frames_arrive_whole_while_a_timer_keeps_winning() {
        let (w, r) = tokio::io::duplex(64);
        tokio::spawn(slow_writer(w));
        let mut frames = FrameReader::<ToManager>::spawn(r);
        let (mut got, mut ticks) = (Vec::new(), 0usize);
        let end = timeout(Duration::from_secs(60), async {
            loop {
                tokio::select! {
                    msg = frames.recv() => match msg {
                        Ok(m) => got.push(digest(&m)),
                        Err(e) => return e,
                    },
                    _ = sleep(Duration::from_millis(1)) => ticks += 1,
                }
            }
        })
        .await
        .expect("the stream ends");
        assert_eq!(got, expected());
        assert!(matches!(end, FrameError::Closed), "{end}");
        // The timer won between the pieces of every frame.
        assert!(ticks >= 2 * FRAMES, "only {ticks} timer wins");
        assert!(matches!(frames.recv().await, Err(FrameError::Closed)));
    }

    /// The hazard the reader removes: `read_frame` itself in the select
    /// loses the bytes it had read when the timer wins, and the frames
    /// after it are garbage (this is what the session loops did).
    #[tokio::test(start_paused = true)]
    async fn read_frame_in_the_select_loses_bytes() {
        let (w, mut r) = tokio::io::duplex(64);
        tokio::spawn(slow_writer(w));
        let mut got = Vec::new();
        let end = timeout(Duration::from_secs(60), async {
            loop {
                tokio::select! {
                    msg = shoal_api::read_frame::<_, ToManager>(&mut r) => match msg {
                        Ok(m) => got.push(digest(&m)),
                        Err(e) => return e,
                    },
                    _ = sleep(Duration::from_millis(1)) => {}
                }
            }
        })
        .await
        .expect("the stream ends");
        assert_ne!(got, expected(), "ended with {end}");
    }

    /// Dropping the reader ends its task, and with it the stream: the
    /// writer sees the other end gone.
    #[tokio::test]
    async fn dropping_the_reader_closes_the_stream() {
        let (mut w, r) = tokio::io::duplex(64);
        let frames = FrameReader::<ToManager>::spawn(r);
        drop(frames);
        let closed = timeout(Duration::from_secs(10), async {
            loop {
                if w.write_all(&[0; 64]).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(closed.is_ok(), "the stream outlived its reader");
    }
}
