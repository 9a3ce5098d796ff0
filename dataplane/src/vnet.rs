//! The virtio-net header the TAP puts before every frame (`IFF_VNET_HDR`):
//! with TSO and checksum offload on, the kernel hands over TCP segments of
//! up to the TAP's `gso_max_size` (60,000, set by the netdriver so that a
//! sealed one fits a UDP datagram) with the checksum left to whoever
//! segments them, and takes such frames back on the other node. The
//! header travels sealed with its frame, so one datagram carries up to
//! ~40 underlay packets' worth (the underlay fragments it), and neither
//! end segments or checksums anything. What a peer sends is checked
//! before its TAP sees it. Pure.

/// Length of `struct virtio_net_hdr` (the TAP's default).
pub const LEN: usize = 10;
/// A header for a plain frame (no GSO, checksum complete).
pub const NONE: [u8; LEN] = [0; LEN];
const F_NEEDS_CSUM: u8 = 1;
const F_DATA_VALID: u8 = 2;
const GSO_ECN: u8 = 0x80;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;

/// Whether `hdr` (at least [`LEN`] bytes) describes a frame of
/// `frame_len` bytes the way a TAP with TSO/USO and checksum offload
/// would: known flags and GSO types only, offsets inside the frame.
pub fn valid(hdr: &[u8], frame_len: usize) -> bool {
    if hdr.len() < LEN {
        return false;
    }
    let (flags, gso) = (hdr[0], hdr[1] & !GSO_ECN);
    let le = |i: usize| usize::from(u16::from_le_bytes([hdr[i], hdr[i + 1]]));
    let (hdr_len, gso_size, csum_start, csum_offset) = (le(2), le(4), le(6), le(8));
    if flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
        return false;
    }
    if !matches!(gso, GSO_NONE | GSO_TCPV4 | GSO_TCPV6 | GSO_UDP_L4) {
        return false;
    }
    if gso != GSO_NONE && (gso_size == 0 || hdr_len > frame_len) {
        return false;
    }
    flags & F_NEEDS_CSUM == 0 || csum_start + csum_offset + 2 <= frame_len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(flags: u8, gso: u8, hdr_len: u16, gso_size: u16, start: u16, off: u16) -> [u8; LEN] {
        let mut h = [0u8; LEN];
        h[0] = flags;
        h[1] = gso;
        h[2..4].copy_from_slice(&hdr_len.to_le_bytes());
        h[4..6].copy_from_slice(&gso_size.to_le_bytes());
        h[6..8].copy_from_slice(&start.to_le_bytes());
        h[8..10].copy_from_slice(&off.to_le_bytes());
        h
    }

    #[test]
    fn what_a_tap_emits_is_valid() {
        assert!(valid(&NONE, 60));
        // A TSO segment: Ethernet + IPv4 + TCP headers, MSS 1372,
        // checksum at TCP offset 16.
        assert!(valid(&hdr(1, GSO_TCPV4, 66, 1372, 34, 16), 30_000));
        assert!(valid(
            &hdr(1, GSO_TCPV4 | GSO_ECN, 66, 1372, 34, 16),
            30_000
        ));
        assert!(valid(&hdr(2, GSO_NONE, 0, 0, 0, 0), 100));
    }

    #[test]
    fn unknown_flags_types_and_offsets_outside_the_frame_are_not() {
        assert!(!valid(&NONE[..9], 60));
        assert!(!valid(&hdr(4, 0, 0, 0, 0, 0), 60));
        assert!(!valid(&hdr(0, 3, 66, 1372, 0, 0), 30_000)); // UFO
        assert!(!valid(&hdr(1, GSO_TCPV4, 66, 0, 34, 16), 30_000));
        assert!(!valid(&hdr(1, GSO_TCPV4, 900, 1372, 34, 16), 800));
        assert!(!valid(&hdr(1, GSO_NONE, 0, 0, 50, 16), 60));
    }
}
