//! Datagrams on the encrypted data path's port (UDP 4790) from anyone:
//! `shoal_dataplane::wire::Header::decode`, `wire::open` under a fixed
//! direction key, the replay window, `vnet::valid` and `frame::classify`
//! of what opens (and of the raw bytes, as a TAP frame).
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_dataplane::frame::{classify, Remotes};
use shoal_dataplane::keys::{direction_key, RingKey};
use shoal_dataplane::replay::Replay;
use shoal_dataplane::{vnet, wire};

fuzz_target!(init: shoal_fuzz::seed_hook("dataplane_datagram"), |data: &[u8]| {
    let mut remotes: Remotes<u8> = Remotes::default();
    remotes.by_mac.insert([2, 0x42, 10, 0, 9, 3], 1);
    remotes.arp.insert([10, 0, 9, 3].into(), [2, 0x42, 10, 0, 9, 3]);
    let _ = classify(data, &remotes);
    let Ok(h) = wire::Header::decode(data) else {
        return;
    };
    let mut replay = Replay::default();
    if replay.check(h.epoch, h.counter).is_err() {
        return;
    }
    let ring = RingKey { id: h.key_id, key: shoal_fuzz::seeds::DATAPLANE_KEY };
    let Some(key) = direction_key(&ring, "sender", "receiver") else {
        return;
    };
    let mut d = data.to_vec();
    if let Ok(frame) = wire::open(&key, &h, &mut d) {
        let _ = replay.commit(h.epoch, h.counter);
        let (hdr, eth) = frame.split_at(vnet::LEN.min(frame.len()));
        if vnet::valid(hdr, eth.len()) {
            let _ = classify(eth, &remotes);
        }
    }
});
