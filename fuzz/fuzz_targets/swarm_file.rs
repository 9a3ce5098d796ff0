//! `<data-dir>/swarm/swarm.json`: `shoal::swarm::file::SwarmFile` as
//! `swarm::file::load` reads it (serde_json).
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal::swarm::file::SwarmFile;

fuzz_target!(init: shoal_fuzz::seed_hook("swarm_file"), |data: &[u8]| {
    let _ = serde_json::from_slice::<SwarmFile>(data);
});
