//! Raft peer stream frames (`raft-store/src/codec.rs`): `decode_batch` on
//! the input as a payload, `decode_frame` over it as a buffer of frames,
//! and the stream reader `read_frame` (all three paths a manager uses;
//! see `shoal_fuzz::plausible_frame` for the frames it is not given).
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_raft_store::codec::read_frame;
use shoal_raft_store::{decode_batch, decode_frame};

fuzz_target!(init: shoal_fuzz::seed_hook("raft_frame"), |data: &[u8]| {
    let _ = decode_batch(data);
    let mut buf = data;
    while let Ok(Some((_, n))) = decode_frame(buf) {
        buf = buf.get(n..).unwrap_or_default();
    }
    let mut r = data;
    shoal_fuzz::block_on(async {
        for _ in 0..64 {
            if !shoal_fuzz::plausible_frame(r) || !matches!(read_frame(&mut r).await, Ok(Some(_))) {
                break;
            }
        }
    });
});
