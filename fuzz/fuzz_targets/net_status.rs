//! Values of the `netstatus` gossip table from other members:
//! `shoal::proto::gossip::NetStatus` (serde_json, as `network inspect
//! --verbose` reads them).
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal::proto::gossip::NetStatus;

fuzz_target!(init: shoal_fuzz::seed_hook("net_status"), |data: &[u8]| {
    let _ = serde_json::from_slice::<NetStatus>(data);
});
