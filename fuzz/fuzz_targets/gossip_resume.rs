//! The gossip resume file `<run-dir>/gossip.json`:
//! `shoal::swarm::gossip::Resume` (serde_json, as `Resume::load`), then the
//! key ring it carries (`swarm::gossip::key_ring`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal::swarm::gossip::{key_ring, Resume};

fuzz_target!(init: shoal_fuzz::seed_hook("gossip_resume"), |data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<Resume>(data) {
        let _ = key_ring(&r.keys);
    }
});
