//! The lab: builds hosts as network namespaces on a private underlay,
//! runs one real `shoal daemon` per host, and drives them (CLI calls,
//! kill/pause/restart, partitions). Everything it creates is recorded in a
//! [`LabState`] first-hand, and cleanup works from that record alone:
//! namespaces by their recorded names, processes by recorded PID and start
//! time, the lab directory by its recorded path.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::error::LabError;
use crate::names::{self, HostId, MAX_HOSTS};
use crate::plan;
use crate::process::{self, Liveness};
use crate::registry;
use crate::state::{HostState, LabState, STATE_VERSION};
use crate::tools;

/// Where labs keep their directories (`<root>/<prefix>/`) and where the
/// `shoal-lab` binary keeps the state of the lab it brought up.
pub const LAB_ROOT: &str = "/run/shoal-lab";

/// How long a daemon gets to answer `shoal info` after it was started.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long daemons get to exit after SIGTERM before they are SIGKILLed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the kernel gets to deliver SIGKILL/SIGSTOP/SIGCONT.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a wait re-checks its condition.
const POLL: Duration = Duration::from_millis(25);
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
        let ip = preflight()?;
        let shoal_bin = match self.shoal_bin {
            Some(p) => p,
            None => tools::find_shoal_bin()?,
        };
        let (prefix, dir) = claim_prefix(&self.root)?;
        let state = LabState {
            version: STATE_VERSION,
            hosts: (1..=self.nodes)
                .map(|i| host_state(&prefix, &dir, i, self.data_path))
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
        lab.lock().save()?;
        lab.lock().build(&self.daemon_config)?;
        let all: Vec<usize> = (1..=self.nodes).collect();
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

fn host_state(prefix: &str, dir: &Path, i: usize, data_path: bool) -> HostState {
    let hdir = dir.join(format!("h{i}"));
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
    }
}

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

    /// A command that runs `argv` inside the host's namespace, with
    /// `SHOAL_HOST` set to the host's daemon socket and the shoal binary's
    /// directory first in PATH. The caller picks stdio and runs it.
    pub fn command<S: AsRef<OsStr>>(
        &self,
        host: impl Into<HostId>,
        argv: &[S],
    ) -> Result<Command, LabError> {
        let g = self.lock();
        let h = g.host(host.into())?;
        let mut cmd = Command::new(&g.ip);
        cmd.arg("netns").arg("exec").arg(&h.ns).args(argv);
        cmd.env("SHOAL_HOST", &h.socket)
            .env("PATH", path_with(&g.state.shoal_bin));
        Ok(cmd)
    }

    /// Runs `argv` in the host's namespace (see [`Lab::command`]) and
    /// collects its output. A non-zero exit is not an error here: look at
    /// `output.status`.
    pub fn exec<S: AsRef<OsStr>>(
        &self,
        host: impl Into<HostId>,
        argv: &[S],
    ) -> Result<Output, LabError> {
        let mut cmd = self.command(host, argv)?;
        cmd.stdin(Stdio::null())
            .output()
            .map_err(|e| LabError::io(format!("running {}", show(&cmd)), e))
    }

    /// Runs the shoal CLI with `args` in the host's namespace, talking to
    /// that host's daemon: `lab.shoal(1, &["--format", "json", "info"])`.
    pub fn shoal<S: AsRef<OsStr>>(
        &self,
        host: impl Into<HostId>,
        args: &[S],
    ) -> Result<Output, LabError> {
        let mut argv: Vec<OsString> = vec![self.shoal_bin().into_os_string()];
        argv.extend(args.iter().map(|a| a.as_ref().to_os_string()));
        self.exec(host, &argv)
    }

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
        Ok(probe(&bin, &socket, timeout).is_ok())
    }

    /// One ping (1 s reply timeout) from `from` to `to`'s underlay address.
    /// `Ok(false)` means no reply; an error means ping could not be run.
    pub fn ping(&self, from: impl Into<HostId>, to: impl Into<HostId>) -> Result<bool, LabError> {
        let addr = self.host(to)?.addr.to_string();
        let ping = tools::find_program("ping").ok_or(LabError::PingMissing)?;
        let out = self.exec(
            from,
            &[
                ping.as_os_str(),
                "-c1".as_ref(),
                "-W1".as_ref(),
                "-w2".as_ref(),
                "-q".as_ref(),
                addr.as_ref(),
            ],
        )?;
        Ok(out.status.success())
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

    /// Cuts every host of `a` off from every host of `b` (both addresses,
    /// both directions) with an nftables table `inet shoallab` in each
    /// host's namespace. Partitions add up until [`Lab::heal`].
    pub fn partition<A: Into<HostId> + Copy, B: Into<HostId> + Copy>(
        &self,
        a: &[A],
        b: &[B],
    ) -> Result<(), LabError> {
        let nft = tools::nft()?;
        let mut g = self.lock();
        let a: BTreeSet<usize> = a
            .iter()
            .map(|&h| g.host(h.into()).map(|h| h.index))
            .collect::<Result<_, _>>()?;
        let b: BTreeSet<usize> = b
            .iter()
            .map(|&h| g.host(h.into()).map(|h| h.index))
            .collect::<Result<_, _>>()?;
        if a.is_empty() || b.is_empty() {
            return Err(LabError::BadPartition(
                "both sides need at least one host".into(),
            ));
        }
        if let Some(both) = a.intersection(&b).next() {
            return Err(LabError::BadPartition(format!("h{both} is on both sides")));
        }
        for (side, other) in [(&a, &b), (&b, &a)] {
            for &i in side.iter() {
                g.state.hosts[i - 1].blocked.extend(other.iter().copied());
            }
        }
        for &i in a.union(&b) {
            g.apply_nft(&nft, i)?;
        }
        g.save()
    }

    /// Removes every partition (the `inet shoallab` tables).
    pub fn heal(&self) -> Result<(), LabError> {
        let mut g = self.lock();
        let cut: Vec<usize> = g
            .state
            .hosts
            .iter()
            .filter(|h| !h.blocked.is_empty())
            .map(|h| h.index)
            .collect();
        if cut.is_empty() {
            return Ok(());
        }
        let nft = tools::nft()?;
        for i in cut {
            g.state.hosts[i - 1].blocked.clear();
            g.apply_nft(&nft, i)?;
        }
        g.save()
    }

    /// Forms a swarm of every host: see [`Lab::form_swarm`].
    pub fn init_swarm(&self, managers: usize) -> Result<(), LabError> {
        self.form_swarm(self.len(), managers)
    }

    /// Forms a swarm of h1..h`members`: `shoal swarm init` on h1 and
    /// `shoal swarm join` on the others, h1..h`managers` as managers, the
    /// rest as workers; the other hosts stay outside. Every member
    /// advertises eth0 (and eth1 as data path when the lab has one).
    /// Returns once every manager sees all managers as reachable voters.
    pub fn form_swarm(&self, members: usize, managers: usize) -> Result<(), LabError> {
        self.form_swarm_with(members, managers, &[])
    }

    /// [`Lab::form_swarm`] with extra `shoal swarm init` flags, e.g.
    /// `["--key-rotation-interval", "2s"]`.
    pub fn form_swarm_with(
        &self,
        members: usize,
        managers: usize,
        init_args: &[&str],
    ) -> Result<(), LabError> {
        let n = members;
        if n > self.len() {
            return Err(LabError::Swarm(format!(
                "{n} members asked of a {}-host lab",
                self.len()
            )));
        }
        if managers == 0 || managers > n {
            return Err(LabError::Swarm(format!(
                "{managers} managers asked of a {n}-host lab"
            )));
        }
        let data_path = self.lock().state.data_path;
        let mut addr_args = vec!["--advertise-addr", "eth0"];
        if data_path {
            addr_args.extend(["--data-path-addr", "eth1"]);
        }
        let run = |host: usize, args: &[&str]| -> Result<String, LabError> {
            let out = self.shoal(host, args)?;
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            } else {
                Err(LabError::Swarm(format!(
                    "h{host}: shoal {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
        };
        let mut init = vec!["swarm", "init"];
        init.extend(&addr_args);
        init.extend(init_args);
        run(1, &init)?;
        let worker = run(1, &["swarm", "join-token", "-q", "worker"])?;
        let manager = run(1, &["swarm", "join-token", "-q", "manager"])?;
        let remote = format!("{}:2377", self.host(1)?.addr);
        for h in 2..=n {
            let token = if h <= managers { &manager } else { &worker };
            let mut join = vec!["swarm", "join", "--token", token.as_str()];
            join.extend(&addr_args);
            join.push(&remote);
            run(h, &join)?;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for h in 1..=managers {
            loop {
                let info = run(h, &["--format", "json", "info"])?;
                let v: serde_json::Value = serde_json::from_str(&info)
                    .map_err(|e| LabError::Swarm(format!("h{h}: info is not JSON: {e}")))?;
                let raft = &v["swarm"]["raft"];
                let full = |k: &str| raft[k].as_u64() == Some(managers as u64);
                if full("voters") && full("reachable") && raft["leader"].is_u64() {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    return Err(LabError::Swarm(format!(
                        "h{h} does not see {managers} reachable managers: {raft}"
                    )));
                }
                std::thread::sleep(POLL);
            }
        }
        Ok(())
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
    /// SIGKILL after 10 s), namespaces by their recorded names, the lab
    /// directory. Idempotent.
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

    /// Waits until every host in `hosts` answers `shoal info`, failing
    /// early if a daemon exits. Locks per round so Ctrl-C cleanup can run.
    fn wait_ready(&self, hosts: &[usize]) -> Result<(), LabError> {
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
                match probe(&bin, &socket, PROBE_TIMEOUT) {
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

/// `shoal --host <socket> info`, bounded in time (a paused daemon accepts
/// the connection and never answers).
fn probe(bin: &Path, socket: &Path, timeout: Duration) -> Result<(), String> {
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

/// PATH with the shoal binary's directory first.
fn path_with(shoal_bin: &Path) -> OsString {
    let mut dirs: Vec<PathBuf> = shoal_bin
        .parent()
        .map(Path::to_path_buf)
        .into_iter()
        .collect();
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with `stdin` fed in; a non-zero exit becomes an error.
fn run(cmd: &mut Command, what: &str, stdin: &str) -> Result<(), LabError> {
    let line = show(cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LabError::io(format!("{what}: running {line}"), e))?;
    if let Some(mut input) = child.stdin.take() {
        // A failed write shows up as the command's own error below.
        let _ = input.write_all(stdin.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| LabError::io(format!("{what}: waiting for {line}"), e))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(LabError::Command {
        what: what.to_string(),
        cmd: line,
        stderr: if err.is_empty() {
            out.status.to_string()
        } else {
            err
        },
    })
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

    /// Host dirs, namespaces, bridges, veths and addresses.
    fn build(&mut self, daemon_config: &str) -> Result<(), LabError> {
        for h in &self.state.hosts {
            for d in [&h.data_dir, &h.run_dir] {
                fs::create_dir_all(d)
                    .map_err(|e| LabError::io(format!("creating {}", d.display()), e))?;
            }
            fs::write(
                &h.config,
                format!(
                    "# shoal-lab {} host {}\nhostname = \"{}\"\n{daemon_config}",
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

    /// Starts `shoal daemon` for host `i` inside its namespace, in its own
    /// process group (so a terminal's Ctrl-C reaches the lab, not the
    /// daemons), output appended to daemon.log. `ip netns exec` execs the
    /// daemon, so the child's PID is the daemon's.
    fn spawn_daemon(&mut self, i: usize) -> Result<(), LabError> {
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

    fn daemon_state(&mut self, i: usize) -> DaemonState {
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
    fn stop_daemons(&mut self, hosts: &[usize]) -> Vec<String> {
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

    fn apply_nft(&self, nft: &Path, i: usize) -> Result<(), LabError> {
        let h = &self.state.hosts[i - 1];
        let addrs: Vec<_> = h
            .blocked
            .iter()
            .filter_map(|&j| self.state.hosts.get(j - 1))
            .flat_map(HostState::addrs)
            .collect();
        run(
            Command::new(&self.ip)
                .args(["netns", "exec", &h.ns])
                .arg(nft)
                .args(["-f", "-"]),
            &format!("setting the partition rules of {}", h.name),
            &plan::nft_ruleset(&addrs),
        )
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
            kill_workloads(&h.run_dir.join("workloads"));
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
fn kill_workloads(dir: &Path) {
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
