//! The local API socket: length-prefixed JSON frames read with
//! `shoal_api::read_frame`; the daemon decodes `RequestFrame`s (and the CLI
//! `ResponseFrame`s).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: shoal_fuzz::seed_hook("api_frame"), |data: &[u8]| {
    shoal_fuzz::api_frames::<shoal_api::RequestFrame>(data);
    shoal_fuzz::api_frames::<shoal_api::ResponseFrame>(data);
});
