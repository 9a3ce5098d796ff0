//! The lab's container pieces, end to end with real processes: one
//! containerd per host (`LabBuilder::containerd`), each on its own socket
//! in its host's namespace and named in that host's shoal.toml; an OCI
//! registry on h1; the echo test image built here, pushed there, seen and
//! pulled from h2, and run by h2's containerd; and a teardown that leaves
//! no containerd, shim, container or registry process and no mount behind,
//! both for a containerd that still answers (h2: its tasks are deleted
//! through it) and for one that was SIGKILLed under a running container
//! (h1: the shim and the container are found in /proc and killed); and the
//! same for a lab dropped by a panicking test, after its containerd was
//! restarted under a running task (which survives the restart). Needs
//! root, iproute2, containerd, runc, docker-registry, skopeo,
//! busybox-static and the built `shoal` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use shoal_lab::{image, processes_naming, shim_socket_path, Lab, ProcessRecord};
use shoal_tests::{start, wait_for, wait_until};

const CTR: Duration = Duration::from_secs(60);

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// `ctr` on `host`, which must succeed; its stdout.
fn ctr_ok<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
    lab: &Lab,
    host: usize,
    args: &[S],
) -> String {
    let out = lab.ctr(host, args, CTR).unwrap();
    assert!(
        out.status.success(),
        "ctr {args:?} on h{host} failed: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ctr -n shoal run --net-host <lab flags> <opts> IMAGE <prefix>-hI-ID ARGS…`.
fn ctr_run(
    lab: &Lab,
    host: usize,
    id: &str,
    opts: &[&str],
    image: &str,
    args: &[&str],
) -> Vec<String> {
    let mut v: Vec<String> = ["-n", "shoal", "run", "--net-host"]
        .map(String::from)
        .to_vec();
    v.extend(lab.ctr_run_flags(host, id).unwrap());
    v.extend(opts.iter().map(|s| s.to_string()));
    v.push(image.to_string());
    // Container ids name runc state and cgroups: the lab's prefix keeps
    // two labs (or a system containerd) apart.
    v.push(format!("{}-h{host}-{id}", lab.prefix()));
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

/// Processes whose parent is `ppid` (a shim's containers).
fn children_of(ppid: i32) -> Vec<ProcessRecord> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .collect();
        if rest[1].parse::<i32>() == Ok(ppid) {
            found.push(ProcessRecord {
                pid,
                start_time: rest[19].parse().unwrap(),
            });
        }
    }
    found
}

/// cgroup dirs named after the lab (`/<prefix>-…`) in any hierarchy.
fn lab_cgroups(prefix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        for c in std::fs::read_dir(h.path()).into_iter().flatten().flatten() {
            if c.file_name().to_string_lossy().starts_with(prefix) {
                found.push(c.path());
            }
        }
    }
    found
}

fn same_netns(pid: i32, ns: &str) -> bool {
    let a = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
    let b = std::fs::metadata(format!("/run/netns/{ns}")).unwrap();
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

/// Whether the recorded process still exists (same start time, not a zombie).
fn alive(rec: &ProcessRecord) -> bool {
    shoal_lab::is_alive(rec)
}

/// `GET /` on `addr` from a thread inside namespace `ns`: the body.
fn http_get(ns: &str, addr: SocketAddr) -> Option<String> {
    shoal_tests::in_netns(ns, async move {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let (head, body) = resp.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.").then(|| body.trim().to_string())
    })
}

fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| Path::new(mp).starts_with(dir))
        .map(str::to_string)
        .collect()
}

/// The shim sockets and runc state dirs the bundles of a host's
/// containerd name: they must be gone after teardown.
fn shim_leftovers(host_dir: &Path, ns: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let bundles = host_dir
        .join("ctd/state/io.containerd.runtime.v2.task")
        .join(ns);
    let socket = host_dir.join("ctd/c.sock");
    for e in std::fs::read_dir(&bundles).into_iter().flatten().flatten() {
        if let Ok(a) = std::fs::read_to_string(e.path().join("address")) {
            let path = PathBuf::from(a.trim().trim_start_matches("unix://"));
            let id = e.file_name().to_string_lossy().into_owned();
            // The lab finds the sockets of shims already gone this way.
            assert_eq!(path, shim_socket_path(&socket, ns, &id));
            found.push(path);
        }
        found.push(
            Path::new("/run/containerd/runc")
                .join(ns)
                .join(e.file_name()),
        );
    }
    found
}

/// Pushes the echo image to a registry on h1 (started here); the reference.
fn push_echo(lab: &Lab) -> (String, String) {
    let reg = lab.start_registry(1).unwrap();
    let layout = image::build_echo_image(&lab.dir().join("echo-oci")).unwrap();
    let reference = format!("{reg}/shoal/echo:1");
    let digest = image::push(lab, 1, &layout, &reference).unwrap();
    (reference, digest)
}

/// Runs the echo server detached on `host` (port 8080, host network) and
/// waits until `GET /` answers with the host name it sees.
fn run_echo_server(lab: &Lab, host: usize, reference: &str) {
    ctr_ok(
        lab,
        host,
        &["-n", "shoal", "images", "pull", "--plain-http", reference],
    );
    let opts = ["-d", "--env", "PORT=8080"];
    ctr_ok(lab, host, &ctr_run(lab, host, "web", &opts, reference, &[]));
    let ns = lab.host(host).unwrap().ns;
    let addr: SocketAddr = format!("10.77.0.{host}:8080").parse().unwrap();
    let (body, _) = wait_until("the echo server", Duration::from_secs(20), || {
        http_get(&ns, addr).filter(|b| !b.is_empty())
    });
    // ctr gives the container a UTS namespace of its own, a copy of the
    // machine's (the daemon will set the task id instead).
    let machine = nix::unistd::gethostname().unwrap();
    assert_eq!(body, machine.to_string_lossy(), "GET / on h{host}");
}

/// Everything of a lab that must be gone after its teardown.
struct Traces {
    dir: PathBuf,
    prefix: String,
    /// containerds, registries, shims and the shims' children.
    processes: Vec<ProcessRecord>,
    /// Shim sockets (/run/containerd/s/…) and runc state dirs.
    files: Vec<PathBuf>,
}

impl Traces {
    /// Takes stock of a lab with `shims` running containers.
    fn of(lab: &Lab, shims: usize) -> Traces {
        let st = lab.state();
        let mut processes: Vec<ProcessRecord> = st
            .hosts
            .iter()
            .flat_map(|h| [h.containerd, h.registry])
            .flatten()
            .collect();
        let running = processes_naming(&st.dir);
        let shim_recs: Vec<ProcessRecord> = running
            .iter()
            .filter(|(_, argv)| argv[0].ends_with("containerd-shim-runc-v2"))
            .map(|(r, _)| *r)
            .collect();
        assert_eq!(
            shim_recs.len(),
            shims,
            "one shim per container: {running:?}"
        );
        let containers: Vec<ProcessRecord> =
            shim_recs.iter().flat_map(|s| children_of(s.pid)).collect();
        assert!(containers.len() >= shims, "the containers: {containers:?}");
        processes.extend(shim_recs);
        processes.extend(containers);
        let files: Vec<PathBuf> = st
            .hosts
            .iter()
            .flat_map(|h| shim_leftovers(&h.dir, "shoal"))
            .collect();
        assert!(
            files.iter().any(|p| p.starts_with("/run/containerd/s/")),
            "{files:?}"
        );
        assert!(
            !lab_cgroups(&st.prefix).is_empty(),
            "the containers' cgroups"
        );
        assert!(!mounts_under(&st.dir).is_empty(), "the rootfs mounts");
        Traces {
            dir: st.dir,
            prefix: st.prefix,
            processes,
            files,
        }
    }

    fn assert_gone(&self) {
        for rec in &self.processes {
            assert!(!alive(rec), "pid {} outlived the lab", rec.pid);
        }
        let left = processes_naming(&self.dir);
        assert!(left.is_empty(), "processes of the lab left: {left:?}");
        let mounts = mounts_under(&self.dir);
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        assert!(!self.dir.exists(), "{} left", self.dir.display());
        for p in &self.files {
            assert!(!p.exists(), "{} left behind", p.display());
        }
        let cgroups = lab_cgroups(&self.prefix);
        assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    }
}

#[test]
fn each_host_runs_its_own_containerd_pulls_from_the_lab_registry_and_leaves_nothing() {
    let started = Instant::now();
    let lab = start(Lab::builder().nodes(2).containerd(true));
    let dir = lab.dir();

    // Each host: its own containerd, in its namespace, on its own socket,
    // named in its daemon's config.
    let mut sockets = Vec::new();
    for h in 1..=2 {
        let st = lab.host(h).unwrap();
        let socket = st.containerd_socket.clone().expect("a containerd socket");
        assert!(socket.starts_with(&st.dir), "{}", socket.display());
        assert_eq!(lab.containerd_socket(h).unwrap(), socket);
        let pid = st.containerd.expect("a containerd pid").pid;
        assert!(
            same_netns(pid, &st.ns),
            "containerd of h{h} is not in {}",
            st.ns
        );
        let version = ctr_ok(&lab, h, &["version"]);
        assert!(version.contains("Server:"), "{version}");
        let config = std::fs::read_to_string(&st.config).unwrap();
        assert!(
            config.contains(&format!("containerd_socket = \"{}\"", socket.display())),
            "{config}"
        );
        sockets.push(socket);
    }
    assert_ne!(sockets[0], sockets[1]);
    // The system containerd's socket (if any) is not one of ours.
    assert!(sockets.iter().all(|s| !s.starts_with("/run/containerd")));

    // A registry on h1, the echo image pushed there from h1.
    let (reference, digest) = push_echo(&lab);
    assert!(reference.starts_with("10.77.0.1:5000/"), "{reference}");
    assert_eq!(
        lab.start_registry(1).unwrap(),
        "10.77.0.1:5000",
        "a second start is the same registry"
    );
    let layout = dir.join("echo-oci");
    assert_eq!(digest, image::manifest_digest(&layout).unwrap());

    // h2 sees it, and its containerd pulls and runs it.
    let skopeo = lab
        .net_command(
            2,
            &[
                "skopeo",
                "inspect",
                "--tls-verify=false",
                &format!("docker://{reference}"),
            ],
        )
        .unwrap()
        .output()
        .unwrap();
    assert!(skopeo.status.success(), "skopeo inspect: {}", text(&skopeo));
    let inspect: serde_json::Value = serde_json::from_slice(&skopeo.stdout).unwrap();
    assert_eq!(inspect["Digest"], digest.as_str(), "{inspect}");

    let t0 = Instant::now();
    ctr_ok(
        &lab,
        2,
        &["-n", "shoal", "images", "pull", "--plain-http", &reference],
    );
    let pulled = t0.elapsed();
    let images = ctr_ok(&lab, 2, &["-n", "shoal", "images", "ls", "-q"]);
    assert!(images.lines().any(|l| l == reference), "{images}");
    let hi = ctr_ok(
        &lab,
        2,
        &ctr_run(&lab, 2, "once", &["--rm"], &reference, &["echo", "hi"]),
    );
    assert_eq!(hi.trim(), "hi");

    // The echo server itself, left running on both hosts for teardown:
    // h2's containerd keeps answering, h1's is SIGKILLed under its task.
    run_echo_server(&lab, 1, &reference);
    run_echo_server(&lab, 2, &reference);
    let traces = Traces::of(&lab, 2);
    let h1_ctd = lab.host(1).unwrap().containerd.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(h1_ctd.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("h1's containerd to die", Duration::from_secs(5), || {
        !alive(&h1_ctd)
    });
    let before_down = started.elapsed();
    let t0 = Instant::now();
    lab.down().unwrap();
    let down = t0.elapsed();
    traces.assert_gone();
    eprintln!("lab_containerd: up to teardown {before_down:?} (pull {pulled:?}), down {down:?}");
}

#[test]
fn a_panicking_test_still_takes_down_its_containerd_and_what_it_runs() {
    let mut traces = None;
    let res = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let lab = start(Lab::builder().nodes(1).containerd(true));
        let (reference, _) = push_echo(&lab);
        run_echo_server(&lab, 1, &reference);
        let before = lab.host(1).unwrap().containerd.unwrap();
        lab.restart_containerd(1).unwrap();
        let after = lab.host(1).unwrap().containerd.unwrap();
        assert_ne!(before, after);
        assert!(!alive(&before));
        // The task outlived its containerd's restart.
        let tasks = ctr_ok(&lab, 1, &["-n", "shoal", "tasks", "ls"]);
        assert!(
            tasks
                .lines()
                .any(|l| l.contains("-h1-web") && l.contains("RUNNING")),
            "{tasks}"
        );
        traces = Some(Traces::of(&lab, 1));
        panic!("on purpose, with the lab still up");
    }));
    assert!(res.is_err());
    traces.expect("the lab came up").assert_gone();
}

#[test]
fn a_socket_path_too_long_for_the_kernel_is_refused_by_name_and_leaves_nothing() {
    let root = PathBuf::from(format!(
        "/run/shoal-lab-long-{}-{}",
        std::process::id(),
        "x".repeat(80)
    ));
    let err = Lab::builder()
        .nodes(1)
        .containerd(true)
        .root(&root)
        .start()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ctd/c.sock") && err.contains("at most 107"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(&root).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
    std::fs::remove_dir(&root).unwrap();
}
