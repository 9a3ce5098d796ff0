//! Cluster identity for Shoal: the root CA, node certificates issued from
//! CSRs, swarm-format join tokens that pin the CA digest, and the rustls
//! configurations every TLS and QUIC endpoint of the cluster uses.
