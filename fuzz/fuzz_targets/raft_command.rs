//! Committed raft entries (from disk and from the leader), decoded as
//! the apply loop does: `shoal_model::state::Command::decode` (CBOR behind
//! the self-describe tag, else a command of a bincode release).
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_model::state::Command;

fuzz_target!(init: shoal_fuzz::seed_hook("raft_command"), |data: &[u8]| {
    if let Ok(c) = Command::decode(data) {
        // What decodes encodes again.
        assert!(c.encode().is_ok());
    }
});
