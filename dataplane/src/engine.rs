//! The I/O shell: one UDP socket per node and one TAP device per encrypted
//! network, each served by a blocking thread. TAP -> [`classify`] -> seal
//! -> UDP to the peer; UDP -> peer by source address -> header -> key ->
//! replay check -> open -> replay commit -> source MAC check -> TAP.
//!
//! The agent owns the inputs: [`Engine::update`] replaces the ring, the
//! peers and each network's remote endpoints at once (a new immutable
//! [`View`] the threads pick up on their next packet); replay windows and
//! counters live beside the view, per peer node, so a new view never
//! forgets what was seen. Everything fails closed: a frame with no peer,
//! no common key or no view is dropped and counted, never sent in clear.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use ring::aead::LessSafeKey;
use tun_rs::{DeviceBuilder, InterruptEvent, Layer, SyncDevice};

use crate::frame::{classify, macs, Mac, Remotes, Verdict};
use crate::keys::{direction_key, send_key, RingKey};
use crate::replay::{Refusal, Replay};
use crate::vnet;
use crate::wire::{self, Header, HEADER_LEN, TAG_LEN};

/// Send and receive buffer of the UDP socket (bytes).
const SOCKET_BUFFER: usize = 8 << 20;

/// Largest read from a TAP: the virtio header and a GSO frame of up to
/// the TAP's `gso_max_size` (kept below 64 KiB so it seals into one UDP
/// datagram).
const MAX_FRAME: usize = 65_535;

/// A peer node as the agent knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Node id (both ends derive the direction keys from it).
    pub node: String,
    /// Its data-path address and encrypted port.
    pub addr: SocketAddr,
    /// Ring key ids it advertises (it can open these).
    pub keys: Vec<u32>,
}

/// An endpoint on another node, on one encrypted network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remote {
    /// Overlay MAC.
    pub mac: Mac,
    /// Overlay IP.
    pub ip: Ipv4Addr,
}

/// Everything the engine works from, replaced as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// The ring, newest first.
    pub ring: Vec<RingKey>,
    /// Peers by node id.
    pub peers: Vec<Peer>,
    /// Per network (VNI): remote endpoints and the node hosting each.
    pub networks: Vec<(u32, Vec<(Remote, String)>)>,
}

/// Counters of one peer.
#[derive(Debug, Default)]
struct PeerCounters {
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    auth_failures: AtomicU64,
    replays: AtomicU64,
    unknown_key: AtomicU64,
    stale_epoch: AtomicU64,
    malformed: AtomicU64,
    no_common_key: AtomicU64,
    spoofed: AtomicU64,
}

/// A snapshot of one peer's counters (serialisable: the agent publishes
/// it for `network inspect --verbose`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerStats {
    /// Peer node id.
    pub node: String,
    /// Datagrams sealed and sent to it.
    pub tx_packets: u64,
    /// Frame bytes sent to it.
    pub tx_bytes: u64,
    /// Frames received from it and delivered.
    pub rx_packets: u64,
    /// Frame bytes received from it and delivered.
    pub rx_bytes: u64,
    /// Datagrams that failed authentication.
    pub auth_failures: u64,
    /// Datagrams refused by the replay window.
    pub replays: u64,
    /// Datagrams under a key id not in our ring.
    pub unknown_key: u64,
    /// Datagrams from an epoch older than one already seen.
    pub stale_epoch: u64,
    /// Datagrams too short, of another version, or for a network we do
    /// not hold.
    pub malformed: u64,
    /// Frames not sent: no ring key the peer advertises.
    pub no_common_key: u64,
    /// Authentic frames whose source MAC is not one of the peer's
    /// endpoints.
    pub spoofed: u64,
}

/// A snapshot of the engine's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// This start's epoch.
    pub epoch: u32,
    /// Per peer.
    pub peers: Vec<PeerStats>,
    /// Datagrams from an address that is no peer.
    pub unknown_peer: u64,
    /// Broadcast and multicast frames dropped (ARP we answer excluded).
    pub broadcast_dropped: u64,
    /// Unicast frames to a MAC no remote endpoint has.
    pub unknown_destination: u64,
    /// ARP requests answered locally.
    pub arp_replies: u64,
}

#[derive(Debug, Default)]
struct PeerState {
    counters: PeerCounters,
    replay: Mutex<HashMap<u32, Replay>>,
}

struct PeerView {
    node: String,
    addr: SocketAddr,
    send: Option<(u32, LessSafeKey)>,
    recv: HashMap<u32, LessSafeKey>,
    state: Arc<PeerState>,
}

#[derive(Default)]
struct View {
    by_addr: HashMap<IpAddr, Arc<PeerView>>,
    networks: HashMap<u32, Remotes<Arc<PeerView>>>,
}

/// A network's send thread (the device itself is in `Shared::taps`,
/// for the receive thread, and held by the send thread).
struct Tap {
    stop: Arc<InterruptEvent>,
    dead: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

struct Shared {
    node: String,
    epoch: u32,
    counter: AtomicU64,
    sock: UdpSocket,
    view: RwLock<Arc<View>>,
    peers: Mutex<HashMap<String, Arc<PeerState>>>,
    taps: RwLock<HashMap<u32, Arc<SyncDevice>>>,
    stop: AtomicBool,
    unknown_peer: AtomicU64,
    broadcast_dropped: AtomicU64,
    unknown_destination: AtomicU64,
    arp_replies: AtomicU64,
}

/// The node's data path.
pub struct Engine {
    shared: Arc<Shared>,
    inputs: Mutex<Inputs>,
    taps: Mutex<HashMap<u32, Tap>>,
    rx: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("node", &self.shared.node)
            .field("epoch", &self.shared.epoch)
            .finish_non_exhaustive()
    }
}

/// An I/O failure of the engine, naming what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct EngineError {
    what: String,
    source: io::Error,
}

fn ioerr(what: impl Into<String>) -> impl FnOnce(io::Error) -> EngineError {
    move |source| EngineError {
        what: what.into(),
        source,
    }
}

impl Engine {
    /// Bind the node's encrypted port and start receiving. `epoch` comes
    /// from [`crate::next_epoch`].
    pub fn start(node: &str, bind: SocketAddr, epoch: u32) -> Result<Engine, EngineError> {
        let sock = UdpSocket::bind(bind).map_err(ioerr(format!("bind UDP {bind}")))?;
        // A datagram carries up to 60 KB (a TSO frame): the default buffers
        // hold three, and a receive thread held up for a moment would drop
        // what arrives meanwhile. Past `rmem_max`/`wmem_max` as root.
        use rustix::net::sockopt as so;
        let rcv = so::set_socket_recv_buffer_size_force(&sock, SOCKET_BUFFER)
            .or_else(|_| so::set_socket_recv_buffer_size(&sock, SOCKET_BUFFER));
        let snd = so::set_socket_send_buffer_size_force(&sock, SOCKET_BUFFER)
            .or_else(|_| so::set_socket_send_buffer_size(&sock, SOCKET_BUFFER));
        if rcv.is_err() || snd.is_err() {
            tracing::warn!("cannot enlarge the socket buffers of UDP {bind}");
        }
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(ioerr("set the socket read timeout"))?;
        let rx_sock = sock.try_clone().map_err(ioerr("clone the socket"))?;
        let shared = Arc::new(Shared {
            node: node.to_string(),
            epoch,
            counter: AtomicU64::new(0),
            sock,
            view: RwLock::new(Arc::new(View::default())),
            peers: Mutex::new(HashMap::new()),
            taps: RwLock::new(HashMap::new()),
            stop: AtomicBool::new(false),
            unknown_peer: AtomicU64::new(0),
            broadcast_dropped: AtomicU64::new(0),
            unknown_destination: AtomicU64::new(0),
            arp_replies: AtomicU64::new(0),
        });
        let s = shared.clone();
        let rx = std::thread::Builder::new()
            .name("dataplane-rx".into())
            .spawn(move || receive_loop(&s, &rx_sock))
            .map_err(ioerr("spawn the receive thread"))?;
        Ok(Engine {
            shared,
            inputs: Mutex::new(Inputs::default()),
            taps: Mutex::new(HashMap::new()),
            rx: Some(rx),
        })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.sock.local_addr().ok()
    }

    /// This start's epoch.
    pub fn epoch(&self) -> u32 {
        self.shared.epoch
    }

    /// Replace ring, peers and endpoints (a no-op when unchanged).
    pub fn update(&self, inputs: Inputs) {
        let Ok(mut last) = self.inputs.lock() else {
            return;
        };
        if *last == inputs {
            return;
        }
        let view = self.build(&inputs);
        if let Ok(mut v) = self.shared.view.write() {
            *v = Arc::new(view);
        }
        *last = inputs;
    }

    fn build(&self, inputs: &Inputs) -> View {
        let ours: Vec<u32> = inputs.ring.iter().map(|k| k.id).collect();
        let Ok(mut states) = self.shared.peers.lock() else {
            return View::default();
        };
        let me = &self.shared.node;
        let mut by_node: HashMap<&str, Arc<PeerView>> = HashMap::new();
        for p in &inputs.peers {
            if p.node == *me {
                continue;
            }
            let state = states.entry(p.node.clone()).or_default().clone();
            // Windows of keys that left the ring go: nothing under them
            // opens any more.
            if let Ok(mut r) = state.replay.lock() {
                r.retain(|id, _| ours.contains(id));
            }
            let send = send_key(&ours, &p.keys).and_then(|id| {
                let k = inputs.ring.iter().find(|k| k.id == id)?;
                Some((id, direction_key(k, me, &p.node)?))
            });
            let recv = inputs
                .ring
                .iter()
                .filter_map(|k| Some((k.id, direction_key(k, &p.node, me)?)))
                .collect();
            by_node.insert(
                &p.node,
                Arc::new(PeerView {
                    node: p.node.clone(),
                    addr: p.addr,
                    send,
                    recv,
                    state,
                }),
            );
        }
        let mut view = View::default();
        for p in by_node.values() {
            view.by_addr.insert(p.addr.ip(), p.clone());
        }
        for (vni, remotes) in &inputs.networks {
            let mut r = Remotes::default();
            for (ep, node) in remotes {
                if let Some(p) = by_node.get(node.as_str()) {
                    r.by_mac.insert(ep.mac, p.clone());
                    r.arp.insert(ep.ip, ep.mac);
                }
            }
            view.networks.insert(*vni, r);
        }
        view
    }

    /// Create network `vni`'s TAP device in the calling thread's network
    /// namespace under `name` (the agent then moves it into the network's
    /// namespace) and start serving it. Replaces a previous one.
    pub fn open_tap(&self, vni: u32, name: &str, mtu: u16) -> Result<(), EngineError> {
        self.close_tap(vni);
        let dev = DeviceBuilder::new()
            .name(name)
            .layer(Layer::L2)
            .mtu(mtu)
            .offload(true)
            .enable(false)
            .build_sync()
            .map_err(ioerr(format!("create TAP device {name}")))?;
        dev.set_nonblocking(true)
            .map_err(ioerr(format!("make {name} non-blocking")))?;
        let dev = Arc::new(dev);
        let stop = Arc::new(InterruptEvent::new().map_err(ioerr("create an interrupt event"))?);
        let dead = Arc::new(AtomicBool::new(false));
        let (s, d, e, x) = (self.shared.clone(), dev.clone(), stop.clone(), dead.clone());
        let thread = std::thread::Builder::new()
            .name(format!("dataplane-tx-{vni}"))
            .spawn(move || {
                send_loop(&s, vni, &d, &e);
                x.store(true, Relaxed);
            })
            .map_err(ioerr("spawn a send thread"))?;
        if let Ok(mut t) = self.shared.taps.write() {
            t.insert(vni, dev);
        }
        if let Ok(mut taps) = self.taps.lock() {
            taps.insert(vni, Tap { stop, dead, thread });
        }
        Ok(())
    }

    /// Whether network `vni` has a TAP being served (false once its
    /// device failed, e.g. was deleted by hand).
    pub fn tap_alive(&self, vni: u32) -> bool {
        self.taps
            .lock()
            .ok()
            .and_then(|t| t.get(&vni).map(|t| !t.dead.load(Relaxed)))
            .unwrap_or(false)
    }

    /// Networks with a TAP.
    pub fn networks(&self) -> Vec<u32> {
        self.taps
            .lock()
            .map(|t| t.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Stop serving network `vni`; its TAP device goes with its last fd.
    pub fn close_tap(&self, vni: u32) {
        if let Ok(mut t) = self.shared.taps.write() {
            t.remove(&vni);
        }
        let tap = self.taps.lock().ok().and_then(|mut t| t.remove(&vni));
        if let Some(tap) = tap {
            let _ = tap.stop.trigger();
            let _ = tap.thread.join();
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        let mut peers: Vec<PeerStats> = s
            .peers
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(node, p)| {
                        let c = &p.counters;
                        let g = |a: &AtomicU64| a.load(Relaxed);
                        PeerStats {
                            node: node.clone(),
                            tx_packets: g(&c.tx_packets),
                            tx_bytes: g(&c.tx_bytes),
                            rx_packets: g(&c.rx_packets),
                            rx_bytes: g(&c.rx_bytes),
                            auth_failures: g(&c.auth_failures),
                            replays: g(&c.replays),
                            unknown_key: g(&c.unknown_key),
                            stale_epoch: g(&c.stale_epoch),
                            malformed: g(&c.malformed),
                            no_common_key: g(&c.no_common_key),
                            spoofed: g(&c.spoofed),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        peers.sort_by(|a, b| a.node.cmp(&b.node));
        Stats {
            epoch: s.epoch,
            peers,
            unknown_peer: s.unknown_peer.load(Relaxed),
            broadcast_dropped: s.broadcast_dropped.load(Relaxed),
            unknown_destination: s.unknown_destination.load(Relaxed),
            arp_replies: s.arp_replies.load(Relaxed),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for vni in self.networks() {
            self.close_tap(vni);
        }
        self.shared.stop.store(true, Relaxed);
        if let Some(t) = self.rx.take() {
            let _ = t.join();
        }
    }
}

fn current(s: &Shared) -> Arc<View> {
    match s.view.read() {
        Ok(v) => v.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

/// TAP -> peers, until `stop` fires or the device fails.
fn send_loop(s: &Shared, vni: u32, dev: &SyncDevice, stop: &InterruptEvent) {
    let mut buf = vec![0u8; HEADER_LEN + MAX_FRAME + TAG_LEN];
    loop {
        let n = match dev.recv_intr(&mut buf[HEADER_LEN..HEADER_LEN + MAX_FRAME], stop) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted && stop.is_trigger() => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::warn!(vni, "encrypted network device failed: {e}");
                return;
            }
        };
        forward(s, vni, dev, &mut buf, n);
    }
}

/// Seal and send what the TAP handed over (`buf[HEADER_LEN..][..n]`:
/// virtio-net header and frame), answer it (ARP), or drop it.
fn forward(s: &Shared, vni: u32, dev: &SyncDevice, buf: &mut [u8], n: usize) {
    let view = current(s);
    let Some(remotes) = view.networks.get(&vni) else {
        s.unknown_destination.fetch_add(1, Relaxed);
        return;
    };
    // [virtio-net header][frame]: both are sealed and sent as one.
    let frame = buf
        .get(HEADER_LEN + vnet::LEN..HEADER_LEN + n)
        .unwrap_or_default();
    let peer = match classify(frame, remotes) {
        Verdict::Send(p) => p.clone(),
        Verdict::ArpReply(r) => {
            let reply = [&vnet::NONE[..], &r].concat();
            if dev.send(&reply).is_ok() {
                s.arp_replies.fetch_add(1, Relaxed);
            }
            return;
        }
        Verdict::DropBroadcast => {
            s.broadcast_dropped.fetch_add(1, Relaxed);
            return;
        }
        Verdict::DropUnknown | Verdict::DropMalformed => {
            s.unknown_destination.fetch_add(1, Relaxed);
            return;
        }
    };
    let c = &peer.state.counters;
    let Some((key_id, key)) = &peer.send else {
        c.no_common_key.fetch_add(1, Relaxed);
        return;
    };
    let header = Header {
        vni,
        key_id: *key_id,
        epoch: s.epoch,
        counter: s.counter.fetch_add(1, Relaxed),
    };
    let Ok(len) = wire::seal(key, &header, buf, n) else {
        return;
    };
    if s.sock.send_to(&buf[..len], peer.addr).is_ok() {
        c.tx_packets.fetch_add(1, Relaxed);
        c.tx_bytes
            .fetch_add(n.saturating_sub(vnet::LEN) as u64, Relaxed);
    }
}

/// UDP -> TAPs, until the engine stops.
fn receive_loop(s: &Shared, sock: &UdpSocket) {
    let mut buf = vec![0u8; 65_536];
    while !s.stop.load(Relaxed) {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(_) => continue, // timeout (checks stop) or a transient error
        };
        let view = current(s);
        let Some(peer) = view.by_addr.get(&from.ip()) else {
            s.unknown_peer.fetch_add(1, Relaxed);
            continue;
        };
        let c = &peer.state.counters;
        let d = &mut buf[..n];
        let Ok(h) = Header::decode(d) else {
            c.malformed.fetch_add(1, Relaxed);
            continue;
        };
        let (Some(remotes), Some(tap)) = (
            view.networks.get(&h.vni),
            s.taps.read().ok().and_then(|t| t.get(&h.vni).cloned()),
        ) else {
            c.malformed.fetch_add(1, Relaxed);
            continue;
        };
        let Some(key) = peer.recv.get(&h.key_id) else {
            c.unknown_key.fetch_add(1, Relaxed);
            continue;
        };
        let refused = |r: Refusal| match r {
            Refusal::Replay => c.replays.fetch_add(1, Relaxed),
            Refusal::StaleEpoch => c.stale_epoch.fetch_add(1, Relaxed),
        };
        let checked = peer.state.replay.lock().map(|w| {
            w.get(&h.key_id)
                .map_or(Ok(()), |r| r.check(h.epoch, h.counter))
        });
        if let Ok(Err(r)) = checked {
            refused(r);
            continue;
        }
        let Ok(frame) = wire::open(key, &h, d) else {
            c.auth_failures.fetch_add(1, Relaxed);
            continue;
        };
        let committed = peer
            .state
            .replay
            .lock()
            .map(|mut w| w.entry(h.key_id).or_default().commit(h.epoch, h.counter));
        match committed {
            Ok(Ok(())) => {}
            Ok(Err(r)) => {
                refused(r);
                continue;
            }
            Err(_) => continue,
        }
        // [virtio-net header][frame], checked before the TAP sees it.
        let (hdr, eth) = frame.split_at(vnet::LEN.min(frame.len()));
        if !vnet::valid(hdr, eth.len()) {
            c.malformed.fetch_add(1, Relaxed);
            continue;
        }
        // Authentic, but the frame must come from one of the sender's own
        // endpoints: a member cannot speak for another node's workloads.
        let owner = macs(eth).and_then(|(_, src)| remotes.by_mac.get(&src));
        if owner.is_none_or(|p| p.node != peer.node) {
            c.spoofed.fetch_add(1, Relaxed);
            continue;
        }
        if tap.send(frame).is_ok() {
            c.rx_packets.fetch_add(1, Relaxed);
            c.rx_bytes.fetch_add(eth.len() as u64, Relaxed);
        }
    }
}
