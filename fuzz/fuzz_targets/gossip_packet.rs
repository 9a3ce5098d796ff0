//! SWIM datagrams after decryption: foca's packet decoder (header, member
//! updates) and the table-update items (`membership/src/codec.rs`,
//! `WireEntry::from_item`) behind `Node::handle_data`. One input may hold
//! several datagrams (split at `shoal_fuzz::SEP`), delivered in order to a
//! fresh member 2.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: shoal_fuzz::seed_hook("gossip_packet"), |data: &[u8]| {
    let mut node = shoal_fuzz::gossip_node(2);
    for (i, p) in shoal_fuzz::split(data).into_iter().enumerate().take(32) {
        let _ = node.handle_data(shoal_fuzz::NOW_MS + i as u64, p);
        let _ = node.drain();
    }
    let _ = node.members();
    let _ = node.entries("ep/net1");
});
