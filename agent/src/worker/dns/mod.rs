//! The embedded DNS server every task talks to (Docker's 127.0.0.11).
//!
//! Each task runs in its own network namespace and gets
//! `nameserver 127.0.0.11` in its resolv.conf ([`task_resolv_conf`]). The
//! daemon, which stays in the host namespace, runs one [`DnsServer`] per
//! task:
//!
//! ```text
//!  task netns                         daemon (host netns)
//!  ┌──────────────────────┐          ┌──────────────────────────────────┐
//!  │ app ──► 127.0.0.11:53├─ sockets ┤ decide(): Names::lookup(name)    │
//!  │   (UDP + TCP sockets │  bound   │   Some(ips) ─► answer (AA, TTL 5)│
//!  │    bound from there) │  there,  │   None ─► forward from a socket  │
//!  └──────────────────────┘  polled  │           of the host netns ─────┼─► upstream
//!                            here    └──────────────────────────────────┘   resolvers
//! ```
//!
//! [`bind_in_netns`] binds the two listening sockets from a short-lived
//! thread that has `setns`-ed into the task's namespace (a socket stays in
//! the namespace it was created in), and [`spawn`] hands them to tokio. The
//! forwarding sockets are created on the runtime's own threads, so they
//! live in the daemon's namespace and reach the node's resolvers (also a
//! host-loopback one such as systemd-resolved's 127.0.0.53), which the task
//! itself could not.
//!
//! The decision for one message ([`decide`]) is plain code with no socket
//! and no clock; the async shell around it receives, forwards with
//! timeouts and sends. Names the daemon knows (service names, `tasks.web`,
//! task names; the [`Names`] trait says which) are answered here; every
//! other query is relayed to the upstreams in order (UDP, retried over TCP
//! when the reply is truncated and the client can take a long answer),
//! with the client's query id put back on the reply. Many forwards are in
//! flight at once, so one slow upstream never holds up a local answer.
//!
//! How this differs from Docker's resolver, on purpose:
//! - TTL of local answers is [`LOCAL_TTL`] (5 s), not Docker's 600 s: task
//!   addresses change on every reschedule, and clients that do cache (JVM,
//!   nginx, nscd) would keep dialing a dead task for ten minutes; 5 s still
//!   spares the server a burst of identical lookups from one client.
//! - Local answers carry the authoritative flag (Docker sets only RA): this
//!   server is the source of truth for those names.
//! - A name we own asked for another type (AAAA, MX, TXT, ...) gets NOERROR
//!   with no answers. Docker does that for AAAA and MX but forwards other
//!   types, which leaks internal names to the outside resolvers.
//! - A name we own with no address right now (`Some(vec![])`, e.g.
//!   `tasks.web` while no task runs) gets NXDOMAIN. Docker's backend has no
//!   record then, so it forwards and the client ends up with the upstream's
//!   NXDOMAIN; we give the same answer without asking the outside world.
//!   No SOA is attached, so the negative answer is not cached (RFC 2308).
//! - An upstream's NXDOMAIN is relayed at once; Docker tries the next
//!   upstream unless it was authoritative. Upstreams of one node are meant
//!   to agree, and asking all of them triples the wait for typos.
//! - Forwards use UDP first whatever the client used (Docker mirrors the
//!   client's transport), and TCP only when the UDP reply was truncated.
//!
//! Not served here: PTR (reverse lookups of task addresses) and SRV; both
//! are forwarded. Queries on one TCP connection are answered in order.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use rand::seq::SliceRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

/// The address tasks use as their nameserver (inside their own namespace).
pub const TASK_NAMESERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// The DNS port, for [`TASK_NAMESERVER`] and for upstreams.
pub const DNS_PORT: u16 = 53;

/// TTL of the answers for our own names (see the module docs for why 5 s).
pub const LOCAL_TTL: u32 = 5;

/// At most this many upstreams are tried per query, like glibc's MAXNS: with
/// the default per-try timeout, 3 tries (4.5 s) fit in a glibc client's own
/// 5 s timeout, so the client still sees our SERVFAIL instead of a silence.
pub const MAX_UPSTREAMS: usize = 3;

/// Largest UDP payload we advertise in EDNS answers (the DNS flag day 2020
/// value: no fragmentation on common paths).
const EDNS_PAYLOAD: u16 = 1232;

/// Largest UDP query we read; anything longer is cut and gets FORMERR.
/// Real queries are a few hundred bytes; one buffer per server stays small.
const UDP_QUERY_BUF: usize = 4096;

/// Largest reply we accept from an upstream over UDP.
const UDP_REPLY_BUF: usize = 65535;

/// The daemon's view of the names it owns.
///
/// `name` is lowercased, without the trailing dot (`web`, `tasks.web`,
/// `web.1.k2x9…`). `None`: not ours, the query is forwarded upstream.
/// `Some(ips)`: ours; an A query gets `ips` (in a fresh random order each
/// time, so `dnsrr` clients that take the first address spread over the
/// tasks), other types get NOERROR with no answers, and `Some(vec![])`
/// gets NXDOMAIN. Called on the receive path: keep it quick.
pub trait Names: Send + Sync + 'static {
    /// Addresses of `name`, or `None` if the name is not ours.
    fn lookup(&self, name: &str) -> Option<Vec<Ipv4Addr>>;
}

impl<F> Names for F
where
    F: Fn(&str) -> Option<Vec<Ipv4Addr>> + Send + Sync + 'static,
{
    fn lookup(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        self(name)
    }
}

/// Timings and limits of a server; production defaults, tests shorten them.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// How long one upstream gets to answer (per try, UDP and TCP each).
    pub try_timeout: Duration,
    /// Forwarded queries in flight at once per server; beyond that a query
    /// gets SERVFAIL at once (Docker caps at 1024 too).
    pub max_in_flight: usize,
    /// TCP connections served at once per server; more are closed.
    pub max_tcp_conns: usize,
    /// A TCP client silent for this long is disconnected.
    pub tcp_idle_timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            try_timeout: Duration::from_millis(1500),
            max_in_flight: 1024,
            max_tcp_conns: 64,
            tcp_idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of one server, for metrics. Every query received is counted in
/// `queries` and then, once answered, in exactly one of the other three
/// (so `queries - local_answers - forwarded - failures` is what is still in
/// flight, plus malformed packets that were dropped without an answer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Messages received (UDP datagrams and TCP messages).
    pub queries: u64,
    /// Answered from [`Names`] (including NODATA and NXDOMAIN for our names,
    /// and every answer of a [`spawn_static`] server).
    pub local_answers: u64,
    /// Relayed from an upstream's reply.
    pub forwarded: u64,
    /// Answered with an error of ours: SERVFAIL (no upstream answered, none
    /// configured, too many in flight), FORMERR, NOTIMP.
    pub failures: u64,
}

#[derive(Debug, Default)]
struct Counters {
    queries: AtomicU64,
    local_answers: AtomicU64,
    forwarded: AtomicU64,
    failures: AtomicU64,
}

impl Counters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A running server. Dropping it (or [`DnsServer::stop`]) ends its tasks,
/// including queries still being forwarded, and closes its sockets.
#[derive(Debug)]
pub struct DnsServer {
    tasks: Vec<JoinHandle<()>>,
    counters: Arc<Counters>,
    udp_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
}

impl DnsServer {
    /// A snapshot of the counters.
    pub fn stats(&self) -> DnsStats {
        DnsStats {
            queries: self.counters.queries.load(Ordering::Relaxed),
            local_answers: self.counters.local_answers.load(Ordering::Relaxed),
            forwarded: self.counters.forwarded.load(Ordering::Relaxed),
            failures: self.counters.failures.load(Ordering::Relaxed),
        }
    }

    /// The UDP address served (in the namespace the socket was bound in).
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    /// The TCP address served; `None` for a [`spawn_static`] server.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Stop serving: same as dropping, spelled out at call sites.
    pub fn stop(self) {}
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        // Aborting a loop drops its JoinSet, which aborts its children.
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn with_context(e: io::Error, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Bind the server's UDP socket and TCP listener at `addr`, inside the
/// network namespace bind-mounted at `netns` (`None`: the caller's own).
///
/// The namespace is entered by a short-lived thread (it blocks the caller
/// for as long as two binds take), so no runtime thread ever changes
/// namespace; the sockets stay in the task's namespace for their lifetime.
/// Both are non-blocking, ready for [`spawn`]. With port 0 both get the
/// same port, so one address names the server.
pub fn bind_in_netns(
    netns: Option<&Path>,
    addr: SocketAddr,
) -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let Some(path) = netns else {
        return bind_pair(addr);
    };
    let path = path.to_path_buf();
    let name = path.display().to_string();
    std::thread::Builder::new()
        .name("shoal-dns-bind".to_string())
        .spawn(move || {
            let f = File::open(&path).map_err(|e| {
                with_context(e, format_args!("open network namespace {}", path.display()))
            })?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                with_context(
                    io::Error::from(e),
                    format_args!("setns into network namespace {}", path.display()),
                )
            })?;
            bind_pair(addr).map_err(|e| {
                with_context(e, format_args!("in network namespace {}", path.display()))
            })
        })
        .map_err(|e| with_context(e, format_args!("start bind thread for {name}")))?
        .join()
        .map_err(|_| io::Error::other(format!("bind thread for {name} panicked")))?
}

fn bind_pair(addr: SocketAddr) -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    // With port 0, the TCP listener follows the UDP port; if another socket
    // holds that TCP port, try a fresh UDP port.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = std::net::UdpSocket::bind(addr)
            .map_err(|e| with_context(e, format_args!("bind DNS UDP socket {addr}")))?;
        let udp_addr = udp.local_addr()?;
        let tcp = match std::net::TcpListener::bind(udp_addr) {
            Ok(t) => t,
            Err(e) if addr.port() == 0 && e.kind() == io::ErrorKind::AddrInUse && attempt < 8 => {
                continue
            }
            Err(e) => {
                return Err(with_context(
                    e,
                    format_args!("bind DNS TCP listener {udp_addr}"),
                ))
            }
        };
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        return Ok((udp, tcp));
    }
}

/// What to do with a name the lookup does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Miss {
    /// The embedded server: relay it upstream.
    Forward,
    /// The static server: it is the whole zone, so the name does not exist.
    NxDomain,
}

/// How a server behaves, for [`decide`].
#[derive(Debug, Clone, Copy)]
struct Mode {
    miss: Miss,
    /// Whether we offer recursion (the embedded server does, by forwarding).
    recursion_available: bool,
}

const EMBEDDED: Mode = Mode {
    miss: Miss::Forward,
    recursion_available: true,
};

const STATIC: Mode = Mode {
    miss: Miss::NxDomain,
    recursion_available: false,
};

/// What [`decide`] says to do with one received message.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Answered from our names: send these bytes.
    Local(Vec<u8>),
    /// An error answer of ours (FORMERR, NOTIMP): send these bytes.
    Error(Vec<u8>),
    /// Not ours: relay `query` upstream; `servfail` is the answer if that fails.
    Forward { query: Vec<u8>, servfail: Vec<u8> },
    /// Not even a DNS request header (or a response): say nothing.
    Drop,
}

/// Decide what to do with one message. Over `udp` an answer may be as long
/// as the client's EDNS payload size (at least 512 bytes); longer local
/// answers are cut and flagged truncated so the client retries over TCP.
/// Never panics, whatever the bytes.
fn decide(packet: &[u8], names: &dyn Names, mode: Mode, udp: bool) -> Decision {
    let Ok(header) = Header::read(&mut BinDecoder::new(packet)) else {
        return Decision::Drop;
    };
    if header.message_type() == MessageType::Response {
        // Answering responses invites reflection loops.
        return Decision::Drop;
    }
    let error = |code: ResponseCode| -> Decision {
        let mut m = Message::error_msg(header.id(), header.op_code(), code);
        m.set_recursion_desired(header.recursion_desired())
            .set_recursion_available(mode.recursion_available);
        encode(&m).map_or(Decision::Drop, Decision::Error)
    };
    // Every record takes at least 5 bytes (root name, type, class); a
    // header claiming more than the packet holds is refused before the
    // parser reserves room for them (a 12-byte query claiming 65535
    // questions would cost megabytes).
    let claimed = usize::from(header.query_count())
        + usize::from(header.answer_count())
        + usize::from(header.name_server_count())
        + usize::from(header.additional_count());
    if claimed.saturating_mul(5) > packet.len().saturating_sub(12) {
        return error(ResponseCode::FormErr);
    }
    let Ok(query) = Message::from_vec(packet) else {
        return error(ResponseCode::FormErr);
    };
    if query.op_code() != OpCode::Query {
        return error(ResponseCode::NotImp);
    }
    let [q] = query.queries() else {
        return error(ResponseCode::FormErr);
    };

    let mut resp = Message::new();
    let mut h = Header::response_from_request(query.header());
    h.set_recursion_available(mode.recursion_available);
    resp.set_header(h);
    resp.add_query(q.clone());
    if query.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        resp.set_edns(edns);
    }

    let addrs = if matches!(q.query_class(), DNSClass::IN | DNSClass::ANY) {
        let lower = q.name().to_lowercase().to_ascii();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        names.lookup(name)
    } else {
        None
    };
    let Some(mut addrs) = addrs else {
        return match mode.miss {
            Miss::Forward => {
                resp.set_response_code(ResponseCode::ServFail);
                match encode(&resp) {
                    Some(servfail) => Decision::Forward {
                        query: packet.to_vec(),
                        servfail,
                    },
                    None => Decision::Drop,
                }
            }
            Miss::NxDomain => {
                resp.set_authoritative(true)
                    .set_response_code(ResponseCode::NXDomain);
                encode(&resp).map_or(Decision::Drop, Decision::Local)
            }
        };
    };

    resp.set_authoritative(true);
    if addrs.is_empty() {
        resp.set_response_code(ResponseCode::NXDomain);
    } else if matches!(q.query_type(), RecordType::A | RecordType::ANY) {
        addrs.shuffle(&mut rand::thread_rng());
        for ip in addrs {
            resp.add_answer(Record::from_rdata(
                q.name().clone(),
                LOCAL_TTL,
                RData::A(A(ip)),
            ));
        }
    }
    let max_len = udp.then(|| usize::from(query.max_payload()));
    encode_fitting(resp, max_len).map_or(Decision::Drop, Decision::Local)
}

fn encode(m: &Message) -> Option<Vec<u8>> {
    match m.to_vec() {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(error = %e, "dns: cannot encode an answer");
            None
        }
    }
}

/// Encode `resp`, dropping answers and setting TC until it fits `max_len`.
fn encode_fitting(mut resp: Message, max_len: Option<usize>) -> Option<Vec<u8>> {
    let full = encode(&resp)?;
    let Some(max) = max_len else {
        return Some(full);
    };
    if full.len() <= max {
        return Some(full);
    }
    let mut answers = resp.take_answers();
    let n = answers.len();
    resp.set_truncated(true);
    let base = encode(&resp)?.len();
    if n == 0 || base > max {
        return encode(&resp);
    }
    // Estimate from the average record size, then trim until it fits.
    let per = (full.len() - base).div_ceil(n).max(1);
    answers.truncate((max - base) / per);
    loop {
        resp.insert_answers(answers.clone());
        let b = encode(&resp)?;
        if b.len() <= max || answers.is_empty() {
            return Some(b);
        }
        answers.pop();
    }
}

/// Shared by a server's loops and its in-flight forwards.
struct Ctx {
    names: Arc<dyn Names>,
    upstreams: Vec<SocketAddr>,
    cfg: DnsConfig,
    mode: Mode,
    counters: Arc<Counters>,
}

/// Start serving on `udp` and `tcp` (from [`bind_in_netns`]): our names
/// from `names`, the rest forwarded to `upstreams` (the first
/// [`MAX_UPSTREAMS`], tried in order). Must be called within a tokio
/// runtime. No upstreams: foreign names get SERVFAIL (as Docker does when
/// it has no external resolver).
pub fn spawn(
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    names: Arc<dyn Names>,
    upstreams: Vec<SocketAddr>,
) -> io::Result<DnsServer> {
    spawn_with(udp, tcp, names, upstreams, DnsConfig::default())
}

/// [`spawn`] with explicit timings and limits.
pub fn spawn_with(
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    names: Arc<dyn Names>,
    mut upstreams: Vec<SocketAddr>,
    cfg: DnsConfig,
) -> io::Result<DnsServer> {
    tokio::runtime::Handle::try_current()
        .map_err(|e| io::Error::other(format!("dns server needs a tokio runtime: {e}")))?;
    upstreams.truncate(MAX_UPSTREAMS);
    udp.set_nonblocking(true)?;
    tcp.set_nonblocking(true)?;
    let udp = Arc::new(UdpSocket::from_std(udp)?);
    let tcp = TcpListener::from_std(tcp)?;
    let counters = Arc::new(Counters::default());
    let ctx = Arc::new(Ctx {
        names,
        upstreams,
        cfg,
        mode: EMBEDDED,
        counters: counters.clone(),
    });
    let udp_addr = udp.local_addr()?;
    let tcp_addr = tcp.local_addr()?;
    Ok(DnsServer {
        tasks: vec![
            tokio::spawn(udp_loop(udp, ctx.clone())),
            tokio::spawn(tcp_loop(tcp, ctx)),
        ],
        counters,
        udp_addr,
        tcp_addr: Some(tcp_addr),
    })
}

/// A small authoritative server over UDP: A answers for `records` (names
/// matched case-insensitively, trailing dot optional), NXDOMAIN for any
/// other name, nothing forwarded. It stands in for the node's resolvers in
/// tests and in the lab, so nothing ever asks an outside resolver.
pub fn spawn_static(
    udp: std::net::UdpSocket,
    records: BTreeMap<String, Ipv4Addr>,
) -> io::Result<DnsServer> {
    tokio::runtime::Handle::try_current()
        .map_err(|e| io::Error::other(format!("dns server needs a tokio runtime: {e}")))?;
    let records: BTreeMap<String, Ipv4Addr> = records
        .into_iter()
        .map(|(k, v)| {
            let k = k.to_ascii_lowercase();
            (k.strip_suffix('.').map(str::to_string).unwrap_or(k), v)
        })
        .collect();
    udp.set_nonblocking(true)?;
    let udp = Arc::new(UdpSocket::from_std(udp)?);
    let counters = Arc::new(Counters::default());
    let names = move |name: &str| records.get(name).map(|ip| vec![*ip]);
    let ctx = Arc::new(Ctx {
        names: Arc::new(names),
        upstreams: Vec::new(),
        cfg: DnsConfig::default(),
        mode: STATIC,
        counters: counters.clone(),
    });
    let udp_addr = udp.local_addr()?;
    Ok(DnsServer {
        tasks: vec![tokio::spawn(udp_loop(udp, ctx))],
        counters,
        udp_addr,
        tcp_addr: None,
    })
}

async fn udp_loop(sock: Arc<UdpSocket>, ctx: Arc<Ctx>) {
    let mut buf = vec![0u8; UDP_QUERY_BUF];
    let mut in_flight = JoinSet::new();
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let (n, peer) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "dns: udp receive failed");
                        // Do not spin if the socket is broken for good.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let packet = buf.get(..n).unwrap_or_default();
                Counters::bump(&ctx.counters.queries);
                match decide(packet, &*ctx.names, ctx.mode, true) {
                    Decision::Local(b) => {
                        Counters::bump(&ctx.counters.local_answers);
                        send_udp(&sock, &b, peer).await;
                    }
                    Decision::Error(b) => {
                        Counters::bump(&ctx.counters.failures);
                        send_udp(&sock, &b, peer).await;
                    }
                    Decision::Drop => {}
                    Decision::Forward { query, servfail } => {
                        if ctx.upstreams.is_empty() || in_flight.len() >= ctx.cfg.max_in_flight {
                            Counters::bump(&ctx.counters.failures);
                            send_udp(&sock, &servfail, peer).await;
                            continue;
                        }
                        let (sock, ctx) = (sock.clone(), ctx.clone());
                        in_flight.spawn(async move {
                            let reply = answer_forward(&ctx, &query, servfail, false).await;
                            send_udp(&sock, &reply, peer).await;
                        });
                    }
                }
            }
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
        }
    }
}

async fn send_udp(sock: &UdpSocket, bytes: &[u8], peer: SocketAddr) {
    if let Err(e) = sock.send_to(bytes, peer).await {
        tracing::debug!(%peer, error = %e, "dns: udp send failed");
    }
}

/// Forward and count; the reply to send (the upstream's, or `servfail`).
async fn answer_forward(ctx: &Ctx, query: &[u8], servfail: Vec<u8>, tcp_client: bool) -> Vec<u8> {
    match forward(query, &ctx.upstreams, ctx.cfg.try_timeout, tcp_client).await {
        Some(r) => {
            Counters::bump(&ctx.counters.forwarded);
            r
        }
        None => {
            Counters::bump(&ctx.counters.failures);
            servfail
        }
    }
}

async fn tcp_loop(listener: TcpListener, ctx: Arc<Ctx>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    if conns.len() >= ctx.cfg.max_tcp_conns {
                        continue; // dropping the stream closes it
                    }
                    conns.spawn(serve_tcp(stream, ctx.clone()));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "dns: tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// One TCP client: length-prefixed messages, answered in order.
async fn serve_tcp(mut stream: TcpStream, ctx: Arc<Ctx>) {
    let idle = ctx.cfg.tcp_idle_timeout;
    loop {
        let len = match timeout(idle, stream.read_u16()).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(l)) => usize::from(l),
        };
        let mut msg = vec![0u8; len];
        if !matches!(timeout(idle, stream.read_exact(&mut msg)).await, Ok(Ok(_))) {
            return;
        }
        Counters::bump(&ctx.counters.queries);
        let reply = match decide(&msg, &*ctx.names, ctx.mode, false) {
            Decision::Local(b) => {
                Counters::bump(&ctx.counters.local_answers);
                b
            }
            Decision::Error(b) => {
                Counters::bump(&ctx.counters.failures);
                b
            }
            Decision::Drop => continue,
            Decision::Forward { query, servfail } => {
                if ctx.upstreams.is_empty() {
                    Counters::bump(&ctx.counters.failures);
                    servfail
                } else {
                    answer_forward(&ctx, &query, servfail, true).await
                }
            }
        };
        if !matches!(
            timeout(idle, write_framed(&mut stream, &reply)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}

async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "dns message over 65535 bytes"))?;
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await
}

/// For `fuzz/` only: runs [`decide`] on `packet` in both server modes, over
/// UDP and TCP, against fixed names (`web`: 2 addresses, `tasks.web`: 300,
/// enough to need truncation over UDP, `gone`: NXDOMAIN).
#[doc(hidden)]
pub fn fuzz_decide(packet: &[u8]) {
    let names = |name: &str| -> Option<Vec<Ipv4Addr>> {
        match name {
            "web" => Some(vec![Ipv4Addr::new(10, 0, 1, 2), Ipv4Addr::new(10, 0, 1, 3)]),
            "tasks.web" => Some(
                (0..300u16)
                    .map(|i| Ipv4Addr::from(0x0a00_0000 | u32::from(i)))
                    .collect(),
            ),
            "gone" => Some(Vec::new()),
            _ => None,
        }
    };
    for mode in [EMBEDDED, STATIC] {
        for udp in [true, false] {
            let _ = decide(packet, &names, mode, udp);
        }
    }
}

mod upstream;

use upstream::forward;
pub use upstream::{task_resolv_conf, upstreams_from_resolv_conf};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use rand::{Rng, SeedableRng};
    use std::path::PathBuf;
    use std::time::Instant;

    const WEB: [Ipv4Addr; 3] = [
        Ipv4Addr::new(10, 0, 9, 2),
        Ipv4Addr::new(10, 0, 9, 3),
        Ipv4Addr::new(10, 0, 9, 4),
    ];

    /// Upper bound for anything that should be immediate.
    const PROMPT: Duration = Duration::from_secs(5);

    fn fast() -> DnsConfig {
        DnsConfig {
            try_timeout: Duration::from_millis(300),
            ..DnsConfig::default()
        }
    }

    fn table() -> Arc<dyn Names> {
        Arc::new(|name: &str| match name {
            "web" | "tasks.web" => Some(WEB.to_vec()),
            "big" => Some((0..100).map(|i| Ipv4Addr::new(10, 1, 0, i)).collect()),
            "tasks.idle" => Some(Vec::new()),
            _ => None,
        })
    }

    fn query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m.to_vec().unwrap()
    }

    fn lo() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    async fn client() -> UdpSocket {
        UdpSocket::bind(lo()).await.unwrap()
    }

    /// Send `packet` and wait up to `wait` for a reply with the same id.
    async fn exchange(
        sock: &UdpSocket,
        to: SocketAddr,
        packet: &[u8],
        wait: Duration,
    ) -> Option<Vec<u8>> {
        sock.send_to(packet, to).await.unwrap();
        let mut buf = vec![0u8; 65535];
        timeout(wait, async {
            loop {
                let (n, _) = sock.recv_from(&mut buf).await.unwrap();
                if n >= 2 && buf[..2] == packet[..2] {
                    return buf[..n].to_vec();
                }
            }
        })
        .await
        .ok()
    }

    async fn ask(to: SocketAddr, packet: &[u8]) -> Message {
        let reply = exchange(&client().await, to, packet, PROMPT)
            .await
            .expect("no answer over udp");
        Message::from_vec(&reply).unwrap()
    }

    async fn ask_tcp(to: SocketAddr, packet: &[u8]) -> Message {
        timeout(PROMPT, async {
            let mut s = TcpStream::connect(to).await.unwrap();
            write_framed(&mut s, packet).await.unwrap();
            let len = usize::from(s.read_u16().await.unwrap());
            let mut reply = vec![0u8; len];
            s.read_exact(&mut reply).await.unwrap();
            Message::from_vec(&reply).unwrap()
        })
        .await
        .expect("no answer over tcp")
    }

    fn a_answers(m: &Message) -> Vec<Ipv4Addr> {
        m.answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    fn sorted(mut v: Vec<Ipv4Addr>) -> Vec<Ipv4Addr> {
        v.sort();
        v
    }

    fn server(names: Arc<dyn Names>, upstreams: Vec<SocketAddr>, cfg: DnsConfig) -> DnsServer {
        let (udp, tcp) = bind_in_netns(None, lo()).unwrap();
        spawn_with(udp, tcp, names, upstreams, cfg).unwrap()
    }

    fn static_upstream(records: &[(&str, [u8; 4])]) -> DnsServer {
        let records = records
            .iter()
            .map(|(n, ip)| (n.to_string(), Ipv4Addr::from(*ip)))
            .collect();
        spawn_static(std::net::UdpSocket::bind(lo()).unwrap(), records).unwrap()
    }

    /// A bound UDP socket nobody reads: an upstream that never answers.
    fn black_hole() -> std::net::UdpSocket {
        std::net::UdpSocket::bind(lo()).unwrap()
    }

    #[tokio::test]
    async fn local_name_answered_case_insensitively() {
        let s = server(table(), Vec::new(), fast());
        for name in ["web", "web.", "WeB.", "tasks.web.", "Tasks.WEB"] {
            let m = ask(s.udp_addr(), &query(0x4242, name, RecordType::A)).await;
            assert_eq!(m.id(), 0x4242);
            assert_eq!(m.response_code(), ResponseCode::NoError, "{name}");
            assert!(m.authoritative() && m.recursion_available() && m.recursion_desired());
            assert_eq!(sorted(a_answers(&m)), WEB.to_vec(), "{name}");
            assert!(m.answers().iter().all(|r| r.ttl() == LOCAL_TTL));
            // The question comes back as asked, case included (0x20 clients check it).
            assert_eq!(m.queries().len(), 1);
            assert_eq!(
                m.queries()[0].name().to_ascii().trim_end_matches('.'),
                name.trim_end_matches('.')
            );
        }
        assert_eq!(s.stats().local_answers, 5);
        assert_eq!(s.stats().queries, 5);
    }

    #[tokio::test]
    async fn local_answers_are_shuffled() {
        let s = server(table(), Vec::new(), fast());
        let c = client().await;
        let mut firsts = std::collections::BTreeSet::new();
        for id in 0..40u16 {
            let r = exchange(&c, s.udp_addr(), &query(id, "web", RecordType::A), PROMPT)
                .await
                .unwrap();
            firsts.insert(a_answers(&Message::from_vec(&r).unwrap())[0]);
        }
        // All three first in 40 tries unless the order is fixed (p < 1e-6).
        assert_eq!(firsts.len(), 3, "first addresses seen: {firsts:?}");
    }

    #[tokio::test]
    async fn our_name_other_types_nodata_and_empty_name_nxdomain() {
        let s = server(table(), Vec::new(), fast());
        for t in [RecordType::AAAA, RecordType::MX, RecordType::TXT] {
            let m = ask(s.udp_addr(), &query(7, "web", t)).await;
            assert_eq!(m.response_code(), ResponseCode::NoError, "{t}");
            assert!(m.authoritative());
            assert!(m.answers().is_empty(), "{t}");
        }
        let m = ask(s.udp_addr(), &query(8, "tasks.idle", RecordType::A)).await;
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        assert!(m.authoritative() && m.answers().is_empty());
        // No upstream: our names still work, forwarding is a SERVFAIL.
        let m = ask(s.udp_addr(), &query(9, "example.org", RecordType::A)).await;
        assert_eq!(m.response_code(), ResponseCode::ServFail);
        assert_eq!(m.id(), 9);
        assert_eq!(m.queries()[0].name().to_ascii(), "example.org.");
        let st = s.stats();
        assert_eq!((st.queries, st.local_answers, st.failures), (5, 4, 1));
    }

    #[tokio::test]
    async fn unknown_name_forwarded_and_relayed_with_client_id() {
        let up = static_upstream(&[("example.org", [192, 0, 2, 7])]);
        let s = server(table(), vec![up.udp_addr()], fast());
        let m = ask(s.udp_addr(), &query(0x1234, "Example.ORG.", RecordType::A)).await;
        assert_eq!(m.id(), 0x1234);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert_eq!(a_answers(&m), vec![Ipv4Addr::new(192, 0, 2, 7)]);
        let m = ask(
            s.udp_addr(),
            &query(0x9876, "nope.example.org", RecordType::A),
        )
        .await;
        assert_eq!(m.id(), 0x9876);
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        assert_eq!(m.queries()[0].name().to_ascii(), "nope.example.org.");
        assert_eq!(s.stats().forwarded, 2);
        assert_eq!(
            up.stats().queries,
            2,
            "each query reached the upstream once"
        );
    }

    #[tokio::test]
    async fn dead_upstream_then_good_one_answers() {
        let dead = black_hole();
        let up = static_upstream(&[("example.org", [192, 0, 2, 7])]);
        let cfg = fast();
        let s = server(
            table(),
            vec![dead.local_addr().unwrap(), up.udp_addr()],
            cfg.clone(),
        );
        let t0 = Instant::now();
        let m = ask(s.udp_addr(), &query(1, "example.org", RecordType::A)).await;
        assert_eq!(a_answers(&m), vec![Ipv4Addr::new(192, 0, 2, 7)]);
        let took = t0.elapsed();
        assert!(
            took >= cfg.try_timeout,
            "the dead upstream was tried first ({took:?})"
        );
        assert!(took < cfg.try_timeout * 3, "{took:?}");
    }

    #[tokio::test]
    async fn all_upstreams_dead_is_servfail_within_bound() {
        let (d1, d2) = (black_hole(), black_hole());
        let cfg = fast();
        let ups = vec![d1.local_addr().unwrap(), d2.local_addr().unwrap()];
        let s = server(table(), ups, cfg.clone());
        let t0 = Instant::now();
        let m = ask(s.udp_addr(), &query(77, "example.org", RecordType::A)).await;
        let took = t0.elapsed();
        assert_eq!(m.response_code(), ResponseCode::ServFail);
        assert_eq!(m.id(), 77);
        assert!(
            took >= cfg.try_timeout * 2,
            "both upstreams were tried ({took:?})"
        );
        assert!(
            took < cfg.try_timeout * 2 + Duration::from_secs(1),
            "{took:?}"
        );
        assert_eq!(s.stats().failures, 1);
    }

    #[tokio::test]
    async fn upstream_servfail_moves_on_to_the_next() {
        // An embedded server without upstreams answers SERVFAIL for foreign names.
        let failing = server(Arc::new(|_: &str| None), Vec::new(), fast());
        let up = static_upstream(&[("example.org", [192, 0, 2, 7])]);
        let s = server(table(), vec![failing.udp_addr(), up.udp_addr()], fast());
        let m = ask(s.udp_addr(), &query(5, "example.org", RecordType::A)).await;
        assert_eq!(a_answers(&m), vec![Ipv4Addr::new(192, 0, 2, 7)]);
        assert_eq!(failing.stats().failures, 1);
        // Only failing upstreams: their SERVFAIL is relayed.
        let s = server(table(), vec![failing.udp_addr()], fast());
        let m = ask(s.udp_addr(), &query(6, "example.org", RecordType::A)).await;
        assert_eq!((m.id(), m.response_code()), (6, ResponseCode::ServFail));
    }

    #[tokio::test]
    async fn tcp_queries_local_and_forwarded() {
        let up = static_upstream(&[("example.org", [192, 0, 2, 7])]);
        let s = server(table(), vec![up.udp_addr()], fast());
        let tcp = s.tcp_addr().unwrap();
        assert_eq!(tcp, s.udp_addr(), "port 0 binds both on one port");
        let m = ask_tcp(tcp, &query(11, "tasks.web", RecordType::A)).await;
        assert_eq!(m.id(), 11);
        assert_eq!(sorted(a_answers(&m)), WEB.to_vec());
        let m = ask_tcp(tcp, &query(12, "example.org", RecordType::A)).await;
        assert_eq!(m.id(), 12);
        assert_eq!(a_answers(&m), vec![Ipv4Addr::new(192, 0, 2, 7)]);
        // Several queries on one connection.
        let mut c = TcpStream::connect(tcp).await.unwrap();
        for id in 20..23u16 {
            write_framed(&mut c, &query(id, "web", RecordType::A))
                .await
                .unwrap();
            let len = usize::from(c.read_u16().await.unwrap());
            let mut r = vec![0; len];
            c.read_exact(&mut r).await.unwrap();
            assert_eq!(Message::from_vec(&r).unwrap().id(), id);
        }
    }

    #[tokio::test]
    async fn long_local_answer_truncated_over_udp_complete_over_tcp() {
        let s = server(table(), Vec::new(), fast());
        let q = query(3, "big", RecordType::A);
        let raw = exchange(&client().await, s.udp_addr(), &q, PROMPT)
            .await
            .unwrap();
        assert!(raw.len() <= 512, "{} bytes", raw.len());
        let m = Message::from_vec(&raw).unwrap();
        assert!(m.truncated());
        assert!(!m.answers().is_empty() && m.answers().len() < 100);
        let m = ask_tcp(s.tcp_addr().unwrap(), &q).await;
        assert!(!m.truncated());
        assert_eq!(m.answers().len(), 100);
    }

    /// An upstream whose UDP replies are always truncated (no answers) and
    /// whose TCP replies carry the answer, on one port.
    async fn truncating_upstream() -> (SocketAddr, JoinHandle<()>) {
        let (udp, tcp) = bind_pair(lo()).unwrap();
        let udp = UdpSocket::from_std(udp).unwrap();
        let tcp = TcpListener::from_std(tcp).unwrap();
        let addr = udp.local_addr().unwrap();
        let reply = |q: &[u8], tc: bool| {
            let q = Message::from_vec(q).unwrap();
            let mut r = Message::new();
            r.set_header(Header::response_from_request(q.header()));
            r.add_query(q.queries()[0].clone());
            r.set_truncated(tc);
            if !tc {
                r.add_answer(Record::from_rdata(
                    q.queries()[0].name().clone(),
                    60,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, 99))),
                ));
            }
            r.to_vec().unwrap()
        };
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                tokio::select! {
                    r = udp.recv_from(&mut buf) => {
                        let (n, peer) = r.unwrap();
                        udp.send_to(&reply(&buf[..n], true), peer).await.unwrap();
                    }
                    r = tcp.accept() => {
                        let (mut s, _) = r.unwrap();
                        let len = usize::from(s.read_u16().await.unwrap());
                        let mut q = vec![0; len];
                        s.read_exact(&mut q).await.unwrap();
                        write_framed(&mut s, &reply(&q, false)).await.unwrap();
                    }
                }
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn truncated_upstream_reply_retried_over_tcp_for_tcp_clients() {
        let (up, task) = truncating_upstream().await;
        let s = server(table(), vec![up], fast());
        // A UDP client gets the truncated reply, to retry over TCP itself.
        let m = ask(s.udp_addr(), &query(31, "large.example", RecordType::A)).await;
        assert_eq!(m.id(), 31);
        assert!(m.truncated() && m.answers().is_empty());
        // Over TCP, we retry the upstream over TCP and relay the full answer.
        let m = ask_tcp(
            s.tcp_addr().unwrap(),
            &query(32, "large.example", RecordType::A),
        )
        .await;
        assert_eq!(m.id(), 32);
        assert!(!m.truncated());
        assert_eq!(a_answers(&m), vec![Ipv4Addr::new(192, 0, 2, 99)]);
        task.abort();
    }

    #[tokio::test]
    async fn malformed_packets_get_formerr_or_nothing_and_serving_goes_on() {
        let s = server(table(), Vec::new(), fast());
        let c = client().await;
        let quiet = Duration::from_millis(200);
        // Too short for a header: dropped.
        assert_eq!(
            exchange(&c, s.udp_addr(), &[0xab, 0xcd, 1], quiet).await,
            None
        );
        // A header that promises a question that is not there: FORMERR.
        let hdr = [0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        let r = exchange(&c, s.udp_addr(), &hdr, PROMPT)
            .await
            .expect("FORMERR expected");
        let m = Message::from_vec(&r).unwrap();
        assert_eq!((m.id(), m.response_code()), (0xbeef, ResponseCode::FormErr));
        // Two questions: FORMERR.
        let mut two = Message::from_vec(&query(0x0102, "web", RecordType::A)).unwrap();
        two.add_query(Query::query(
            Name::from_ascii("tasks.web").unwrap(),
            RecordType::A,
        ));
        let r = exchange(&c, s.udp_addr(), &two.to_vec().unwrap(), PROMPT)
            .await
            .unwrap();
        assert_eq!(
            Message::from_vec(&r).unwrap().response_code(),
            ResponseCode::FormErr
        );
        // A response (QR set) is never answered.
        let mut resp = query(0x0203, "web", RecordType::A);
        resp[2] |= 0x80;
        assert_eq!(exchange(&c, s.udp_addr(), &resp, quiet).await, None);
        // Not a query opcode: NOTIMP.
        let mut upd = query(0x0304, "web", RecordType::A);
        upd[2] |= 5 << 3;
        let r = exchange(&c, s.udp_addr(), &upd, PROMPT).await.unwrap();
        assert_eq!(
            Message::from_vec(&r).unwrap().response_code(),
            ResponseCode::NotImp
        );
        // Garbage over TCP, then a good query on a new connection.
        let mut t = TcpStream::connect(s.tcp_addr().unwrap()).await.unwrap();
        t.write_all(&[0, 5, 1, 2, 3, 4, 5]).await.unwrap();
        let m = ask(s.udp_addr(), &query(0x0405, "web", RecordType::A)).await;
        assert_eq!(sorted(a_answers(&m)), WEB.to_vec());
        let m = ask_tcp(s.tcp_addr().unwrap(), &query(0x0506, "web", RecordType::A)).await;
        assert_eq!(sorted(a_answers(&m)), WEB.to_vec());
    }

    #[test]
    fn a_header_claiming_more_records_than_the_packet_holds_is_refused() {
        let names = table();
        // id, flags (a query, RD), qdcount 65535, no question bytes.
        let packet = [0x12, 0x34, 0x01, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0];
        let Decision::Error(reply) = decide(&packet, &*names, EMBEDDED, true) else {
            panic!("not a FORMERR reply");
        };
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!((m.id(), m.response_code()), (0x1234, ResponseCode::FormErr));
        // A real query still gets its answer.
        let good = query(0x1111, "web", RecordType::A);
        assert!(matches!(
            decide(&good, &*names, EMBEDDED, true),
            Decision::Local(_)
        ));
    }

    #[test]
    fn decide_never_panics_on_hostile_bytes() {
        let names = table();
        let good = query(0x1111, "tasks.web", RecordType::A);
        // Every prefix of a valid query.
        for n in 0..good.len() {
            let d = decide(&good[..n], &*names, EMBEDDED, true);
            assert!(n >= 12 || d == Decision::Drop, "prefix {n}: {d:?}");
        }
        // Random bytes, and random corruptions of a valid query (seeded).
        let seed = std::env::var("SHOAL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(7);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..80);
            let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let _ = decide(&bytes, &*names, EMBEDDED, true);
            let mut bent = good.clone();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..bent.len());
                bent[i] = rng.gen();
            }
            let _ = decide(&bent, &*names, STATIC, false);
        }
    }

    #[tokio::test]
    async fn slow_upstream_does_not_block_local_answers() {
        let dead = black_hole();
        // The production per-try timeout: the forwards stay stuck all along.
        let s = server(
            table(),
            vec![dead.local_addr().unwrap()],
            DnsConfig::default(),
        );
        let flood = client().await;
        for id in 0..200u16 {
            let q = query(id, &format!("host{id}.example.org"), RecordType::A);
            flood.send_to(&q, s.udp_addr()).await.unwrap();
        }
        // Wait until the server has taken them all in.
        let deadline = Instant::now() + PROMPT;
        while s.stats().queries < 200 {
            assert!(
                Instant::now() < deadline,
                "flood not received: {:?}",
                s.stats()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let t0 = Instant::now();
        let m = ask(s.udp_addr(), &query(999, "web", RecordType::A)).await;
        let took = t0.elapsed();
        assert_eq!(sorted(a_answers(&m)), WEB.to_vec());
        assert!(
            took < Duration::from_millis(500),
            "local answer took {took:?}"
        );
        let m = ask_tcp(s.tcp_addr().unwrap(), &query(998, "web", RecordType::A)).await;
        assert_eq!(m.answers().len(), 3);
        assert_eq!(
            s.stats().forwarded + s.stats().failures,
            0,
            "forwards still in flight"
        );
    }

    #[tokio::test]
    async fn too_many_forwards_in_flight_get_servfail_at_once() {
        let dead = black_hole();
        let cfg = DnsConfig {
            max_in_flight: 2,
            ..DnsConfig::default()
        };
        let s = server(table(), vec![dead.local_addr().unwrap()], cfg);
        let c = client().await;
        for id in 0..2u16 {
            c.send_to(&query(id, "example.org", RecordType::A), s.udp_addr())
                .await
                .unwrap();
        }
        let t0 = Instant::now();
        let r = exchange(
            &c,
            s.udp_addr(),
            &query(2, "example.org", RecordType::A),
            PROMPT,
        )
        .await
        .unwrap();
        assert_eq!(
            Message::from_vec(&r).unwrap().response_code(),
            ResponseCode::ServFail
        );
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(s.stats().failures, 1);
    }

    #[tokio::test]
    async fn dropping_the_server_releases_its_port() {
        let s = server(table(), Vec::new(), fast());
        let addr = s.udp_addr();
        let _ = ask(addr, &query(1, "web", RecordType::A)).await;
        s.stop();
        let deadline = Instant::now() + PROMPT;
        loop {
            match (
                std::net::UdpSocket::bind(addr),
                std::net::TcpListener::bind(addr),
            ) {
                (Ok(_), Ok(_)) => break,
                r => assert!(Instant::now() < deadline, "port still held: {r:?}"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn static_server_answers_its_records_only() {
        let up = static_upstream(&[("Db.Lab.", [10, 77, 0, 5])]);
        let m = ask(up.udp_addr(), &query(1, "db.lab", RecordType::A)).await;
        assert!(m.authoritative() && !m.recursion_available());
        assert_eq!(a_answers(&m), vec![Ipv4Addr::new(10, 77, 0, 5)]);
        let m = ask(up.udp_addr(), &query(2, "other.lab", RecordType::A)).await;
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        assert!(up.tcp_addr().is_none());
    }

    #[test]
    fn spawn_outside_a_runtime_is_an_error() {
        let (udp, tcp) = bind_in_netns(None, lo()).unwrap();
        let e = spawn(udp, tcp, table(), Vec::new()).unwrap_err();
        assert!(e.to_string().contains("tokio runtime"), "{e}");
    }

    #[test]
    fn resolv_conf_upstreams() {
        let text = "# generated\n\
                    search corp.example\n\
                    nameserver 10.0.0.2\n\
                    nameserver 127.0.0.11\n\
                    nameserver   127.0.0.53 # systemd-resolved\n\
                    ;nameserver 10.9.9.9\n\
                    nameserver 2001:db8::1\n\
                    nameserver fe80::1%eth0\n\
                    nameserver not-an-ip\n\
                    nameserver 10.0.0.2\n\
                    options edns0\n";
        let ups = upstreams_from_resolv_conf(text);
        let want: Vec<SocketAddr> = ["10.0.0.2:53", "127.0.0.53:53", "[2001:db8::1]:53"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(ups, want);
        assert!(upstreams_from_resolv_conf("").is_empty());
    }

    #[test]
    fn task_resolv_conf_points_at_us() {
        assert_eq!(
            task_resolv_conf(&[]),
            "nameserver 127.0.0.11\noptions ndots:0\n"
        );
        let s = task_resolv_conf(&[
            "corp.example".into(),
            " ".into(),
            "bad domain".into(),
            "lab".into(),
        ]);
        assert_eq!(
            s,
            "nameserver 127.0.0.11\nsearch corp.example lab\noptions ndots:0\n"
        );
        assert_eq!(upstreams_from_resolv_conf(&s), Vec::<SocketAddr>::new());
    }

    /// A fresh network namespace with `lo` up, removed on drop.
    struct TestNetns {
        path: PathBuf,
        _dir: tempfile::TempDir,
    }

    impl TestNetns {
        fn new(tag: &str) -> Option<Self> {
            if !nix::unistd::geteuid().is_root() {
                eprintln!("skipping: network namespaces need root");
                return None;
            }
            let dir = tempfile::Builder::new()
                .prefix("shoal-dns-test")
                .tempdir()
                .unwrap();
            let path = dir
                .path()
                .join(format!("shoal-dns-{tag}-{}", std::process::id()));
            shoal_netdriver::create_netns(&path).unwrap();
            let ns = Self { path, _dir: dir };
            ns.ip(&["link", "set", "lo", "up"]);
            Some(ns)
        }

        fn ip(&self, args: &[&str]) {
            let st = std::process::Command::new("nsenter")
                .arg(format!("--net={}", self.path.display()))
                .arg("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "ip {args:?}: {st}");
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            if let Err(e) = shoal_netdriver::remove_netns(&self.path) {
                eprintln!("removing {}: {e}", self.path.display());
            }
        }
    }

    #[tokio::test]
    async fn serves_on_127_0_0_11_inside_a_task_namespace_and_forwards_from_ours() {
        let Some(ns) = TestNetns::new("bind") else {
            return;
        };
        let up = static_upstream(&[("example.org", [192, 0, 2, 7])]);
        let us: SocketAddr = (TASK_NAMESERVER, DNS_PORT).into();
        let (udp, tcp) = bind_in_netns(Some(&ns.path), us).unwrap();
        let s = spawn_with(udp, tcp, table(), vec![up.udp_addr()], fast()).unwrap();
        assert_eq!(s.udp_addr(), us);
        // A client inside the namespace (its socket is bound there).
        let (c, ctcp) = bind_in_netns(Some(&ns.path), lo()).unwrap();
        drop(ctcp);
        let c = UdpSocket::from_std(c).unwrap();
        let r = exchange(&c, us, &query(1, "web", RecordType::A), PROMPT)
            .await
            .unwrap();
        assert_eq!(
            sorted(a_answers(&Message::from_vec(&r).unwrap())),
            WEB.to_vec()
        );
        // Forwarded from the daemon's namespace, where the upstream lives...
        let r = exchange(&c, us, &query(2, "example.org", RecordType::A), PROMPT)
            .await
            .unwrap();
        assert_eq!(
            a_answers(&Message::from_vec(&r).unwrap()),
            vec![Ipv4Addr::new(192, 0, 2, 7)]
        );
        // ...which the task itself cannot reach: its 127.0.0.1 is its own.
        let direct = exchange(
            &c,
            up.udp_addr(),
            &query(3, "example.org", RecordType::A),
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(direct, None);
        // A missing namespace is an error that names it.
        let e = bind_in_netns(Some(&ns.path.with_extension("missing")), us).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        drop(s);
    }

    /// Run glibc's resolver (`getent`) inside `ns`, with `resolv` as its
    /// /etc/resolv.conf (bind-mounted in a private mount namespace).
    async fn getent(ns: &TestNetns, resolv: &Path, args: &[&str]) -> (bool, String) {
        let script = format!(
            "mount --bind {} /etc/resolv.conf && exec getent {}",
            resolv.display(),
            args.join(" ")
        );
        let out = timeout(
            Duration::from_secs(20),
            tokio::process::Command::new("nsenter")
                .arg(format!("--net={}", ns.path.display()))
                .args(["unshare", "--mount", "sh", "-c", &script])
                .output(),
        )
        .await
        .expect("getent hung")
        .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn first_column(text: &str) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = text
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    #[tokio::test]
    async fn glibc_in_a_task_namespace_resolves_through_us() {
        let Some(ns) = TestNetns::new("glibc") else {
            return;
        };
        let up = static_upstream(&[("example.org", [192, 0, 2, 7])]);
        let us: SocketAddr = (TASK_NAMESERVER, DNS_PORT).into();
        let (udp, tcp) = bind_in_netns(Some(&ns.path), us).unwrap();
        let s = spawn_with(udp, tcp, table(), vec![up.udp_addr()], fast()).unwrap();
        // getaddrinfo (AI_ADDRCONFIG) asks for A records only when some
        // interface besides lo has an IPv4 address, as a task's would.
        ns.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ]);
        ns.ip(&["addr", "add", "10.200.0.2/24", "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        let resolv = ns._dir.path().join("resolv.conf");
        std::fs::write(&resolv, task_resolv_conf(&["lab".to_string()])).unwrap();

        let (ok, out) = getent(&ns, &resolv, &["ahostsv4", "tasks.web"]).await;
        assert!(ok, "getent ahostsv4 tasks.web: {out} {:?}", s.stats());
        assert_eq!(first_column(&out), WEB.to_vec());
        // `hosts` asks AAAA first: our NODATA must make it fall back to A.
        let (ok, out) = getent(&ns, &resolv, &["hosts", "web"]).await;
        assert!(ok, "getent hosts web: {out}");
        assert!(WEB.contains(&first_column(&out)[0]), "{out}");
        let (ok, out) = getent(&ns, &resolv, &["ahostsv4", "example.org"]).await;
        assert!(ok, "getent ahostsv4 example.org: {out}");
        assert_eq!(first_column(&out), vec![Ipv4Addr::new(192, 0, 2, 7)]);
        let (ok, out) = getent(&ns, &resolv, &["ahostsv4", "nope.example.org"]).await;
        assert!(!ok, "an unknown name resolved: {out}");
        assert!(
            s.stats().local_answers >= 2 && s.stats().forwarded >= 2,
            "{:?}",
            s.stats()
        );
    }
}
