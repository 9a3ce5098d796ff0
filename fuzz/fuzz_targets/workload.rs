//! Workload records `<run-dir>/workloads/*.json`: `shoal_api::Workload` as
//! the overlay adopts them after a restart (serde_json).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: shoal_fuzz::seed_hook("workload"), |data: &[u8]| {
    if let Ok(w) = serde_json::from_slice::<shoal_api::Workload>(data) {
        let _ = w.ip_on("appnet0000000000000000000");
    }
});
