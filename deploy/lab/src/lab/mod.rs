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
//! teardown) and `oci_registry` (`Lab::start_registry`). The helpers those
//! two share are at the end of this file: a command in a host's network
//! namespace only ([`Lab::net_command`]), starting a helper process there
//! and stopping it by its record, and commands bounded in time.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::error::LabError;
use crate::names::HostId;
use crate::process::{self, Liveness};
use crate::registry;
use crate::state::{HostState, LabState, ProcessRecord};
use crate::tools;

use exec::{path_with, show};

mod build;
mod containerd;
mod daemon;
mod exec;
mod oci_registry;
mod partition;
mod swarm;

pub use build::{preflight, LabBuilder};
pub use containerd::{processes_naming, shim_socket_path, MAX_SOCKET_PATH};
pub use daemon::{DaemonState, Exit};
pub use oci_registry::{registry_addr, RegistryOptions, REGISTRY_PORT};

/// Where labs keep their directories (`<root>/<prefix>/`) and where the
/// `shoal-lab` binary keeps the state of the lab it brought up.
pub const LAB_ROOT: &str = "/run/shoal-lab";

/// How long a daemon gets to answer `shoal info` after it was started.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a wait re-checks its condition.
const POLL: Duration = Duration::from_millis(25);
/// How long a helper process (containerd, registry) gets after SIGTERM
/// before SIGKILL, and how long the kernel gets to make it disappear.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

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

// ---- Helper processes (containerd, registry, skopeo, ctr) ----

impl Lab {
    /// A command that runs `argv` in the host's network namespace only
    /// (`nsenter --net=/run/netns/<ns> -- argv…`): unlike [`Lab::command`]
    /// (`ip netns exec`), /sys and the mounts stay the root's, which
    /// containerd, runc and skopeo need. `SHOAL_HOST` and PATH are set as
    /// in [`Lab::command`]; the caller picks stdio and runs it.
    pub fn net_command<S: AsRef<OsStr>>(
        &self,
        host: impl Into<HostId>,
        argv: &[S],
    ) -> Result<Command, LabError> {
        let g = self.lock();
        let h = g.host(host.into())?;
        let mut cmd = Command::new(nsenter()?);
        cmd.arg(format!("--net=/run/netns/{}", h.ns))
            .arg("--")
            .args(argv)
            .env("SHOAL_HOST", &h.socket)
            .env("PATH", path_with(&g.state.shoal_bin));
        Ok(cmd)
    }
}

pub(crate) fn nsenter() -> Result<PathBuf, LabError> {
    tools::find_program("nsenter").ok_or_else(|| {
        LabError::io(
            "entering a host's namespace".to_string(),
            std::io::Error::other("`nsenter` not found: apt-get install util-linux"),
        )
    })
}

/// The last `lines` lines of a log file.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `cmd` (stdin null) and collects its output, killing it after
/// `timeout`. Any exit status is returned; only not running it, or the
/// timeout, is an error.
pub(crate) fn output_within(
    cmd: &mut Command,
    what: &str,
    timeout: Duration,
) -> Result<Output, LabError> {
    let line = show(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LabError::io(format!("{what}: running {line}"), e))?;
    // Readers on their own threads, so a chatty command never blocks on a
    // full pipe while we wait for it.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LabError::io(
                    format!("{what}: {line}"),
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no exit within {}s", timeout.as_secs_f32()),
                    ),
                ));
            }
            Err(e) => return Err(LabError::io(format!("{what}: waiting for {line}"), e)),
        }
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Like [`output_within`], and a non-zero exit is a [`LabError::Command`]
/// carrying its stderr.
pub(crate) fn run_within(
    cmd: &mut Command,
    what: &str,
    timeout: Duration,
) -> Result<Output, LabError> {
    let out = output_within(cmd, what, timeout)?;
    if out.status.success() {
        return Ok(out);
    }
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(LabError::Command {
        what: what.to_string(),
        cmd: show(cmd),
        stderr: if err.is_empty() {
            out.status.to_string()
        } else {
            err
        },
    })
}

/// Starts `program args…` in namespace `ns` with nsenter, in its own
/// process group (a terminal's Ctrl-C reaches the lab, which cleans up,
/// not the helper), output appended to `log`. nsenter execs, so the
/// child's PID is the program's. Returns the child and its record.
pub(crate) fn spawn_in_netns(
    ns: &str,
    program: &Path,
    args: &[&OsStr],
    log: &Path,
    what: &str,
) -> Result<(Child, ProcessRecord), LabError> {
    let open_log = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| LabError::io(format!("opening {}", log.display()), e))
    };
    let mut out = open_log()?;
    let _ = writeln!(out, "--- shoal-lab: starting {} in {ns}", program.display());
    let mut cmd = Command::new(nsenter()?);
    cmd.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program)
        .args(args)
        .env_remove("SHOAL_HOST")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(open_log()?);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .spawn()
        .map_err(|e| LabError::io(format!("{what}: {}", show(&cmd)), e))?;
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    // Our unreaped child: its /proc entry exists even if it died already.
    let rec = process::record(pid).unwrap_or(ProcessRecord { pid, start_time: 0 });
    Ok((child, rec))
}

/// Whether the recorded process has fully exited: gone from /proc, its PID
/// reused, or a zombie whose other threads are gone too. (A Go program's
/// main thread can be a zombie while its other threads still hold its
/// sockets and cgroup for a moment: `Liveness::Gone` already, not exited.)
pub(crate) fn exited(rec: &ProcessRecord) -> bool {
    if process::liveness(rec) != Liveness::Gone {
        return false;
    }
    match fs::read_dir(format!("/proc/{}/task", rec.pid)) {
        Ok(tasks) => process::record(rec.pid).is_none_or(|now| now != *rec) || tasks.count() <= 1,
        Err(_) => true,
    }
}

/// SIGTERM the recorded process (if it is still the one recorded), wait up
/// to [`STOP_TIMEOUT`], then SIGKILL; reaps `child` when it is ours.
/// Returns a problem when it survives.
pub(crate) fn stop_process(
    rec: ProcessRecord,
    child: Option<&mut Child>,
    name: &str,
) -> Option<String> {
    let mut child = child;
    let gone = |child: &mut Option<&mut Child>| {
        if let Some(c) = child.as_deref_mut() {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
        }
        let dead = exited(&rec);
        if dead {
            // A zombie child: reap it (it is dying, the wait is short).
            if let Some(c) = child.as_deref_mut() {
                let _ = c.wait();
            }
        }
        dead
    };
    if gone(&mut child) {
        return None;
    }
    let pid = Pid::from_raw(rec.pid);
    let _ = signal::kill(pid, Signal::SIGCONT);
    let _ = signal::kill(pid, Signal::SIGTERM);
    for (limit, kill) in [(STOP_TIMEOUT, true), (KILL_TIMEOUT, false)] {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if gone(&mut child) {
                return None;
            }
            thread::sleep(POLL);
        }
        // Checked just above: still the recorded process.
        if kill && process::liveness(&rec) != Liveness::Gone {
            let _ = signal::kill(pid, Signal::SIGKILL);
        }
    }
    if gone(&mut child) {
        None
    } else {
        Some(format!("{name} (pid {}) survived SIGKILL", rec.pid))
    }
}

/// A TOML basic string.
pub(crate) fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
