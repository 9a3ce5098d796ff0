//! The daemons' processes: starting `shoal daemon` in a host's namespace,
//! knowing what it is doing (exact exit status for our own children, /proc
//! for a loaded lab), signalling it (kill, pause, resume), stopping it
//! (SIGTERM, then SIGKILL) and waiting until it answers `shoal info`.
//! `build` starts and stops them through here; the PIDs go into the record.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::error::LabError;
use crate::names::HostId;
use crate::process::{self, Liveness};
use crate::tools;

use super::exec::{path_with, show};
use super::{Inner, Lab, POLL};

/// How long daemons get to exit after SIGTERM before they are SIGKILLed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the kernel gets to deliver SIGKILL/SIGSTOP/SIGCONT.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one `shoal info` readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a daemon ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal number (`libc::SIGKILL` is 9).
    Signal(i32),
    /// It is gone but this process is not its parent, so the status is lost.
    Unknown,
}

/// What a host's daemon is doing right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonState {
    /// Alive and not stopped.
    Running,
    /// Stopped by SIGSTOP (`Lab::pause`).
    Paused,
    /// Not running any more (or never started).
    Exited(Exit),
}

impl fmt::Display for DaemonState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonState::Running => f.write_str("running"),
            DaemonState::Paused => f.write_str("paused (SIGSTOP)"),
            DaemonState::Exited(Exit::Code(c)) => write!(f, "exited with code {c}"),
            DaemonState::Exited(Exit::Signal(s)) => match Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
            DaemonState::Exited(Exit::Unknown) => f.write_str("not running"),
        }
    }
}

fn exit_of(status: ExitStatus) -> Exit {
    match (status.code(), status.signal()) {
        (Some(c), _) => Exit::Code(c),
        (None, Some(s)) => Exit::Signal(s),
        _ => Exit::Unknown,
    }
}

impl Lab {
    /// Whether the host's daemon answers `shoal info` within `timeout`
    /// (run from the root namespace on its socket; a paused daemon does not).
    pub fn answers(&self, host: impl Into<HostId>, timeout: Duration) -> Result<bool, LabError> {
        let (bin, socket) = {
            let g = self.lock();
            (
                g.state.shoal_bin.clone(),
                g.host(host.into())?.socket.clone(),
            )
        };
        Ok(shoal_info_within(&bin, &socket, timeout).is_ok())
    }

    /// What the host's daemon is doing. For daemons this process started
    /// the exit status is exact (they are reaped here); for a lab loaded
    /// from a state file, /proc and the recorded start time tell whether
    /// the recorded process still exists.
    pub fn daemon_state(&self, host: impl Into<HostId>) -> Result<DaemonState, LabError> {
        let mut g = self.lock();
        let i = g.host(host.into())?.index;
        Ok(g.daemon_state(i))
    }

    /// SIGKILL the host's daemon and wait until it is gone (reaped when
    /// this process is its parent).
    pub fn kill(&self, host: impl Into<HostId>) -> Result<(), LabError> {
        let mut g = self.lock();
        let i = g.host(host.into())?.index;
        g.signal(i, Signal::SIGKILL)?;
        g.wait_state(i, |s| matches!(s, DaemonState::Exited(_)));
        Ok(())
    }

    /// SIGSTOP the host's daemon (it stops answering but keeps its sockets).
    pub fn pause(&self, host: impl Into<HostId>) -> Result<(), LabError> {
        let mut g = self.lock();
        let i = g.host(host.into())?.index;
        g.signal(i, Signal::SIGSTOP)?;
        g.wait_state(i, |s| s != DaemonState::Running);
        Ok(())
    }

    /// SIGCONT a paused daemon.
    pub fn resume(&self, host: impl Into<HostId>) -> Result<(), LabError> {
        let mut g = self.lock();
        let i = g.host(host.into())?.index;
        g.signal(i, Signal::SIGCONT)?;
        g.wait_state(i, |s| s != DaemonState::Paused);
        Ok(())
    }

    /// Stops the host's daemon if it runs (SIGTERM, then SIGKILL after
    /// 10 s), starts it again with the same data dir, run dir and socket,
    /// and waits until it answers `shoal info`.
    pub fn restart(&self, host: impl Into<HostId>) -> Result<(), LabError> {
        let i = {
            let mut g = self.lock();
            let i = g.host(host.into())?.index;
            let problems = g.stop_daemons(&[i]);
            if let Some(p) = problems.first() {
                return Err(LabError::io(
                    format!("stopping the daemon of h{i}"),
                    std::io::Error::other(p.clone()),
                ));
            }
            g.spawn_daemon(i)?;
            i
        };
        self.wait_ready(&[i])
    }

    /// Waits until every host in `hosts` answers `shoal info`, failing
    /// early if a daemon exits. Locks per round so Ctrl-C cleanup can run.
    pub(super) fn wait_ready(&self, hosts: &[usize]) -> Result<(), LabError> {
        let timeout = self.lock().ready_timeout;
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<usize> = hosts.to_vec();
        let mut last: BTreeMap<usize, String> = BTreeMap::new();
        loop {
            let mut still = Vec::new();
            for &i in &pending {
                let mut g = self.lock();
                if let DaemonState::Exited(e) = g.daemon_state(i) {
                    let h = &g.state.hosts[i - 1];
                    return Err(LabError::DaemonExited {
                        host: h.name.clone(),
                        state: DaemonState::Exited(e).to_string(),
                        log: h.log.clone(),
                        tail: log_tail(&h.log, 15),
                    });
                }
                let (bin, socket) = (
                    g.state.shoal_bin.clone(),
                    g.state.hosts[i - 1].socket.clone(),
                );
                drop(g);
                match shoal_info_within(&bin, &socket, PROBE_TIMEOUT) {
                    Ok(()) => {}
                    Err(e) => {
                        last.insert(i, e);
                        still.push(i);
                    }
                }
            }
            pending = still;
            let Some(&first) = pending.first() else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                let g = self.lock();
                let h = &g.state.hosts[first - 1];
                return Err(LabError::NotReady {
                    host: h.name.clone(),
                    secs: timeout.as_secs(),
                    last: last.remove(&first).unwrap_or_default(),
                    log: h.log.clone(),
                });
            }
            thread::sleep(POLL);
        }
    }
}

/// `shoal --host <socket> info`, bounded in time (a paused daemon accepts
/// the connection and never answers).
fn shoal_info_within(bin: &Path, socket: &Path, timeout: Duration) -> Result<(), String> {
    if !socket.exists() {
        return Err(format!("{} does not exist yet", socket.display()));
    }
    let mut child = Command::new(bin)
        .arg("--host")
        .arg(socket)
        .arg("info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("`shoal info` took longer than {timeout:?}"));
            }
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for shoal info: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Inner {
    /// Starts `shoal daemon` for host `i` inside its namespace, in its own
    /// process group (so a terminal's Ctrl-C reaches the lab, not the
    /// daemons), output appended to daemon.log. `ip netns exec` execs the
    /// daemon, so the child's PID is the daemon's.
    pub(super) fn spawn_daemon(&mut self, i: usize) -> Result<(), LabError> {
        let h = &self.state.hosts[i - 1];
        let open_log = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&h.log)
                .map_err(|e| LabError::io(format!("opening {}", h.log.display()), e))
        };
        let mut log = open_log()?;
        let _ = writeln!(log, "--- shoal-lab: starting shoal daemon in {}", h.ns);
        // nsenter (not `ip netns exec`) so the daemon shares the host's
        // mount namespace: bind mounts it keeps under its run dir outlive
        // it, as on a real host. nsenter execs, so the PID is the daemon's.
        let nsenter = tools::find_program("nsenter").ok_or_else(|| {
            LabError::io(
                "starting a daemon".to_string(),
                std::io::Error::other("`nsenter` not found: install util-linux"),
            )
        })?;
        let mut cmd = Command::new(nsenter);
        cmd.arg(format!("--net=/run/netns/{}", h.ns))
            .arg("--")
            .arg(&self.state.shoal_bin)
            .arg("daemon")
            .arg("--config")
            .arg(&h.config)
            .arg("--data-dir")
            .arg(&h.data_dir)
            .arg("--socket")
            .arg(&h.socket)
            .arg("--run-dir")
            .arg(&h.run_dir)
            .env("PATH", path_with(&self.state.shoal_bin))
            .env_remove("SHOAL_HOST")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(open_log()?)
            .process_group(0);
        let child = cmd.spawn().map_err(|e| {
            LabError::io(
                format!("starting the daemon of {}: {}", h.name, show(&cmd)),
                e,
            )
        })?;
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        // Our unreaped child: its /proc entry exists even if it died already.
        let rec =
            process::record(pid).unwrap_or(crate::state::ProcessRecord { pid, start_time: 0 });
        self.state.hosts[i - 1].daemon = Some(rec);
        self.children.insert(i, child);
        self.save()
    }

    pub(super) fn daemon_state(&mut self, i: usize) -> DaemonState {
        let Some(rec) = self.state.hosts[i - 1].daemon else {
            return DaemonState::Exited(Exit::Unknown);
        };
        let live = process::liveness(&rec);
        if let Some(child) = self.children.get_mut(&i) {
            match (child.try_wait(), live) {
                (Ok(Some(status)), _) => return DaemonState::Exited(exit_of(status)),
                // A multi-threaded daemon shows as a zombie as soon as its
                // main thread is gone, while waitpid still waits for the
                // other threads: it is dying, so a blocking wait is short.
                (Ok(None), Liveness::Gone) => {
                    if let Ok(status) = child.wait() {
                        return DaemonState::Exited(exit_of(status));
                    }
                }
                _ => {}
            }
        }
        match live {
            Liveness::Running => DaemonState::Running,
            Liveness::Stopped => DaemonState::Paused,
            Liveness::Gone => DaemonState::Exited(Exit::Unknown),
        }
    }

    /// Waits (bounded) until the daemon's state satisfies `done`.
    fn wait_state(&mut self, i: usize, done: impl Fn(DaemonState) -> bool) -> bool {
        let deadline = Instant::now() + SIGNAL_TIMEOUT;
        loop {
            if done(self.daemon_state(i)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL);
        }
    }

    /// Signals the recorded daemon process, after checking it is still the
    /// process the lab started (unreaped child, or same start time).
    fn signal(&mut self, i: usize, sig: Signal) -> Result<(), LabError> {
        let state = self.daemon_state(i);
        let h = &self.state.hosts[i - 1];
        let not_running = || LabError::NotRunning {
            host: h.name.clone(),
            state: state.to_string(),
        };
        let (DaemonState::Running | DaemonState::Paused) = state else {
            return Err(not_running());
        };
        let Some(rec) = h.daemon else {
            return Err(not_running());
        };
        match signal::kill(Pid::from_raw(rec.pid), sig) {
            Ok(()) => Ok(()),
            Err(Errno::ESRCH) => Err(not_running()),
            Err(source) => Err(LabError::Signal {
                host: h.name.clone(),
                pid: rec.pid,
                signal: sig.to_string(),
                source,
            }),
        }
    }

    /// SIGTERM (after SIGCONT if paused), wait, then SIGKILL the process
    /// group of what is left. Returns problems, empty when all are gone.
    pub(super) fn stop_daemons(&mut self, hosts: &[usize]) -> Vec<String> {
        let mut live = Vec::new();
        for &i in hosts {
            match self.daemon_state(i) {
                DaemonState::Exited(_) => {}
                DaemonState::Paused => {
                    let _ = self.signal(i, Signal::SIGCONT);
                    let _ = self.signal(i, Signal::SIGTERM);
                    live.push(i);
                }
                DaemonState::Running => {
                    let _ = self.signal(i, Signal::SIGTERM);
                    live.push(i);
                }
            }
        }
        let all_gone = |inner: &mut Inner, live: &[usize]| {
            live.iter()
                .all(|&i| matches!(inner.daemon_state(i), DaemonState::Exited(_)))
        };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !all_gone(self, &live) && Instant::now() < deadline {
            thread::sleep(POLL);
        }
        for &i in &live {
            if matches!(self.daemon_state(i), DaemonState::Exited(_)) {
                continue;
            }
            // Still the process we started (checked just above), so its
            // process group is ours too.
            if let Some(rec) = self.state.hosts[i - 1].daemon {
                let pg = Pid::from_raw(rec.pid);
                if signal::killpg(pg, Signal::SIGKILL).is_err() {
                    let _ = signal::kill(pg, Signal::SIGKILL);
                }
            }
        }
        let deadline = Instant::now() + SIGNAL_TIMEOUT;
        while !all_gone(self, &live) && Instant::now() < deadline {
            thread::sleep(POLL);
        }
        let survivors: Vec<usize> = live
            .into_iter()
            .filter(|&i| !matches!(self.daemon_state(i), DaemonState::Exited(_)))
            .collect();
        survivors
            .iter()
            .map(|&i| {
                let h = &self.state.hosts[i - 1];
                format!(
                    "daemon of {} (pid {}) survived SIGKILL",
                    h.name,
                    h.daemon.map(|d| d.pid).unwrap_or_default()
                )
            })
            .collect()
    }
}
