//! The cluster key ring and the sealed packet format.
//!
//! Every UDP datagram and every TCP frame is sealed with AES-256-GCM (ring)
//! under the newest key of the ring:
//!
//! ```text
//! +---------+-----------+--------------+----------------------+---------+
//! | ver (1) | key id(4) | nonce (12)   | ciphertext           | tag(16) |
//! +---------+-----------+--------------+----------------------+---------+
//! ```
//!
//! The header is authenticated (AAD) together with a channel byte so a UDP
//! datagram cannot be replayed as a TCP frame. Nonces are 96 random bits from
//! the OS CSPRNG per message (no counter state to lose across restarts). The
//! receiver looks the key id up among the (at most 3) ring keys and drops
//! anything else. Version 2: the plaintext starts with the sender's stamp
//! (see `fresh`), so a message sent again is refused as a replay.

use std::fmt;
use std::sync::Arc;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Format version byte; bump on incompatible changes.
pub const SEAL_VERSION: u8 = 2;
/// Header length: version + key id + nonce.
pub const SEAL_HEADER: usize = 1 + 4 + NONCE_LEN;
/// Bytes a sealed message adds to its plaintext.
pub const SEAL_OVERHEAD: usize = SEAL_HEADER + 16;
/// Most keys a ring holds (the key manager keeps the three newest).
pub const MAX_KEYS: usize = 3;

/// Which transport a sealed message belongs to (authenticated, not sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// SWIM datagrams on UDP 7946.
    Udp,
    /// Sync frames on TCP 7946.
    Tcp,
}

impl Channel {
    fn byte(self) -> u8 {
        match self {
            Channel::Udp => b'U',
            Channel::Tcp => b'T',
        }
    }
}

/// Why a key ring was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyRingError {
    /// No key at all: nothing could be sealed.
    #[error("the key ring is empty; give at least one key")]
    Empty,
    /// More than [`MAX_KEYS`] keys.
    #[error("the key ring has {0} keys, at most 3 are kept")]
    TooMany(usize),
    /// Two keys share an id, so the receiver could not tell them apart.
    #[error("key id {0} appears twice in the ring")]
    DuplicateId(u32),
    /// ring refused the key material.
    #[error("key {0} is not a valid AES-256 key")]
    BadKey(u32),
}

/// Why a sealed message was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    /// Shorter than a header plus a tag.
    #[error("sealed message truncated ({0} bytes)")]
    Truncated(usize),
    /// Unknown format version.
    #[error("unknown seal version {0}")]
    Version(u8),
    /// The key id is not in our ring (old, foreign or forged).
    #[error("unknown key id {0}")]
    UnknownKey(u32),
    /// Authentication failed: wrong key, tampering or corruption.
    #[error("authentication failed")]
    Auth,
}

/// Sealing failed: only the OS random source can make this happen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("could not seal: the OS random source or the cipher failed")]
pub struct SealError;

struct Key {
    id: u32,
    key: LessSafeKey,
}

/// AES-256-GCM key ring, newest first, up to 3 keys; the key id travels in
/// every packet header so receivers accept any ring key during rotation.
#[derive(Clone)]
pub struct KeyRing {
    keys: Arc<[Key]>,
    rng: SystemRandom,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key bytes.
        let ids: Vec<u32> = self.keys.iter().map(|k| k.id).collect();
        f.debug_struct("KeyRing").field("key_ids", &ids).finish()
    }
}

impl KeyRing {
    /// Builds a ring from `(id, key)` pairs, newest first.
    pub fn new(keys: Vec<(u32, [u8; 32])>) -> Result<Self, KeyRingError> {
        if keys.is_empty() {
            return Err(KeyRingError::Empty);
        }
        if keys.len() > MAX_KEYS {
            return Err(KeyRingError::TooMany(keys.len()));
        }
        let mut out: Vec<Key> = Vec::with_capacity(keys.len());
        for (id, bytes) in keys {
            if out.iter().any(|k| k.id == id) {
                return Err(KeyRingError::DuplicateId(id));
            }
            let unbound =
                UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| KeyRingError::BadKey(id))?;
            out.push(Key {
                id,
                key: LessSafeKey::new(unbound),
            });
        }
        Ok(KeyRing {
            keys: out.into(),
            rng: SystemRandom::new(),
        })
    }

    /// The key new messages are sealed with: the second-newest when the
    /// ring has two or more (the newest reached every node for opening a
    /// rotation period before anyone seals with it, so a rotation has no
    /// window in which a node cannot open what others send), else the only
    /// one.
    fn sending(&self) -> Option<&Key> {
        self.keys.get(1).or_else(|| self.keys.first())
    }

    /// Id of the key new messages are sealed with.
    pub fn sending_id(&self) -> u32 {
        self.sending().map(|k| k.id).unwrap_or_default()
    }

    /// Ids in the ring, newest first (for status output).
    pub fn ids(&self) -> Vec<u32> {
        self.keys.iter().map(|k| k.id).collect()
    }

    /// Seals `plain` under the sending key (see [`KeyRing::sending_id`]).
    pub fn seal(&self, channel: Channel, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let key = self.sending().ok_or(SealError)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError)?;
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + plain.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&key.id.to_be_bytes());
        out.extend_from_slice(&nonce);
        let aad = aad(channel, &out);
        out.extend_from_slice(plain);
        let tag = key
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut out[SEAL_HEADER..],
            )
            .map_err(|_| SealError)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens a sealed message; the plaintext is at most `packet.len()` bytes.
    pub fn open(&self, channel: Channel, packet: &[u8]) -> Result<Vec<u8>, OpenError> {
        if packet.len() < SEAL_OVERHEAD {
            return Err(OpenError::Truncated(packet.len()));
        }
        let (header, body) = packet.split_at(SEAL_HEADER);
        if header[0] != SEAL_VERSION {
            return Err(OpenError::Version(header[0]));
        }
        let id = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(OpenError::UnknownKey(id))?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&header[5..SEAL_HEADER]);
        let aad = aad(channel, header);
        let mut buf = body.to_vec();
        let plain = key
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut buf,
            )
            .map_err(|_| OpenError::Auth)?;
        let n = plain.len();
        buf.truncate(n);
        Ok(buf)
    }
}

fn aad(channel: Channel, header: &[u8]) -> [u8; SEAL_HEADER + 1] {
    let mut a = [0u8; SEAL_HEADER + 1];
    a[0] = channel.byte();
    let n = header.len().min(SEAL_HEADER);
    a[1..=n].copy_from_slice(&header[..n]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand10::{Rng, RngExt, SeedableRng};

    fn ring(id: u32, b: u8) -> KeyRing {
        KeyRing::new(vec![(id, [b; 32])]).unwrap()
    }

    #[test]
    fn round_trip_and_header() {
        let r = ring(7, 1);
        let sealed = r.seal(Channel::Udp, b"hello").unwrap();
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(sealed[0], SEAL_VERSION);
        assert_eq!(&sealed[1..5], &7u32.to_be_bytes());
        assert_eq!(r.open(Channel::Udp, &sealed).unwrap(), b"hello");
        // Same plaintext twice: different nonces, different ciphertexts.
        let again = r.seal(Channel::Udp, b"hello").unwrap();
        assert_ne!(sealed[5..17], again[5..17]);
        // A UDP datagram is not a valid TCP frame.
        assert_eq!(r.open(Channel::Tcp, &sealed), Err(OpenError::Auth));
    }

    #[test]
    fn ring_rules_and_debug_hides_keys() {
        assert_eq!(KeyRing::new(vec![]).unwrap_err(), KeyRingError::Empty);
        assert_eq!(
            KeyRing::new(vec![(1, [0; 32]), (1, [1; 32])]).unwrap_err(),
            KeyRingError::DuplicateId(1)
        );
        assert_eq!(
            KeyRing::new(vec![(1, [0; 32]), (2, [1; 32]), (3, [1; 32]), (4, [1; 32])]).unwrap_err(),
            KeyRingError::TooMany(4)
        );
        let r = KeyRing::new(vec![(9, [0xAB; 32]), (8, [0xCD; 32])]).unwrap();
        assert_eq!(r.sending_id(), 8);
        assert_eq!(ring(7, 1).sending_id(), 7);
        let dbg = format!("{r:?}");
        assert!(dbg.contains("9") && !dbg.contains("171") && !dbg.to_lowercase().contains("ab, "));
    }

    #[test]
    fn rotation_accepts_any_ring_key_and_rejects_others() {
        let old = ring(1, 1);
        let rotated = KeyRing::new(vec![(2, [2; 32]), (1, [1; 32])]).unwrap();
        let from_old = old.seal(Channel::Udp, b"x").unwrap();
        assert_eq!(rotated.open(Channel::Udp, &from_old).unwrap(), b"x");
        // The rotated node still seals with key 1 (second-newest): a node
        // that has not received key 2 yet opens it.
        let from_new = rotated.seal(Channel::Udp, b"y").unwrap();
        assert_eq!(old.open(Channel::Udp, &from_new).unwrap(), b"y");
        // One more rotation: key 2 is used, which the lagging node lacks.
        let twice = KeyRing::new(vec![(3, [3; 32]), (2, [2; 32]), (1, [1; 32])]).unwrap();
        let from_twice = twice.seal(Channel::Udp, b"w").unwrap();
        assert_eq!(
            old.open(Channel::Udp, &from_twice),
            Err(OpenError::UnknownKey(2))
        );
        // Same id, different key bytes: authentication fails.
        let impostor = ring(1, 3);
        let forged = impostor.seal(Channel::Udp, b"z").unwrap();
        assert_eq!(old.open(Channel::Udp, &forged), Err(OpenError::Auth));
    }

    #[test]
    fn hostile_packets_never_open() {
        let r = ring(5, 5);
        let good = r.seal(Channel::Udp, &[7u8; 300]).unwrap();
        let mut rng = rand10::rngs::SmallRng::seed_from_u64(42);
        for i in 0..5000 {
            let mut p = good.clone();
            match i % 4 {
                0 => p.truncate(rng.random_range(0..p.len())),
                1 => {
                    let bit = rng.random_range(0..p.len() * 8);
                    p[bit / 8] ^= 1 << (bit % 8);
                }
                2 => {
                    let n = rng.random_range(0..2000);
                    p = (0..n).map(|_| rng.next_u32() as u8).collect();
                    if p.len() > 4 {
                        p[0] = SEAL_VERSION;
                        p[1..5].copy_from_slice(&5u32.to_be_bytes());
                    }
                }
                _ => p.extend((0..rng.random_range(1..100)).map(|_| 0u8)),
            }
            assert!(r.open(Channel::Udp, &p).is_err(), "case {i}");
        }
    }
}
