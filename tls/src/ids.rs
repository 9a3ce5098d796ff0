//! Node identities and roles as they appear in certificates, the store and
//! the CLI. Ids use Docker's format (25 lowercase base36 characters from 128
//! random bits) so they look familiar in `shoal node ls`.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Length of a node id and of a join secret: 128 bits in base36.
pub(crate) const ID_LEN: usize = 25;

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Encodes a big-endian unsigned integer in lowercase base36, zero-padded on
/// the left to `width` characters (Docker's `%0*s` of `big.Int.Text(36)`).
pub(crate) fn base36_encode(bytes: &[u8], width: usize) -> String {
    let mut num = bytes.to_vec();
    let mut digits = Vec::new();
    while num.iter().any(|&b| b != 0) {
        let mut rem: u32 = 0;
        for b in num.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            // cur < 36 * 256, so the quotient fits a byte.
            *b = (cur / 36) as u8;
            rem = cur % 36;
        }
        digits.push(ALPHABET[rem as usize]);
    }
    while digits.len() < width {
        digits.push(b'0');
    }
    digits.reverse();
    digits.into_iter().map(char::from).collect()
}

/// Decodes lowercase base36 into a big-endian integer of exactly `N` bytes;
/// `None` on a character outside `[0-9a-z]` or a value that does not fit.
pub(crate) fn base36_decode<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    for c in s.bytes() {
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'z' => c - b'a' + 10,
            _ => return None,
        };
        let mut carry = u32::from(digit);
        for b in out.iter_mut().rev() {
            let cur = u32::from(*b) * 36 + carry;
            *b = (cur & 0xff) as u8;
            carry = cur >> 8;
        }
        if carry != 0 {
            return None;
        }
    }
    Some(out)
}

/// True if `s` is exactly [`ID_LEN`] lowercase base36 characters.
pub(crate) fn is_base36_id(s: &str) -> bool {
    s.len() == ID_LEN
        && s.bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
}

/// 25 random base36 characters from 128 bits of OS randomness.
pub(crate) fn random_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base36_encode(&bytes, ID_LEN)
}

/// A node's cluster-wide identity: 25 lowercase base36 characters, as in
/// Docker. It is the CN of the node's certificate, so it is validated
/// whenever it is parsed from the outside.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    /// A fresh random id (128 bits of OS randomness), made by a manager when
    /// a node joins.
    pub fn generate() -> NodeId {
        NodeId(random_id())
    }

    /// The id as text, for logs, tables and certificate names.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A string was not a valid node id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node id {shown:?}: expected 25 lowercase base36 characters (0-9, a-z)")]
pub struct InvalidNodeId {
    /// The offending input, truncated to keep error messages short.
    pub shown: String,
}

impl FromStr for NodeId {
    type Err = InvalidNodeId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if is_base36_id(s) {
            Ok(NodeId(s.to_owned()))
        } else {
            Err(InvalidNodeId {
                shown: s.chars().take(40).collect(),
            })
        }
    }
}

impl TryFrom<String> for NodeId {
    type Error = InvalidNodeId;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

/// What a node may do in the cluster; written into its certificate (OU) by
/// the CA so that peers can check it (only managers speak Raft).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs Raft, the scheduler and the dispatcher; also runs tasks.
    Manager,
    /// Runs tasks only.
    Worker,
}

impl Role {
    /// The lowercase name used in certificates, the CLI and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string was neither `manager` nor `worker`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid role {shown:?}: expected \"manager\" or \"worker\"")]
pub struct InvalidRole {
    /// The offending input, truncated.
    pub shown: String,
}

impl FromStr for Role {
    type Err = InvalidRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "manager" => Ok(Role::Manager),
            "worker" => Ok(Role::Worker),
            _ => Err(InvalidRole {
                shown: s.chars().take(40).collect(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_round_trip_and_padding() {
        assert_eq!(base36_encode(&[0u8; 4], 5), "00000");
        assert_eq!(base36_encode(&[0, 35], 3), "00z");
        assert_eq!(base36_encode(&[0, 36], 0), "10");
        let max = [0xffu8; 32];
        let s = base36_encode(&max, 50);
        assert_eq!(s.len(), 50);
        assert_eq!(base36_decode::<32>(&s), Some(max));
        // One more than 2^256 - 1 does not fit.
        assert_eq!(base36_decode::<32>(&"z".repeat(50)), None);
        assert_eq!(base36_decode::<4>("A"), None);
        assert_eq!(
            base36_decode::<16>(&base36_encode(&[0xff; 16], 25)),
            Some([0xff; 16])
        );
    }

    #[test]
    fn node_id_generate_parse_serde() {
        let id = NodeId::generate();
        assert_eq!(id.as_str().len(), ID_LEN);
        assert_eq!(id.as_str().parse::<NodeId>().unwrap(), id);
        assert_ne!(NodeId::generate(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<NodeId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<NodeId>("\"nope\"").is_err());
        assert_eq!(serde_json::to_string(&Role::Worker).unwrap(), "\"worker\"");
        assert!("ABCDEFGHIJKLMNOPQRSTUVWXY".parse::<NodeId>().is_err());
        assert!("short".parse::<NodeId>().is_err());
        assert!("".parse::<NodeId>().is_err());
        assert!("é".repeat(25).parse::<NodeId>().is_err());
        let err = "x".repeat(10_000).parse::<NodeId>().unwrap_err();
        assert!(err.to_string().len() < 200);
    }

    #[test]
    fn role_text() {
        assert_eq!(Role::Manager.to_string(), "manager");
        assert_eq!("worker".parse::<Role>().unwrap(), Role::Worker);
        assert!("Admin".parse::<Role>().is_err());
    }
}
