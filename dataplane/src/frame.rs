//! What to do with an Ethernet frame the bridge hands to the TAP: answer
//! an ARP request for a remote endpoint here, send a unicast frame to the
//! node hosting its destination MAC, or drop it (other broadcast and
//! multicast, unknown destinations). Pure.

use std::collections::HashMap;
use std::net::Ipv4Addr;

/// A MAC address.
pub type Mac = [u8; 6];

const ETH_HLEN: usize = 14;
const ETHERTYPE_ARP: u16 = 0x0806;
const ARP_LEN: usize = 28;

/// The decision for one outgoing frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a, P> {
    /// Seal and send to this peer.
    Send(&'a P),
    /// Write this ARP reply back into the TAP.
    ArpReply(Vec<u8>),
    /// Broadcast or multicast that is not an ARP request we answer.
    DropBroadcast,
    /// Unicast to a MAC no remote endpoint has.
    DropUnknown,
    /// Shorter than an Ethernet header.
    DropMalformed,
}

/// A network's remote endpoints: MAC -> the peer hosting it, and IP ->
/// MAC for the ARP answers.
#[derive(Debug, Clone)]
pub struct Remotes<P> {
    /// Destination MAC -> peer.
    pub by_mac: HashMap<Mac, P>,
    /// Overlay IP -> MAC.
    pub arp: HashMap<Ipv4Addr, Mac>,
}

impl<P> Default for Remotes<P> {
    fn default() -> Self {
        Remotes {
            by_mac: HashMap::new(),
            arp: HashMap::new(),
        }
    }
}

/// Destination and source MAC of a frame.
pub fn macs(frame: &[u8]) -> Option<(Mac, Mac)> {
    if frame.len() < ETH_HLEN {
        return None;
    }
    let mut d = [0u8; 6];
    let mut s = [0u8; 6];
    d.copy_from_slice(&frame[..6]);
    s.copy_from_slice(&frame[6..12]);
    Some((d, s))
}

/// Decide what happens to `frame`.
pub fn classify<'a, P>(frame: &[u8], remotes: &'a Remotes<P>) -> Verdict<'a, P> {
    let Some((dst, _)) = macs(frame) else {
        return Verdict::DropMalformed;
    };
    if dst[0] & 1 == 1 {
        return match arp_reply(frame, &remotes.arp) {
            Some(r) => Verdict::ArpReply(r),
            None => Verdict::DropBroadcast,
        };
    }
    match remotes.by_mac.get(&dst) {
        Some(p) => Verdict::Send(p),
        None => Verdict::DropUnknown,
    }
}

/// The reply to an Ethernet/IPv4 ARP request whose target is in `arp`.
fn arp_reply(frame: &[u8], arp: &HashMap<Ipv4Addr, Mac>) -> Option<Vec<u8>> {
    if frame.len() < ETH_HLEN + ARP_LEN
        || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_ARP
    {
        return None;
    }
    let a = &frame[ETH_HLEN..ETH_HLEN + ARP_LEN];
    // htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4, op 1 (request).
    if a[..8] != [0, 1, 0x08, 0x00, 6, 4, 0, 1] {
        return None;
    }
    let target = Ipv4Addr::new(a[24], a[25], a[26], a[27]);
    let mac = arp.get(&target)?;
    let (sender_mac, sender_ip) = (&a[8..14], &a[14..18]);
    let mut r = Vec::with_capacity(ETH_HLEN + ARP_LEN);
    r.extend_from_slice(sender_mac);
    r.extend_from_slice(mac);
    r.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    r.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    r.extend_from_slice(mac);
    r.extend_from_slice(&target.octets());
    r.extend_from_slice(sender_mac);
    r.extend_from_slice(sender_ip);
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Mac = [2, 0x42, 10, 0, 9, 2];
    const THEM: Mac = [2, 0x42, 10, 0, 9, 3];

    fn remotes() -> Remotes<&'static str> {
        let mut r = Remotes::default();
        r.by_mac.insert(THEM, "h2");
        r.arp.insert(Ipv4Addr::new(10, 0, 9, 3), THEM);
        r
    }

    fn arp_request(target: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&ME);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&ME);
        f.extend_from_slice(&[10, 0, 9, 2]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target);
        f
    }

    #[test]
    fn unicast_to_a_remote_mac_goes_to_its_node() {
        let mut f = THEM.to_vec();
        f.extend_from_slice(&ME);
        f.extend_from_slice(&[0x08, 0x00, 0x45]);
        assert_eq!(classify(&f, &remotes()), Verdict::Send(&"h2"));
        f[..6].copy_from_slice(&[2, 0x42, 10, 0, 9, 99]);
        assert_eq!(classify(&f, &remotes()), Verdict::DropUnknown);
    }

    #[test]
    fn arp_for_a_remote_endpoint_is_answered_here() {
        let Verdict::ArpReply(r) = classify(&arp_request([10, 0, 9, 3]), &remotes()) else {
            panic!("no reply");
        };
        assert_eq!(&r[..6], &ME);
        assert_eq!(&r[6..12], &THEM);
        assert_eq!(&r[20..22], &[0, 2]);
        assert_eq!(&r[22..28], &THEM);
        assert_eq!(&r[28..32], &[10, 0, 9, 3]);
        assert_eq!(&r[32..38], &ME);
        assert_eq!(&r[38..42], &[10, 0, 9, 2]);
    }

    #[test]
    fn other_broadcast_and_runts_are_dropped() {
        assert_eq!(
            classify(&arp_request([10, 0, 9, 77]), &remotes()),
            Verdict::DropBroadcast
        );
        let mut mc = vec![0x01, 0x00, 0x5e, 0, 0, 1];
        mc.extend_from_slice(&ME);
        mc.extend_from_slice(&[0x08, 0x00]);
        assert_eq!(classify(&mc, &remotes()), Verdict::DropBroadcast);
        let mut reply = arp_request([10, 0, 9, 3]);
        reply[21] = 2; // an ARP reply broadcast is not answered
        assert_eq!(classify(&reply, &remotes()), Verdict::DropBroadcast);
        assert_eq!(classify(&[0u8; 13], &remotes()), Verdict::DropMalformed);
    }
}
