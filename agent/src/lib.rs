//! The `shoal` agent: the daemon that runs on every host and the CLI that
//! talks to it over a local unix socket.
//!
//! Layout (as swarmkit's `manager/`, `agent/` and `node/node.go`):
//! - [`cli`]: the `shoal` command; imports only `shoal-api` and
//!   `shoal-model`.
//! - [`daemon`]: the process: data-dir lock, local API socket, metrics,
//!   systemd notification.
//! - [`engine`]: the Docker Engine API (swarm subset) on a second socket,
//!   translated into local API requests; imports only `shoal-api`,
//!   `shoal-model` and the daemon's request handler.
//! - [`swarm`]: one membership (init, join, resume, leave, roles): the only
//!   place where the manager and worker sides meet.
//! - [`manager`]: managers only: store handle, 2377 server, CA, control
//!   API, dispatcher, scheduler, key manager, events.
//! - [`worker`]: every node: session client, workloads and reconciler,
//!   executor and routing mesh, DNS.
//! - [`proto`]: the typed node <-> manager messages and [`proto::rpc::NodeRpc`].
//! - [`config`], [`addr`], [`metrics`]: the daemon's configuration, address
//!   parsing and the Prometheus registry, shared by the parts above.
//!
//! `manager/` and `worker/` never import each other (`.ci/run` checks it).

pub mod addr;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod manager;
pub mod metrics;
pub mod proto;
pub mod swarm;
pub mod worker;
