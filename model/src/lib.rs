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
//! Encoding ([`codec`]): commands and snapshots are CBOR of these serde
//! types, fields by name. A new field carries `#[serde(default)]`; a new
//! enum variant goes at the end. Data dirs of releases that wrote bincode
//! are read through the layouts in [`legacy`].

pub mod codec;
pub mod command;
pub mod configs;
pub mod health;
pub mod legacy;
pub mod network;
pub mod placement;
pub mod port;
pub mod service;
pub mod state;
pub mod update;

pub use shoal_tls::{NodeId, Role};

/// Unix milliseconds now, as a proposer stamps them into a command (so
/// that `apply` stays deterministic).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
