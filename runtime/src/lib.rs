//! Shoal's container runtime: the one place that talks to containerd.
//!
//! Data flow: the worker's executor asks for a task's image
//! ([`Runtime::pull`]: manifest and blobs fetched from an OCI distribution
//! registry straight into containerd's content store, layers unpacked
//! through its snapshot and diff services, an image record made), then
//! runs the container ([`Runtime::run`]: a runc spec built from the image
//! config and Docker's defaults, joined to the network namespace Shoal
//! prepared, stdout/stderr written by containerd's shim to a log file),
//! waits for it ([`Runtime::wait`]) and removes it ([`Runtime::remove`]).
//! Containers belong to containerd's shims, so they outlive a daemon
//! restart; [`Runtime::containers`] lists them for adoption.
//!
//! Everything lives in containerd's [`NAMESPACE`] namespace. containerd 1.6
//! (Debian 12) has no server-side pull, so `image` does what containerd's
//! Go client does in-process.

mod archive;
mod container;
mod image;
pub mod logfile;
mod reference;
mod registry;
pub mod seccomp;
mod spec;

use std::path::Path;

use containerd_client::services::v1::version_client::VersionClient;
use tonic::transport::Channel;

pub use container::{file_uri, ContainerInfo, ContainerSpec, ExecIo, MountSpec, MountType};
pub use image::{ImageConfig, ImageHealth, ImageInfo};
pub use registry::{parse_reference, resolve, Registries};

/// containerd namespace of everything Shoal creates.
pub const NAMESPACE: &str = "shoal";
/// Snapshotter for image layers and container root file systems.
pub const SNAPSHOTTER: &str = "overlayfs";
/// containerd's runc shim.
pub const RUNC_SHIM: &str = "io.containerd.runc.v2";

/// Why a runtime call failed, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// containerd is not there or does not answer.
    #[error("cannot reach containerd at {socket}: {reason}")]
    Connect {
        /// The socket tried.
        socket: String,
        /// What failed.
        reason: String,
    },
    /// A malformed image reference.
    #[error("invalid reference format: {0}")]
    Reference(String),
    /// The registry refused or failed (its own message, e.g.
    /// `manifest unknown`, `connection refused`, `unauthorized`).
    #[error("pull {image}: {reason}")]
    Pull {
        /// The reference pulled.
        image: String,
        /// The registry's reason.
        reason: String,
    },
    /// The image is not in containerd.
    #[error("No such image: {0}")]
    NoSuchImage(String),
    /// The container is not in containerd.
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    /// The image is unusable (no linux/amd64 manifest, bad config, ...).
    #[error("image {image}: {reason}")]
    BadImage {
        /// The image.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// A bad container setting (user, mount, capability).
    #[error("{0}")]
    Invalid(String),
    /// containerd refused a call.
    #[error("containerd: {what}: {status}")]
    Containerd {
        /// The call.
        what: String,
        /// containerd's answer.
        status: String,
    },
}

/// Result of a runtime call.
pub type Result<T> = std::result::Result<T, RuntimeError>;

fn cd_err(what: impl Into<String>) -> impl FnOnce(tonic::Status) -> RuntimeError {
    let what = what.into();
    move |s| RuntimeError::Containerd {
        what,
        status: s.message().to_string(),
    }
}

/// A request in Shoal's containerd namespace (and a lease, when given).
fn req<T>(msg: T, lease: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "containerd-namespace",
        tonic::metadata::MetadataValue::from_static(NAMESPACE),
    );
    if let Some(l) = lease.and_then(|l| l.parse().ok()) {
        r.metadata_mut().insert("containerd-lease", l);
    }
    r
}

/// A connection to one containerd.
pub struct Runtime {
    channel: Channel,
    socket: String,
    registries: Registries,
    /// One pull at a time on a node: two tasks of the same image share it.
    pull_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Connects to containerd's socket and checks that it answers; images
    /// are pulled as `registries` says.
    pub async fn connect(socket: &Path, registries: Registries) -> Result<Runtime> {
        let name = socket.display().to_string();
        let channel =
            containerd_client::connect(socket)
                .await
                .map_err(|e| RuntimeError::Connect {
                    socket: name.clone(),
                    reason: source_chain(&e),
                })?;
        let rt = Runtime {
            channel,
            socket: name,
            registries,
            pull_lock: tokio::sync::Mutex::new(()),
        };
        rt.version().await?;
        Ok(rt)
    }

    /// containerd's version (`1.6.20~ds1`).
    pub async fn version(&self) -> Result<String> {
        let v = VersionClient::new(self.channel.clone())
            .version(())
            .await
            .map_err(|s| RuntimeError::Connect {
                socket: self.socket.clone(),
                reason: s.message().to_string(),
            })?;
        Ok(v.into_inner().version)
    }
}

/// An error and its sources, one line.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
