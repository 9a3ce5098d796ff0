//! Node RPC and join frames (TCP 2377) through `shoal_api::read_frame`:
//! `shoal::proto::rpc::{JoinRequest, NodeRequest}` (read by managers) and
//! `{JoinResponse, NodeResponse}` (read by nodes).
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal::proto::rpc::{JoinRequest, JoinResponse, NodeRequest, NodeResponse};

fuzz_target!(init: shoal_fuzz::seed_hook("rpc_frame"), |data: &[u8]| {
    shoal_fuzz::api_frames::<JoinRequest>(data);
    shoal_fuzz::api_frames::<NodeRequest>(data);
    shoal_fuzz::api_frames::<JoinResponse>(data);
    shoal_fuzz::api_frames::<NodeResponse>(data);
});
