//! The lab: builds hosts as network namespaces on a private underlay,
//! runs one real `shoal daemon` per host, and drives them (CLI calls,
//! kill/pause/restart, partitions). Everything it creates is recorded in a
//! [`LabState`] first-hand, and cleanup works from that record alone:
//! namespaces by their recorded names, processes by recorded PID and start
//! time, the lab directory by its recorded path.
//!
//! This file holds the [`Lab`] handle and its shared record (`Inner`,
//! behind a mutex the Ctrl-C handler in `crate::registry` also reaches);
//! the work is in the submodules: `build` (builder, namespaces, underlay,
//! teardown), `daemon` (start, stop, signals, readiness), `exec` (commands
//! in a host's namespace), `partition` (nftables cuts, ping), `swarm`,
//! `containerd` (one containerd per host, `LabBuilder::containerd`, and its
//! teardown) and `oci_registry` (`Lab::start_registry`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::error::LabError;
use crate::names::HostId;
use crate::registry;
use crate::state::{HostState, LabState};
use crate::tools;

mod build;
mod containerd;
mod daemon;
mod exec;
mod oci_registry;
mod partition;
mod swarm;

pub use build::{preflight, LabBuilder};
pub(crate) use containerd::run_within;
pub use containerd::{processes_naming, MAX_SOCKET_PATH};
pub use daemon::{DaemonState, Exit};
pub use oci_registry::{registry_addr, REGISTRY_PORT};

/// Where labs keep their directories (`<root>/<prefix>/`) and where the
/// `shoal-lab` binary keeps the state of the lab it brought up.
pub const LAB_ROOT: &str = "/run/shoal-lab";

/// How long a daemon gets to answer `shoal info` after it was started.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a wait re-checks its condition.
const POLL: Duration = Duration::from_millis(25);

/// A running lab. Dropping it removes everything it created, unless it was
/// [detached](Lab::detach) or [loaded from a state file](Lab::from_state).
pub struct Lab {
    inner: Arc<Mutex<Inner>>,
    cleanup_on_drop: bool,
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lab")
            .field("prefix", &self.prefix())
            .finish()
    }
}

pub(crate) struct Inner {
    state: LabState,
    ip: PathBuf,
    /// Daemons this process started, by host index: the lab is their
    /// parent, so it reaps them and learns their exit status.
    children: BTreeMap<usize, Child>,
    /// The containerds and registries this process started, by host index
    /// (reaped here like the daemons).
    containerds: BTreeMap<usize, Child>,
    registries: BTreeMap<usize, Child>,
    /// A second place the state is saved to (the binary's lab.json).
    state_file: Option<PathBuf>,
    ready_timeout: Duration,
}

impl Lab {
    /// A builder: `Lab::builder().nodes(5).data_path(true).start()`.
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    fn new(
        state: LabState,
        ip: PathBuf,
        state_file: Option<PathBuf>,
        ready_timeout: Duration,
        cleanup_on_drop: bool,
    ) -> Lab {
        let inner = Arc::new(Mutex::new(Inner {
            state,
            ip,
            children: BTreeMap::new(),
            containerds: BTreeMap::new(),
            registries: BTreeMap::new(),
            state_file,
            ready_timeout,
        }));
        if cleanup_on_drop {
            registry::register(&inner);
        }
        Lab {
            inner,
            cleanup_on_drop,
        }
    }

    /// Takes over a lab another process started (e.g. `shoal-lab up`).
    /// It is not cleaned on drop; call [`Lab::down`] for that.
    pub fn from_state(state: LabState) -> Result<Lab, LabError> {
        state.check().map_err(|reason| LabError::State {
            path: state.file(),
            reason,
        })?;
        Ok(Lab::new(
            state,
            tools::ip()?,
            None,
            DEFAULT_READY_TIMEOUT,
            false,
        ))
    }

    /// Like [`Lab::from_state`], reading `path`; changes (restarts,
    /// partitions) are saved back to it as well as to the lab's own dir.
    pub fn from_state_file(path: &Path) -> Result<Lab, LabError> {
        let state = LabState::load(path)?;
        let lab = Lab::from_state(state)?;
        lab.lock().state_file = Some(path.to_path_buf());
        Ok(lab)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lab's random prefix (`sl` + 6 chars).
    pub fn prefix(&self) -> String {
        self.lock().state.prefix.clone()
    }

    /// The lab's directory, `/run/shoal-lab/<prefix>`.
    pub fn dir(&self) -> PathBuf {
        self.lock().state.dir.clone()
    }

    /// A copy of the lab's record (names, addresses, PIDs, dirs).
    pub fn state(&self) -> LabState {
        self.lock().state.clone()
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.lock().state.hosts.len()
    }

    /// Whether the lab has no hosts (never true for a started lab).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All hosts, h1 first.
    pub fn hosts(&self) -> Vec<HostState> {
        self.lock().state.hosts.clone()
    }

    /// One host: `lab.host(2)` or `lab.host("h2".parse::<HostId>()?)`.
    pub fn host(&self, host: impl Into<HostId>) -> Result<HostState, LabError> {
        let g = self.lock();
        g.host(host.into()).cloned()
    }

    /// The `shoal` binary the daemons run.
    pub fn shoal_bin(&self) -> PathBuf {
        self.lock().state.shoal_bin.clone()
    }

    /// Leaves the lab running after this value is dropped (what
    /// `shoal-lab up` does) and returns its record; the owner is cleared so
    /// `shoal-lab gc` leaves it alone. Tear it down with
    /// `Lab::from_state(state)?.down()`.
    pub fn detach(mut self) -> Result<LabState, LabError> {
        self.cleanup_on_drop = false;
        registry::unregister(&self.inner);
        let mut g = self.lock();
        g.state.owner = None;
        g.save()?;
        Ok(g.state.clone())
    }

    /// Removes everything the lab created, now: daemons (SIGTERM, then
    /// SIGKILL after 10 s), each host's containerd with its tasks, shims,
    /// containers and mounts, registries, namespaces by their recorded
    /// names, the lab directory. Idempotent.
    pub fn down(mut self) -> Result<(), LabError> {
        self.cleanup_on_drop = false;
        registry::unregister(&self.inner);
        let problems = self.lock().cleanup();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(LabError::Cleanup(problems.join("; ")))
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.cleanup_on_drop {
            return;
        }
        let problems = self.lock().cleanup();
        registry::unregister(&self.inner);
        for p in problems {
            eprintln!("shoal-lab: cleanup: {p}");
        }
    }
}

impl Inner {
    pub(crate) fn host(&self, id: HostId) -> Result<&HostState, LabError> {
        id.index()
            .checked_sub(1)
            .and_then(|k| self.state.hosts.get(k))
            .ok_or(LabError::NoSuchHost {
                host: id.to_string(),
                count: self.state.hosts.len(),
            })
    }

    /// Saves the record to `<dir>/state.json` (while the dir exists) and to
    /// the extra state file, if any.
    fn save(&self) -> Result<(), LabError> {
        if self.state.dir.is_dir() {
            self.state.save(&self.state.file())?;
        }
        if let Some(f) = &self.state_file {
            self.state.save(f)?;
        }
        Ok(())
    }
}
