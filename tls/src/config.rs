//! rustls configurations for every TLS and QUIC endpoint of the cluster:
//! mutual TLS between members, optional client auth where joining nodes
//! (no certificate yet) connect, and the CA-pinning client a joining node
//! uses with its join token. All configs use the ring provider explicitly
//! and TLS 1.3 only (QUIC needs it, and the cluster has no legacy peers).

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, Error as RustlsError, OtherError, RootCertStore,
    SignatureScheme,
};

use crate::ca::{certs_from_pem, first_cert, NodeKey};
use crate::cert::{cert_info, parse, rfc3339, CertInfo};
use crate::error::TlsError;
use crate::token::CaDigest;

/// Installs ring as the process-wide rustls provider, for libraries (quinn)
/// that build configs from the default provider. Safe to call many times.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn alpn_vec(alpn: &[&[u8]]) -> Vec<Vec<u8>> {
    alpn.iter().map(|p| p.to_vec()).collect()
}

fn root_store(roots: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone())?;
    }
    Ok(store)
}

fn client_verifier(
    roots: &[CertificateDer<'static>],
    optional: bool,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(roots)?), provider());
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder.build().map_err(|e| TlsError::Verifier {
        reason: e.to_string(),
    })
}

fn unix_time(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// Everything a node needs for TLS: its certificate, key, and the trusted
/// roots (more than one during CA rotation: keep old and new until every
/// node has a certificate from the new CA).
#[derive(Clone)]
pub struct NodeIdentity {
    /// This node's certificate (DER).
    pub cert: CertificateDer<'static>,
    /// This node's private key.
    pub key: NodeKey,
    /// Trusted cluster root CAs.
    pub roots: Vec<CertificateDer<'static>>,
    /// Identity parsed from `cert`.
    pub info: CertInfo,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("info", &self.info)
            .field("roots", &self.roots.len())
            .field("key", &self.key)
            .finish()
    }
}

impl NodeIdentity {
    /// Checks that `cert` is a Shoal node certificate, matches `key`, and
    /// chains to one of `roots` now (expired or not-yet-valid certificates
    /// are reported as such).
    pub fn new(
        cert: CertificateDer<'static>,
        key: NodeKey,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, TlsError> {
        Self::new_at(cert, key, roots, SystemTime::now())
    }

    /// [`new`](Self::new) with an explicit "now", for tests and simulations.
    pub fn new_at(
        cert: CertificateDer<'static>,
        key: NodeKey,
        roots: Vec<CertificateDer<'static>>,
        now: SystemTime,
    ) -> Result<Self, TlsError> {
        let info = cert_info(&cert)?;
        {
            let x509 = parse(&cert)?;
            if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
                return Err(TlsError::KeyMismatch { what: "node" });
            }
        }
        let identity = NodeIdentity {
            cert,
            key,
            roots,
            info,
        };
        identity.issuing_root(now)?;
        Ok(identity)
    }

    /// Loads an identity persisted as PEM: the node certificate, its key, and
    /// one PEM document holding every trusted root.
    pub fn from_pem(cert_pem: &str, key_pem: &str, roots_pem: &str) -> Result<Self, TlsError> {
        let cert = first_cert(cert_pem, "node certificate")?;
        let key = NodeKey::from_pem(key_pem)?;
        let roots = certs_from_pem(roots_pem)?;
        Self::new(cert, key, roots)
    }

    /// The root among `roots` that signed our certificate, checked at `now`.
    fn issuing_root(&self, now: SystemTime) -> Result<&CertificateDer<'static>, TlsError> {
        if self.roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
        let mut last = None;
        for root in &self.roots {
            let verifier = client_verifier(std::slice::from_ref(root), false)?;
            match verifier.verify_client_cert(&self.cert, &[], unix_time(now)) {
                Ok(_) => return Ok(root),
                Err(RustlsError::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. },
                )) => {
                    return Err(TlsError::Expired {
                        not_after: rfc3339(self.info.not_after),
                    })
                }
                Err(RustlsError::InvalidCertificate(
                    CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
                )) => {
                    return Err(TlsError::NotYetValid {
                        not_before: rfc3339(self.info.not_before),
                    })
                }
                Err(e) => last = Some(e),
            }
        }
        Err(TlsError::NotSignedByRoots {
            reason: last.map(|e| e.to_string()).unwrap_or_default(),
        })
    }

    /// The chain we present: our certificate, then the root that issued it
    /// (so a joining node can match the root against its token's digest).
    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let root = self.issuing_root(SystemTime::now())?.clone();
        Ok(vec![self.cert.clone(), root])
    }

    /// Server config for TCP/UDP 2377 where joining nodes connect: client
    /// certificates are verified against the roots when presented, but are
    /// optional (a joining node has none yet; check [`peer_info`] before
    /// serving anything but the join call).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        self.server_config_with(alpn, true)
    }

    /// Server config that requires a client certificate chaining to the
    /// roots (Raft between managers, node sessions).
    pub fn server_config_mtls(
        &self,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        self.server_config_with(alpn, false)
    }

    fn server_config_with(
        &self,
        alpn: &[&[u8]],
        optional: bool,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let verifier = client_verifier(&self.roots, optional)?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain()?, self.key.private_key_der())?;
        config.alpn_protocols = alpn_vec(alpn);
        Ok(Arc::new(config))
    }

    /// Client config presenting this node's certificate and verifying the
    /// server against the roots. Dial managers with server name
    /// [`MANAGER_SERVER_NAME`](crate::MANAGER_SERVER_NAME) (only manager
    /// certificates carry it), or [`NODE_SERVER_NAME`](crate::NODE_SERVER_NAME)
    /// when any member will do.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)?
            .with_root_certificates(root_store(&self.roots)?)
            .with_client_auth_cert(self.chain()?, self.key.private_key_der())?;
        config.alpn_protocols = alpn_vec(alpn);
        Ok(Arc::new(config))
    }
}

/// Client config for a node that has no certificate yet (join): it trusts
/// only a server whose chain contains a CA certificate with the pinned
/// digest and whose leaf verifies against that CA. Dial with
/// [`MANAGER_SERVER_NAME`](crate::MANAGER_SERVER_NAME). A mismatch fails the
/// handshake with [`TlsError::DigestMismatch`] (see [`is_digest_mismatch`]).
pub fn pinned_client_config(
    digest: &CaDigest,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let verifier = Arc::new(PinnedCaVerifier {
        digest: *digest,
        provider: provider(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn_vec(alpn);
    Ok(Arc::new(config))
}

/// After a handshake: the peer's identity from `peer_certificates()` (leaf
/// first). An error if the peer presented no certificate or a foreign one.
pub fn peer_info(certs: Option<&[CertificateDer<'_>]>) -> Result<CertInfo, TlsError> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or(TlsError::NoPeerCertificate)?;
    cert_info(leaf)
}

/// True if `err` (e.g. the `io::Error` of a failed tokio-rustls connect, or
/// anything wrapping it) was caused by the join token's CA digest not
/// matching the manager's CA, so the CLI can say "wrong cluster".
pub fn is_digest_mismatch(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if matches!(e.downcast_ref::<TlsError>(), Some(TlsError::DigestMismatch)) {
            return true;
        }
        if let Some(RustlsError::Other(OtherError(inner))) = e.downcast_ref::<RustlsError>() {
            if matches!(
                inner.downcast_ref::<TlsError>(),
                Some(TlsError::DigestMismatch)
            ) {
                return true;
            }
        }
        // io::Error's source() skips its payload, so look at it directly.
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if is_digest_mismatch(inner) {
                    return true;
                }
            }
        }
        cur = e.source();
    }
    false
}

/// Verifies a manager against the CA pinned by a join token: find the CA in
/// the presented chain by digest, then let webpki verify the leaf against it.
#[derive(Debug)]
struct PinnedCaVerifier {
    digest: CaDigest,
    provider: Arc<CryptoProvider>,
}

fn pin_error(e: TlsError) -> RustlsError {
    RustlsError::Other(OtherError(Arc::new(e)))
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, RustlsError> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| CaDigest::of(c) == self.digest)
        else {
            return Err(pin_error(if intermediates.is_empty() {
                TlsError::NoCaInChain
            } else {
                TlsError::DigestMismatch
            }));
        };
        let mut store = RootCertStore::empty();
        store.add(ca.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(store), self.provider.clone())
                .build()
                .map_err(|e| RustlsError::General(e.to_string()))?;
        let rest: Vec<CertificateDer<'_>> =
            intermediates.iter().filter(|c| *c != ca).cloned().collect();
        verifier.verify_server_cert(end_entity, &rest, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
