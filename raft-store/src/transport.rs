//! Outbound raft messages.
//!
//! The Ready loop hands messages to a [`Transport`] and never waits on the
//! network: every peer has a bounded queue drained by its own task, which
//! batches everything queued into one frame (see [`crate::codec`]). When a
//! queue is full the oldest messages are dropped; raft retransmits what
//! matters (appends, heartbeats, snapshots after a rejection).
//!
//! [`TlsTransport`] is the production one (mutual TLS over TCP to port 2377);
//! [`crate::mem::MemRouter`] is the in-memory one used by tests.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use protobuf::Message as PbMessage;
use raft::eraftpb::Message;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::codec::{encode_frames, write_frame, Batch, MAX_BATCH};

/// Outbound message delivery for a [`crate::RaftNode`]. The real one is TLS
/// over TCP; tests use an in-memory router.
pub trait Transport: Send + Sync + 'static {
    /// Queues messages for their `to` peers. Must not block: it is called
    /// from the Ready loop, which would otherwise stall every proposal.
    fn send(&self, msgs: Vec<Message>);
    /// Learns (or updates) a peer's address; called when conf changes and
    /// snapshots apply, and on restart from the persisted map.
    fn set_peer(&self, id: u64, addr: SocketAddr);
    /// Forgets a peer removed from the cluster.
    fn remove_peer(&self, id: u64);
    /// Tells the transport which node it speaks for and that node's address
    /// (when known), so frames can carry them and a freshly joined manager
    /// can reply to a leader it has no address for yet. Default: ignored.
    fn set_local(&self, _id: u64, _addr: Option<SocketAddr>) {}
}

/// The TLS server name every manager certificate carries (SAN DNS).
pub const MANAGER_SERVER_NAME: &str = "shoal-manager";

/// Default per-peer queue length (messages) before the oldest are dropped.
pub const DEFAULT_QUEUE: usize = 8192;

/// Frames are cut at this many payload bytes (well under `MAX_FRAME`) so a
/// burst of appends does not build one giant frame.
const FRAME_TARGET: usize = 8 << 20;

/// How long one frame's write may block on a peer that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind;
    // keep going rather than poisoning the whole transport.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Link {
    id: u64,
    addr: Mutex<SocketAddr>,
    queue: Mutex<VecDeque<Message>>,
    notify: Notify,
    closed: AtomicBool,
    dropped: AtomicU64,
}

#[derive(Default, Clone, Copy)]
struct Local {
    id: u64,
    addr: Option<SocketAddr>,
}

/// The real transport: one outbound TCP + TLS connection per peer, with the
/// client configuration read from a watch channel so renewed certificates
/// are used on the next connection. The caller sets ALPN in that config
/// (the agent uses `b"shoal-raft/1"`); the server name is
/// [`MANAGER_SERVER_NAME`].
pub struct TlsTransport {
    client_cfg: watch::Receiver<Arc<rustls::ClientConfig>>,
    runtime: Option<tokio::runtime::Handle>,
    local: Arc<Mutex<Local>>,
    links: Mutex<HashMap<u64, Arc<Link>>>,
    queue_cap: usize,
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let peers: Vec<u64> = lock(&self.links).keys().copied().collect();
        f.debug_struct("TlsTransport")
            .field("peers", &peers)
            .finish()
    }
}

impl TlsTransport {
    /// Creates the transport. Call it inside a tokio runtime: the per-peer
    /// writer tasks are spawned on it (messages are dropped, with an error
    /// log, if there is none).
    pub fn new(client_cfg: watch::Receiver<Arc<rustls::ClientConfig>>) -> Arc<Self> {
        Self::with_queue_capacity(client_cfg, DEFAULT_QUEUE)
    }

    /// Like [`TlsTransport::new`] with a chosen per-peer queue length.
    pub fn with_queue_capacity(
        client_cfg: watch::Receiver<Arc<rustls::ClientConfig>>,
        queue_cap: usize,
    ) -> Arc<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok();
        if runtime.is_none() {
            tracing::error!(
                "TlsTransport created outside a tokio runtime: raft messages will be dropped"
            );
        }
        Arc::new(TlsTransport {
            client_cfg,
            runtime,
            local: Arc::new(Mutex::new(Local::default())),
            links: Mutex::new(HashMap::new()),
            queue_cap: queue_cap.max(1),
        })
    }

    /// Messages dropped so far because a peer's queue was full (by peer).
    pub fn dropped(&self) -> HashMap<u64, u64> {
        lock(&self.links)
            .iter()
            .map(|(id, l)| (*id, l.dropped.load(Ordering::Relaxed)))
            .collect()
    }
}

impl Transport for TlsTransport {
    fn send(&self, msgs: Vec<Message>) {
        let links = lock(&self.links);
        let mut touched: Vec<Arc<Link>> = Vec::new();
        for m in msgs {
            let Some(link) = links.get(&m.to) else {
                tracing::trace!(to = m.to, "raft message to a peer without address dropped");
                continue;
            };
            let mut q = lock(&link.queue);
            q.push_back(m);
            while q.len() > self.queue_cap {
                q.pop_front();
                link.dropped.fetch_add(1, Ordering::Relaxed);
            }
            drop(q);
            if !touched.iter().any(|l| l.id == link.id) {
                touched.push(link.clone());
            }
        }
        drop(links);
        for l in touched {
            l.notify.notify_one();
        }
    }

    fn set_peer(&self, id: u64, addr: SocketAddr) {
        if lock(&self.local).id == id {
            return;
        }
        let mut links = lock(&self.links);
        if let Some(l) = links.get(&id) {
            *lock(&l.addr) = addr;
            return;
        }
        let link = Arc::new(Link {
            id,
            addr: Mutex::new(addr),
            queue: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        });
        links.insert(id, link.clone());
        drop(links);
        match &self.runtime {
            Some(rt) => {
                rt.spawn(run_link(link, self.local.clone(), self.client_cfg.clone()));
            }
            None => tracing::error!(peer = id, "no tokio runtime: cannot start raft link"),
        }
    }

    fn remove_peer(&self, id: u64) {
        if let Some(l) = lock(&self.links).remove(&id) {
            l.closed.store(true, Ordering::Relaxed);
            l.notify.notify_one();
        }
    }

    fn set_local(&self, id: u64, addr: Option<SocketAddr>) {
        *lock(&self.local) = Local { id, addr };
        self.remove_peer(id);
    }
}

async fn connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(MANAGER_SERVER_NAME)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio::time::timeout(CONNECT_TIMEOUT, TlsConnector::from(cfg).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// Takes queued messages up to about [`FRAME_TARGET`] bytes.
fn take_batch(link: &Link) -> Vec<Message> {
    let mut q = lock(&link.queue);
    let mut out = Vec::with_capacity(q.len().min(4096));
    let mut size = 0usize;
    while let Some(m) = q.front() {
        let s = m.compute_size() as usize + 4;
        if !out.is_empty() && size + s > FRAME_TARGET {
            break;
        }
        size += s;
        if let Some(m) = q.pop_front() {
            out.push(m);
        }
    }
    out
}

/// One peer's writer: connect (with capped backoff), then send a frame per
/// wake-up with everything queued.
async fn run_link(
    link: Arc<Link>,
    local: Arc<Mutex<Local>>,
    mut cfg: watch::Receiver<Arc<rustls::ClientConfig>>,
) {
    let mut conn: Option<(SocketAddr, TlsStream<TcpStream>)> = None;
    let mut backoff = BACKOFF_MIN;
    loop {
        if link.closed.load(Ordering::Relaxed) {
            return;
        }
        let msgs = take_batch(&link);
        if msgs.is_empty() {
            link.notify.notified().await;
            continue;
        }
        let addr = *lock(&link.addr);
        // New certificates (renewal) or a new address: reconnect.
        if cfg.has_changed().unwrap_or(false) || conn.as_ref().is_some_and(|(a, _)| *a != addr) {
            conn = None;
        }
        if conn.is_none() {
            let c = cfg.borrow_and_update().clone();
            match connect(addr, c).await {
                Ok(s) => {
                    tracing::debug!(peer = link.id, %addr, "raft link connected");
                    conn = Some((addr, s));
                }
                Err(e) => {
                    tracing::debug!(peer = link.id, %addr, error = %e, "raft link connect failed");
                    // The batch is lost; raft resends what it still needs.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
        }
        let l = *lock(&local);
        let batch = Batch {
            from: l.id,
            from_addr: l.addr,
            msgs,
        };
        let frames = match encode_frames(&batch) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(peer = link.id, error = %e, max = MAX_BATCH, "raft batch not sendable, dropped");
                continue;
            }
        };
        if let Some((_, stream)) = conn.as_mut() {
            // A peer that stops reading (hung, paused, hostile) must not
            // hold this link's writer forever: drop the connection and
            // reconnect; raft resends what it still needs.
            let mut written = Ok(());
            for frame in &frames {
                written =
                    match tokio::time::timeout(WRITE_TIMEOUT, write_frame(stream, frame)).await {
                        Ok(r) => r,
                        Err(_) => Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "write timed out",
                        )
                        .into()),
                    };
                if written.is_err() {
                    break;
                }
            }
            if let Err(e) = written {
                tracing::debug!(peer = link.id, error = %e, "raft link write failed");
                conn = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            backoff = BACKOFF_MIN;
        }
    }
}
