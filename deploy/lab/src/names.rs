//! Names and addresses of everything a lab creates. Every kernel object
//! that is visible outside the lab's own namespaces (namespace names under
//! /run/netns, the lab directory) starts with the lab's random prefix, so
//! parallel labs cannot collide and cleanup never needs a pattern.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use rand::Rng;

/// Largest host count: addresses are 10.77.0.1 .. 10.77.0.250.
pub const MAX_HOSTS: usize = 250;

const PREFIX_HEAD: &str = "sl";
const PREFIX_RANDOM_LEN: usize = 6;
const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A fresh lab prefix: `sl` and six random lowercase letters or digits.
pub fn new_prefix(rng: &mut impl Rng) -> String {
    let mut s = String::from(PREFIX_HEAD);
    for _ in 0..PREFIX_RANDOM_LEN {
        let i = rng.gen_range(0..ALNUM.len());
        s.push(char::from(ALNUM[i]));
    }
    s
}

/// Whether `s` has the shape `new_prefix` produces (guards state files and
/// `gc` against deleting something that no lab named).
pub fn is_valid_prefix(s: &str) -> bool {
    s.len() == PREFIX_HEAD.len() + PREFIX_RANDOM_LEN
        && s.starts_with(PREFIX_HEAD)
        && s.bytes()
            .skip(PREFIX_HEAD.len())
            .all(|b| ALNUM.contains(&b))
}

/// Namespace holding the underlay bridge `ul0` (and `dp0`).
pub fn underlay_ns(prefix: &str) -> String {
    format!("{prefix}-ul")
}

/// Namespace of host `i` (1-based).
pub fn host_ns(prefix: &str, i: usize) -> String {
    format!("{prefix}-h{i}")
}

/// Underlay (control) address of host `i`: 10.77.0.i on eth0.
pub fn underlay_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, host_octet(i))
}

/// Data-path address of host `i`: 10.77.1.i on eth1.
pub fn data_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 1, host_octet(i))
}

fn host_octet(i: usize) -> u8 {
    // Callers validate 1..=MAX_HOSTS; clamp rather than panic.
    u8::try_from(i.clamp(1, MAX_HOSTS)).unwrap_or(1)
}

/// A host of the lab, 1-based: `h1`, `h2`, ... Accepts `3`, `h3` when parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(pub usize);

impl HostId {
    /// 1-based index.
    pub fn index(self) -> usize {
        self.0
    }
}

impl From<usize> for HostId {
    fn from(i: usize) -> Self {
        HostId(i)
    }
}

impl From<&HostId> for HostId {
    fn from(h: &HostId) -> Self {
        *h
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "h{}", self.0)
    }
}

/// A host name that is neither `hN` nor `N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a host name: use h1, h2, ... (or 1, 2, ...)")]
pub struct BadHostName(pub String);

impl FromStr for HostId {
    type Err = BadHostName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix('h').unwrap_or(s);
        match digits.parse::<usize>() {
            Ok(i) if i >= 1 && !digits.starts_with('+') => Ok(HostId(i)),
            _ => Err(BadHostName(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn prefixes_have_the_documented_shape_and_differ() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let a = new_prefix(&mut rng);
        let b = new_prefix(&mut rng);
        assert_ne!(a, b);
        for p in [&a, &b] {
            assert_eq!(p.len(), 8, "{p}");
            assert!(p.starts_with("sl"), "{p}");
            assert!(is_valid_prefix(p), "{p}");
            assert!(p
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        }
    }

    #[test]
    fn prefix_validation_rejects_foreign_names() {
        for bad in [
            "",
            "sl",
            "slABCDEF",
            "xx123456",
            "sl12345",
            "sl1234567",
            "sl12-456",
            "sl../../",
        ] {
            assert!(!is_valid_prefix(bad), "{bad}");
        }
        assert!(is_valid_prefix("sl0a9z00"));
    }

    #[test]
    fn names_and_addresses() {
        assert_eq!(underlay_ns("slabc123"), "slabc123-ul");
        assert_eq!(host_ns("slabc123", 4), "slabc123-h4");
        assert_eq!(underlay_addr(5), Ipv4Addr::new(10, 77, 0, 5));
        assert_eq!(data_addr(250), Ipv4Addr::new(10, 77, 1, 250));
    }

    #[test]
    fn host_ids_parse() {
        assert_eq!("h3".parse::<HostId>(), Ok(HostId(3)));
        assert_eq!("12".parse::<HostId>(), Ok(HostId(12)));
        assert_eq!(HostId(7).to_string(), "h7");
        for bad in ["", "h", "h0", "0", "x3", "h-1", "h+1", "h3x", "hh3"] {
            assert!(bad.parse::<HostId>().is_err(), "{bad}");
        }
    }
}
