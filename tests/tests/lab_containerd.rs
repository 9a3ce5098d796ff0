//! The lab's container pieces, end to end with real processes: one
//! containerd per host (`LabBuilder::containerd`), each on its own socket
//! in its host's namespace and named in that host's shoal.toml; an OCI
//! registry on h1; the echo test image built here, pushed there, seen and
//! pulled from h2, and run by h2's containerd; and a teardown that leaves
//! no containerd, shim, container or registry process and no mount behind,
//! both for a containerd that still answers (h2: its tasks are deleted
//! through it) and for one that was SIGKILLed under a running container
//! (h1: the shim and the container are found in /proc and killed). Needs
//! root, iproute2, containerd, runc, docker-registry, skopeo,
//! busybox-static and the built `shoal` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use shoal_lab::{image, processes_naming, Lab, ProcessRecord};
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
    for e in std::fs::read_dir(&bundles).into_iter().flatten().flatten() {
        if let Ok(a) = std::fs::read_to_string(e.path().join("address")) {
            found.push(PathBuf::from(a.trim().trim_start_matches("unix://")));
        }
        found.push(
            Path::new("/run/containerd/runc")
                .join(ns)
                .join(e.file_name()),
        );
    }
    found
}

#[test]
fn each_host_runs_its_own_containerd_pulls_from_the_lab_registry_and_leaves_nothing() {
    let started = Instant::now();
    let lab = start(Lab::builder().nodes(2).containerd(true));
    let dir = lab.dir();
    let prefix = lab.prefix();

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
    let reg = lab.start_registry(1).unwrap();
    assert_eq!(reg, "10.77.0.1:5000");
    assert_eq!(
        lab.start_registry(1).unwrap(),
        reg,
        "a second start is the same registry"
    );
    let layout = image::build_echo_image(&dir.join("echo-oci")).unwrap();
    let reference = format!("{reg}/shoal/echo:1");
    let digest = image::push(&lab, 1, &layout, &reference).unwrap();
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
    ctr_ok(
        &lab,
        1,
        &["-n", "shoal", "images", "pull", "--plain-http", &reference],
    );
    for h in [1, 2] {
        ctr_ok(
            &lab,
            h,
            &ctr_run(
                &lab,
                h,
                "web",
                &["-d", "--env", "PORT=8080"],
                &reference,
                &[],
            ),
        );
        let ns = lab.host(h).unwrap().ns;
        let addr: SocketAddr = format!("10.77.0.{h}:8080").parse().unwrap();
        let (body, _) = wait_until("the echo server", Duration::from_secs(20), || {
            http_get(&ns, addr).filter(|b| !b.is_empty())
        });
        assert!(
            !body.contains('<'),
            "GET / should be a bare host name: {body}"
        );
    }

    // What must be gone after down: every process, mount and shim file.
    let st = lab.state();
    let recorded: Vec<ProcessRecord> = st
        .hosts
        .iter()
        .flat_map(|h| [h.containerd, h.registry])
        .flatten()
        .collect();
    assert_eq!(recorded.len(), 3, "two containerds and a registry");
    let running = processes_naming(&dir);
    let shims: Vec<&ProcessRecord> = running
        .iter()
        .filter(|(_, argv)| argv[0].ends_with("containerd-shim-runc-v2"))
        .map(|(r, _)| r)
        .collect();
    assert_eq!(
        shims.len(),
        2,
        "one shim per running echo server: {running:?}"
    );
    let containers: Vec<ProcessRecord> = shims.iter().flat_map(|s| children_of(s.pid)).collect();
    assert!(containers.len() >= 2, "the echo servers: {containers:?}");
    assert!(!lab_cgroups(&prefix).is_empty(), "the containers' cgroups");
    let leftovers: Vec<PathBuf> = st
        .hosts
        .iter()
        .flat_map(|h| shim_leftovers(&h.dir, "shoal"))
        .collect();
    assert!(
        leftovers
            .iter()
            .any(|p| p.starts_with("/run/containerd/s/")),
        "{leftovers:?}"
    );
    assert!(!mounts_under(&dir).is_empty(), "the rootfs mounts");

    let h1_ctd = st.hosts[0].containerd.unwrap();
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

    for rec in recorded
        .iter()
        .chain(shims.iter().copied())
        .chain(&containers)
    {
        assert!(!alive(rec), "pid {} outlived the lab", rec.pid);
    }
    let left = processes_naming(&dir);
    assert!(left.is_empty(), "processes of the lab left: {left:?}");
    assert!(mounts_under(&dir).is_empty(), "{:?}", mounts_under(&dir));
    assert!(!dir.exists());
    for p in &leftovers {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    assert!(
        lab_cgroups(&prefix).is_empty(),
        "{:?}",
        lab_cgroups(&prefix)
    );
    eprintln!("lab_containerd: up to teardown {before_down:?} (pull {pulled:?}), down {down:?}");
}
