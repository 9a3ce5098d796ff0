//! Entry authentication: every replicated table entry carries its owner's
//! signature, so a member can write only its own entries — holding the
//! cluster's gossip key (every member does) is not enough to forge, erase
//! or freeze another node's entries.
//!
//! The crate signs and verifies through [`EntryAuth`]; the agent supplies
//! the keys ([`Ed25519Auth`]: this node's signing key, and the public key
//! of every member as registered in the replicated store, bound there to
//! the node's certificate). Without an `EntryAuth` (the simulation, unit
//! tests) entries are unsigned and trusted.

use std::collections::HashMap;
use std::sync::RwLock;

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

/// What a signature check said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthVerdict {
    /// Signed by the owner.
    Valid,
    /// Not the owner's signature: forged or damaged.
    Invalid,
    /// No key is known for the owner (not yet, or no longer a member).
    UnknownOwner,
}

/// Signs this node's entries and checks everyone else's.
pub trait EntryAuth: Send + Sync + 'static {
    /// Sign `msg` with this node's key.
    fn sign(&self, msg: &[u8]) -> Vec<u8>;
    /// Check `sig` over `msg` by `owner`.
    fn verify(&self, owner: &str, msg: &[u8], sig: &[u8]) -> AuthVerdict;
}

/// [`EntryAuth`] with Ed25519 keys (ring).
pub struct Ed25519Auth {
    key: Ed25519KeyPair,
    peers: RwLock<HashMap<String, Vec<u8>>>,
}

impl std::fmt::Debug for Ed25519Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ed25519Auth").finish_non_exhaustive()
    }
}

/// Why a signing key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("gossip signing key: {0}")]
pub struct KeyError(String);

impl Ed25519Auth {
    /// A fresh PKCS#8 document for a new signing key (to keep on disk).
    pub fn generate_pkcs8() -> Result<Vec<u8>, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|d| d.as_ref().to_vec())
            .map_err(|e| KeyError(e.to_string()))
    }

    /// This node's signer from its PKCS#8 document; no peers known yet.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Ed25519Auth, KeyError> {
        let key = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| KeyError(e.to_string()))?;
        Ok(Ed25519Auth {
            key,
            peers: RwLock::new(HashMap::new()),
        })
    }

    /// This node's public key (32 bytes), to register with the managers.
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    /// The known members' public keys.
    pub fn peers(&self) -> HashMap<String, Vec<u8>> {
        self.peers.read().map(|p| p.clone()).unwrap_or_default()
    }

    /// Replace the known members' public keys (node id -> key). Returns
    /// whether anything changed.
    pub fn set_peers(&self, peers: HashMap<String, Vec<u8>>) -> bool {
        match self.peers.write() {
            Ok(mut p) if *p != peers => {
                *p = peers;
                true
            }
            _ => false,
        }
    }
}

impl EntryAuth for Ed25519Auth {
    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.key.sign(msg).as_ref().to_vec()
    }

    fn verify(&self, owner: &str, msg: &[u8], sig: &[u8]) -> AuthVerdict {
        let Ok(peers) = self.peers.read() else {
            return AuthVerdict::UnknownOwner;
        };
        let Some(pk) = peers.get(owner) else {
            return AuthVerdict::UnknownOwner;
        };
        match UnparsedPublicKey::new(&ED25519, pk).verify(msg, sig) {
            Ok(()) => AuthVerdict::Valid,
            Err(_) => AuthVerdict::Invalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Ed25519Auth {
        Ed25519Auth::from_pkcs8(&Ed25519Auth::generate_pkcs8().unwrap()).unwrap()
    }

    #[test]
    fn only_the_owners_key_verifies() {
        let (a, b) = (auth(), auth());
        let peers: HashMap<_, _> = [
            ("a".to_string(), a.public_key()),
            ("b".to_string(), b.public_key()),
        ]
        .into();
        a.set_peers(peers.clone());
        let sig = b.sign(b"entry");
        assert_eq!(a.verify("b", b"entry", &sig), AuthVerdict::Valid);
        // b's signature claimed as a's, a changed message, a short one.
        assert_eq!(a.verify("a", b"entry", &sig), AuthVerdict::Invalid);
        assert_eq!(a.verify("b", b"entrY", &sig), AuthVerdict::Invalid);
        assert_eq!(a.verify("b", b"entry", &sig[..10]), AuthVerdict::Invalid);
        assert_eq!(a.verify("c", b"entry", &sig), AuthVerdict::UnknownOwner);
        assert!(!a.set_peers(peers), "same keys: no change");
    }

    #[test]
    fn a_bad_key_document_is_an_error() {
        assert!(Ed25519Auth::from_pkcs8(b"not a key").is_err());
    }
}
