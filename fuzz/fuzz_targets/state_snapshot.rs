//! The replicated state snapshot (from disk and from the leader):
//! `shoal_model::state::State::decode` (CBOR, else a bincode release's
//! layout).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: shoal_fuzz::seed_hook("state_snapshot"), |data: &[u8]| {
    let _ = shoal_model::state::State::decode(data);
});
