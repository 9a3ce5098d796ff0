//! The `shoal` agent: the daemon that runs on every host and the CLI that
//! talks to it over a local unix socket. Later parts wire the replicated
//! store, membership and the netdriver in here.

pub mod addr;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod events;
pub mod executor;
pub mod gossip;
pub mod membership_file;
pub mod metrics;
pub mod notify;
pub mod overlay;
pub mod rpc;
pub mod scheduler;
pub mod services;
pub mod session;
pub mod swarm;
