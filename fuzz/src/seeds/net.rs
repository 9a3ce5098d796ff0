//! Seeds of the wire formats below the JSON ones: gossip datagrams and
//! sync frames, raft frames and snapshot envelopes, DNS queries, tokens,
//! certificates, keys and CSRs.

use std::net::{Ipv4Addr, SocketAddr};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use shoal_membership::node::{Node as GossipNode, Output};
use shoal_membership::EndpointRecord;
use shoal_model::Role;
use shoal_raft_store::eraftpb::{ConfState, Entry, Message as RaftMsg, MessageType as RaftType};
use shoal_raft_store::eraftpb::{Snapshot, SnapshotMetadata};
use shoal_raft_store::{encode_batch, Batch, PeerMap};
use shoal_tls::{cert_to_pem, CaDigest, JoinSecret, JoinToken, NodeKey, DEFAULT_CERT_VALIDITY};

use super::files::{csr, net_status};
use super::{bin, commands, json, node_id, states};
use crate::{ca, gossip_node, join, sync_node, NOW_MS};

fn sends(n: &mut GossipNode) -> Vec<Vec<u8>> {
    n.drain()
        .into_iter()
        .filter_map(|o| match o {
            Output::Send { data, .. } => Some(data.to_vec()),
            _ => None,
        })
        .collect()
}

/// Datagrams member 1 sends member 2: a join, table broadcasts (an
/// endpoint record, a tombstone), and member 2's answers fed back.
pub(crate) fn gossip_packets() -> Vec<Vec<u8>> {
    let mut a = gossip_node(1);
    let mut b = gossip_node(2);
    let mut out = Vec::new();
    a.announce(NOW_MS, SocketAddr::from(([10, 0, 0, 2], 7946)));
    out.extend(sends(&mut a));
    a.add_members(vec![b.identity().clone()]);
    b.add_members(vec![a.identity().clone()]);
    let _ = a.put(NOW_MS, "ep/net1", "ep-1", endpoint_record().encode());
    let _ = a.put(NOW_MS, "netstatus", "net1/node1", json(&net_status()));
    out.extend(sends(&mut a));
    a.delete(NOW_MS + 1, "ep/net1", "ep-1");
    out.extend(sends(&mut a));
    for p in out.clone() {
        let _ = b.handle_data(NOW_MS + 2, &p);
    }
    let replies = sends(&mut b);
    for p in &replies {
        let _ = a.handle_data(NOW_MS + 3, p);
    }
    out.extend(sends(&mut a));
    out.truncate(12);
    let all = join(&out);
    out.push(all);
    out
}

/// Mode byte 0 (open the rest as received) and 1 (stamp and seal the
/// rest, then open and decode it), over the same datagrams and a sync frame.
pub(crate) fn gossip_sealed() -> Vec<Vec<u8>> {
    let ring = crate::ring();
    let peer = shoal_membership::fresh::Freshness::new("peer", 1);
    let mut out = Vec::new();
    for p in gossip_packets().into_iter().take(3) {
        if let Ok(s) = ring.seal(shoal_membership::crypto::Channel::Udp, &peer.stamp(&p)) {
            out.push([&[0u8][..], &s].concat());
        }
        out.push([&[1u8][..], &p].concat());
    }
    let (_, first) = gossip_node(1).sync_open();
    out.push([&[3u8][..], &first].concat());
    out
}

/// Runs a whole exchange; returns (frames to the responder, frames to
/// the opener).
fn exchange(opener: &mut GossipNode, responder: &mut GossipNode) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut so, first) = opener.sync_open();
    let mut sr = responder.sync_accept();
    let (mut to_r, mut to_o) = (vec![first.clone()], Vec::new());
    let mut pending = vec![first];
    for _ in 0..16 {
        if so.is_done() && sr.is_done() {
            break;
        }
        let mut back = Vec::new();
        for f in pending.drain(..) {
            back.extend(
                responder
                    .sync_frame(NOW_MS, &mut sr, &f)
                    .unwrap_or_default(),
            );
        }
        to_o.extend(back.iter().cloned());
        for f in back {
            pending.extend(opener.sync_frame(NOW_MS, &mut so, &f).unwrap_or_default());
        }
        to_r.extend(pending.iter().cloned());
    }
    (to_r, to_o)
}

/// Mode byte 0: frames member 1 sends when it opens a sync with the
/// target's node; mode 1: frames member 1 answers when the node opens.
pub(crate) fn gossip_sync() -> Vec<Vec<u8>> {
    let mut a = gossip_node(1);
    for i in 0..20u8 {
        let _ = a.put(NOW_MS, "ep/net1", &format!("a{i}"), vec![i; 40]);
    }
    let _ = a.put(NOW_MS, "netstatus", "net1/node1", json(&net_status()));
    a.delete(NOW_MS, "ep/net1", "a3");
    let _ = a.drain();
    let (to_b, _) = exchange(&mut a.clone_for_seeds(), &mut sync_node());
    let (_, to_b_opening) = exchange(&mut sync_node(), &mut a.clone_for_seeds());
    let mut out = Vec::new();
    out.push([&[0u8][..], &join(&to_b)].concat());
    out.push([&[1u8][..], &join(&to_b_opening)].concat());
    for f in to_b.iter().chain(&to_b_opening).take(6) {
        out.push([&[0u8][..], f].concat());
    }
    out
}

/// Rebuilds member 1 with the same writes (the core is not `Clone`).
trait CloneForSeeds {
    fn clone_for_seeds(&self) -> GossipNode;
}

impl CloneForSeeds for GossipNode {
    fn clone_for_seeds(&self) -> GossipNode {
        let mut a = gossip_node(1);
        for e in self.entries("ep/net1") {
            let _ = a.put(NOW_MS, "ep/net1", &e.key, e.value.clone());
        }
        for e in self.entries("netstatus") {
            let _ = a.put(NOW_MS, "netstatus", &e.key, e.value.clone());
        }
        let _ = a.drain();
        a
    }
}

pub(crate) fn endpoint_record() -> EndpointRecord {
    EndpointRecord {
        network: "4p3ltk9zbqa7gq0n2n1x8v6ww".into(),
        ip: Ipv4Addr::new(10, 0, 9, 2),
        mac: [2, 0x42, 10, 0, 9, 2],
        vtep: Ipv4Addr::new(192, 168, 1, 2),
        owner: "node1".into(),
    }
}

fn raft_batches() -> Vec<Batch> {
    let mut app = RaftMsg::default();
    app.set_msg_type(RaftType::MsgAppend);
    app.from = 1;
    app.to = 2;
    app.term = 3;
    app.index = 9;
    app.log_term = 3;
    app.commit = 9;
    let mut e = Entry::default();
    e.index = 10;
    e.term = 3;
    e.data = commands().first().map(bin).unwrap_or_default().into();
    e.context = vec![7; 24].into();
    app.mut_entries().push(e);
    let mut hb = RaftMsg::default();
    hb.set_msg_type(RaftType::MsgHeartbeat);
    hb.from = 1;
    hb.to = 2;
    hb.term = 3;
    let mut snap_msg = RaftMsg::default();
    snap_msg.set_msg_type(RaftType::MsgSnapshot);
    snap_msg.from = 1;
    snap_msg.to = 3;
    snap_msg.term = 3;
    let mut snap = Snapshot::default();
    let mut meta = SnapshotMetadata::default();
    meta.index = 10;
    meta.term = 3;
    let mut cs = ConfState::default();
    cs.voters = vec![1, 2, 3];
    meta.set_conf_state(cs);
    snap.set_metadata(meta);
    snap.data = raft_snapshots()
        .into_iter()
        .next()
        .unwrap_or_default()
        .into();
    snap_msg.set_snapshot(snap);
    vec![
        Batch {
            from: 1,
            from_addr: Some(SocketAddr::from(([10, 0, 0, 1], 2377))),
            msgs: vec![app, hb.clone()],
        },
        Batch {
            from: 2,
            from_addr: None,
            msgs: vec![hb],
        },
        Batch {
            from: 1,
            from_addr: Some(
                "[fd00::1]:2377"
                    .parse()
                    .unwrap_or(SocketAddr::from(([0; 4], 0))),
            ),
            msgs: vec![snap_msg],
        },
    ]
}

/// Whole frames (length prefix included), payloads alone, and two frames
/// back to back.
pub(crate) fn raft_frames() -> Vec<Vec<u8>> {
    let frames: Vec<Vec<u8>> = raft_batches()
        .iter()
        .filter_map(|b| encode_batch(b).ok())
        .collect();
    let mut out = frames.clone();
    out.extend(frames.iter().map(|f| f[4..].to_vec()));
    out.push(frames.concat());
    out
}

fn peers() -> PeerMap {
    (1..=3u8)
        .map(|i| (u64::from(i), SocketAddr::from(([10, 0, 0, i], 2377))))
        .collect()
}

/// `u32 BE peers_len | bincode peers | state`, as raft-store wraps the
/// state machine's snapshot.
pub(crate) fn raft_snapshots() -> Vec<Vec<u8>> {
    let p = bin(&peers());
    states()
        .iter()
        .map(|s| {
            let mut out = (p.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(&p);
            out.extend_from_slice(&bin(s));
            out
        })
        .collect()
}

fn dns_query(id: u16, name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    if let Ok(n) = Name::from_ascii(name) {
        m.add_query(Query::query(n, qtype));
    }
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m.to_vec().unwrap_or_default()
}

pub(crate) fn dns_queries() -> Vec<Vec<u8>> {
    let mut notify = Message::new();
    notify.set_op_code(OpCode::Notify);
    vec![
        dns_query(1, "web.", RecordType::A, false),
        dns_query(2, "tasks.web.", RecordType::A, true),
        dns_query(3, "tasks.web.", RecordType::ANY, false),
        dns_query(4, "Web.", RecordType::AAAA, false),
        dns_query(5, "gone.", RecordType::A, false),
        dns_query(6, "example.com.", RecordType::MX, true),
        notify.to_vec().unwrap_or_default(),
    ]
}

pub(crate) fn join_tokens() -> Vec<Vec<u8>> {
    let t = JoinToken::new(ca().digest(), &JoinSecret::generate());
    vec![
        t.to_string().into_bytes(),
        format!("  {t}\n").into_bytes(),
        node_id(2).to_string().into_bytes(),
        b"manager".to_vec(),
        CaDigest::of(b"x").to_string().into_bytes(),
    ]
}

/// A worker certificate and its key, as `swarm join` stores them.
fn node_cert() -> (Vec<u8>, String) {
    let key = match NodeKey::generate() {
        Ok(k) => k,
        Err(e) => panic!("node key: {e}"),
    };
    let csr = key.csr_der().unwrap_or_default();
    let cert = ca()
        .sign_csr(&csr, &node_id(2), Role::Worker, DEFAULT_CERT_VALIDITY)
        .map(|c| c.to_vec())
        .unwrap_or_default();
    (cert, key.to_pem())
}

pub(crate) fn tls_certs() -> Vec<Vec<u8>> {
    vec![node_cert().0, ca().cert_der().to_vec()]
}

pub(crate) fn tls_pems() -> Vec<Vec<u8>> {
    let (cert, key) = node_cert();
    let cert_pem = cert_to_pem(&cert.into());
    vec![
        cert_pem.clone().into_bytes(),
        key.clone().into_bytes(),
        format!("{}{}", ca().cert_pem(), ca().key_pem()).into_bytes(),
        join(&[ca().cert_pem().into_bytes(), ca().key_pem().into_bytes()]),
        join(&[
            cert_pem.into_bytes(),
            key.into_bytes(),
            ca().cert_pem().into_bytes(),
        ]),
    ]
}

pub(crate) fn tls_csrs() -> Vec<Vec<u8>> {
    vec![csr(), csr()]
}
