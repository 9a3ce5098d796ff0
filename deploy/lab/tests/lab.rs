//! The lab itself, end to end: real network namespaces, real `shoal daemon`
//! processes, real nftables rules.
//!
//! Requirements (the tests fail, never skip, when one is missing): run as
//! root; `ip` (iproute2), `nft` (nftables) and `ping` (iputils-ping)
//! installed; the `shoal` binary built first (`cargo build -p shoal`
//! before `cargo test`, or SHOAL_BIN=...); cargo builds `shoal-lab` for
//! this test (or SHOAL_LAB_BIN=...).
//! Every lab here has its own random prefix, so the tests run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use shoal_lab::{DaemonState, Exit, Lab, LabBuilder, LabState};

// ---- helpers (the ones of the shoal-tests crate these tests use) ----

/// What the lab tests need, printed when a lab cannot start.
const NEEDS: &str = "the lab tests need root, iproute2, nftables and iputils-ping \
     (apt-get install -y iproute2 nftables iputils-ping), and the shoal binary \
     (`cargo build -p shoal`, or SHOAL_BIN=/path/to/shoal)";

/// A started lab of `n` hosts; fails the test with a clear reason if it
/// cannot start.
fn lab(n: usize) -> Lab {
    start(Lab::builder().nodes(n))
}

/// Starts a lab from a configured builder, failing the test clearly.
fn start(builder: LabBuilder) -> Lab {
    builder
        .start()
        .unwrap_or_else(|e| panic!("cannot start a lab: {e}\n({NEEDS})"))
}

/// Polls `cond` every 50 ms until it holds; fails the test after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// `shoal --format json info` on `host`, parsed; fails the test when the
/// CLI fails or prints something that is not JSON.
fn info(lab: &Lab, host: usize) -> serde_json::Value {
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
fn node_id(lab: &Lab, host: usize) -> String {
    let v = info(lab, host);
    v["node_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no node_id in shoal info of h{host}: {v}"))
        .to_string()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} ({NEEDS})"))
}

/// Asserts that nothing a lab recorded is left: no namespace with its
/// prefix (`ip netns list`, /run/netns), no link named with it in the root
/// namespace, none of its daemon processes, no lab directory.
fn assert_cleaned(state: &LabState) {
    let prefix = &state.prefix;
    let netns = run(Command::new("ip").args(["netns", "list"]));
    let listed = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !listed.contains(prefix.as_str()),
        "namespaces of lab {prefix} remain:\n{listed}"
    );
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix.as_str()))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "/run/netns still holds {left:?}");
    let links = run(Command::new("ip").args(["-o", "link"]));
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains(prefix.as_str()),
        "links named after lab {prefix} in the root namespace:\n{links}"
    );
    for h in &state.hosts {
        if let Some(rec) = h.daemon {
            assert!(
                !shoal_lab::is_alive(&rec),
                "daemon of {} (pid {}) of lab {prefix} still runs",
                h.name,
                rec.pid
            );
        }
    }
    assert!(!state.dir.exists(), "{} still exists", state.dir.display());
}

/// The `shoal-lab` binary: `$SHOAL_LAB_BIN`, else the one cargo built for
/// this test.
fn shoal_lab_bin() -> PathBuf {
    std::env::var_os("SHOAL_LAB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_shoal-lab")))
}

// ---- tests ----

#[test]
fn five_hosts_come_up_and_each_daemon_answers_with_its_own_identity() {
    let lab = lab(5);
    let mut ids = BTreeSet::new();
    for i in 1..=5 {
        let v = info(&lab, i);
        let id = v["node_id"].as_str().expect("node_id").to_string();
        assert!(!id.is_empty(), "h{i}: empty node_id");
        ids.insert(id);
        let want = format!("10.77.0.{i}");
        let addrs: Vec<&str> = v["addresses"]
            .as_array()
            .expect("addresses")
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert!(
            addrs
                .iter()
                .any(|a| *a == want || a.starts_with(&format!("{want}/"))),
            "h{i} reports addresses {addrs:?}, expected {want}"
        );
        assert_eq!(v["swarm"]["state"], "inactive", "h{i}: {v}");
        // The daemon really runs inside the host's namespace.
        let h = lab.host(i).unwrap();
        let pid = h.daemon.expect("daemon pid").pid;
        let ns_of = |p: String| std::fs::read_link(format!("/proc/{p}/ns/net")).unwrap();
        let daemon_ns = ns_of(pid.to_string());
        let out = lab.exec(i, &["readlink", "/proc/self/ns/net"]).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            daemon_ns.to_string_lossy(),
            "h{i}: daemon is not in the host namespace"
        );
        assert_ne!(
            daemon_ns,
            ns_of("self".into()),
            "h{i}: daemon in the root namespace"
        );
    }
    assert_eq!(ids.len(), 5, "node ids are not distinct: {ids:?}");
}

#[test]
fn partition_cuts_both_networks_and_heal_restores_them() {
    let lab = start(Lab::builder().nodes(5).data_path(true));
    wait_for("h1 to reach h5", Duration::from_secs(10), || {
        lab.ping(1, 5).unwrap()
    });
    let ping_data = |from: usize, to: usize| {
        lab.exec(
            from,
            &["ping", "-c1", "-W1", "-q", &format!("10.77.1.{to}")],
        )
        .unwrap()
        .status
        .success()
    };
    wait_for(
        "h1 to reach h5 on the data path",
        Duration::from_secs(10),
        || ping_data(1, 5),
    );

    lab.partition(&[1], &[5]).unwrap();
    assert!(
        !lab.ping(1, 5).unwrap(),
        "h1 still reaches h5 across the partition"
    );
    assert!(
        !lab.ping(5, 1).unwrap(),
        "h5 still reaches h1 across the partition"
    );
    assert!(!ping_data(1, 5), "the data path is not partitioned");
    assert!(
        lab.ping(1, 2).unwrap(),
        "h1 lost h2, which is not partitioned"
    );
    assert!(
        lab.ping(5, 4).unwrap(),
        "h5 lost h4, which is not partitioned"
    );
    assert_eq!(
        lab.host(1).unwrap().blocked,
        BTreeSet::from([5]),
        "partition is recorded"
    );

    lab.heal().unwrap();
    wait_for("h1 to reach h5 after heal", Duration::from_secs(10), || {
        lab.ping(1, 5).unwrap()
    });
    wait_for("h5 to reach h1 after heal", Duration::from_secs(10), || {
        lab.ping(5, 1).unwrap()
    });
    assert!(ping_data(1, 5));
    let tables = lab.exec(1, &["nft", "list", "tables"]).unwrap();
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains("shoallab"),
        "heal left the nftables table behind"
    );
}

#[test]
fn kill_is_seen_and_restart_keeps_the_node_identity() {
    let lab = lab(3);
    let id = node_id(&lab, 3);
    assert_eq!(lab.daemon_state(3).unwrap(), DaemonState::Running);

    lab.kill(3).unwrap();
    assert_eq!(
        lab.daemon_state(3).unwrap(),
        DaemonState::Exited(Exit::Signal(libc::SIGKILL))
    );
    let out = lab.shoal(3, &["info"]).unwrap();
    assert!(
        !out.status.success(),
        "shoal info answered on a killed daemon"
    );
    assert!(
        lab.kill(3).is_err(),
        "killing a dead daemon again should say it is not running"
    );

    lab.restart(3).unwrap();
    assert_eq!(lab.daemon_state(3).unwrap(), DaemonState::Running);
    assert_eq!(node_id(&lab, 3), id, "node id changed across a restart");

    // SIGSTOP / SIGCONT.
    lab.pause(2).unwrap();
    assert_eq!(lab.daemon_state(2).unwrap(), DaemonState::Paused);
    lab.resume(2).unwrap();
    assert_eq!(lab.daemon_state(2).unwrap(), DaemonState::Running);
    info(&lab, 2);
}

#[test]
fn a_lab_loaded_from_its_state_sees_a_kill_by_pid_and_start_time() {
    let owner = lab(2);
    let loaded = Lab::from_state(owner.state()).unwrap();
    assert_eq!(loaded.daemon_state(2).unwrap(), DaemonState::Running);
    loaded.kill(2).unwrap();
    // Not its parent: it knows the process is gone, not how it ended.
    assert_eq!(
        loaded.daemon_state(2).unwrap(),
        DaemonState::Exited(Exit::Unknown)
    );
    // The owner, the daemon's parent, reaps it and knows.
    assert_eq!(
        owner.daemon_state(2).unwrap(),
        DaemonState::Exited(Exit::Signal(libc::SIGKILL))
    );
    drop(loaded); // a loaded lab is not cleaned on drop
    info(&owner, 1);
    let state = owner.state();
    drop(owner);
    assert_cleaned(&state);
}

#[test]
fn dropping_a_lab_removes_everything_it_created() {
    let lab = lab(2);
    let state = lab.state();
    assert_eq!(state.namespaces.len(), 3);
    for ns in &state.namespaces {
        assert!(ns.starts_with(&format!("{}-", state.prefix)), "{ns}");
        assert!(std::path::Path::new("/run/netns").join(ns).exists(), "{ns}");
    }
    assert!(state.dir.join("h1/daemon.log").exists());
    // What a daemon does with the namespaces it creates: keep them by a
    // bind mount under its run dir. Cleanup must unmount it to delete the dir.
    let keep = state.dir.join("h1/run/kept-ns");
    std::fs::write(&keep, b"").unwrap();
    let ns_file = format!("/run/netns/{}", state.hosts[0].ns);
    let st = Command::new("mount")
        .arg("--bind")
        .arg(&ns_file)
        .arg(&keep)
        .status()
        .unwrap();
    assert!(st.success(), "bind mount of {ns_file}");
    drop(lab);
    assert_cleaned(&state);
}

#[test]
fn a_panicking_test_still_cleans_its_lab() {
    let (tx, rx) = mpsc::channel();
    let joined = thread::spawn(move || {
        let lab = lab(2);
        tx.send(lab.state()).unwrap();
        panic!("deliberate panic with a live lab");
    })
    .join();
    assert!(joined.is_err(), "the thread should have panicked");
    let state = rx.recv().expect("the lab started before the panic");
    assert_cleaned(&state);
}

#[test]
fn two_labs_in_parallel_do_not_collide() {
    let run = || {
        thread::spawn(|| {
            let lab = lab(2);
            info(&lab, 1);
            info(&lab, 2);
            assert!(lab.ping(1, 2).unwrap());
            lab.state()
        })
    };
    let (a, b) = (run(), run());
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert_ne!(a.prefix, b.prefix);
    assert_cleaned(&a);
    assert_cleaned(&b);
}

#[test]
fn the_binary_brings_a_lab_up_drives_it_and_takes_it_down() {
    let tmp = tempfile::tempdir().unwrap();
    let state_file = tmp.path().join("lab.json");
    let cli = |args: &[&str]| {
        let out = Command::new(shoal_lab_bin())
            .arg("--state")
            .arg(&state_file)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = cli(&["up", "--nodes", "2", "--managers", "1"]);
    assert_eq!(code, Some(0), "up failed: {out}{err}");
    assert!(out.contains("shoal-lab exec h2 -- shoal info"), "{out}");
    let state = LabState::load(&state_file).unwrap();
    assert_eq!(
        state.owner, None,
        "a lab left up by the binary has no owner"
    );

    let (code, out, err) = cli(&["up", "--nodes", "2"]);
    assert_ne!(code, Some(0), "a second up should refuse: {out}");
    assert!(err.contains("already up"), "{err}");

    let (code, out, err) = cli(&["exec", "h2", "--", "shoal", "--format", "json", "info"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["addresses"].to_string().contains("10.77.0.2"), "{v}");
    let (code, _, _) = cli(&["exec", "h1", "--", "sh", "-c", "exit 7"]);
    assert_eq!(code, Some(7), "exit code is passed through");

    let (code, out, err) = cli(&["kill", "h2"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("not running"), "{out}");
    let (_, out, _) = cli(&["status"]);
    assert!(out.contains("no answer"), "{out}");
    let (code, _, err) = cli(&["restart", "h2"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = cli(&["partition", "h1", "h2"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, _) = cli(&["exec", "h1", "--", "ping", "-c1", "-W1", "10.77.0.2"]);
    assert_ne!(code, Some(0), "partitioned ping went through");
    let (code, _, err) = cli(&["heal"]);
    assert_eq!(code, Some(0), "{err}");

    let after = LabState::load(&state_file).unwrap();
    let (code, _, err) = cli(&["down"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!state_file.exists());
    assert_cleaned(&state);
    assert_cleaned(&after); // the restarted daemon is gone too
}
