//! The Docker Engine API's swarm subset as data: its JSON types
//! ([`types`]), how Go reads JSON and query strings ([`gojson`]), and the
//! translation between Shoal's objects and Docker's ([`convert`]). The
//! daemon's HTTP server (`agent/src/engine`) routes requests, turns them
//! into local API [`crate::Request`]s and answers with these types.

pub mod convert;
pub mod gojson;
pub mod types;

/// Highest Engine API version served (the docker CLI 28 and docker-py
/// negotiate down to it).
pub const API_VERSION: &str = "1.47";

/// Lowest Engine API version accepted in a path (`/v1.24/...`).
pub const MIN_API_VERSION: &str = "1.24";

/// Default path of the Engine API socket.
pub const DEFAULT_DOCKER_SOCKET: &str = "/run/shoal/docker.sock";
