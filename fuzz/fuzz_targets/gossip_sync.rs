//! Anti-entropy (TCP sync) frames: `Frame::decode` and the column decoder
//! of `membership/src/codec.rs` behind `Node::sync_frame`, then the store's
//! exchange state machine. Mode byte 0: the node answers (responder);
//! 1: the node opened the exchange. The rest is the peer's frames, split at
//! `shoal_fuzz::SEP`; an error ends the exchange as the driver does.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: shoal_fuzz::seed_hook("gossip_sync"), |data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut node = shoal_fuzz::sync_node();
    let mut session = if mode & 1 == 0 {
        node.sync_accept()
    } else {
        node.sync_open().0
    };
    for f in shoal_fuzz::split(rest).into_iter().take(64) {
        if node.sync_frame(shoal_fuzz::NOW_MS, &mut session, f).is_err() {
            break;
        }
    }
    let _ = node.drain();
});
