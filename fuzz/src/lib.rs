//! What the fuzz targets share: the fixed parties the decoders run against
//! (gossip nodes, the key ring, the cluster CA), the separator that splits
//! one input into several messages, a tiny executor for the async frame
//! readers, and the seed generator.
//!
//! Seeds: every target starts with `init: shoal_fuzz::seed_hook("<target>")`;
//! run with `SHOAL_FUZZ_SEEDS=<dir>` it writes that target's seeds (valid
//! encodings made by the real encoders, see [`seeds`]) to
//! `<dir>/<target>/seed-NN` and exits instead of fuzzing.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;

use shoal_membership::crypto::KeyRing;
use shoal_membership::node::Node;
use shoal_membership::{GossipConfig, MemberInfo};
use shoal_tls::ClusterCa;

pub mod seeds;

/// Splits one fuzz input into several messages (datagrams, frames, files).
pub const SEP: &[u8] = b"\n--8<--\n";

/// The messages of one input, split at [`SEP`].
pub fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(SEP.len()).position(|w| w == SEP) {
        out.push(&rest[..at]);
        rest = &rest[at + SEP.len()..];
    }
    out.push(rest);
    out
}

/// Joins messages with [`SEP`] (for seeds).
pub fn join(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.join(SEP)
}

/// Gossip clock of every target: a fixed "now" in Unix ms.
pub const NOW_MS: u64 = 1_700_000_000_000;

/// Gossip member `i` (10.0.0.i:7946), deterministic: same identity and
/// randomness for the same `i`, so seeds addressed to member 2 reach it.
pub fn gossip_node(i: u8) -> Node {
    let a = SocketAddr::from(([10, 0, 0, i], 7946));
    let info = MemberInfo {
        node_id: format!("node{i}"),
        gossip_addr: a,
        advertise_addr: a.ip(),
        data_path_addr: a.ip(),
    };
    match Node::new(&GossipConfig::lan(a), info, NOW_MS, u64::from(i)) {
        Ok(n) => n,
        Err(e) => panic!("fixed gossip node does not build: {e}"),
    }
}

/// Member 2 holding a few entries of its own: the side the sync target
/// talks to (seeds are exchanges with a member 1 that holds more).
pub fn sync_node() -> Node {
    let mut n = gossip_node(2);
    for i in 0..3u8 {
        let _ = n.put(NOW_MS, "ep/net1", &format!("b{i}"), vec![i; 24]);
    }
    let _ = n.drain();
    n
}

/// The cluster key ring every gossip target opens with (two keys, as
/// during a rotation).
pub fn ring() -> &'static KeyRing {
    static RING: OnceLock<KeyRing> = OnceLock::new();
    RING.get_or_init(
        || match KeyRing::new(vec![(7, [0x42; 32]), (3, [0x17; 32])]) {
            Ok(r) => r,
            Err(e) => panic!("fixed key ring: {e}"),
        },
    )
}

/// One cluster CA per process (generating one costs milliseconds).
pub fn ca() -> &'static ClusterCa {
    static CA: OnceLock<ClusterCa> = OnceLock::new();
    CA.get_or_init(|| match ClusterCa::generate("fuzzcluster0000000000000") {
        Ok(c) => c,
        Err(e) => panic!("cluster CA: {e}"),
    })
}

/// Runs a future that never waits on I/O readiness (readers over `&[u8]`).
pub fn block_on<F: Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

/// Bytes a stream reader may be short of the length it was promised and
/// still be run (see [`plausible_frame`]).
pub const SHORT_BY: usize = 4096;

/// Whether the `u32 BE` length prefix at the front of `rest` claims at
/// most [`SHORT_BY`] bytes more than `rest` holds. The stream readers
/// (`shoal_api::read_frame`, raft-store's `read_frame`) allocate the
/// claimed length (at most their MAX_FRAME, 16 or 64 MiB) before reading
/// it; zeroing that much for every random prefix made those targets 10x
/// slower while only ever ending in the same "truncated" error, so such
/// frames are left out (truncation within [`SHORT_BY`] is still run).
pub fn plausible_frame(rest: &[u8]) -> bool {
    match rest.get(..4) {
        Some(p) => {
            let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
            len <= rest.len() - 4 + SHORT_BY
        }
        None => true,
    }
}

/// Decodes every length-prefixed frame of `data` with the daemon's own
/// reader (`shoal_api::read_frame`), as a peer's stream would deliver them,
/// then the whole input as one frame body.
pub fn api_frames<T: serde::de::DeserializeOwned>(data: &[u8]) {
    let mut r = data;
    block_on(async {
        for _ in 0..64 {
            if !plausible_frame(r) {
                break;
            }
            match shoal_api::read_frame::<_, T>(&mut r).await {
                Ok(_) => {}
                Err(shoal_api::FrameError::Malformed(_)) => {}
                Err(_) => break,
            }
        }
    });
    let _ = serde_json::from_slice::<T>(data);
}

/// Called from each target's `init`: writes seeds and exits when
/// `SHOAL_FUZZ_SEEDS` is set, else does nothing.
pub fn seed_hook(target: &str) {
    let Some(dir) = std::env::var_os("SHOAL_FUZZ_SEEDS") else {
        return;
    };
    let dir = std::path::Path::new(&dir).join(target);
    let seeds = seeds::for_target(target);
    assert!(!seeds.is_empty(), "no seeds for {target}");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("{}: {e}", dir.display());
    }
    for (i, s) in seeds.iter().enumerate() {
        let p = dir.join(format!("seed-{i:02}"));
        if let Err(e) = std::fs::write(&p, s) {
            panic!("{}: {e}", p.display());
        }
    }
    eprintln!("{target}: {} seeds in {}", seeds.len(), dir.display());
    std::process::exit(0);
}
