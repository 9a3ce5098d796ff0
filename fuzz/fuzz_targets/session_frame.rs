//! Node session frames (QUIC 2377) through `shoal_api::read_frame`:
//! `shoal::proto::session::ToManager` (what the leader reads from nodes)
//! and `ToNode` (what a node reads from the leader).
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal::proto::session::{ToManager, ToNode};

fuzz_target!(init: shoal_fuzz::seed_hook("session_frame"), |data: &[u8]| {
    shoal_fuzz::api_frames::<ToManager>(data);
    shoal_fuzz::api_frames::<ToNode>(data);
});
