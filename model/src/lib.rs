//! Shoal's domain model: what the managers agree on.
//!
//! The cluster, its nodes, overlay networks, services, tasks and key ring
//! ([`state::State`]), and every change to them as a [`state::Command`].
//! `State::apply_command` is deterministic (no clock, no randomness:
//! proposers stamp times and ids into commands), so every manager that
//! applies the same Raft log ends with the same state; allocation (subnets,
//! VNIs, addresses, VIPs) happens there. `raft-store` replicates the
//! commands without knowing them; the agent's manager side adapts this
//! state to its `StateMachine` trait.
//!
//! Encoding: commands and snapshots are bincode (standard config) of these
//! serde types, so the order of fields and enum variants is the on-disk
//! and wire format. Append new variants and fields at the end, never
//! reorder.

pub mod legacy;
pub mod network;
pub mod service;
pub mod state;

pub use shoal_tls::{NodeId, Role};

/// Unix milliseconds now, as a proposer stamps them into a command (so
/// that `apply` stays deterministic).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
