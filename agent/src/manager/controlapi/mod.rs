//! The control API: what the cluster commands do on a manager, one file
//! per object (as swarmkit's `controlapi`). Each function takes the
//! manager and proposes or reads through its store.

pub mod cluster;
pub mod files;
pub mod networks;
pub mod nodes;
pub mod services;
