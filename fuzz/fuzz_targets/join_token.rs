//! Strings from users and peers that name cluster identities:
//! `shoal_tls::JoinToken` (and its parts `CaDigest`, `JoinSecret`),
//! `NodeId` and `Role` (`FromStr`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_tls::{CaDigest, JoinSecret, JoinToken, NodeId, Role};

fuzz_target!(init: shoal_fuzz::seed_hook("join_token"), |data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Ok(t) = s.parse::<JoinToken>() {
        let _ = t.to_string().parse::<JoinToken>();
    }
    let _ = s.parse::<CaDigest>();
    let _ = s.parse::<JoinSecret>();
    let _ = s.parse::<NodeId>();
    let _ = s.parse::<Role>();
});
