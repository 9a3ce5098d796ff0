//! A raft snapshot's payload as a manager restores it: the envelope
//! `u32 BE peers_len | peers | state` of `raft-store/src/node/mod.rs`, the
//! peer map (`shoal_raft_store::PeerMap`, bincode standard with the 64 MiB
//! limit of `storage::decode_peers`) and the state behind it
//! (`State::decode`). `decode_envelope`/`decode_peers` are private to
//! raft-store, so this mirrors their few lines around the real decoders.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_raft_store::PeerMap;

/// `DECODE_LIMIT` of raft-store's storage.
const DECODE_LIMIT: usize = 64 << 20;

fuzz_target!(init: shoal_fuzz::seed_hook("raft_snapshot"), |data: &[u8]| {
    let cfg = bincode::config::standard().with_limit::<DECODE_LIMIT>();
    let _ = bincode::serde::decode_from_slice::<PeerMap, _>(data, cfg);
    let Some(len) = data.get(..4) else {
        return;
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let Some(peers) = data.get(4..4 + len) else {
        return;
    };
    if bincode::serde::decode_from_slice::<PeerMap, _>(peers, cfg).is_ok() {
        let _ = shoal_model::state::State::decode(data.get(4 + len..).unwrap_or_default());
    }
});
