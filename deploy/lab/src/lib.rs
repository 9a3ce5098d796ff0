//! shoal-lab: a cluster of hosts on one machine, each a network namespace
//! on a private underlay bridge, each running one real `shoal daemon`.
//! Tests and benchmarks use the library; users run the `shoal-lab` binary.
//!
//! ```no_run
//! # fn main() -> Result<(), shoal_lab::LabError> {
//! let lab = shoal_lab::Lab::builder().nodes(3).start()?;
//! let out = lab.shoal(1, &["--format", "json", "info"])?;
//! assert!(out.status.success());
//! lab.partition(&[1], &[2, 3])?;
//! assert!(!lab.ping(1, 2)?);
//! lab.heal()?;
//! # Ok(()) }
//! ```
//!
//! Layout (DESIGN.md §5): namespace `<prefix>-ul` holds bridge `ul0` (and
//! `dp0` with a data path); host `hI` is namespace `<prefix>-hI` with
//! `eth0` 10.77.0.I/24 (and `eth1` 10.77.1.I/24) and a directory
//! `/run/shoal-lab/<prefix>/hI/` with data/, run/, shoal.sock, shoal.toml,
//! daemon.log. `<prefix>` is `sl` plus six random characters. Nothing is
//! named in the root namespace; cleanup (on drop, on Ctrl-C, by
//! [`Lab::down`]) removes exactly what the lab recorded in its
//! [`LabState`], never anything found by pattern.
//!
//! Containers: [`LabBuilder::containerd`]`(true)` gives every host its own
//! containerd (in its namespace, root/state/sockets under `hI/ctd/`, the
//! socket in [`HostState::containerd_socket`] and in the daemon's
//! shoal.toml as `containerd_socket`); [`Lab::ctr`] runs `ctr` against it.
//! [`Lab::start_registry`] runs a plain-HTTP OCI registry on a host
//! (`10.77.0.I:5000`, [`registry_addr`]); [`image::build_echo_image`]
//! writes a small busybox image as an OCI layout and [`image::push`] puts
//! it there. Teardown kills what each containerd ran (shims found by their
//! `-address`, never another containerd's) and unmounts under its dirs.

pub mod bench;
pub mod chaos;
mod error;
pub mod image;
mod lab;
mod mounts;
pub mod names;
mod plan;
mod probe;
mod process;
mod registry;
mod state;
mod tools;

pub use error::LabError;
pub use lab::{
    preflight, processes_naming, registry_addr, shim_socket_path, DaemonState, Exit, Lab,
    LabBuilder, RegistryOptions, DEFAULT_READY_TIMEOUT, LAB_ROOT, MAX_SOCKET_PATH, REGISTRY_PORT,
};
pub use names::HostId;
pub use state::{HostState, LabState, ProcessRecord, STATE_VERSION};
pub use tools::find_shoal_bin;

/// Whether the process recorded in `rec` still exists (same PID and start
/// time, not a zombie). `shoal-lab gc` uses it on a lab's owner.
pub fn is_alive(rec: &ProcessRecord) -> bool {
    process::liveness(rec) != process::Liveness::Gone
}
