//! SWIM membership for Shoal: a runtime around `foca` that gossips on UDP/TCP
//! 7946, encrypts every packet with AES-256-GCM under the cluster key ring, and
//! replicates the peer table and the per-network endpoint tables that the
//! netdriver turns into kernel state.
