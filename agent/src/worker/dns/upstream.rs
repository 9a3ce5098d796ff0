//! The upstream side of the embedded DNS: relaying a query to the node's
//! resolvers (UDP, then TCP for truncated replies, with fresh ids), the
//! node's resolvers from its resolv.conf, and the resolv.conf a task gets.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Header, ResponseCode};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

use super::{write_framed, DNS_PORT, TASK_NAMESERVER, UDP_REPLY_BUF};

pub(super) fn rcode(reply: &[u8]) -> u8 {
    reply.get(3).map_or(0, |b| b & 0x0f)
}

pub(super) fn is_truncated(reply: &[u8]) -> bool {
    reply.get(2).is_some_and(|b| b & 0x02 != 0)
}

/// Relay `query` to `upstreams` in order, each under a fresh random id
/// (from a fresh random port), and return the first usable reply with the
/// client's id restored. SERVFAIL and REFUSED move on to the next upstream
/// (like Docker: either may be one server's transient state); if every
/// upstream says so, the last such reply is relayed; if none answers at
/// all, `None`. A truncated reply is retried over TCP for a TCP client; a
/// UDP client gets it as is and retries over TCP itself.
pub(super) async fn forward(
    query: &[u8],
    upstreams: &[SocketAddr],
    try_timeout: Duration,
    tcp_client: bool,
) -> Option<Vec<u8>> {
    let client_id = [*query.first()?, *query.get(1)?];
    let mut packet = query.to_vec();
    let mut last_refusal = None;
    for &up in upstreams {
        let id: u16 = rand::random();
        packet[..2].copy_from_slice(&id.to_be_bytes());
        let mut reply = match udp_exchange(&packet, up, id, try_timeout).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(upstream = %up, error = %e, "dns: upstream failed over udp");
                continue;
            }
        };
        if is_truncated(&reply) && tcp_client {
            match tcp_exchange(&packet, up, id, try_timeout).await {
                Ok(r) => reply = r,
                Err(e) => {
                    tracing::debug!(upstream = %up, error = %e, "dns: upstream failed over tcp");
                    continue;
                }
            }
        }
        reply[..2].copy_from_slice(&client_id);
        let code = rcode(&reply);
        if code == ResponseCode::ServFail.low() || code == ResponseCode::Refused.low() {
            last_refusal = Some(reply);
            continue;
        }
        return Some(reply);
    }
    last_refusal
}

/// Whether `reply` is a response to our request `id` (at least a header).
pub(super) fn answers(reply: &[u8], id: u16) -> bool {
    reply.len() >= Header::len()
        && reply[..2] == id.to_be_bytes()
        && reply.get(2).is_some_and(|b| b & 0x80 != 0)
}

pub(super) async fn udp_exchange(
    packet: &[u8],
    up: SocketAddr,
    id: u16,
    try_timeout: Duration,
) -> io::Result<Vec<u8>> {
    let local: SocketAddr = match up.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local).await?;
    // Connected: the kernel drops datagrams from anyone but `up`, and an
    // ICMP unreachable ends the try at once instead of after the timeout.
    sock.connect(up).await?;
    sock.send(packet).await?;
    let mut buf = vec![0u8; UDP_REPLY_BUF];
    timeout(try_timeout, async {
        loop {
            let n = sock.recv(&mut buf).await?;
            let reply = buf.get(..n).unwrap_or_default();
            if answers(reply, id) {
                return Ok(reply.to_vec());
            }
            // A stale or forged datagram: keep waiting for ours.
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))?
}

pub(super) async fn tcp_exchange(
    packet: &[u8],
    up: SocketAddr,
    id: u16,
    try_timeout: Duration,
) -> io::Result<Vec<u8>> {
    timeout(try_timeout, async {
        let mut s = TcpStream::connect(up).await?;
        write_framed(&mut s, packet).await?;
        let len = usize::from(s.read_u16().await?);
        let mut reply = vec![0u8; len];
        s.read_exact(&mut reply).await?;
        if answers(&reply, id) {
            Ok(reply)
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "tcp reply is not an answer to our query",
            ))
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))?
}

/// The node's resolvers from its resolv.conf text: `nameserver` lines, port
/// 53, in file order, without duplicates and without [`TASK_NAMESERVER`]
/// (that is us, in a task's namespace). Host-loopback resolvers (e.g.
/// systemd-resolved's 127.0.0.53) are kept: forwarding runs in the daemon's
/// namespace, where they answer. IPv6 link-local addresses with a zone
/// (`fe80::1%eth0`) are skipped.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        if ip == IpAddr::V4(TASK_NAMESERVER) {
            continue;
        }
        let sa = SocketAddr::new(ip, DNS_PORT);
        if !out.contains(&sa) {
            out.push(sa);
        }
    }
    out
}

/// The resolv.conf of a task: us as the only nameserver, the given search
/// domains, and `ndots:0` (as Docker: `web` and `tasks.web` are asked as
/// is, first, instead of being tried under every search domain).
pub fn task_resolv_conf(search: &[String]) -> String {
    let mut s = format!("nameserver {TASK_NAMESERVER}\n");
    let domains: Vec<&str> = search
        .iter()
        .map(|d| d.trim())
        .filter(|d| !d.is_empty() && !d.contains(char::is_whitespace))
        .collect();
    if !domains.is_empty() {
        s.push_str("search ");
        s.push_str(&domains.join(" "));
        s.push('\n');
    }
    s.push_str("options ndots:0\n");
    s
}
