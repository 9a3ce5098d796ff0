//! The Docker Engine API socket: request bodies read as Go reads JSON
//! (`shoal_api::engine::gojson::normalize`) and decoded into a service
//! spec (`convert::spec_from_docker`), the other bodies' types, and the
//! `filters` query parameter. Several inputs split at the separator.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_api::engine::{convert, gojson, types};

fuzz_target!(init: shoal_fuzz::seed_hook("engine_request"), |data: &[u8]| {
    for part in shoal_fuzz::split(data) {
        if let Ok(text) = std::str::from_utf8(part) {
            let _ = gojson::parse_filters(text);
        }
        let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(part) else {
            continue;
        };
        gojson::normalize(&mut v);
        if let Ok((spec, _)) = convert::spec_from_docker(&v) {
            // What is accepted renders back and reads the same.
            let back = serde_json::to_value(convert::spec_to_docker(&spec)).unwrap_or_default();
            let again = convert::spec_from_docker(&back).map(|(s, _)| s);
            assert_eq!(again.as_ref().ok(), Some(&spec), "round trip of {v}");
        }
        let _ = serde_json::from_value::<types::InitRequest>(v.clone());
        let _ = serde_json::from_value::<types::JoinRequest>(v.clone());
        let _ = serde_json::from_value::<types::NodeSpec>(v.clone());
        let _ = serde_json::from_value::<types::NetworkCreate>(v.clone());
        let _ = serde_json::from_value::<types::SwarmSpec>(v.clone());
        let _ = serde_json::from_value::<types::FileSpec>(v);
    }
});
