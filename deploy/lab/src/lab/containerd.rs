//! One containerd per lab host ([`LabBuilder::containerd`]): started in
//! the host's network namespace (`nsenter --net`, so it shares the root's
//! mount namespace and a /sys that shows the cgroups), with its own root,
//! state and sockets under `<host dir>/ctd/`, and written into the host's
//! shoal.toml as `containerd_socket`. The daemon runs its tasks there; the
//! lab only starts it, waits until it answers, and takes down exactly what
//! it ran: its tasks, its shims and their containers, the mounts under its
//! dirs, then containerd itself by recorded PID and start time.
//!
//! Any other containerd on the machine (a system one on /run/containerd)
//! is never looked at: shims are matched by the `-address <this socket>` of
//! their command line, and the only files removed outside the host's dirs
//! are shim sockets whose name hashes this containerd's socket
//! ([`shim_socket_path`]), runc state dirs naming a process killed here,
//! and the cgroups of those processes.
//!
//! [`Lab::ctr`] runs Debian's `ctr` against a host's containerd (tests use
//! it to look at what the daemon created, or to run a container by hand
//! with [`Lab::ctr_run_flags`]).
//!
//! [`LabBuilder::containerd`]: super::LabBuilder::containerd

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::error::LabError;
use crate::names::HostId;
use crate::process::{self, Liveness};
use crate::state::{HostState, ProcessRecord};
use crate::tools;

use super::{exited, Inner, Lab, KILL_TIMEOUT, POLL};
use super::{output_within, run_within, spawn_in_netns, stop_process, tail, toml_str};

/// Longest unix socket path (`sun_path` is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;
/// How long a fresh containerd gets to answer `ctr version`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one `ctr` call (readiness probe, task removal at teardown).
const CTR_TIMEOUT: Duration = Duration::from_secs(10);
/// Where containerd 1.6 puts every shim's socket, whatever its config says
/// (`/run/containerd/s/<sha256>`, see [`shim_socket_path`]).
const SHIM_SOCKET_DIR: &str = "/run/containerd/s/";
/// runc's default root for runc-v2 shims (`<root>/<namespace>/<id>`).
const RUNC_ROOT: &str = "/run/containerd/runc";
const SHIM_NAME: &str = "containerd-shim-runc-v2";
/// Plugins the lab's containerd does not load: CRI (Kubernetes),
/// snapshotters that cannot work here, and `opt` (it would make
/// /opt/containerd outside the host's dirs). The v1 runtime stays: 1.6's
/// tasks service refuses to start without it.
const DISABLED_PLUGINS: &[&str] = &[
    "io.containerd.grpc.v1.cri",
    "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
];

/// The files and dirs of one host's containerd, all under `<host dir>/ctd`.
#[derive(Debug, Clone)]
pub(crate) struct CtdPaths {
    pub dir: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub socket: PathBuf,
    pub ttrpc: PathBuf,
    pub debug: PathBuf,
    /// Where `Lab::ctr_run_flags` puts `ctr run`'s FIFOs (ctr's default
    /// is /run/containerd/fifo) and runc's state (the shim's default is
    /// /run/containerd/runc).
    pub fifo: PathBuf,
    pub runc: PathBuf,
}

impl CtdPaths {
    pub(crate) fn of(host_dir: &Path) -> CtdPaths {
        let dir = host_dir.join("ctd");
        CtdPaths {
            root: dir.join("root"),
            state: dir.join("state"),
            config: dir.join("config.toml"),
            log: dir.join("containerd.log"),
            socket: dir.join("c.sock"),
            ttrpc: dir.join("c.ttrpc"),
            debug: dir.join("d.sock"),
            fifo: dir.join("fifo"),
            runc: dir.join("runc"),
            dir,
        }
    }

    /// Refuses socket paths the kernel cannot bind, naming the path.
    pub(crate) fn check(&self) -> Result<(), LabError> {
        for s in [&self.socket, &self.ttrpc, &self.debug] {
            let len = s.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(LabError::io(
                    format!("containerd socket {}", s.display()),
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!(
                            "the path is {len} bytes, a unix socket path has at most \
                             {MAX_SOCKET_PATH}: use a shorter lab root (LabBuilder::root)"
                        ),
                    ),
                ));
            }
        }
        Ok(())
    }

    fn config_toml(&self) -> String {
        let q = |p: &Path| toml_str(&p.to_string_lossy());
        let disabled: Vec<String> = DISABLED_PLUGINS.iter().map(|p| toml_str(p)).collect();
        format!(
            "# shoal-lab: one containerd per lab host, everything under {dir}\n\
             version = 2\n\
             root = {root}\n\
             state = {state}\n\
             disabled_plugins = [{disabled}]\n\
             \n\
             [grpc]\n  address = {socket}\n  uid = 0\n  gid = 0\n\
             \n\
             [ttrpc]\n  address = {ttrpc}\n\
             \n\
             [debug]\n  address = {debug}\n  level = \"info\"\n\
             \n\
             [metrics]\n  address = \"\"\n",
            dir = self.dir.display(),
            root = q(&self.root),
            state = q(&self.state),
            disabled = disabled.join(", "),
            socket = q(&self.socket),
            ttrpc = q(&self.ttrpc),
            debug = q(&self.debug),
        )
    }
}

impl Lab {
    /// The host's containerd socket, when the lab runs one there
    /// ([`LabBuilder::containerd`](super::LabBuilder::containerd)).
    pub fn containerd_socket(&self, host: impl Into<HostId>) -> Result<PathBuf, LabError> {
        let g = self.lock();
        let h = g.host(host.into())?;
        h.containerd_socket.clone().ok_or_else(|| no_containerd(h))
    }

    /// A `ctr --address <the host's socket>` command in the host's network
    /// namespace, for `args` (e.g. `["-n", "shoal", "tasks", "ls"]`). For
    /// `ctr run`, add [`Lab::ctr_run_flags`].
    pub fn ctr_command<S: AsRef<OsStr>>(
        &self,
        host: impl Into<HostId>,
        args: &[S],
    ) -> Result<Command, LabError> {
        let host = host.into();
        let socket = self.containerd_socket(host)?;
        let ctr = ctr()?;
        let mut cmd = self.net_command(host, &[ctr.as_os_str()])?;
        cmd.arg("--address").arg(socket).args(args);
        Ok(cmd)
    }

    /// Runs `ctr` against the host's containerd (see [`Lab::ctr_command`])
    /// and collects its output, giving up after `timeout`. A non-zero exit
    /// is not an error here: look at `output.status`.
    pub fn ctr<S: AsRef<OsStr>>(
        &self,
        host: impl Into<HostId>,
        args: &[S],
        timeout: Duration,
    ) -> Result<Output, LabError> {
        let mut cmd = self.ctr_command(host, args)?;
        output_within(&mut cmd, "running ctr", timeout)
    }

    /// Flags for `ctr run` on the host that keep a container's traces
    /// under the lab's names instead of ctr's shared defaults: FIFOs
    /// (`--fifo-dir`) and runc state (`--runc-root`) under `hI/ctd/`, and
    /// the cgroup `/<prefix>-hI-<id>` (`--cgroup`, one level, so removing
    /// the container removes all of it).
    pub fn ctr_run_flags(
        &self,
        host: impl Into<HostId>,
        id: &str,
    ) -> Result<Vec<String>, LabError> {
        let g = self.lock();
        let h = g.host(host.into())?;
        if h.containerd_socket.is_none() {
            return Err(no_containerd(h));
        }
        let paths = CtdPaths::of(&h.dir);
        for d in [&paths.fifo, &paths.runc] {
            fs::create_dir_all(d)
                .map_err(|e| LabError::io(format!("creating {}", d.display()), e))?;
        }
        Ok(vec![
            "--fifo-dir".into(),
            paths.fifo.to_string_lossy().into_owned(),
            "--runc-root".into(),
            paths.runc.to_string_lossy().into_owned(),
            "--cgroup".into(),
            format!("/{}-{}-{id}", g.state.prefix, h.name),
        ])
    }

    /// Stops the host's containerd (SIGTERM, then SIGKILL after 10 s; its
    /// shims and their containers keep running, as on a real host), starts
    /// it again on the same root, state and socket, and waits until it
    /// answers `ctr version`.
    pub fn restart_containerd(&self, host: impl Into<HostId>) -> Result<(), LabError> {
        let i = {
            let mut g = self.lock();
            let h = g.host(host.into())?;
            if h.containerd_socket.is_none() {
                return Err(no_containerd(h));
            }
            let (i, name) = (h.index, h.name.clone());
            if let Some(rec) = h.containerd {
                let child = g.containerds.get_mut(&i);
                if let Some(p) = stop_process(rec, child, &format!("containerd of {name}")) {
                    return Err(LabError::io(
                        format!("restarting containerd on {name}"),
                        std::io::Error::other(p),
                    ));
                }
                g.state.hosts[i - 1].containerd = None;
                g.containerds.remove(&i);
            }
            g.spawn_containerd(i)?;
            i
        };
        self.wait_containerd(&[i])
    }

    /// Waits until the containerd of every host in `hosts` answers
    /// `ctr version`, failing early (with its log's tail) if one exits.
    pub(super) fn wait_containerd(&self, hosts: &[usize]) -> Result<(), LabError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let ctr = ctr()?;
        for &i in hosts {
            loop {
                let (socket, log) = {
                    let mut g = self.lock();
                    let h = &g.state.hosts[i - 1];
                    let socket = h.containerd_socket.clone().unwrap_or_default();
                    let paths = CtdPaths::of(&h.dir);
                    if !g.containerd_alive(i) {
                        return Err(LabError::io(
                            format!("starting containerd on h{i}"),
                            std::io::Error::other(format!(
                                "it exited; {} ends with:\n{}",
                                paths.log.display(),
                                tail(&paths.log, 15)
                            )),
                        ));
                    }
                    (socket, paths.log)
                };
                let last = if socket.exists() {
                    let mut probe = Command::new(&ctr);
                    probe.arg("--address").arg(&socket).arg("version");
                    match run_within(&mut probe, "asking containerd its version", CTR_TIMEOUT) {
                        Ok(_) => break,
                        Err(e) => e.to_string(),
                    }
                } else {
                    format!("{} does not exist yet", socket.display())
                };
                if Instant::now() >= deadline {
                    return Err(LabError::io(
                        format!("starting containerd on h{i}"),
                        std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "no answer on {} within {}s (last: {last}); its log is {}",
                                socket.display(),
                                READY_TIMEOUT.as_secs(),
                                log.display()
                            ),
                        ),
                    ));
                }
                thread::sleep(POLL);
            }
        }
        Ok(())
    }
}

fn no_containerd(h: &HostState) -> LabError {
    LabError::io(
        format!("containerd of {}", h.name),
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "this lab runs no containerd: build it with LabBuilder::containerd(true)",
        ),
    )
}

fn ctr() -> Result<PathBuf, LabError> {
    tools::find_program("ctr").ok_or_else(|| {
        LabError::io(
            "talking to containerd".to_string(),
            std::io::Error::other("`ctr` not found: apt-get install containerd"),
        )
    })
}

impl Inner {
    /// Writes host `i`'s containerd config and starts it (not waiting).
    pub(super) fn spawn_containerd(&mut self, i: usize) -> Result<(), LabError> {
        let h = &self.state.hosts[i - 1];
        let paths = CtdPaths::of(&h.dir);
        paths.check()?;
        for d in [&paths.root, &paths.state] {
            fs::create_dir_all(d)
                .map_err(|e| LabError::io(format!("creating {}", d.display()), e))?;
        }
        fs::write(&paths.config, paths.config_toml())
            .map_err(|e| LabError::io(format!("writing {}", paths.config.display()), e))?;
        let bin = tools::find_program("containerd").ok_or_else(|| {
            LabError::io(
                format!("starting containerd on {}", h.name),
                std::io::Error::other("`containerd` not found: apt-get install containerd runc"),
            )
        })?;
        let (child, rec) = spawn_in_netns(
            &h.ns,
            &bin,
            &[OsStr::new("--config"), paths.config.as_os_str()],
            &paths.log,
            &format!("starting containerd on {}", h.name),
        )?;
        self.state.hosts[i - 1].containerd = Some(rec);
        self.containerds.insert(i, child);
        self.save()
    }

    /// Whether host `i`'s recorded containerd still runs.
    pub(super) fn containerd_alive(&mut self, i: usize) -> bool {
        let Some(rec) = self.state.hosts[i - 1].containerd else {
            return false;
        };
        if let Some(c) = self.containerds.get_mut(&i) {
            if let Ok(Some(_)) = c.try_wait() {
                return false;
            }
        }
        process::liveness(&rec) != Liveness::Gone
    }

    /// Takes down host `i`'s containerd and everything it ran: tasks
    /// (through containerd while it answers), then containerd, then any
    /// shim left with its containers, the shim sockets of the containers it
    /// knew, the mounts under its dirs, and its dirs. Returns the problems;
    /// what is left stays recorded.
    pub(super) fn teardown_containerd(&mut self, i: usize) -> Vec<String> {
        let h = &self.state.hosts[i - 1];
        let Some(socket) = h.containerd_socket.clone() else {
            return Vec::new();
        };
        let name = h.name.clone();
        let paths = CtdPaths::of(&h.dir);
        let mut problems = Vec::new();
        // Shim sockets are named in the bundles: read them while they exist
        // (deleting a task removes its bundle, and its shim may still be
        // on its way out when we come to kill it).
        let mut shim_sockets = bundle_addresses(&paths.state);
        if self.containerd_alive(i) {
            shim_sockets.extend(delete_tasks(&socket));
        }
        if let Some(rec) = self.state.hosts[i - 1].containerd {
            let child = self.containerds.get_mut(&i);
            match stop_process(rec, child, &format!("containerd of {name}")) {
                Some(p) => problems.push(p),
                None => {
                    self.state.hosts[i - 1].containerd = None;
                    self.containerds.remove(&i);
                }
            }
        }
        let survivors = kill_shims(&socket);
        if survivors.is_empty() {
            // No shim of this containerd is left to serve them (a shim
            // that exits by itself may leave its socket: containerd 1.6
            // removes it racing the shim's exit).
            for s in shim_sockets {
                let _ = fs::remove_file(&s);
            }
        }
        problems.extend(survivors);
        problems.extend(unmount_under(&paths.dir));
        if problems.is_empty() && paths.dir.exists() {
            if let Err(e) = fs::remove_dir_all(&paths.dir) {
                problems.push(format!("removing {}: {e}", paths.dir.display()));
            }
        }
        problems
    }
}

/// Through containerd: SIGKILL and delete every task in every namespace,
/// so each shim runs `runc delete` (cgroups, runc state, rootfs mount)
/// and exits on its own. Best effort and bounded; what is left is killed
/// by [`kill_shims`]. Returns the shim socket paths of every container
/// containerd still knows (see [`shim_socket_path`]), for after the shims
/// are gone.
fn delete_tasks(socket: &Path) -> Vec<PathBuf> {
    let Ok(ctr) = ctr() else {
        return Vec::new();
    };
    let ctr_out = |args: &[&str]| -> Option<String> {
        let mut c = Command::new(&ctr);
        c.arg("--address").arg(socket).args(args);
        run_within(&mut c, "removing containerd tasks", CTR_TIMEOUT)
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let lines = |text: Option<String>| -> Vec<String> {
        text.unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut sockets = Vec::new();
    for ns in lines(ctr_out(&["namespaces", "ls", "-q"])) {
        let tasks = lines(ctr_out(&["-n", &ns, "tasks", "ls", "-q"]));
        let containers = lines(ctr_out(&["-n", &ns, "containers", "ls", "-q"]));
        for id in tasks.iter().chain(&containers) {
            sockets.push(shim_socket_path(socket, &ns, id));
        }
        if tasks.is_empty() {
            continue;
        }
        let mut args = vec!["-n", ns.as_str(), "tasks", "delete", "--force"];
        args.extend(tasks.iter().map(String::as_str));
        let _ = ctr_out(&args);
    }
    sockets
}

/// Where containerd 1.6 puts the socket of the shim `id` in namespace `ns`
/// of the containerd on `socket`: `/run/containerd/s/<hex sha256 of
/// "<socket>/<ns>/<id>">`, whatever that containerd's config says. The
/// hash names the containerd, so the lab removes only its own.
pub fn shim_socket_path(socket: &Path, ns: &str, id: &str) -> PathBuf {
    let key = Path::new(socket).join(ns).join(id);
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_os_str().as_encoded_bytes());
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Path::new(SHIM_SOCKET_DIR).join(hex)
}

/// `unix://` addresses in the `address` files of the bundles under
/// `<state>/io.containerd.runtime.v2.task/<ns>/<id>/`, kept only when they
/// are in containerd's fixed shim socket dir.
fn bundle_addresses(state: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let base = state.join("io.containerd.runtime.v2.task");
    for ns in read_dirs(&base) {
        for bundle in read_dirs(&ns) {
            let Ok(addr) = fs::read_to_string(bundle.join("address")) else {
                continue;
            };
            let path = addr.trim().trim_start_matches("unix://");
            if path.starts_with(SHIM_SOCKET_DIR) && !path[SHIM_SOCKET_DIR.len()..].contains('/') {
                found.push(PathBuf::from(path));
            }
        }
    }
    found
}

fn read_dirs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// A process found in /proc.
#[derive(Debug, Clone)]
struct Proc {
    rec: ProcessRecord,
    ppid: i32,
    argv: Vec<String>,
}

fn scan_proc() -> Vec<Proc> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let st = process::parse_stat(&stat)?;
            let ppid = stat
                .get(stat.rfind(')')? + 1..)?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let argv = fs::read(format!("/proc/{pid}/cmdline"))
                .ok()?
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some(Proc {
                rec: ProcessRecord {
                    pid,
                    start_time: st.start_time,
                },
                ppid,
                argv,
            })
        })
        .collect()
}

/// Whether `argv` is a runc-v2 shim of the containerd on `socket`.
fn is_shim_of(argv: &[String], socket: &Path) -> bool {
    let Some(prog) = argv.first() else {
        return false;
    };
    if Path::new(prog).file_name().and_then(|n| n.to_str()) != Some(SHIM_NAME) {
        return false;
    }
    let want = socket.to_string_lossy();
    argv.windows(2).any(|w| {
        w[0] == "-address" && (w[1] == want || w[1].strip_prefix("unix://") == Some(&want))
    })
}

/// Every process whose command line names `dir` or a path below it
/// (`containerd --config <dir>/…`, a shim's `-address <dir>/…`,
/// `docker-registry serve <dir>/…`), with its command line: what a test
/// checks is empty once the lab with that dir is down.
pub fn processes_naming(dir: &Path) -> Vec<(ProcessRecord, Vec<String>)> {
    scan_proc()
        .into_iter()
        .filter(|p| {
            p.argv.iter().any(|a| {
                let a = a.strip_prefix("unix://").unwrap_or(a);
                Path::new(a).starts_with(dir)
            })
        })
        .map(|p| (p.rec, p.argv))
        .collect()
}

/// SIGKILL every shim of the containerd on `socket` with all its
/// descendants (the containers), then remove what `runc delete` would have:
/// the containers' own cgroups and their runc state dirs (only those whose
/// `state.json` names a process killed here). Returns survivors.
fn kill_shims(socket: &Path) -> Vec<String> {
    let procs = scan_proc();
    let shims: Vec<&Proc> = procs
        .iter()
        .filter(|p| is_shim_of(&p.argv, socket))
        .collect();
    if shims.is_empty() {
        return Vec::new();
    }
    let mut children: BTreeMap<i32, Vec<&Proc>> = BTreeMap::new();
    for p in &procs {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut victims: Vec<(ProcessRecord, bool)> = Vec::new();
    let mut namespaces = BTreeSet::new();
    for shim in &shims {
        if let Some(ns) = shim.argv.windows(2).find(|w| w[0] == "-namespace") {
            namespaces.insert(ns[1].clone());
        }
        victims.push((shim.rec, true));
        let mut stack = vec![shim.rec.pid];
        while let Some(pid) = stack.pop() {
            for c in children.get(&pid).into_iter().flatten() {
                victims.push((c.rec, false));
                stack.push(c.rec.pid);
            }
        }
    }
    // Container cgroups: the ones a descendant is in and its shim is not.
    let shim_cgroups: BTreeSet<PathBuf> =
        shims.iter().flat_map(|s| cgroup_dirs(s.rec.pid)).collect();
    let container_cgroups: BTreeSet<PathBuf> = victims
        .iter()
        .filter(|(_, shim)| !shim)
        .flat_map(|(r, _)| cgroup_dirs(r.pid))
        .filter(|d| !shim_cgroups.contains(d))
        .collect();
    // Containers first (the shim is their subreaper), then shims; each
    // checked against its start time right before the signal.
    for (rec, _) in victims
        .iter()
        .filter(|(_, s)| !s)
        .chain(victims.iter().filter(|(_, s)| *s))
    {
        if process::liveness(rec) != Liveness::Gone {
            let _ = signal::kill(Pid::from_raw(rec.pid), Signal::SIGKILL);
        }
    }
    let deadline = Instant::now() + KILL_TIMEOUT;
    let alive = |v: &[(ProcessRecord, bool)]| {
        v.iter()
            .filter(|(r, _)| !exited(r))
            .map(|(r, _)| r.pid)
            .collect::<Vec<_>>()
    };
    while !alive(&victims).is_empty() && Instant::now() < deadline {
        thread::sleep(POLL);
    }
    let left = alive(&victims);
    if !left.is_empty() {
        return vec![format!(
            "processes of the containerd on {} survived SIGKILL: {left:?}",
            socket.display()
        )];
    }
    let mut deepest: Vec<PathBuf> = container_cgroups.into_iter().collect();
    deepest.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for d in deepest {
        let _ = fs::remove_dir(&d);
    }
    let killed: BTreeSet<(i32, u64)> = victims.iter().map(|(r, _)| (r.pid, r.start_time)).collect();
    for ns in namespaces {
        for dir in read_dirs(&Path::new(RUNC_ROOT).join(&ns)) {
            let Some(st) = fs::read(dir.join("state.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            else {
                continue;
            };
            let pid = st["init_process_pid"]
                .as_i64()
                .and_then(|p| i32::try_from(p).ok());
            let start = st["init_process_start"].as_u64();
            if let (Some(pid), Some(start)) = (pid, start) {
                if killed.contains(&(pid, start)) {
                    let _ = fs::remove_dir_all(&dir);
                }
            }
        }
    }
    Vec::new()
}

/// The cgroup directories (one per hierarchy) process `pid` is in.
fn cgroup_dirs(pid: i32) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return Vec::new();
    };
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    cgroup_dirs_of(&text, &info)
}

/// Resolves /proc/<pid>/cgroup lines (`4:memory:/shoal/t1`, `0::/x`) to
/// directories through the cgroup mounts in mountinfo text. Root cgroups
/// ("/") are never returned.
fn cgroup_dirs_of(cgroup: &str, mountinfo: &str) -> Vec<PathBuf> {
    // (controllers or "" for v2, mount point, root of the mount)
    let mounts: Vec<(String, PathBuf, String)> = mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let _source = r.next()?;
            let opts = r.next().unwrap_or("");
            let f: Vec<&str> = left.split(' ').collect();
            let root = f.get(3)?.to_string();
            let mp = PathBuf::from(f.get(4)?);
            match fstype {
                "cgroup2" => Some((String::new(), mp, root)),
                "cgroup" => {
                    let mut ctl: Vec<&str> = opts
                        .split(',')
                        .filter(|o| {
                            !matches!(*o, "rw" | "ro")
                                && (o.starts_with("name=") || !o.contains('='))
                        })
                        .filter(|o| {
                            !matches!(
                                *o,
                                "noprefix" | "nosuid" | "nodev" | "noexec" | "relatime" | "xattr"
                            )
                        })
                        .collect();
                    ctl.sort_unstable();
                    Some((ctl.join(","), mp, root))
                }
                _ => None,
            }
        })
        .collect();
    cgroup
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            let mut ctl: Vec<&str> = parts.next()?.split(',').filter(|c| !c.is_empty()).collect();
            ctl.sort_unstable();
            let ctl = ctl.join(",");
            let path = parts.next()?;
            if path == "/" || path.contains("..") {
                return None;
            }
            let (_, mp, root) = mounts.iter().find(|(c, _, _)| *c == ctl)?;
            let rel = if root == "/" {
                path
            } else {
                path.strip_prefix(root.as_str())?
            };
            let rel = rel.trim_start_matches('/');
            (!rel.is_empty()).then(|| mp.join(rel))
        })
        .collect()
}

/// Unmounts everything at or below `dir`, deepest first; a busy mount is
/// detached lazily.
fn unmount_under(dir: &Path) -> Vec<String> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    crate::mounts::mounts_under(&info, dir)
        .into_iter()
        .filter_map(|mp| {
            let plain = nix::mount::umount2(&mp, nix::mount::MntFlags::empty());
            match plain {
                Ok(()) => None,
                Err(_) => nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH)
                    .err()
                    .map(|e| format!("unmounting {}: {e}", mp.display())),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_everything_under_the_host_dir() {
        let p = CtdPaths::of(Path::new("/run/shoal-lab/slabc123/h1"));
        let cfg = p.config_toml();
        assert!(cfg.contains("version = 2\n"));
        assert!(cfg.contains("root = \"/run/shoal-lab/slabc123/h1/ctd/root\""));
        assert!(cfg.contains("state = \"/run/shoal-lab/slabc123/h1/ctd/state\""));
        assert!(cfg.contains("address = \"/run/shoal-lab/slabc123/h1/ctd/c.sock\""));
        assert!(cfg.contains("\"io.containerd.grpc.v1.cri\""));
        assert!(cfg.contains("\"io.containerd.internal.v1.opt\""));
        p.check().unwrap();
    }

    #[test]
    fn long_socket_paths_are_refused_with_the_path() {
        let long = format!("/run/{}/h1", "x".repeat(100));
        let err = CtdPaths::of(Path::new(&long))
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c.sock") && err.contains("at most 107"),
            "{err}"
        );
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }

    #[test]
    fn shims_are_matched_by_their_containerd_socket_only() {
        let sock = Path::new("/run/shoal-lab/slabc123/h1/ctd/c.sock");
        let argv = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        assert!(is_shim_of(
            &argv("/usr/bin/containerd-shim-runc-v2 -namespace shoal -id t1 -address /run/shoal-lab/slabc123/h1/ctd/c.sock"),
            sock
        ));
        assert!(!is_shim_of(
            &argv("/usr/bin/containerd-shim-runc-v2 -namespace shoal -id t1 -address /run/containerd/containerd.sock"),
            sock
        ));
        assert!(!is_shim_of(
            &argv("/usr/bin/containerd-shim-runc-v2 -namespace shoal -id t1 -address /run/shoal-lab/slabc123/h1/ctd/c.sock2"),
            sock
        ));
        assert!(!is_shim_of(
            &argv("/bin/sh -c -address /run/shoal-lab/slabc123/h1/ctd/c.sock"),
            sock
        ));
        assert!(!is_shim_of(&[], sock));
    }

    #[test]
    fn cgroup_lines_resolve_through_the_cgroup_mounts() {
        let info = "\
30 22 0:26 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
31 22 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
32 22 0:28 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
33 22 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let cg =
            "4:memory:/shoal/t1\n3:cpuacct,cpu:/shoal/t1\n2:name=systemd:/x\n0::/\n1:pids:/y\n";
        assert_eq!(
            cgroup_dirs_of(cg, info),
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/shoal/t1"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/shoal/t1"),
                PathBuf::from("/sys/fs/cgroup/systemd/x"),
            ]
        );
        assert!(cgroup_dirs_of("4:memory:/../../etc\n", info).is_empty());
        assert!(cgroup_dirs_of("garbage", info).is_empty());
    }
}
