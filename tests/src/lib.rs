//! End-to-end and chaos tests for Shoal, run against real `shoal daemon`
//! processes in a `shoal-lab` of network-namespace hosts. The tests live in
//! `tests/`; this library holds the helpers they share.
//!
//! The helpers never skip: a lab that cannot start (not root, no
//! iproute2, no shoal binary) fails the test with the lab's own one-line
//! reason, so a green run always means the tests really ran.

// Test helpers fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

pub use shoal_lab::{DaemonState, Exit, HostId, Lab, LabBuilder, LabState};

/// What the lab tests need, printed when a lab cannot start.
pub const NEEDS: &str = "the lab tests need root, iproute2, nftables and iputils-ping \
     (apt-get install -y iproute2 nftables iputils-ping), and the shoal binary \
     (`cargo build -p shoal`, or SHOAL_BIN=/path/to/shoal)";

/// A started lab of `n` hosts; fails the test with a clear reason if it
/// cannot start.
pub fn lab(n: usize) -> Lab {
    start(Lab::builder().nodes(n))
}

/// Starts a lab from a configured builder, failing the test clearly.
pub fn start(builder: LabBuilder) -> Lab {
    builder
        .start()
        .unwrap_or_else(|e| panic!("cannot start a lab: {e}\n({NEEDS})"))
}

/// A lab of `hosts` hosts each running containerd, with `config` for the
/// daemons, a registry on h1 holding the echo test image, and a swarm of
/// one manager (h1): the lab, the image reference, and the directory the
/// image was built in (kept until the test ends).
pub fn lab_with_echo_image(hosts: usize, config: &str) -> (Lab, String, tempfile::TempDir) {
    let lab = start(
        Lab::builder()
            .nodes(hosts)
            .containerd(true)
            .daemon_config(config),
    );
    let reg = lab.start_registry(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = shoal_lab::image::build_echo_image(&dir.path().join("echo")).unwrap();
    let reference = format!("{reg}/shoal/echo:1");
    shoal_lab::image::push(&lab, 1, &layout, &reference).unwrap();
    lab.form_swarm(hosts, 1).unwrap();
    (lab, reference, dir)
}

/// Polls `f` every 50 ms until it yields a value; fails the test after
/// `timeout`. Returns the value and how long it took.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, start.elapsed());
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `cond` every 50 ms until it holds; fails the test after `timeout`.
/// Returns how long it took.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    wait_until(what, timeout, || cond().then_some(())).1
}

/// Runs the shoal CLI on `host`: `Ok(stdout)` on success, `Err(stderr)`
/// otherwise (tests assert on the error text users see).
pub fn cli(lab: &Lab, host: usize, args: &[&str]) -> Result<String, String> {
    let out = lab.shoal(host, args).expect("run the shoal CLI");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Runs `argv` in `host`'s namespace: whether it succeeded, and its
/// stdout followed by its stderr.
pub fn exec(lab: &Lab, host: usize, argv: &[&str]) -> (bool, String) {
    let out = lab.exec(host, argv).expect("run a command in a lab host");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Runs `f` on a thread that entered the network namespace `ns` (a lab
/// host's), with its own tokio runtime: a test client that reaches the
/// host's addresses.
pub fn in_netns<T: Send>(ns: &str, f: impl std::future::Future<Output = T> + Send) -> T {
    thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("open the netns");
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f)
        })
        .join()
        .expect("netns thread")
    })
}

/// `shoal --format json ARGS` on `host`, parsed; fails the test when the
/// CLI fails or prints something that is not JSON.
pub fn json(lab: &Lab, host: usize, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--format", "json"];
    a.extend_from_slice(args);
    let out = cli(lab, host, &a).unwrap_or_else(|e| panic!("shoal {args:?} on h{host}: {e}"));
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("shoal {args:?} on h{host} is not JSON ({e}): {out}"))
}

/// `service create --runtime host --name NAME FLAGS… -- shoal-lab
/// http-echo --port 80` on h1: the lab's HTTP server as a service's tasks.
pub fn create_echo(lab: &Lab, name: &str, flags: &[&str]) -> Result<String, String> {
    let echo = shoal_lab_bin().display().to_string();
    let mut a = vec!["service", "create", "--runtime", "host", "--name", name];
    a.extend_from_slice(flags);
    a.extend_from_slice(&["--", echo.as_str(), "http-echo", "--port", "80"]);
    cli(lab, 1, &a)
}

/// `shoal --format json info` on `host`, parsed; fails the test when the
/// CLI fails or prints something that is not JSON.
pub fn info(lab: &Lab, host: usize) -> serde_json::Value {
    let out = lab
        .shoal(host, &["--format", "json", "info"])
        .expect("run shoal info");
    assert!(
        out.status.success(),
        "shoal info on h{host} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "shoal info on h{host} is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The node id `shoal info` reports on `host`.
pub fn node_id(lab: &Lab, host: usize) -> String {
    let v = info(lab, host);
    v["node_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no node_id in shoal info of h{host}: {v}"))
        .to_string()
}

/// The `shoal-lab` binary, found like the lab finds `shoal`: next to the
/// test executable or in its parent directory (`cargo build` makes it).
pub fn shoal_lab_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SHOAL_LAB_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let candidates = [dir.join("shoal-lab"), dir.join("../shoal-lab")];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "shoal-lab binary not found at {candidates:?}: build it with `cargo build -p shoal-lab`"
            )
        })
}

/// `shoal run --runtime host --network NET --name NAME -- sleep 600` on
/// `host`, retried for up to 30 s (gossip or the node's keys may still be
/// on their way; the last error is reported); its record in `ps`.
pub fn run_sleeper(lab: &Lab, host: usize, net: &str, name: &str) -> serde_json::Value {
    let argv = [
        "run",
        "--runtime",
        "host",
        "--network",
        net,
        "--name",
        name,
        "--",
        "sleep",
        "600",
    ];
    let started = Instant::now();
    while let Err(e) = cli(lab, host, &argv) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "shoal run on h{host} kept failing: {e}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let v = json(lab, host, &["ps"]);
    v.as_array()
        .and_then(|a| a.iter().find(|w| w["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no workload {name} in ps on h{host}: {v}"))
}

/// Waits (up to 30 s) until the workload `w` (a `ps` record) on `host`
/// gets a ping through to `to`.
pub fn wait_pings(lab: &Lab, host: usize, w: &serde_json::Value, to: &str) {
    let pid = w["pid"].as_u64().unwrap_or_default().to_string();
    wait_for(
        &format!("h{host}'s workload pings {to}"),
        Duration::from_secs(30),
        || {
            exec(
                lab,
                host,
                &["nsenter", "-t", &pid, "-n", "ping", "-c1", "-W1", to],
            )
            .0
        },
    );
}

/// Scrape `host`'s `/metrics` (the lab's configs put it on
/// 127.0.0.1:9323): series (name with labels) -> value; `None` while it
/// does not answer.
pub fn scrape(lab: &Lab, host: usize) -> Option<std::collections::BTreeMap<String, f64>> {
    let out = lab
        .exec(
            host,
            &[
                "curl",
                "-sf",
                "--max-time",
                "2",
                "http://127.0.0.1:9323/metrics",
            ],
        )
        .expect("run curl in a lab host");
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect(),
    )
}

/// Every frame seen on any interface of namespace `/run/netns/<ns>`
/// until `stop` is set.
pub fn capture(
    ns: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockProtocol, SockType};
        let fd = socket::socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::EthAll,
        )
        .expect("AF_PACKET socket");
        socket::setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(0, 100_000),
        )
        .unwrap();
        socket::setsockopt(&fd, sockopt::RcvBuf, &(64 << 20)).unwrap();
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match socket::recv(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &mut buf,
                socket::MsgFlags::empty(),
            ) {
                Ok(n) if n > 0 => frames.push(buf[..n].to_vec()),
                _ => continue,
            }
        }
        frames
    })
}

/// A frame's IPv4/UDP ports and payload, if it is one.
pub fn udp(frame: &[u8]) -> Option<(u16, u16, &[u8])> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != 17 {
        return None;
    }
    let u = 14 + usize::from(frame[14] & 0x0f) * 4;
    let p = frame.get(u..u + 8)?;
    Some((
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
        frame.get(u + 8..)?,
    ))
}
