//! Endpoint table values from other members (postcard):
//! `shoal_membership::EndpointRecord::decode`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: shoal_fuzz::seed_hook("endpoint_record"), |data: &[u8]| {
    if let Ok(r) = shoal_membership::EndpointRecord::decode(data) {
        let _ = shoal_membership::EndpointRecord::table(&r.network);
    }
});
