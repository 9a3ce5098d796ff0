//! Bringing a lab up and taking it down: the [`LabBuilder`], the
//! preconditions ([`preflight`]), claiming a prefix and directory, the
//! host dirs and configs, the namespaces and the underlay (scripts from
//! `crate::plan`), and the cleanup that removes exactly what the record
//! lists. `start` hands the built lab to `containerd` (when asked) and then
//! to `daemon` to start its daemons.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::LabError;
use crate::names::{self, HostId, MAX_HOSTS};
use crate::plan;
use crate::process;
use crate::state::{HostState, LabState, STATE_VERSION};
use crate::tools;

use super::daemon::DaemonState;
use super::exec::run;
use super::{toml_str, Inner, Lab, DEFAULT_READY_TIMEOUT, LAB_ROOT};

/// Configures and starts a [`Lab`].
#[derive(Debug, Clone)]
pub struct LabBuilder {
    nodes: usize,
    data_path: bool,
    managers: Option<usize>,
    ready_timeout: Duration,
    shoal_bin: Option<PathBuf>,
    root: PathBuf,
    daemon_config: String,
    containerd: bool,
}

impl Default for LabBuilder {
    fn default() -> Self {
        LabBuilder {
            nodes: 3,
            data_path: false,
            managers: None,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            shoal_bin: None,
            root: PathBuf::from(LAB_ROOT),
            daemon_config: String::new(),
            containerd: false,
        }
    }
}

impl LabBuilder {
    /// Number of hosts, 1..=250 (default 3).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Give every host a second network (eth1, 10.77.1.i/24 on bridge dp0)
    /// for the VXLAN data path.
    pub fn data_path(mut self, on: bool) -> Self {
        self.data_path = on;
        self
    }

    /// Record how many managers a swarm of this lab should have
    /// (see [`Lab::init_swarm`]).
    pub fn managers(mut self, n: usize) -> Self {
        self.managers = Some(n);
        self
    }

    /// How long each daemon gets to answer `shoal info` (default 30 s).
    pub fn ready_timeout(mut self, t: Duration) -> Self {
        self.ready_timeout = t;
        self
    }

    /// Use this `shoal` binary instead of looking for one
    /// (see [`crate::find_shoal_bin`]).
    pub fn shoal_bin(mut self, p: impl Into<PathBuf>) -> Self {
        self.shoal_bin = Some(p.into());
        self
    }

    /// TOML written into every host's shoal.toml (e.g. fast test timings:
    /// `"heartbeat_ms = 500\n"`). Default: an empty config, daemon defaults.
    pub fn daemon_config(mut self, toml: &str) -> Self {
        self.daemon_config = toml.to_string();
        self
    }

    /// Give every host its own containerd (default off): started in the
    /// host's namespace before its daemon, with root, state and sockets
    /// under `hI/ctd/`, its socket written into the host's shoal.toml as
    /// `containerd_socket` (so `daemon_config` must not set that key) and
    /// kept in [`HostState::containerd_socket`]. Teardown removes its
    /// tasks, shims, containers and mounts, then stops it. Needs Debian's
    /// `containerd` and `runc` (deploy/install-deps.sh).
    pub fn containerd(mut self, on: bool) -> Self {
        self.containerd = on;
        self
    }

    /// Directory under which the lab's own directory is made (default
    /// `/run/shoal-lab`).
    pub fn root(mut self, p: impl Into<PathBuf>) -> Self {
        self.root = p.into();
        self
    }

    /// Checks the preconditions, then builds the namespaces and starts the
    /// daemons; returns once every daemon answers `shoal info`. On any
    /// error, whatever was already created is removed again.
    pub fn start(self) -> Result<Lab, LabError> {
        if self.nodes == 0 || self.nodes > MAX_HOSTS {
            return Err(LabError::BadNodeCount(self.nodes));
        }
        if self.containerd && sets_key(&self.daemon_config, "containerd_socket") {
            return Err(LabError::io(
                "configuring the daemons".to_string(),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "daemon_config sets containerd_socket, which LabBuilder::containerd(true) \
                     writes itself: drop one of them",
                ),
            ));
        }
        let ip = preflight()?;
        let shoal_bin = match self.shoal_bin {
            Some(p) => p,
            None => tools::find_shoal_bin()?,
        };
        let (prefix, dir) = claim_prefix(&self.root)?;
        let state = LabState {
            version: STATE_VERSION,
            hosts: (1..=self.nodes)
                .map(|i| host_state(&prefix, &dir, i, self.data_path, self.containerd))
                .collect(),
            underlay_ns: names::underlay_ns(&prefix),
            prefix,
            dir,
            data_path: self.data_path,
            managers: self.managers,
            shoal_bin,
            owner: process::me(),
            namespaces: Vec::new(),
        };
        // From here on, dropping `lab` (error or panic) cleans up.
        let lab = Lab::new(state, ip, None, self.ready_timeout, true);
        if self.containerd {
            for h in lab.hosts() {
                super::containerd::CtdPaths::of(&h.dir).check()?;
            }
        }
        lab.lock().save()?;
        lab.lock().build(&self.daemon_config)?;
        let all: Vec<usize> = (1..=self.nodes).collect();
        if self.containerd {
            for &i in &all {
                lab.lock().spawn_containerd(i)?;
            }
            lab.wait_containerd(&all)?;
        }
        for &i in &all {
            lab.lock().spawn_daemon(i)?;
        }
        lab.wait_ready(&all)?;
        Ok(lab)
    }
}

/// Checks what a lab needs before touching anything: root, network
/// namespaces, iproute2. Returns the path of `ip`.
pub fn preflight() -> Result<PathBuf, LabError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LabError::NotRoot);
    }
    if !Path::new("/proc/self/ns/net").exists() {
        return Err(LabError::NoNetns(
            "/proc/self/ns/net is missing (kernel built without CONFIG_NET_NS?)".into(),
        ));
    }
    tools::ip()
}

/// Creates `<root>/<prefix>` for a fresh random prefix. `create_dir` is
/// atomic, so two labs can never claim the same prefix.
fn claim_prefix(root: &Path) -> Result<(String, PathBuf), LabError> {
    fs::create_dir_all(root)
        .map_err(|e| LabError::io(format!("creating {}", root.display()), e))?;
    let mut rng = rand::thread_rng();
    for _ in 0..32 {
        let prefix = names::new_prefix(&mut rng);
        if Path::new("/run/netns")
            .join(names::underlay_ns(&prefix))
            .exists()
        {
            continue;
        }
        let dir = root.join(&prefix);
        match fs::create_dir(&dir) {
            Ok(()) => return Ok((prefix, dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(LabError::io(format!("creating {}", dir.display()), e)),
        }
    }
    Err(LabError::io(
        format!("choosing a free lab prefix under {}", root.display()),
        std::io::Error::other("32 random prefixes were all taken"),
    ))
}

/// Whether TOML text sets top-level `key` (a line `key = …` before any
/// table header).
fn sets_key(toml: &str, key: &str) -> bool {
    toml.lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with('['))
        .any(|l| {
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
}

fn host_state(prefix: &str, dir: &Path, i: usize, data_path: bool, containerd: bool) -> HostState {
    let hdir = dir.join(format!("h{i}"));
    let containerd_socket = containerd.then(|| super::containerd::CtdPaths::of(&hdir).socket);
    HostState {
        index: i,
        name: HostId(i).to_string(),
        ns: names::host_ns(prefix, i),
        addr: names::underlay_addr(i),
        data_addr: data_path.then(|| names::data_addr(i)),
        data_dir: hdir.join("data"),
        run_dir: hdir.join("run"),
        socket: hdir.join("shoal.sock"),
        config: hdir.join("shoal.toml"),
        log: hdir.join("daemon.log"),
        dir: hdir,
        daemon: None,
        blocked: BTreeSet::new(),
        containerd_socket,
        containerd: None,
        registry: None,
    }
}

impl Inner {
    /// Host dirs, namespaces, bridges, veths and addresses.
    fn build(&mut self, daemon_config: &str) -> Result<(), LabError> {
        for h in &self.state.hosts {
            for d in [&h.data_dir, &h.run_dir] {
                fs::create_dir_all(d)
                    .map_err(|e| LabError::io(format!("creating {}", d.display()), e))?;
            }
            // Top-level keys of the lab first: daemon_config may open tables.
            let containerd = h
                .containerd_socket
                .as_ref()
                .map(|s| format!("containerd_socket = {}\n", toml_str(&s.to_string_lossy())))
                .unwrap_or_default();
            fs::write(
                &h.config,
                format!(
                    "# shoal-lab {} host {}\nhostname = \"{}\"\n{containerd}{daemon_config}",
                    self.state.prefix, h.name, h.name
                ),
            )
            .map_err(|e| LabError::io(format!("writing {}", h.config.display()), e))?;
        }
        let mut wanted = vec![self.state.underlay_ns.clone()];
        wanted.extend(self.state.hosts.iter().map(|h| h.ns.clone()));
        for ns in wanted {
            let res = run(
                Command::new(&self.ip).args(["netns", "add", &ns]),
                "creating a namespace",
                "",
            );
            match res {
                Ok(()) => self.state.namespaces.push(ns),
                Err(LabError::Command { cmd, stderr, .. }) if self.state.namespaces.is_empty() => {
                    return Err(LabError::NoNetns(format!("`{cmd}` failed: {stderr}")));
                }
                Err(e) => return Err(e),
            }
        }
        self.save()?;
        let n = self.state.hosts.len();
        let ul = self.state.underlay_ns.clone();
        run(
            Command::new(&self.ip).args(["-n", &ul, "-batch", "-"]),
            "building the underlay",
            &plan::underlay_batch(&self.state.prefix, n, self.state.data_path),
        )?;
        for h in &self.state.hosts {
            run(
                Command::new(&self.ip).args(["-n", &h.ns, "-batch", "-"]),
                &format!("configuring {}", h.name),
                &plan::host_batch(h.index, self.state.data_path),
            )?;
        }
        Ok(())
    }

    /// Removes everything recorded: daemons, namespaces, the lab dir.
    /// Safe to call again; each step forgets what it removed.
    pub(crate) fn cleanup(&mut self) -> Vec<String> {
        let started: Vec<usize> = self
            .state
            .hosts
            .iter()
            .filter(|h| h.daemon.is_some())
            .map(|h| h.index)
            .collect();
        let mut problems = self.stop_daemons(&started);
        // Workloads and service tasks outlive their daemon by design; the
        // lab's own go with it (recorded pids, checked against their
        // namespace so a reused pid is never hit).
        for h in &self.state.hosts {
            kill_recorded_workloads(&h.run_dir.join("workloads"));
        }
        // The daemons are stopped: nothing asks containerd for more tasks.
        for i in 1..=self.state.hosts.len() {
            problems.extend(self.teardown_containerd(i));
            problems.extend(self.stop_registry(i));
        }
        for i in started {
            if matches!(self.daemon_state(i), DaemonState::Exited(_)) {
                self.state.hosts[i - 1].daemon = None;
                self.children.remove(&i);
            }
        }
        let mut left = Vec::new();
        for ns in std::mem::take(&mut self.state.namespaces).into_iter().rev() {
            if !Path::new("/run/netns").join(&ns).exists() {
                continue;
            }
            if let Err(e) = run(
                Command::new(&self.ip).args(["netns", "del", &ns]),
                "deleting a namespace",
                "",
            ) {
                problems.push(e.to_string());
                left.push(ns);
            }
        }
        left.reverse();
        self.state.namespaces = left;
        if self.state.dir.exists() {
            problems.extend(crate::mounts::unmount_under(&self.state.dir));
            if problems.is_empty() {
                if let Err(e) = fs::remove_dir_all(&self.state.dir) {
                    problems.push(format!("removing {}: {e}", self.state.dir.display()));
                }
            } else {
                // Keep the record so `shoal-lab gc` can finish the job.
                let _ = self.save();
            }
        }
        problems
    }
}

/// SIGKILL every workload recorded under `dir` (`<id>.json` with `pid` and
/// `netns`) whose process still lives in that namespace.
fn kill_recorded_workloads(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Some(rec) = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        else {
            continue;
        };
        let (Some(pid), Some(ns)) = (rec["pid"].as_u64(), rec["netns"].as_str()) else {
            continue;
        };
        if pid == 0 || pid > i32::MAX as u64 {
            continue;
        }
        let same = match (
            fs::metadata(format!("/proc/{pid}/ns/net")),
            fs::metadata(ns),
        ) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if same {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
