//! The sealed packet format (`membership/src/crypto.rs`, `KeyRing::open`)
//! with a fixed two-key ring, and what sits behind it. Mode byte:
//! - even: the rest is a packet as received; open it on both channels,
//!   check its sender stamp (`membership/src/fresh.rs`) and hand any
//!   message to the datagram and sync decoders;
//! - odd: the rest is a message; stamp and seal it with the ring, open
//!   and check it again and decode it, so the fuzzer reaches the decoders
//!   behind decryption (it cannot forge AES-GCM tags).
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_membership::crypto::Channel;
use shoal_membership::fresh::Freshness;

fn decode(channel: Channel, plain: &[u8]) {
    match channel {
        Channel::Udp => {
            let mut node = shoal_fuzz::gossip_node(2);
            let _ = node.handle_data(shoal_fuzz::NOW_MS, plain);
        }
        Channel::Tcp => {
            let mut node = shoal_fuzz::gossip_node(2);
            let mut s = node.sync_accept();
            let _ = node.sync_frame(shoal_fuzz::NOW_MS, &mut s, plain);
        }
    }
}

fuzz_target!(init: shoal_fuzz::seed_hook("gossip_sealed"), |data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let ring = shoal_fuzz::ring();
    let (me, sender) = (Freshness::new("me", 1), Freshness::new("peer", 1));
    let channel = if mode & 2 == 0 { Channel::Udp } else { Channel::Tcp };
    if mode & 1 == 0 {
        for c in [Channel::Udp, Channel::Tcp] {
            if let Ok(plain) = ring.open(c, rest) {
                if let Ok(message) = me.accept(c, &plain) {
                    decode(c, message);
                }
            }
        }
    } else {
        let Ok(sealed) = ring.seal(channel, &sender.stamp(rest)) else {
            return;
        };
        if let Ok(plain) = ring.open(channel, &sealed) {
            if let Ok(message) = me.accept(channel, &plain) {
                decode(channel, message);
            }
        }
    }
});
