//! Keys of the data path: the ring (three 256-bit keys from the leader,
//! newest first), the per node-pair, per-direction keys derived from each
//! with HKDF-SHA256, and the rule for which ring key to send with. Pure.
//!
//! The direction key for `sender -> receiver` under ring key `k` is
//! `HKDF-SHA256(salt = "shoal dataplane v1", ikm = k, info = len(sender)
//! || sender || len(receiver) || receiver || key id)`: every ordered pair
//! of nodes has its own key, so a counter space is never shared and a node
//! that learns one pair's traffic key learns nothing of another's.

use ring::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
use ring::hkdf;

const SALT: &[u8] = b"shoal dataplane v1";

/// One key of the ring.
#[derive(Clone, PartialEq, Eq)]
pub struct RingKey {
    /// Id carried in every datagram header.
    pub id: u32,
    /// Key material (never printed).
    pub key: [u8; 32],
}

impl std::fmt::Debug for RingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// The AES-256-GCM key for traffic from `sender` to `receiver` under
/// `ring` (node ids are at most 255 bytes in the info; longer ids are cut,
/// which Shoal's 25-character ids never are). `None` only if ring refuses
/// a 32-byte HKDF output or AES key, which it does not: the caller then
/// has no key and sends nothing.
pub fn direction_key(ring: &RingKey, sender: &str, receiver: &str) -> Option<LessSafeKey> {
    let s = &sender.as_bytes()[..sender.len().min(255)];
    let r = &receiver.as_bytes()[..receiver.len().min(255)];
    let id = ring.id.to_be_bytes();
    let (sl, rl) = ([s.len() as u8], [r.len() as u8]);
    let info: [&[u8]; 5] = [&sl, s, &rl, r, &id];
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(&ring.key);
    let mut out = [0u8; 32];
    prk.expand(&info, Len32).ok()?.fill(&mut out).ok()?;
    UnboundKey::new(&AES_256_GCM, &out)
        .ok()
        .map(LessSafeKey::new)
}

/// Which ring key to send with: the second-newest (the newest reached
/// every node for receiving one rotation period before anyone sends with
/// it), else — when we are the one lagging a rotation behind the peer —
/// the newest; the first of those the peer advertises. An older key is
/// never used, so a node that missed two rotations stops receiving.
/// `ours` is newest first. `None`: nothing may be sent to this peer.
pub fn send_key(ours: &[u32], theirs: &[u32]) -> Option<u32> {
    let order: &[usize] = match ours.len() {
        0 => &[],
        1 => &[0],
        _ => &[1, 0],
    };
    order
        .iter()
        .map(|&i| ours[i])
        .find(|id| theirs.contains(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::aead::{Aad, Nonce};

    fn rk(id: u32, b: u8) -> RingKey {
        RingKey { id, key: [b; 32] }
    }

    fn roundtrip(tx: &LessSafeKey, rx: &LessSafeKey) -> bool {
        let mut buf = b"hello".to_vec();
        let n = || Nonce::assume_unique_for_key([0; 12]);
        tx.seal_in_place_append_tag(n(), Aad::empty(), &mut buf)
            .unwrap();
        rx.open_in_place(n(), Aad::empty(), &mut buf).is_ok()
    }

    #[test]
    fn both_ends_derive_the_same_direction_key() {
        let k = rk(9, 3);
        assert!(roundtrip(
            &direction_key(&k, "a", "b").unwrap(),
            &direction_key(&k, "a", "b").unwrap()
        ));
    }

    #[test]
    fn directions_pairs_and_ring_keys_all_differ() {
        let k = rk(9, 3);
        let ab = direction_key(&k, "a", "b").unwrap();
        let dk = |k: &RingKey, s: &str, r: &str| direction_key(k, s, r).unwrap();
        assert!(!roundtrip(&ab, &dk(&k, "b", "a")));
        assert!(!roundtrip(&ab, &dk(&k, "a", "c")));
        assert!(!roundtrip(&ab, &dk(&rk(9, 4), "a", "b")));
        assert!(!roundtrip(&ab, &dk(&rk(10, 3), "a", "b")));
        // The length prefixes keep ("ab", "c") and ("a", "bc") apart.
        assert!(!roundtrip(&dk(&k, "ab", "c"), &dk(&k, "a", "bc")));
    }

    #[test]
    fn the_second_newest_key_is_sent_when_the_peer_has_it() {
        assert_eq!(send_key(&[3, 2, 1], &[1, 2, 3]), Some(2));
        assert_eq!(send_key(&[3, 2], &[2, 3]), Some(2));
        assert_eq!(send_key(&[3], &[3]), Some(3));
    }

    #[test]
    fn a_peer_one_rotation_apart_either_way_gets_a_key_it_has() {
        // The peer has not received key 3 yet.
        assert_eq!(send_key(&[3, 2, 1], &[2, 1, 0]), Some(2));
        // We lag: the peer already has 4 (and dropped 1).
        assert_eq!(send_key(&[3, 2, 1], &[4, 3, 2]), Some(2));
        // We lag two rotations: only our newest is still in its ring.
        assert_eq!(send_key(&[3, 2, 1], &[5, 4, 3]), Some(3));
    }

    #[test]
    fn a_peer_two_rotations_behind_gets_nothing() {
        assert_eq!(send_key(&[5, 4, 3], &[3, 2, 1]), None);
    }

    #[test]
    fn nothing_is_sent_without_a_common_key() {
        assert_eq!(send_key(&[3, 2, 1], &[9, 8]), None);
        assert_eq!(send_key(&[3, 2, 1], &[]), None);
        assert_eq!(send_key(&[], &[1]), None);
    }
}
