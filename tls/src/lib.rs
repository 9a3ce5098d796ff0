//! Cluster identity for Shoal: the root CA, node certificates issued from
//! CSRs, swarm-format join tokens that pin the CA digest, and the rustls
//! configurations every TLS and QUIC endpoint of the cluster uses.
//!
//! Flow: `swarm init` makes a [`ClusterCa`] and [`JoinSecret`]s and prints
//! [`JoinToken`]s. A joining node makes a [`NodeKey`], dials a manager with
//! [`pinned_client_config`] (trusting only the CA whose digest is in the
//! token) and sends [`NodeKey::csr_der`] with the secret; the manager checks
//! [`JoinSecret::matches`] and answers with [`ClusterCa::sign_csr`]. From then
//! on the node is a [`NodeIdentity`] and every connection is mutual TLS;
//! [`peer_info`] tells each side who the other is and with which [`Role`].
//! Nodes renew when [`needs_renewal`] says so. CA rotation: keep old and new
//! roots in [`NodeIdentity::roots`] until every node has a new certificate.

mod ca;
mod cert;
mod config;
mod error;
mod ids;
mod token;

#[cfg(test)]
mod tls_tests;

pub use ca::{
    cert_to_pem, certs_from_pem, ClusterCa, NodeKey, CA_VALIDITY, CLOCK_SKEW_BACKDATE,
    DEFAULT_CERT_VALIDITY, MANAGER_SERVER_NAME, NODE_SERVER_NAME, WORKER_SERVER_NAME,
};
pub use cert::{cert_info, needs_renewal, CertInfo, NODE_URI_PREFIX};
pub use config::{
    install_crypto_provider, is_digest_mismatch, peer_info, pinned_client_config, NodeIdentity,
};
pub use error::TlsError;
pub use ids::{InvalidNodeId, InvalidRole, NodeId, Role};
pub use token::{CaDigest, JoinSecret, JoinToken, TokenError};

/// Re-exported so callers name the same rustls types this crate uses.
pub use rustls;
pub use rustls_pki_types::CertificateDer;
