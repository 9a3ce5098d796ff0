//! Errors of the `tls` crate. Every variant names what was wrong and, where
//! there is one, what the operator can do about it; callers show them as-is.

/// Why a certificate, key, CSR or TLS configuration could not be made or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Key or certificate generation failed inside rcgen (should not happen
    /// with the parameters this crate uses; reported rather than panicking).
    #[error("could not generate the {what}: {source}")]
    Generate {
        /// What was being generated, e.g. "cluster CA certificate".
        what: &'static str,
        /// The underlying rcgen error.
        source: rcgen::Error,
    },

    /// A PEM document (certificate) could not be read.
    #[error("could not read the {item} PEM: {source}")]
    Pem {
        /// Which item, e.g. "cluster CA certificate".
        item: &'static str,
        /// The underlying PEM error.
        source: rustls_pki_types::pem::Error,
    },

    /// A PEM document held no item of the expected kind.
    #[error("the {item} PEM contains no {expected} block")]
    PemEmpty {
        /// Which item, e.g. "cluster CA certificate".
        item: &'static str,
        /// The PEM label that was expected, e.g. "CERTIFICATE".
        expected: &'static str,
    },

    /// A private key could not be loaded (bad PEM, unsupported algorithm).
    #[error("the {item} is not a usable private key (expected a PKCS#8 ECDSA/Ed25519/RSA key in PEM): {source}")]
    Key {
        /// Which key, e.g. "cluster CA key".
        item: &'static str,
        /// The underlying rcgen error.
        source: rcgen::Error,
    },

    /// A certificate signing request sent by a joining node was rejected.
    #[error("invalid certificate signing request: {source}")]
    Csr {
        /// Why rcgen rejected it (unparsable, bad signature, unsupported extension).
        source: rcgen::Error,
    },

    /// Bytes that should be an X.509 certificate could not be parsed.
    #[error("could not parse the certificate: {reason}")]
    CertParse {
        /// What the parser reported.
        reason: String,
    },

    /// The certificate parsed but is not a Shoal node certificate (foreign CA,
    /// a CA certificate, or a node certificate missing its id or role).
    #[error("not a Shoal node certificate: {reason}")]
    NotShoalCert {
        /// Which field is missing or wrong.
        reason: &'static str,
    },

    /// The certificate given as a cluster CA is not a CA certificate.
    #[error(
        "the cluster CA certificate is not a CA certificate (basic constraints CA:TRUE missing)"
    )]
    NotCa,

    /// Certificate and private key belong to different key pairs.
    #[error("the {what} certificate does not match its private key: the files on disk are from different key pairs")]
    KeyMismatch {
        /// Which certificate, e.g. "node" or "cluster CA".
        what: &'static str,
    },

    /// A node certificate does not chain to any trusted root.
    #[error("the node certificate is not signed by any trusted cluster root CA ({reason}); rejoin the cluster to get a new certificate")]
    NotSignedByRoots {
        /// The verifier's reason.
        reason: String,
    },

    /// No trusted roots were given where at least one is needed.
    #[error("no trusted cluster root CA certificates were given")]
    NoRoots,

    /// The certificate's validity period is over.
    #[error(
        "the node certificate expired at {not_after}; rejoin the cluster to get a new certificate"
    )]
    Expired {
        /// The certificate's notAfter, RFC 3339.
        not_after: String,
    },

    /// The certificate's validity period has not started (clock skew?).
    #[error("the node certificate is not valid before {not_before}; check this host's clock")]
    NotYetValid {
        /// The certificate's notBefore, RFC 3339.
        not_before: String,
    },

    /// A requested validity period cannot be encoded in a certificate.
    #[error("invalid certificate validity of {seconds} s: must be more than zero and end before year 9999")]
    InvalidValidity {
        /// The requested validity in seconds.
        seconds: u64,
    },

    /// After a handshake the peer presented no certificate.
    #[error("the peer presented no certificate (it has not joined the cluster)")]
    NoPeerCertificate,

    /// The CA a manager presented is not the one pinned by the join token.
    #[error("the manager's CA does not match the join token (digest mismatch): the token belongs to another cluster")]
    DigestMismatch,

    /// A manager presented no CA certificate in its chain, so the join token
    /// digest cannot be checked.
    #[error("the manager presented no CA certificate in its TLS chain, so the join token's CA digest cannot be checked")]
    NoCaInChain,

    /// A rustls certificate verifier could not be built from the roots.
    #[error("could not build the certificate verifier from the trusted roots: {reason}")]
    Verifier {
        /// The builder's reason.
        reason: String,
    },

    /// rustls refused a configuration or a handshake.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}
