//! The cluster root CA and node keys. The CA lives in the replicated store
//! (managers only) and signs CSRs from joining or renewing nodes; the node key
//! is made on the node and never leaves it. The CA decides every name in a
//! node certificate: nothing a node writes in its CSR is copied.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivatePkcs8KeyDer};

use crate::cert::{parse, NODE_URI_PREFIX};
use crate::error::TlsError;
use crate::ids::{NodeId, Role};
use crate::token::CaDigest;

/// How long node certificates are valid unless the cluster configures
/// otherwise (Docker's default); renewal starts when a third is left.
pub const DEFAULT_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 60 * 60);

/// How long the root CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 60 * 60);

/// Certificates start this long before "now" so that peers whose clocks are
/// a little behind accept them.
pub const CLOCK_SKEW_BACKDATE: Duration = Duration::from_secs(5 * 60);

/// DNS SAN every manager certificate carries; clients dial managers with it.
pub const MANAGER_SERVER_NAME: &str = "shoal-manager";
/// DNS SAN every worker certificate carries.
pub const WORKER_SERVER_NAME: &str = "shoal-worker";
/// DNS SAN every node certificate carries, whatever its role; use it to
/// dial a peer when any cluster member is acceptable.
pub const NODE_SERVER_NAME: &str = "shoal-node";

/// The cluster root CA: certificate plus signing key. Cheap to clone; the
/// key is shared. `Debug` never shows the key.
#[derive(Clone)]
pub struct ClusterCa {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key: Arc<KeyPair>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("digest", &self.digest())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ClusterCa {
    /// A new root CA for a new cluster (`swarm init`): ECDSA P-256,
    /// CA:TRUE, 20 years, CN `shoal-ca-<cluster_id>`.
    pub fn generate(cluster_id: &str) -> Result<ClusterCa, TlsError> {
        let key = KeyPair::generate().map_err(|source| TlsError::Generate {
            what: "cluster CA key",
            source,
        })?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("shoal-ca-{cluster_id}"));
        dn.push(DnType::OrganizationName, "shoal");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let (nb, na) = validity_window(SystemTime::now(), CA_VALIDITY)?;
        params.not_before = nb;
        params.not_after = na;
        let cert = params
            .self_signed(&key)
            .map_err(|source| TlsError::Generate {
                what: "cluster CA certificate",
                source,
            })?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key: Arc::new(key),
        })
    }

    /// Loads a CA persisted with [`cert_pem`](Self::cert_pem) and
    /// [`key_pem`](Self::key_pem); checks that the certificate is a CA and
    /// that the key is its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, TlsError> {
        let cert_der = first_cert(cert_pem, "cluster CA certificate")?;
        let key = KeyPair::from_pem(key_pem).map_err(|source| TlsError::Key {
            item: "cluster CA key",
            source,
        })?;
        {
            let x509 = parse(&cert_der)?;
            if !x509.is_ca() {
                return Err(TlsError::NotCa);
            }
            if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
                return Err(TlsError::KeyMismatch { what: "cluster CA" });
            }
        }
        let cert_pem = pem_encode("CERTIFICATE", &cert_der);
        Ok(ClusterCa {
            cert_der,
            cert_pem,
            key: Arc::new(key),
        })
    }

    /// The CA certificate in PEM, to persist and to hand to nodes.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA private key in PKCS#8 PEM. Secret: store it only in the
    /// replicated store / a 0600 file on managers.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The CA certificate in DER, the form rustls and the token digest use.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// The digest that join tokens carry to pin this CA.
    pub fn digest(&self) -> CaDigest {
        CaDigest::of(&self.cert_der)
    }

    /// Signs a node's CSR (DER) with the identity the cluster decided.
    ///
    /// Subject and SANs are replaced: CN = node id, OU = role, SAN URI
    /// `shoal://node/<id>`, SAN DNS `shoal-manager` or `shoal-worker` plus
    /// `shoal-node`; client and server auth. Only the CSR's public key is
    /// used, after its self-signature proves the node holds the private key.
    /// Validity starts [`CLOCK_SKEW_BACKDATE`] in the past.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        node: &NodeId,
        role: Role,
        validity: Duration,
    ) -> Result<CertificateDer<'static>, TlsError> {
        self.sign_csr_at(csr_der, node, role, validity, SystemTime::now())
    }

    /// [`sign_csr`](Self::sign_csr) with an explicit "now", for tests and
    /// simulations.
    pub fn sign_csr_at(
        &self,
        csr_der: &[u8],
        node: &NodeId,
        role: Role,
        validity: Duration,
        now: SystemTime,
    ) -> Result<CertificateDer<'static>, TlsError> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|source| TlsError::Csr { source })?;

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node.as_str());
        dn.push(DnType::OrganizationalUnitName, role.as_str());
        params.distinguished_name = dn;
        let role_name = match role {
            Role::Manager => MANAGER_SERVER_NAME,
            Role::Worker => WORKER_SERVER_NAME,
        };
        params.subject_alt_names = vec![
            SanType::URI(ia5(&format!("{NODE_URI_PREFIX}{node}"))?),
            SanType::DnsName(ia5(role_name)?),
            SanType::DnsName(ia5(NODE_SERVER_NAME)?),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let (nb, na) = validity_window(now, validity)?;
        params.not_before = nb;
        params.not_after = na;

        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &*self.key).map_err(|source| {
            TlsError::Generate {
                what: "CA issuer from the cluster CA certificate",
                source,
            }
        })?;
        let cert = params
            .signed_by(&csr.public_key, &issuer)
            .map_err(|source| TlsError::Generate {
                what: "node certificate",
                source,
            })?;
        Ok(cert.der().clone())
    }
}

/// A node's private key (ECDSA P-256), generated on the node; only its CSR
/// leaves the machine. Cheap to clone; `Debug` never shows the key.
#[derive(Clone)]
pub struct NodeKey {
    key: Arc<KeyPair>,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeKey(<redacted>)")
    }
}

impl NodeKey {
    /// A fresh key, made before joining or when renewing.
    pub fn generate() -> Result<NodeKey, TlsError> {
        let key = KeyPair::generate().map_err(|source| TlsError::Generate {
            what: "node key",
            source,
        })?;
        Ok(NodeKey { key: Arc::new(key) })
    }

    /// Loads a key persisted with [`to_pem`](Self::to_pem).
    pub fn from_pem(pem: &str) -> Result<NodeKey, TlsError> {
        let key = KeyPair::from_pem(pem).map_err(|source| TlsError::Key {
            item: "node key",
            source,
        })?;
        Ok(NodeKey { key: Arc::new(key) })
    }

    /// The key in PKCS#8 PEM. Secret: write it to a 0600 file only.
    pub fn to_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A CSR (DER) to send to a manager with the join token. It names no
    /// identity; the CA decides that.
    pub fn csr_der(&self) -> Result<Vec<u8>, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let csr = params
            .serialize_request(&*self.key)
            .map_err(|source| TlsError::Generate {
                what: "certificate signing request",
                source,
            })?;
        Ok(csr.der().to_vec())
    }

    /// The raw public key, to match against a certificate.
    pub(crate) fn public_key_raw(&self) -> &[u8] {
        self.key.public_key_raw()
    }

    /// The key in the form rustls wants.
    pub(crate) fn private_key_der(&self) -> rustls_pki_types::PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key.serialize_der()).into()
    }
}

/// Reads the first certificate of a PEM document.
pub(crate) fn first_cert(
    pem: &str,
    item: &'static str,
) -> Result<CertificateDer<'static>, TlsError> {
    match CertificateDer::pem_slice_iter(pem.as_bytes()).next() {
        Some(Ok(der)) => Ok(der),
        Some(Err(source)) => Err(TlsError::Pem { item, source }),
        None => Err(TlsError::PemEmpty {
            item,
            expected: "CERTIFICATE",
        }),
    }
}

/// Reads every certificate of a PEM document (e.g. several trusted roots
/// during CA rotation).
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            item: "certificate",
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::PemEmpty {
            item: "certificate",
            expected: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// Encodes a certificate as PEM, to persist a node certificate.
pub fn cert_to_pem(cert: &CertificateDer<'_>) -> String {
    pem_encode("CERTIFICATE", cert)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64_lite::encode;
    let b64 = encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Standard base64 with padding; just enough for PEM output.
mod base64_lite {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub(super) fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [
                chunk.first().copied().unwrap_or(0),
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(TABLE[((n >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

fn ia5(s: &str) -> Result<rcgen::string::Ia5String, TlsError> {
    rcgen::string::Ia5String::try_from(s).map_err(|source| TlsError::Generate {
        what: "certificate subject alternative name",
        source,
    })
}

/// 16 random bytes, high bit cleared so the DER integer stays positive.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// `[now - backdate, now + validity]`, truncated to whole seconds, or an
/// error for a validity X.509 cannot express.
fn validity_window(
    now: SystemTime,
    validity: Duration,
) -> Result<(time::OffsetDateTime, time::OffsetDateTime), TlsError> {
    let bad = || TlsError::InvalidValidity {
        seconds: validity.as_secs(),
    };
    if validity.is_zero() {
        return Err(bad());
    }
    let now = time::OffsetDateTime::from(now)
        .replace_nanosecond(0)
        .map_err(|_| bad())?;
    let skew = time::Duration::try_from(CLOCK_SKEW_BACKDATE).map_err(|_| bad())?;
    let span = time::Duration::try_from(validity).map_err(|_| bad())?;
    let nb = now.checked_sub(skew).ok_or_else(bad)?;
    let na = now.checked_add(span).ok_or_else(bad)?;
    if na.year() > 9999 {
        return Err(bad());
    }
    Ok((nb, na))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::cert_info;
    use x509_parser::extensions::GeneralName;

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64_lite::encode(b""), "");
        assert_eq!(base64_lite::encode(b"f"), "Zg==");
        assert_eq!(base64_lite::encode(b"fo"), "Zm8=");
        assert_eq!(base64_lite::encode(b"foo"), "Zm9v");
        assert_eq!(base64_lite::encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn ca_pem_round_trip() {
        let ca = ClusterCa::generate("c1").unwrap();
        let back = ClusterCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(back.cert_der(), ca.cert_der());
        assert_eq!(back.digest(), ca.digest());
        assert_eq!(back.key_pem(), ca.key_pem());
        assert_eq!(cert_to_pem(&ca.cert_der()), ca.cert_pem());
        let dbg = format!("{ca:?}");
        assert!(!dbg.contains("PRIVATE"), "{dbg}");

        let parsed = parse(&ca.cert_der).unwrap();
        assert!(parsed.is_ca());
        let cn = parsed.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "shoal-ca-c1");
        let v = parsed.validity();
        let years = (v.not_after.timestamp() - v.not_before.timestamp()) / (365 * 86_400);
        assert_eq!(years, 20);
        // A restored CA can sign.
        let key = NodeKey::generate().unwrap();
        let cert = back
            .sign_csr(
                &key.csr_der().unwrap(),
                &NodeId::generate(),
                Role::Worker,
                DEFAULT_CERT_VALIDITY,
            )
            .unwrap();
        assert_eq!(cert_info(&cert).unwrap().role, Role::Worker);
    }

    #[test]
    fn from_pem_rejects_mismatch_and_garbage() {
        let a = ClusterCa::generate("a").unwrap();
        let b = ClusterCa::generate("b").unwrap();
        assert!(matches!(
            ClusterCa::from_pem(&a.cert_pem(), &b.key_pem()),
            Err(TlsError::KeyMismatch { .. })
        ));
        assert!(matches!(
            ClusterCa::from_pem("", &a.key_pem()),
            Err(TlsError::PemEmpty { .. })
        ));
        assert!(matches!(
            ClusterCa::from_pem(&a.cert_pem(), "garbage"),
            Err(TlsError::Key { .. })
        ));
        // A node certificate is not a CA.
        let key = NodeKey::generate().unwrap();
        let leaf = a
            .sign_csr(
                &key.csr_der().unwrap(),
                &NodeId::generate(),
                Role::Manager,
                DEFAULT_CERT_VALIDITY,
            )
            .unwrap();
        assert!(matches!(
            ClusterCa::from_pem(&cert_to_pem(&leaf), &key.to_pem()),
            Err(TlsError::NotCa)
        ));
    }

    #[test]
    fn csr_names_are_replaced_by_the_cluster() {
        let ca = ClusterCa::generate("c1").unwrap();
        // A hostile worker asks to be "admin" and a manager.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![MANAGER_SERVER_NAME.to_string()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "admin");
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "manager");
        params.subject_alt_names.push(SanType::URI(
            ia5("shoal://node/aaaaaaaaaaaaaaaaaaaaaaaaa").unwrap(),
        ));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = params.serialize_request(&key).unwrap();
        let node = NodeId::generate();
        let cert = ca
            .sign_csr(csr.der(), &node, Role::Worker, DEFAULT_CERT_VALIDITY)
            .unwrap();

        let info = cert_info(&cert).unwrap();
        assert_eq!(info.node_id, node);
        assert_eq!(info.role, Role::Worker);
        let lifetime = info.not_after.duration_since(info.not_before).unwrap();
        assert_eq!(lifetime, DEFAULT_CERT_VALIDITY + CLOCK_SKEW_BACKDATE);

        let x = parse(&cert).unwrap();
        assert!(!x.is_ca());
        let cns: Vec<_> = x
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(cns, vec![node.as_str()]);
        let san = x.subject_alternative_name().unwrap().unwrap();
        let mut dns = Vec::new();
        let mut uris = Vec::new();
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::URI(u) => uris.push(u.to_string()),
                other => panic!("unexpected SAN {other:?}"),
            }
        }
        assert_eq!(dns, vec![WORKER_SERVER_NAME, NODE_SERVER_NAME]);
        assert_eq!(uris, vec![format!("shoal://node/{node}")]);
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        // The key in the certificate is the CSR's.
        assert_eq!(
            x.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
    }

    #[test]
    fn hostile_csrs_are_errors() {
        let ca = ClusterCa::generate("c1").unwrap();
        let node = NodeId::generate();
        let good = NodeKey::generate().unwrap().csr_der().unwrap();
        let mut tampered = good.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let mut inputs: Vec<Vec<u8>> = vec![vec![], vec![0x30], b"garbage".to_vec(), tampered];
        for cut in [1, 10, good.len() / 2, good.len() - 1] {
            inputs.push(good[..cut].to_vec());
        }
        for input in inputs {
            assert!(matches!(
                ca.sign_csr(&input, &node, Role::Manager, DEFAULT_CERT_VALIDITY),
                Err(TlsError::Csr { .. })
            ));
        }
        // Flip every byte of a good CSR once: never a panic.
        for i in 0..good.len() {
            let mut m = good.clone();
            m[i] ^= 0xa5;
            let _ = ca.sign_csr(&m, &node, Role::Manager, DEFAULT_CERT_VALIDITY);
        }
    }

    #[test]
    fn absurd_validity_is_an_error() {
        let ca = ClusterCa::generate("c1").unwrap();
        let csr = NodeKey::generate().unwrap().csr_der().unwrap();
        let node = NodeId::generate();
        for v in [
            Duration::ZERO,
            Duration::MAX,
            Duration::from_secs(10_000 * 365 * 86_400),
        ] {
            assert!(matches!(
                ca.sign_csr(&csr, &node, Role::Worker, v),
                Err(TlsError::InvalidValidity { .. })
            ));
        }
    }

    #[test]
    fn node_key_pem_round_trip() {
        let k = NodeKey::generate().unwrap();
        let back = NodeKey::from_pem(&k.to_pem()).unwrap();
        assert_eq!(back.public_key_raw(), k.public_key_raw());
        assert_eq!(format!("{k:?}"), "NodeKey(<redacted>)");
        assert!(NodeKey::from_pem("nope").is_err());
    }
}
