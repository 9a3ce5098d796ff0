//! shoal-lab: hosts as network namespaces on a private underlay, one real
//! `shoal daemon` per host.
