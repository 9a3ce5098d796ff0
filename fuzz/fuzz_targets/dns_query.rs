//! DNS messages from workloads: the embedded server's decision
//! (`agent/src/worker/dns/mod.rs`, `decide` through `fuzz_decide`: header,
//! full parse, local answer with truncation, forward or error) in both
//! server modes, over UDP and TCP.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: shoal_fuzz::seed_hook("dns_query"), |data: &[u8]| {
    shoal::worker::dns::fuzz_decide(data);
});
