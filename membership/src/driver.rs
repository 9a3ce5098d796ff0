//! The tokio shell around [`Node`]: owns the UDP and TCP sockets on the
//! gossip port, the timers and the OS randomness, seals/opens every message
//! with the key ring, and publishes events. All protocol decisions are in
//! [`crate::node`]; this file only moves bytes and time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{broadcast, mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::auth::EntryAuth;
use crate::codec::{pack, unpack};
use crate::crypto::{Channel, KeyRing};
use crate::fresh::{Freshness, Stale};
use crate::node::{lock, Node, NodeTimer, Output, SyncSession};
use crate::types::{Entry, Event, GossipError, MemberInfo, MemberState, MemberView};
use crate::GossipConfig;

/// Largest sealed TCP frame accepted; checked before allocating.
const MAX_FRAME: usize = 2 << 20;
/// Most bytes one sync exchange may receive.
const MAX_SYNC_BYTES: u64 = 256 << 20;
/// A sync exchange must finish within this.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent inbound sync exchanges.
const MAX_INBOUND_SYNCS: usize = 8;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Counters for the Prometheus endpoint and the benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Metrics {
    /// Messages dropped because no ring key opened them (`gossip_decrypt_failures_total`).
    pub decrypt_failures_total: u64,
    /// Opened datagrams foca refused as malformed.
    pub malformed_total: u64,
    /// Datagrams sent.
    pub udp_packets_sent: u64,
    /// Bytes sent in datagrams (sealed).
    pub udp_bytes_sent: u64,
    /// Datagrams received.
    pub udp_packets_received: u64,
    /// Bytes received in datagrams.
    pub udp_bytes_received: u64,
    /// Largest datagram ever sent (never above `max_packet`).
    pub max_datagram_sent: u64,
    /// Sync frames sent.
    pub tcp_frames_sent: u64,
    /// Bytes sent on TCP (length prefixes included).
    pub tcp_bytes_sent: u64,
    /// Sync frames received.
    pub tcp_frames_received: u64,
    /// Bytes received on TCP.
    pub tcp_bytes_received: u64,
    /// Completed anti-entropy exchanges (either side).
    pub syncs_total: u64,
    /// Failed anti-entropy exchanges.
    pub sync_failures_total: u64,
    /// Live entries in all tables.
    pub entries: u64,
    /// Entries refused because their signature is not their owner's
    /// (forged, or damaged).
    #[serde(default)]
    pub forged_entries_total: u64,
    /// Entries refused (and held for a retry) because no key is known for
    /// their owner.
    #[serde(default)]
    pub unknown_owner_entries_total: u64,
    /// Entries refused because their version or generation lies too far in
    /// the future.
    #[serde(default)]
    pub future_entries_total: u64,
    /// Members seen alive (self excluded).
    pub members_alive: u64,
    /// Messages refused as replays: seen already, or from an earlier
    /// start of their sender (`gossip_replays_total`).
    #[serde(default)]
    pub replays_total: u64,
}

#[derive(Default)]
struct Counters {
    decrypt_failures: AtomicU64,
    replays: AtomicU64,
    malformed: AtomicU64,
    udp_sent: AtomicU64,
    udp_bytes_sent: AtomicU64,
    udp_recv: AtomicU64,
    udp_bytes_recv: AtomicU64,
    max_datagram: AtomicU64,
    tcp_sent: AtomicU64,
    tcp_bytes_sent: AtomicU64,
    tcp_recv: AtomicU64,
    tcp_bytes_recv: AtomicU64,
    syncs: AtomicU64,
    sync_failures: AtomicU64,
}

struct Inner {
    cfg: GossipConfig,
    node: Mutex<Node>,
    ring: Mutex<KeyRing>,
    fresh: Freshness,
    events: broadcast::Sender<Event>,
    udp: Mutex<Option<Arc<UdpSocket>>>,
    timers: mpsc::UnboundedSender<(Instant, NodeTimer)>,
    c: Counters,
    paused: AtomicBool,
    stopped: AtomicBool,
}

struct Tasks {
    inner: Arc<Inner>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        // Dropping the last handle is a crash as far as the cluster is
        // concerned: stop everything and close the sockets, say nothing.
        self.inner.stopped.store(true, Relaxed);
        for h in lock(&self.handles).drain(..) {
            h.abort();
        }
        lock(&self.inner.udp).take();
    }
}

/// The running gossip agent: a cheap `Clone` handle; dropping every clone
/// stops it without a goodbye (use [`Gossip::leave`] to leave cleanly).
#[derive(Clone)]
pub struct Gossip {
    inner: Arc<Inner>,
    tasks: Arc<Tasks>,
}

impl std::fmt::Debug for Gossip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gossip")
            .field("bind", &self.inner.cfg.bind)
            .finish()
    }
}

impl Gossip {
    /// Binds UDP and TCP on `cfg.bind`, announces to `seeds` and keeps
    /// retrying them in the background until one answers.
    pub async fn start(
        cfg: GossipConfig,
        me: MemberInfo,
        ring: KeyRing,
        seeds: Vec<SocketAddr>,
    ) -> Result<Gossip, GossipError> {
        Gossip::start_authenticated(cfg, me, ring, seeds, None).await
    }

    /// [`Gossip::start`], signing this node's entries with `auth` and
    /// accepting others' only with their owner's signature.
    pub async fn start_authenticated(
        cfg: GossipConfig,
        me: MemberInfo,
        ring: KeyRing,
        seeds: Vec<SocketAddr>,
        auth: Option<Arc<dyn EntryAuth>>,
    ) -> Result<Gossip, GossipError> {
        let mut seed = [0u8; 8];
        SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| GossipError::Config("the OS random source failed".into()))?;
        let generation = cfg.generation.unwrap_or_else(now_ms);
        let mut node = Node::new(&cfg, me.clone(), generation, u64::from_le_bytes(seed))?;
        node.set_auth(auth);
        let io = |source| GossipError::Io {
            addr: cfg.bind,
            source,
        };
        let udp = Arc::new(UdpSocket::bind(cfg.bind).await.map_err(io)?);
        let local = udp.local_addr().map_err(io)?;
        let tcp = TcpListener::bind(local).await.map_err(io)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(4096);
        let inner = Arc::new(Inner {
            fresh: Freshness::new(&me.node_id, cfg.epoch),
            cfg,
            node: Mutex::new(node),
            ring: Mutex::new(ring),
            events,
            udp: Mutex::new(Some(udp.clone())),
            timers: tx,
            c: Counters::default(),
            paused: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        });
        let seeds: Vec<SocketAddr> = seeds
            .into_iter()
            .filter(|s| *s != me.gossip_addr && *s != local)
            .collect();
        let handles = vec![
            tokio::spawn(udp_loop(inner.clone(), udp)),
            tokio::spawn(timer_loop(inner.clone(), rx)),
            tokio::spawn(accept_loop(inner.clone(), tcp)),
            tokio::spawn(periodic_loop(inner.clone(), seeds)),
        ];
        let tasks = Arc::new(Tasks {
            inner: inner.clone(),
            handles: Mutex::new(handles),
        });
        tracing::info!(node = %me.node_id, bind = %local, "gossip started");
        Ok(Gossip { inner, tasks })
    }

    /// This member's life (see [`GossipConfig::generation`]).
    pub fn generation(&self) -> u64 {
        self.inner
            .node
            .lock()
            .map(|n| n.identity().generation)
            .unwrap_or(0)
    }

    /// Replaces the key ring (newest key seals from now on; all ring keys open).
    pub fn set_key_ring(&self, ring: KeyRing) {
        *lock(&self.inner.ring) = ring;
    }

    /// The members' signing keys changed (see [`crate::auth`]): check the
    /// entries held for an unknown owner again.
    pub fn keys_changed(&self) {
        let outs = {
            let mut n = lock(&self.inner.node);
            n.keys_changed(now_ms());
            n.drain()
        };
        self.inner.run(outs);
    }

    /// Broadcast an entry claiming to be `owner`'s (generation `gen`),
    /// signed with this node's own key: what a hostile member would send.
    /// For attack tests only.
    #[doc(hidden)]
    pub fn forge(
        &self,
        table: &str,
        key: &str,
        owner: &str,
        gen: u64,
        value: Vec<u8>,
        deleted: bool,
    ) {
        let outs = {
            let mut n = lock(&self.inner.node);
            n.forge(now_ms(), table, key, owner, gen, value, deleted);
            n.drain()
        };
        self.inner.run(outs);
    }

    /// Local membership view, self included.
    pub fn members(&self) -> Vec<MemberView> {
        lock(&self.inner.node).members()
    }

    /// Writes an entry owned by this node and pushes it to peers at once.
    /// Names over the limits are refused (logged); see [`Gossip::try_put`].
    pub fn put(&self, table: &str, key: &str, value: Vec<u8>) {
        if let Err(e) = self.try_put(table, key, value) {
            tracing::warn!(table, key, error = %e, "gossip put refused");
        }
    }

    /// Like [`Gossip::put`] but says why a write was refused.
    pub fn try_put(&self, table: &str, key: &str, value: Vec<u8>) -> Result<(), GossipError> {
        let outs = {
            let mut n = lock(&self.inner.node);
            n.put(now_ms(), table, key, value)?;
            n.drain()
        };
        self.inner.run(outs);
        Ok(())
    }

    /// Deletes an entry owned by this node (others' entries are not ours to delete).
    pub fn delete(&self, table: &str, key: &str) {
        let outs = {
            let mut n = lock(&self.inner.node);
            n.delete(now_ms(), table, key);
            n.drain()
        };
        self.inner.run(outs);
    }

    /// Live entries of `table`, sorted by key.
    pub fn entries(&self, table: &str) -> Vec<Entry> {
        lock(&self.inner.node).entries(table)
    }

    /// Tables with at least one live entry.
    pub fn tables(&self) -> Vec<String> {
        lock(&self.inner.node).tables()
    }

    /// Membership and table changes, as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Current counters.
    pub fn metrics(&self) -> Metrics {
        let c = &self.inner.c;
        let (entries, members_alive, refused) = {
            let n = lock(&self.inner.node);
            let alive = n
                .members()
                .iter()
                .skip(1)
                .filter(|m| m.state != MemberState::Down)
                .count();
            (n.live_entries() as u64, alive as u64, n.refused())
        };
        Metrics {
            decrypt_failures_total: c.decrypt_failures.load(Relaxed),
            replays_total: c.replays.load(Relaxed),
            malformed_total: c.malformed.load(Relaxed),
            udp_packets_sent: c.udp_sent.load(Relaxed),
            udp_bytes_sent: c.udp_bytes_sent.load(Relaxed),
            udp_packets_received: c.udp_recv.load(Relaxed),
            udp_bytes_received: c.udp_bytes_recv.load(Relaxed),
            max_datagram_sent: c.max_datagram.load(Relaxed),
            tcp_frames_sent: c.tcp_sent.load(Relaxed),
            tcp_bytes_sent: c.tcp_bytes_sent.load(Relaxed),
            tcp_frames_received: c.tcp_recv.load(Relaxed),
            tcp_bytes_received: c.tcp_bytes_recv.load(Relaxed),
            syncs_total: c.syncs.load(Relaxed),
            sync_failures_total: c.sync_failures.load(Relaxed),
            entries,
            members_alive,
            forged_entries_total: refused.0,
            unknown_owner_entries_total: refused.1,
            future_entries_total: refused.2,
        }
    }

    /// Test and lab hook: while paused, every packet in or out is dropped
    /// and sync is refused, as if the host were partitioned away.
    #[doc(hidden)]
    pub fn set_paused(&self, paused: bool) {
        self.inner.paused.store(paused, Relaxed);
    }

    /// Runs one anti-entropy exchange with `peer` now (lab and tests).
    pub async fn sync_with(&self, peer: SocketAddr) -> Result<(), GossipError> {
        sync_initiate(self.inner.clone(), peer).await
    }

    /// Tells the cluster we leave, then stops the tasks and closes the sockets.
    pub async fn leave(self) -> Result<(), GossipError> {
        let outs = {
            let mut n = lock(&self.inner.node);
            n.leave();
            n.drain()
        };
        self.inner.run(outs);
        self.inner.stopped.store(true, Relaxed);
        let handles: Vec<JoinHandle<()>> = lock(&self.tasks.handles).drain(..).collect();
        for h in handles {
            h.abort();
            let _ = h.await;
        }
        lock(&self.inner.udp).take();
        Ok(())
    }
}

impl Inner {
    fn count_stale(&self, e: &Stale) {
        match e {
            Stale::Malformed => self.c.malformed.fetch_add(1, Relaxed),
            Stale::Replay(_) | Stale::OldEpoch(_) => self.c.replays.fetch_add(1, Relaxed),
        };
    }

    /// Executes the node's outputs: seal+send datagrams, schedule timers,
    /// publish events. Never blocks (UDP sends are best effort).
    fn run(&self, outs: Vec<Output>) {
        if outs.is_empty() {
            return;
        }
        let sock = lock(&self.udp).clone();
        let ring = lock(&self.ring).clone();
        let paused = self.paused.load(Relaxed);
        for o in outs {
            match o {
                Output::Send { to, data } => {
                    let Some(sock) = &sock else { continue };
                    if paused {
                        continue;
                    }
                    let Ok(sealed) = ring.seal(Channel::Udp, &self.fresh.stamp(&data)) else {
                        continue;
                    };
                    if sealed.len() > self.cfg.max_packet {
                        tracing::error!(len = sealed.len(), "datagram over max_packet not sent");
                        continue;
                    }
                    if sock.try_send_to(&sealed, to).is_ok() {
                        self.c.udp_sent.fetch_add(1, Relaxed);
                        self.c
                            .udp_bytes_sent
                            .fetch_add(sealed.len() as u64, Relaxed);
                        self.c.max_datagram.fetch_max(sealed.len() as u64, Relaxed);
                    }
                }
                Output::Schedule { after, timer } => {
                    let _ = self.timers.send((Instant::now() + after, timer));
                }
                Output::Event(e) => {
                    let _ = self.events.send(e);
                }
            }
        }
    }

    fn with_node<R>(&self, f: impl FnOnce(&mut Node) -> R) -> R {
        let (r, outs) = {
            let mut n = lock(&self.node);
            let r = f(&mut n);
            (r, n.drain())
        };
        self.run(outs);
        r
    }
}

async fn udp_loop(inner: Arc<Inner>, sock: Arc<UdpSocket>) {
    // Fixed buffer: a datagram can never make us allocate more.
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "udp recv");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if inner.paused.load(Relaxed) {
            continue;
        }
        inner.c.udp_recv.fetch_add(1, Relaxed);
        inner.c.udp_bytes_recv.fetch_add(n as u64, Relaxed);
        if n > inner.cfg.max_packet {
            inner.c.malformed.fetch_add(1, Relaxed);
            continue;
        }
        let ring = lock(&inner.ring).clone();
        let opened = match ring.open(Channel::Udp, &buf[..n]) {
            Ok(p) => p,
            Err(e) => {
                inner.c.decrypt_failures.fetch_add(1, Relaxed);
                tracing::debug!(%from, error = %e, "gossip datagram dropped");
                continue;
            }
        };
        let plain = match inner.fresh.accept(Channel::Udp, &opened) {
            Ok(p) => p,
            Err(e) => {
                inner.count_stale(&e);
                tracing::debug!(%from, error = %e, "gossip datagram dropped");
                continue;
            }
        };
        let r = inner.with_node(|node| node.handle_data(now_ms(), plain));
        if let Err(e) = r {
            inner.c.malformed.fetch_add(1, Relaxed);
            tracing::trace!(%from, error = %e, "datagram refused");
        }
    }
}

async fn timer_loop(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<(Instant, NodeTimer)>) {
    let mut heap: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut pending: HashMap<u64, NodeTimer> = HashMap::new();
    let mut seq = 0u64;
    loop {
        let next = heap.peek().map(|Reverse((t, _))| *t);
        tokio::select! {
            got = rx.recv() => {
                let Some((at, timer)) = got else { return };
                seq += 1;
                heap.push(Reverse((at, seq)));
                pending.insert(seq, timer);
            }
            _ = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending::<()>().await,
                }
            } => {
                let now = Instant::now();
                while let Some(Reverse((t, s))) = heap.peek().copied() {
                    if t > now {
                        break;
                    }
                    heap.pop();
                    if let Some(timer) = pending.remove(&s) {
                        inner.with_node(|node| node.handle_timer(now_ms(), timer));
                    }
                }
            }
        }
    }
}

async fn periodic_loop(inner: Arc<Inner>, seeds: Vec<SocketAddr>) {
    let tick = Duration::from_millis(100);
    let mut last_announce: Option<Instant> = None;
    let mut last_sync = Instant::now();
    let mut last_reap = Instant::now();
    let mut was_joined = false;
    loop {
        let now = Instant::now();
        let joined = lock(&inner.node).is_joined();
        if !joined
            && !seeds.is_empty()
            && last_announce.is_none_or(|t| now - t >= Duration::from_secs(1))
        {
            last_announce = Some(now);
            for s in &seeds {
                inner.with_node(|node| node.announce(now_ms(), *s));
            }
        }
        let due = now - last_sync >= inner.cfg.anti_entropy_interval;
        if joined && (!was_joined || due) {
            last_sync = now;
            let peer = lock(&inner.node).pick_sync_peer();
            if let Some(peer) = peer {
                let inner2 = inner.clone();
                tokio::spawn(async move {
                    if let Err(e) = sync_initiate(inner2, peer).await {
                        tracing::debug!(error = %e, "anti-entropy");
                    }
                });
            }
        }
        was_joined = joined;
        if now - last_reap >= (inner.cfg.tombstone_ttl / 4).max(Duration::from_secs(1)) {
            last_reap = now;
            lock(&inner.node).reap(now_ms());
        }
        tokio::time::sleep(tick).await;
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    let limit = Arc::new(Semaphore::new(MAX_INBOUND_SYNCS));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if inner.paused.load(Relaxed) || inner.stopped.load(Relaxed) {
            continue;
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let session = lock(&inner.node).sync_accept();
            let r =
                tokio::time::timeout(SYNC_TIMEOUT, exchange(&inner, stream, session, None)).await;
            match r {
                Ok(Ok(())) => {
                    inner.c.syncs.fetch_add(1, Relaxed);
                }
                Ok(Err(reason)) => {
                    inner.c.sync_failures.fetch_add(1, Relaxed);
                    tracing::debug!(%peer, reason, "inbound sync failed");
                }
                Err(_) => {
                    inner.c.sync_failures.fetch_add(1, Relaxed);
                    tracing::debug!(%peer, "inbound sync timed out");
                }
            }
        });
    }
}

async fn sync_initiate(inner: Arc<Inner>, peer: SocketAddr) -> Result<(), GossipError> {
    let fail = |reason: String| GossipError::Sync { peer, reason };
    if inner.paused.load(Relaxed) {
        return Err(fail("paused".into()));
    }
    let r = tokio::time::timeout(SYNC_TIMEOUT, async {
        let stream = TcpStream::connect(peer).await.map_err(|e| e.to_string())?;
        let (session, first) = lock(&inner.node).sync_open();
        exchange(&inner, stream, session, Some(first)).await
    })
    .await;
    match r {
        Ok(Ok(())) => {
            inner.c.syncs.fetch_add(1, Relaxed);
            Ok(())
        }
        Ok(Err(reason)) => {
            inner.c.sync_failures.fetch_add(1, Relaxed);
            Err(fail(reason))
        }
        Err(_) => {
            inner.c.sync_failures.fetch_add(1, Relaxed);
            Err(fail("timed out".into()))
        }
    }
}

/// Runs one sync exchange on a connected stream until both sides are done.
async fn exchange(
    inner: &Arc<Inner>,
    mut stream: TcpStream,
    mut session: SyncSession,
    first: Option<Vec<u8>>,
) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    if let Some(f) = first {
        write_frame(inner, &mut stream, &f).await?;
    }
    let mut received: u64 = 0;
    while !session.is_done() {
        let raw = read_frame(inner, &mut stream, &mut received).await?;
        let replies = inner
            .with_node(|node| node.sync_frame(now_ms(), &mut session, &raw))
            .map_err(|e| e.to_string())?;
        for r in replies {
            write_frame(inner, &mut stream, &r).await?;
        }
        if inner.paused.load(Relaxed) {
            return Err("paused".into());
        }
    }
    let _ = stream.shutdown().await;
    Ok(())
}

async fn write_frame(inner: &Inner, stream: &mut TcpStream, raw: &[u8]) -> Result<(), String> {
    let ring = lock(&inner.ring).clone();
    let sealed = ring
        .seal(Channel::Tcp, &inner.fresh.stamp(&pack(raw)))
        .map_err(|e| e.to_string())?;
    if sealed.len() > MAX_FRAME {
        return Err(format!("frame of {} bytes over the limit", sealed.len()));
    }
    let len = (sealed.len() as u32).to_be_bytes();
    stream.write_all(&len).await.map_err(|e| e.to_string())?;
    stream.write_all(&sealed).await.map_err(|e| e.to_string())?;
    inner.c.tcp_sent.fetch_add(1, Relaxed);
    inner
        .c
        .tcp_bytes_sent
        .fetch_add(4 + sealed.len() as u64, Relaxed);
    Ok(())
}

async fn read_frame(
    inner: &Inner,
    stream: &mut TcpStream,
    received: &mut u64,
) -> Result<Vec<u8>, String> {
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .await
        .map_err(|e| e.to_string())?;
    let len = u32::from_be_bytes(len) as usize;
    // Checked before allocating.
    if len > MAX_FRAME {
        return Err(format!("frame of {len} bytes announced, limit {MAX_FRAME}"));
    }
    *received += 4 + len as u64;
    if *received > MAX_SYNC_BYTES {
        return Err("sync exchange too large".into());
    }
    let mut buf = vec![0u8; len];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|e| e.to_string())?;
    inner.c.tcp_recv.fetch_add(1, Relaxed);
    inner.c.tcp_bytes_recv.fetch_add(4 + len as u64, Relaxed);
    let ring = lock(&inner.ring).clone();
    let opened = match ring.open(Channel::Tcp, &buf) {
        Ok(b) => b,
        Err(e) => {
            inner.c.decrypt_failures.fetch_add(1, Relaxed);
            return Err(format!("frame dropped: {e}"));
        }
    };
    let body = inner.fresh.accept(Channel::Tcp, &opened).map_err(|e| {
        inner.count_stale(&e);
        format!("frame dropped: {e}")
    })?;
    unpack(body).map_err(|e| e.to_string())
}
