//! Batched entry programming on a raw netlink socket. One `sendmsg` carries
//! up to [`CHUNK`] FDB or neighbour requests; they go without `NLM_F_ACK`,
//! so the kernel answers only the failures, and the last request of the
//! chunk asks for an ack that tells us the chunk is done (the kernel handles
//! a sendmsg's messages in order, synchronously). That is two system calls
//! per chunk instead of two per entry, which is where the entries/s of the
//! `reconcile` benchmark come from; rtnetlink's one-request-one-future path
//! stays for the few structural requests.

use std::io;

use rtnetlink::packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::plan::{Mac, Op};

/// Requests per sendmsg. Only failures are answered, each answer (with the
/// failed request echoed) costs about 1 KiB of receive buffer: 128 stays
/// well under the default 208 KiB even if every request fails.
pub(crate) const CHUNK: usize = 128;

const ENOBUFS: i32 = nix::errno::Errno::ENOBUFS as i32;

/// A blocking netlink socket bound to the namespace it was opened in.
pub(crate) struct RawSock {
    sock: Socket,
    seq: u32,
}

impl RawSock {
    /// Open on the calling thread's current network namespace.
    pub(crate) fn open() -> io::Result<RawSock> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Best effort: more room for failure reports.
        let _ = sock.set_rx_buf_sz(1 << 20);
        Ok(RawSock { sock, seq: 0 })
    }

    /// Send `msgs` in chunks; returns the indexes of failed requests with
    /// their errno.
    pub(crate) fn run(
        &mut self,
        msgs: &mut [NetlinkMessage<RouteNetlinkMessage>],
    ) -> io::Result<Vec<(usize, i32)>> {
        let mut failed = Vec::new();
        let mut buf = Vec::with_capacity(CHUNK * 96);
        for (c, chunk) in msgs.chunks_mut(CHUNK).enumerate() {
            buf.clear();
            let first_seq = self.seq.wrapping_add(1);
            let last = chunk.len().saturating_sub(1);
            for (i, m) in chunk.iter_mut().enumerate() {
                self.seq = self.seq.wrapping_add(1);
                m.header.sequence_number = self.seq;
                if i == last {
                    m.header.flags |= NLM_F_ACK;
                }
                m.finalize();
                let start = buf.len();
                buf.resize(start + m.buffer_len(), 0);
                m.serialize(&mut buf[start..]);
            }
            self.sock.send(&buf, 0)?;
            let last_seq = self.seq;
            loop {
                let (data, _) = match self.sock.recv_from_full() {
                    Ok(x) => x,
                    Err(e) if e.raw_os_error() == Some(ENOBUFS) => {
                        // Failure reports were lost: report the whole chunk
                        // as failed; the next reconcile dumps and retries.
                        failed.extend((0..chunk.len()).map(|i| (c * CHUNK + i, ENOBUFS)));
                        break;
                    }
                    Err(e) => return Err(e),
                };
                let mut done = false;
                let mut off = 0;
                while off < data.len() {
                    let Some(rest) = data.get(off..) else { break };
                    let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest) else {
                        break;
                    };
                    let len = msg.header.length as usize;
                    let seq = msg.header.sequence_number;
                    if let NetlinkPayload::Error(e) = &msg.payload {
                        let in_chunk = seq.wrapping_sub(first_seq) as usize;
                        if in_chunk < chunk.len() {
                            let code = e.raw_code().abs();
                            if code != 0 {
                                failed.push((c * CHUNK + in_chunk, code));
                            }
                            if seq == last_seq {
                                done = true;
                            }
                        }
                    }
                    if len == 0 {
                        break;
                    }
                    off += (len + 3) & !3;
                }
                if done {
                    break;
                }
            }
        }
        Ok(failed)
    }
}

fn request(msg: RouteNetlinkMessage, flags: u16) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg))
}

fn fdb(vx: u32, mac: Mac, vtep: std::net::Ipv4Addr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = vx;
    m.header.flags = NeighbourFlags::Own;
    m.header.state = NeighbourState::Permanent;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            vtep,
        )));
    m
}

fn neigh(vx: u32, ip: std::net::Ipv4Addr, mac: Option<Mac>) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.ifindex = vx;
    m.header.state = NeighbourState::Permanent;
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    if let Some(mac) = mac {
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    }
    m
}

/// The netlink request for an entry op on `vx0` (index `vx`); `None` for
/// structural ops.
pub(crate) fn entry_request(vx: u32, op: Op) -> Option<NetlinkMessage<RouteNetlinkMessage>> {
    let add = NLM_F_CREATE | NLM_F_EXCL;
    let replace = NLM_F_CREATE | NLM_F_REPLACE;
    Some(match op {
        Op::AddFdb { mac, vtep } => {
            request(RouteNetlinkMessage::NewNeighbour(fdb(vx, mac, vtep)), add)
        }
        Op::ReplaceFdb { mac, vtep } => request(
            RouteNetlinkMessage::NewNeighbour(fdb(vx, mac, vtep)),
            replace,
        ),
        Op::DelFdb { mac, vtep } => {
            request(RouteNetlinkMessage::DelNeighbour(fdb(vx, mac, vtep)), 0)
        }
        Op::AddNeigh { ip, mac } => request(
            RouteNetlinkMessage::NewNeighbour(neigh(vx, ip, Some(mac))),
            add,
        ),
        Op::ReplaceNeigh { ip, mac } => request(
            RouteNetlinkMessage::NewNeighbour(neigh(vx, ip, Some(mac))),
            replace,
        ),
        Op::DelNeigh { ip, .. } => {
            request(RouteNetlinkMessage::DelNeighbour(neigh(vx, ip, None)), 0)
        }
        _ => return None,
    })
}

/// The replace form of an add (used when an add meets an entry that
/// appeared since the dump).
pub(crate) fn as_replace(op: Op) -> Op {
    match op {
        Op::AddFdb { mac, vtep } => Op::ReplaceFdb { mac, vtep },
        Op::AddNeigh { ip, mac } => Op::ReplaceNeigh { ip, mac },
        other => other,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::net::Ipv4Addr;
    use std::process::Command;

    use super::*;
    use crate::netns::{create_netns, remove_netns};

    struct Ns(std::path::PathBuf, #[allow(dead_code)] tempfile::TempDir);
    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = remove_netns(&self.0);
        }
    }

    /// Failures come back mapped to the right request across chunk
    /// boundaries, and successes in between are applied.
    #[test]
    fn failures_are_mapped_to_their_requests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns");
        create_netns(&path).unwrap();
        let ns = Ns(path.clone(), dir);
        let out = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let ip = |args: &[&str]| {
                let o = Command::new("ip").args(args).output().unwrap();
                assert!(o.status.success(), "{args:?}: {o:?}");
                String::from_utf8_lossy(&o.stdout).into_owned()
            };
            ip(&[
                "link",
                "add",
                "vxt",
                "type",
                "vxlan",
                "id",
                "5",
                "dstport",
                "4789",
                "nolearning",
            ]);
            let line = ip(&["-o", "link", "show", "vxt"]);
            let vx: u32 = line.split(':').next().unwrap().trim().parse().unwrap();
            let mut sock = RawSock::open().unwrap();
            // 300 adds; every 7th goes to a device that does not exist.
            let bad = 999_999;
            let mut msgs: Vec<_> = (0..300u32)
                .map(|i| {
                    let b = i.to_be_bytes();
                    let op = Op::AddFdb {
                        mac: [2, 0, b[0], b[1], b[2], b[3]],
                        vtep: Ipv4Addr::new(198, 18, 0, 1),
                    };
                    entry_request(if i % 7 == 3 { bad } else { vx }, op).unwrap()
                })
                .collect();
            let failed = sock.run(&mut msgs).unwrap();
            let fdb = Command::new("bridge")
                .args(["fdb", "show", "dev", "vxt"])
                .output()
                .unwrap();
            let n = String::from_utf8_lossy(&fdb.stdout)
                .lines()
                .filter(|l| l.contains("dst 198.18.0.1"))
                .count();
            (failed, n)
        })
        .join()
        .unwrap();
        drop(ns);
        let (failed, programmed) = out;
        let expect: Vec<usize> = (0..300).filter(|i| i % 7 == 3).collect();
        assert_eq!(failed.iter().map(|f| f.0).collect::<Vec<_>>(), expect);
        assert!(
            failed
                .iter()
                .all(|f| f.1 == nix::errno::Errno::ENODEV as i32),
            "{failed:?}"
        );
        assert_eq!(programmed, 300 - expect.len());
    }
}
