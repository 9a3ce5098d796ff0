//! The sealed packet: one Ethernet frame of an encrypted overlay per UDP
//! datagram, AES-256-GCM under the sender -> receiver direction key.
//!
//! ```text
//! 0      1            4         8        12           20           n-16   n
//! | ver | VNI (24 bit) | key id | epoch  | counter     | ciphertext  | tag |
//! ```
//!
//! The ciphertext is the TAP's virtio-net header (10 bytes, see
//! [`crate::vnet`]) followed by the Ethernet frame.
//!
//! All integers are big-endian. The nonce is `epoch || counter` (12
//! bytes): the sender never reuses a counter within an epoch and never
//! reuses an epoch (it is persisted before use), so a nonce never repeats
//! under a key. The whole 20-byte header is the associated data, so a
//! flipped VNI, key id, epoch or counter fails authentication like a
//! flipped ciphertext bit. Pure: no I/O.

use ring::aead::{Aad, LessSafeKey, Nonce, Tag};

/// Wire format version in the first byte.
pub const VERSION: u8 = 1;
/// Header length (also the associated data).
pub const HEADER_LEN: usize = 20;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed datagram adds to the frame it carries.
pub const SEAL_OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Bytes an encrypted overlay costs on the underlay below its MTU:
/// outer IPv4 (20) + UDP (8) + header and tag (36) + the virtio-net
/// header (10) + the inner Ethernet header (14) = 88 (VXLAN costs 50).
pub const UNDERLAY_OVERHEAD: u32 = 20 + 8 + SEAL_OVERHEAD as u32 + 10 + 14;
/// Largest VNI.
pub const MAX_VNI: u32 = 0x00ff_ffff;

/// The clear header of a sealed datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Overlay network (VNI).
    pub vni: u32,
    /// Ring key the direction key was derived from.
    pub key_id: u32,
    /// Sender's start epoch.
    pub epoch: u32,
    /// Sender's packet counter within the epoch.
    pub counter: u64,
}

/// Why a datagram was not accepted, before any key is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than a header and a tag.
    #[error("datagram of {0} bytes is shorter than a sealed frame")]
    Truncated(usize),
    /// Unknown version byte.
    #[error("unknown wire version {0}")]
    Version(u8),
}

impl Header {
    /// Encode into the first [`HEADER_LEN`] bytes of `out`.
    pub fn encode(&self, out: &mut [u8; HEADER_LEN]) {
        out[0] = VERSION;
        out[1..4].copy_from_slice(&self.vni.to_be_bytes()[1..]);
        out[4..8].copy_from_slice(&self.key_id.to_be_bytes());
        out[8..12].copy_from_slice(&self.epoch.to_be_bytes());
        out[12..20].copy_from_slice(&self.counter.to_be_bytes());
    }

    /// Decode the header of a datagram, checking it can hold a tag.
    pub fn decode(datagram: &[u8]) -> Result<Header, WireError> {
        if datagram.len() < SEAL_OVERHEAD {
            return Err(WireError::Truncated(datagram.len()));
        }
        if datagram[0] != VERSION {
            return Err(WireError::Version(datagram[0]));
        }
        let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let mut c = [0u8; 8];
        c.copy_from_slice(&datagram[12..20]);
        Ok(Header {
            vni: be32(&[0, datagram[1], datagram[2], datagram[3]]),
            key_id: be32(&datagram[4..8]),
            epoch: be32(&datagram[8..12]),
            counter: u64::from_be_bytes(c),
        })
    }

    fn nonce(&self) -> Nonce {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&self.epoch.to_be_bytes());
        n[4..].copy_from_slice(&self.counter.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }
}

/// Seal in place. `buf` holds [`HEADER_LEN`] bytes of room, then the
/// frame (`frame_len` bytes), then at least [`TAG_LEN`] bytes of room;
/// returns the datagram length.
pub fn seal(
    key: &LessSafeKey,
    header: &Header,
    buf: &mut [u8],
    frame_len: usize,
) -> Result<usize, SealError> {
    let end = HEADER_LEN + frame_len;
    if buf.len() < end + TAG_LEN {
        return Err(SealError);
    }
    let mut h = [0u8; HEADER_LEN];
    header.encode(&mut h);
    buf[..HEADER_LEN].copy_from_slice(&h);
    let tag: Tag = key
        .seal_in_place_separate_tag(header.nonce(), Aad::from(h), &mut buf[HEADER_LEN..end])
        .map_err(|_| SealError)?;
    buf[end..end + TAG_LEN].copy_from_slice(tag.as_ref());
    Ok(end + TAG_LEN)
}

/// The buffer cannot hold the sealed frame (or ring refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame does not fit the seal buffer")]
pub struct SealError;

/// Authentication failed: wrong key, or any bit of header, ciphertext or
/// tag changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed")]
pub struct OpenError;

/// Open a datagram in place (its header already decoded as `header`);
/// returns the frame, a sub-slice of `datagram`.
pub fn open<'a>(
    key: &LessSafeKey,
    header: &Header,
    datagram: &'a mut [u8],
) -> Result<&'a mut [u8], OpenError> {
    if datagram.len() < SEAL_OVERHEAD {
        return Err(OpenError);
    }
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(&datagram[..HEADER_LEN]);
    key.open_in_place(header.nonce(), Aad::from(h), &mut datagram[HEADER_LEN..])
        .map_err(|_| OpenError)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::aead::{UnboundKey, AES_256_GCM};

    fn key(b: u8) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[b; 32]).unwrap())
    }

    const H: Header = Header {
        vni: 0x0a_bcde,
        key_id: 0xdead_beef,
        epoch: 7,
        counter: 0x0102_0304_0506_0708,
    };

    fn sealed(frame: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER_LEN + frame.len() + TAG_LEN];
        buf[HEADER_LEN..HEADER_LEN + frame.len()].copy_from_slice(frame);
        let n = seal(&key(1), &H, &mut buf, frame.len()).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn header_round_trips_and_is_big_endian() {
        let mut b = [0u8; HEADER_LEN];
        H.encode(&mut b);
        assert_eq!(&b[..4], &[VERSION, 0x0a, 0xbc, 0xde]);
        assert_eq!(&b[4..8], &[0xde, 0xad, 0xbe, 0xef]);
        let mut d = b.to_vec();
        d.extend([0u8; TAG_LEN]);
        assert_eq!(Header::decode(&d).unwrap(), H);
    }

    #[test]
    fn seal_open_round_trip_and_the_frame_is_not_in_clear() {
        let frame = b"canary canary canary canary".to_vec();
        let mut d = sealed(&frame);
        assert_eq!(d.len(), frame.len() + SEAL_OVERHEAD);
        assert!(!d.windows(6).any(|w| w == b"canary"));
        let h = Header::decode(&d).unwrap();
        assert_eq!(open(&key(1), &h, &mut d).unwrap(), &frame[..]);
    }

    #[test]
    fn every_flipped_bit_and_the_wrong_key_fail() {
        let d = sealed(b"0123456789abcdef0123");
        for i in 0..d.len() {
            let mut t = d.clone();
            t[i] ^= 0x01;
            let opened = match Header::decode(&t) {
                Ok(h) => open(&key(1), &h, &mut t).is_ok(),
                Err(_) => false,
            };
            assert!(!opened, "bit flip at byte {i} was accepted");
        }
        let mut t = d.clone();
        let h = Header::decode(&t).unwrap();
        assert_eq!(open(&key(2), &h, &mut t), Err(OpenError));
    }

    #[test]
    fn short_and_foreign_datagrams_are_rejected_before_crypto() {
        let d = sealed(b"x");
        assert_eq!(
            Header::decode(&d[..SEAL_OVERHEAD - 1]),
            Err(WireError::Truncated(35))
        );
        let mut v = d.clone();
        v[0] = 2;
        assert_eq!(Header::decode(&v), Err(WireError::Version(2)));
        let mut t = d[..d.len() - 1].to_vec();
        let h = Header::decode(&t).unwrap();
        assert!(open(&key(1), &h, &mut t).is_err());
    }

    #[test]
    fn seal_refuses_a_buffer_without_room_for_the_tag() {
        let mut buf = vec![0u8; HEADER_LEN + 4 + TAG_LEN - 1];
        assert_eq!(seal(&key(1), &H, &mut buf, 4), Err(SealError));
    }
}
