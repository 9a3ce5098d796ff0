//! Reading identity out of node certificates: the node id (CN, or the
//! `shoal://node/<id>` URI SAN) and role (OU) that the CA wrote, and the
//! validity window that drives renewal. Certificates come from peers, so the
//! parser is x509-parser and every failure is an error, never a panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::TlsError;
use crate::ids::{NodeId, Role};

/// Prefix of the URI SAN that carries the node id.
pub const NODE_URI_PREFIX: &str = "shoal://node/";

/// What we learn from a peer's (or our own) certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The node the certificate was issued to.
    pub node_id: NodeId,
    /// The role the cluster granted when it issued the certificate.
    pub role: Role,
    /// Start of validity (already backdated for clock skew by the CA).
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

/// Parses a Shoal node certificate (DER) and returns its identity.
///
/// Fails for garbage, trailing bytes, certificates of other PKIs (no node id
/// or role), and certificates whose CN and URI SAN name different nodes.
pub fn cert_info(cert_der: &[u8]) -> Result<CertInfo, TlsError> {
    let cert = parse(cert_der)?;
    if cert.is_ca() {
        return Err(TlsError::NotShoalCert {
            reason: "it is a CA certificate, not a node certificate",
        });
    }

    let mut cn_id = None;
    for attr in cert.subject().iter_common_name() {
        let cn = attr.as_str().map_err(|_| TlsError::NotShoalCert {
            reason: "its common name is not text",
        })?;
        if cn_id.is_some() {
            return Err(TlsError::NotShoalCert {
                reason: "it has more than one common name",
            });
        }
        cn_id = Some(cn.parse::<NodeId>().map_err(|_| TlsError::NotShoalCert {
            reason: "its common name is not a node id",
        })?);
    }

    let mut uri_id = None;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::CertParse {
            reason: format!("subject alternative names: {e}"),
        })?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if let Some(id) = uri.strip_prefix(NODE_URI_PREFIX) {
                    if uri_id.is_some() {
                        return Err(TlsError::NotShoalCert {
                            reason: "it has more than one shoal://node/ URI",
                        });
                    }
                    uri_id = Some(id.parse::<NodeId>().map_err(|_| TlsError::NotShoalCert {
                        reason: "its shoal://node/ URI does not hold a node id",
                    })?);
                }
            }
        }
    }

    let node_id = match (cn_id, uri_id) {
        (Some(a), Some(b)) if a != b => {
            return Err(TlsError::NotShoalCert {
                reason: "its common name and shoal://node/ URI name different nodes",
            })
        }
        (Some(a), _) => a,
        (None, Some(b)) => b,
        (None, None) => {
            return Err(TlsError::NotShoalCert {
                reason: "it carries no node id (no CN or shoal://node/ URI)",
            })
        }
    };

    let mut role = None;
    for attr in cert.subject().iter_organizational_unit() {
        let ou = attr.as_str().map_err(|_| TlsError::NotShoalCert {
            reason: "its organizational unit is not text",
        })?;
        if role.is_some() {
            return Err(TlsError::NotShoalCert {
                reason: "it has more than one organizational unit",
            });
        }
        role = Some(ou.parse::<Role>().map_err(|_| TlsError::NotShoalCert {
            reason: "its organizational unit is not a role (manager or worker)",
        })?);
    }
    let role = role.ok_or(TlsError::NotShoalCert {
        reason: "it carries no role (organizational unit)",
    })?;

    let validity = cert.validity();
    Ok(CertInfo {
        node_id,
        role,
        not_before: unix_to_system(validity.not_before.timestamp())?,
        not_after: unix_to_system(validity.not_after.timestamp())?,
    })
}

/// True when less than a third of the certificate's lifetime is left (or it
/// has expired, or its validity is empty): the node should request a new
/// certificate now. `now` is a parameter so the schedule is testable.
pub fn needs_renewal(info: &CertInfo, now: SystemTime) -> bool {
    let Ok(lifetime) = info.not_after.duration_since(info.not_before) else {
        return true;
    };
    match info.not_after.duration_since(now) {
        Ok(left) => left < lifetime / 3,
        Err(_) => true,
    }
}

/// Parses a DER certificate strictly (no trailing bytes).
pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, TlsError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| TlsError::CertParse {
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(TlsError::CertParse {
            reason: format!("{} unexpected bytes after the certificate", rest.len()),
        });
    }
    Ok(cert)
}

fn unix_to_system(secs: i64) -> Result<SystemTime, TlsError> {
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    };
    t.ok_or_else(|| TlsError::CertParse {
        reason: format!("validity time {secs} is out of range"),
    })
}

/// RFC 3339 (UTC, seconds) for error messages.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(lifetime_days: u64) -> CertInfo {
        let nb = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        CertInfo {
            node_id: NodeId::generate(),
            role: Role::Worker,
            not_before: nb,
            not_after: nb + Duration::from_secs(lifetime_days * 86_400),
        }
    }

    #[test]
    fn renewal_schedule() {
        let i = info(90);
        let day = |d: u64| i.not_before + Duration::from_secs(d * 86_400);
        assert!(!needs_renewal(&i, i.not_before - Duration::from_secs(3600)));
        assert!(!needs_renewal(&i, i.not_before));
        assert!(!needs_renewal(&i, day(30)));
        assert!(!needs_renewal(&i, day(59)));
        assert!(!needs_renewal(&i, day(60)), "exactly a third left");
        assert!(needs_renewal(&i, day(60) + Duration::from_secs(1)));
        assert!(needs_renewal(&i, day(89)));
        assert!(needs_renewal(&i, i.not_after));
        assert!(needs_renewal(&i, day(1000)));
        let mut broken = i.clone();
        broken.not_after = broken.not_before - Duration::from_secs(1);
        assert!(needs_renewal(&broken, broken.not_before));
    }

    #[test]
    fn garbage_is_an_error() {
        for bytes in [
            &b""[..],
            b"\x30",
            b"\x30\x82\xff\xff",
            b"hello world",
            &[0u8; 100],
        ] {
            assert!(matches!(cert_info(bytes), Err(TlsError::CertParse { .. })));
        }
    }

    #[test]
    fn times_format() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        assert!(unix_to_system(-86_400).is_ok());
    }
}
