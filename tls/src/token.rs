//! Join tokens in Docker's format, `SWMTKN-1-<digest>-<secret>`. The digest
//! pins the cluster CA (so a joining node trusts the right managers before it
//! has any certificate) and the secret proves the node may join with a role.
//! Tokens arrive from the CLI and from the network, so parsing never panics
//! and never echoes long hostile input.

use std::fmt;
use std::str::FromStr;

use crate::ids::{base36_decode, base36_encode, is_base36_id, random_id};

/// Base36 length of a SHA-256 digest in a token (36^50 > 2^256).
const DIGEST_LEN: usize = 50;
const PREFIX: &str = "SWMTKN-";
const VERSION: &str = "1";

/// SHA-256 of the cluster CA certificate (DER). A join token carries it so
/// that a joining node can recognise the cluster's CA in the manager's chain.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaDigest([u8; 32]);

impl CaDigest {
    /// The digest of a CA certificate given as DER.
    pub fn of(cert_der: &[u8]) -> CaDigest {
        let d = ring::digest::digest(&ring::digest::SHA256, cert_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        CaDigest(out)
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<[u8; 32]> for CaDigest {
    fn from(bytes: [u8; 32]) -> Self {
        CaDigest(bytes)
    }
}

impl fmt::Display for CaDigest {
    /// The token form: 50 lowercase base36 characters, zero-padded.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base36_encode(&self.0, DIGEST_LEN))
    }
}

impl fmt::Debug for CaDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaDigest({self})")
    }
}

impl FromStr for CaDigest {
    type Err = TokenError;

    /// Parses the 50-character base36 token form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != DIGEST_LEN {
            return Err(TokenError::BadDigest);
        }
        base36_decode::<32>(s)
            .map(CaDigest)
            .ok_or(TokenError::BadDigest)
    }
}

/// The secret half of a join token (one per role), stored in the cluster
/// object. Debug never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinSecret(String);

impl JoinSecret {
    /// A fresh secret: 25 base36 characters from 128 bits of OS randomness.
    pub fn generate() -> Self {
        JoinSecret(random_id())
    }

    /// The secret as text, for building the token and persisting it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compares a presented secret in constant time (for equal lengths), so
    /// that response timing does not leak how many characters matched.
    pub fn matches(&self, other: &str) -> bool {
        let a = self.0.as_bytes();
        let b = other.as_bytes();
        if a.len() != b.len() {
            return false;
        }
        let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for JoinSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinSecret(<redacted>)")
    }
}

impl FromStr for JoinSecret {
    type Err = TokenError;

    /// Accepts exactly 25 lowercase base36 characters (a persisted secret).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if is_base36_id(s) {
            Ok(JoinSecret(s.to_owned()))
        } else {
            Err(TokenError::BadSecret)
        }
    }
}

/// A join token: which CA to trust, and the secret that grants a role.
/// `Display` gives the token text; `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Digest of the cluster CA certificate the manager must present.
    pub digest: CaDigest,
    /// The role's join secret (25 base36 characters once parsed).
    pub secret: String,
}

impl JoinToken {
    /// The token for a CA digest and a role's secret.
    pub fn new(digest: CaDigest, secret: &JoinSecret) -> Self {
        JoinToken {
            digest,
            secret: secret.as_str().to_owned(),
        }
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{VERSION}-{}-{}", self.digest, self.secret)
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("digest", &self.digest)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why a string is not a usable join token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token does not start with `SWMTKN-`.
    #[error("invalid join token: it must start with SWMTKN- (copy it from `shoal swarm join-token worker` on a manager)")]
    WrongPrefix,
    /// The version field is not `1`.
    #[error("unsupported join token version {0:?}: this shoal understands SWMTKN-1 tokens only")]
    UnsupportedVersion(String),
    /// The digest field is not 50 base36 characters encoding a SHA-256.
    #[error("invalid join token: the CA digest must be 50 lowercase base36 characters")]
    BadDigest,
    /// The secret field is not 25 lowercase base36 characters.
    #[error("invalid join token: the secret must be 25 lowercase base36 characters")]
    BadSecret,
    /// The token does not have the `SWMTKN-1-<digest>-<secret>` shape.
    #[error("invalid join token: expected SWMTKN-1-<digest>-<secret>")]
    Malformed,
}

impl FromStr for JoinToken {
    type Err = TokenError;

    /// Parses `SWMTKN-1-<digest>-<secret>`; surrounding whitespace (a pasted
    /// newline) is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(TokenError::Malformed);
        }
        let rest = s.strip_prefix(PREFIX).ok_or(TokenError::WrongPrefix)?;
        let (version, rest) = rest.split_once('-').ok_or(TokenError::Malformed)?;
        if version != VERSION {
            return Err(TokenError::UnsupportedVersion(
                version.chars().take(16).collect(),
            ));
        }
        let (digest, secret) = rest.split_once('-').ok_or(TokenError::Malformed)?;
        if secret.contains('-') {
            return Err(TokenError::Malformed);
        }
        let digest: CaDigest = digest.parse()?;
        if !is_base36_id(secret) {
            return Err(TokenError::BadSecret);
        }
        Ok(JoinToken {
            digest,
            secret: secret.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn token() -> JoinToken {
        JoinToken::new(CaDigest::of(b"some ca"), &JoinSecret::generate())
    }

    #[test]
    fn round_trip() {
        let t = token();
        let text = t.to_string();
        assert_eq!(text.len(), 9 + 50 + 1 + 25);
        assert!(text.starts_with("SWMTKN-1-"));
        assert_eq!(text.parse::<JoinToken>().unwrap(), t);
        assert_eq!(format!("  {text}\n").parse::<JoinToken>().unwrap(), t);
        assert!(!format!("{t:?}").contains(&t.secret));
    }

    #[test]
    fn zero_and_max_digests_round_trip() {
        for bytes in [[0u8; 32], [0xff; 32]] {
            let t = JoinToken {
                digest: CaDigest::from(bytes),
                secret: JoinSecret::generate().as_str().to_owned(),
            };
            assert_eq!(t.to_string().parse::<JoinToken>().unwrap(), t);
        }
    }

    #[test]
    fn parse_errors() {
        let t = token();
        let d = t.digest.to_string();
        let s = t.secret.clone();
        let cases: Vec<(String, TokenError)> = vec![
            (String::new(), TokenError::Malformed),
            ("   ".into(), TokenError::Malformed),
            (format!("SWMTKX-1-{d}-{s}"), TokenError::WrongPrefix),
            (format!("swmtkn-1-{d}-{s}"), TokenError::WrongPrefix),
            (
                format!("SWMTKN-2-{d}-{s}"),
                TokenError::UnsupportedVersion("2".into()),
            ),
            ("SWMTKN-".into(), TokenError::Malformed),
            ("SWMTKN-1".into(), TokenError::Malformed),
            (format!("SWMTKN-1-{d}"), TokenError::Malformed),
            (format!("SWMTKN-1-{d}-{s}-extra"), TokenError::Malformed),
            (format!("SWMTKN-1-{}-{s}", &d[1..]), TokenError::BadDigest),
            (format!("SWMTKN-1-{d}0-{s}"), TokenError::BadDigest),
            (
                format!("SWMTKN-1-{}-{s}", d.to_uppercase()),
                TokenError::BadDigest,
            ),
            (
                format!("SWMTKN-1-{}-{s}", "z".repeat(50)),
                TokenError::BadDigest,
            ),
            (format!("SWMTKN-1-{d}-{}", &s[1..]), TokenError::BadSecret),
            (format!("SWMTKN-1-{d}-{s}x"), TokenError::BadSecret),
            (
                format!("SWMTKN-1-{d}-{}", s.to_uppercase()),
                TokenError::BadSecret,
            ),
            (format!("SWMTKN-1-{d}-"), TokenError::BadSecret),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<JoinToken>().unwrap_err(), want, "{input}");
        }
        assert!(TokenError::Malformed
            .to_string()
            .contains("expected SWMTKN-1-<digest>-<secret>"));
    }

    #[test]
    fn hostile_long_input_gives_short_errors() {
        let long = format!("SWMTKN-{}-x-y", "9".repeat(1_000_000));
        let err = long.parse::<JoinToken>().unwrap_err();
        assert!(matches!(err, TokenError::UnsupportedVersion(ref v) if v.len() == 16));
        assert!(err.to_string().len() < 200);
        let long = format!("SWMTKN-1-{}-{}", "a".repeat(1_000_000), "b".repeat(25));
        assert_eq!(
            long.parse::<JoinToken>().unwrap_err(),
            TokenError::BadDigest
        );
    }

    #[test]
    fn random_strings_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let valid = token().to_string();
        let charset: Vec<char> = "SWMTKN-1abz09é\u{0}-- ".chars().collect();
        for i in 0..20_000 {
            let s: String = if i % 2 == 0 {
                let len = rng.gen_range(0..120);
                (0..len)
                    .map(|_| charset[rng.gen_range(0..charset.len())])
                    .collect()
            } else {
                // Mutate a valid token: the interesting inputs are near-valid.
                let mut chars: Vec<char> = valid.chars().collect();
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(0..chars.len());
                    match rng.gen_range(0..3) {
                        0 => chars[at] = charset[rng.gen_range(0..charset.len())],
                        1 => {
                            chars.remove(at);
                        }
                        _ => chars.insert(at, charset[rng.gen_range(0..charset.len())]),
                    }
                }
                chars.into_iter().collect()
            };
            if let Ok(t) = s.parse::<JoinToken>() {
                assert_eq!(t.to_string(), s.trim());
            }
        }
    }

    #[test]
    fn secret_matches() {
        let s = JoinSecret::generate();
        assert!(s.matches(s.as_str()));
        assert!(!s.matches(""));
        assert!(!s.matches(JoinSecret::generate().as_str()));
        let mut almost = s.as_str().to_owned();
        almost.pop();
        almost.push(if s.as_str().ends_with('0') { '1' } else { '0' });
        assert!(!s.matches(&almost));
        assert!(!format!("{s:?}").contains(s.as_str()));
        assert_eq!(s.as_str().parse::<JoinSecret>().unwrap(), s);
    }
}
