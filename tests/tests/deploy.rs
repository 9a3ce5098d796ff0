//! The deployment scripts run for real: `deploy/install.sh` into a staging
//! root (and the installed daemon started with the installed config), and
//! `deploy/provision.sh` forming a swarm of two lab hosts through a shared
//! directory, as the Vagrant VMs do. `deploy/check.sh` must pass on the
//! shipped files and fail on a broken unit. Needs root, the built `shoal`
//! binary, and ruby + systemd-analyze for check.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_lab::Lab;
use shoal_tests::{cli, wait_for, wait_until};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn script(name: &str) -> PathBuf {
    repo().join("deploy").join(name)
}

fn shoal_bin() -> PathBuf {
    shoal_lab::find_shoal_bin().unwrap_or_else(|e| panic!("{e}\n({})", shoal_tests::NEEDS))
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn install(root: &Path, extra: &[&str]) -> Output {
    let out = run(Command::new(script("install.sh"))
        .arg("--root")
        .arg(root)
        .arg("--no-start")
        .arg("--binary")
        .arg(shoal_bin())
        .args(extra));
    assert!(
        out.status.success(),
        "install.sh failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// A daemon started by a test; killed on drop so a failing test leaves
/// no process behind.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn install_sh_stages_binary_unit_and_config() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let out = install(&root, &[]);
    let stdout = text(&out.stdout);

    let bin = root.join("usr/local/bin/shoal");
    let unit = root.join("etc/systemd/system/shoal.service");
    let config = root.join("etc/shoal/shoal.toml");
    for p in [&bin, &unit, &config] {
        assert!(
            stdout.contains(&format!("installed: {}", p.display())),
            "{stdout}"
        );
    }
    assert_eq!(mode(&bin), 0o755);
    assert_eq!(mode(&unit), 0o644);
    assert_eq!(mode(&config), 0o644);
    assert_eq!(mode(config.parent().unwrap()), 0o755);
    assert!(
        std::fs::read(&bin).unwrap() == std::fs::read(shoal_bin()).unwrap(),
        "installed binary differs from {}",
        shoal_bin().display()
    );
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        unit_text
            .lines()
            .any(|l| l == "ExecStart=/usr/local/bin/shoal daemon --config /etc/shoal/shoal.toml"),
        "{unit_text}"
    );
    assert!(unit_text.lines().any(|l| l == "Type=notify"));
    assert!(unit_text.lines().any(|l| l == "KillMode=process"));

    // Idempotent: nothing rewritten, and a changed config is kept.
    std::fs::write(
        &config,
        format!(
            "{}hostname = \"edited\"\n",
            std::fs::read_to_string(&config).unwrap()
        ),
    )
    .unwrap();
    let again = text(&install(&root, &[]).stdout);
    assert!(
        again.contains(&format!("unchanged: {}", bin.display())),
        "{again}"
    );
    assert!(
        again.contains(&format!("unchanged: {}", unit.display())),
        "{again}"
    );
    assert!(
        again.contains(&format!("kept: {}", config.display())),
        "{again}"
    );
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains("hostname = \"edited\""));

    // Another prefix: the unit runs the binary from there.
    let opt = tmp.path().join("opt-root");
    install(&opt, &["--prefix", "/opt/shoal"]);
    assert!(opt.join("opt/shoal/bin/shoal").is_file());
    let unit_text = std::fs::read_to_string(opt.join("etc/systemd/system/shoal.service")).unwrap();
    assert!(
        unit_text
            .contains("\nExecStart=/opt/shoal/bin/shoal daemon --config /etc/shoal/shoal.toml\n"),
        "{unit_text}"
    );

    // The installed binary runs with the installed config (only the
    // directories moved into the temp dir, so nothing touches the host).
    let sock = tmp.path().join("shoal.sock");
    let child = Command::new(&bin)
        .arg("daemon")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .arg("--run-dir")
        .arg(tmp.path().join("run"))
        .arg("--socket")
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut daemon = Daemon(child);
    let (info, _) = wait_until(
        "the installed daemon to answer",
        Duration::from_secs(20),
        || {
            if let Ok(Some(status)) = daemon.0.try_wait() {
                panic!(
                    "the installed daemon exited with {status} (config {})",
                    config.display()
                );
            }
            let out = run(Command::new(&bin)
                .arg("--host")
                .arg(&sock)
                .args(["--format", "json", "info"]));
            out.status
                .success()
                .then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap())
        },
    );
    assert_eq!(info["hostname"], "edited", "{info}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (status, _) = wait_until(
        "the daemon to exit on SIGTERM",
        Duration::from_secs(10),
        || daemon.0.try_wait().unwrap(),
    );
    assert!(status.success(), "daemon exited with {status}");
    assert!(!sock.exists(), "socket left behind");
}

#[test]
fn install_sh_refuses_a_missing_binary_and_bad_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-shoal");
    let out = run(Command::new(script("install.sh"))
        .arg("--root")
        .arg(tmp.path())
        .arg("--binary")
        .arg(&missing));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("cargo build --release"),
        "{err}"
    );
    assert!(
        !tmp.path().join("etc").exists(),
        "wrote files before failing"
    );

    let out = run(Command::new(script("install.sh")).arg("--prefix"));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--prefix needs a value"));
    let out = run(Command::new(script("install.sh")).args(["--prefix", "relative"]));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("absolute"));
}

#[test]
fn check_sh_passes_and_catches_a_broken_unit() {
    let out = run(Command::new(script("check.sh")).env("SHOAL_BIN", shoal_bin()));
    assert!(
        out.status.success(),
        "deploy/check.sh failed (needs ruby and systemd-analyze: apt-get install -y ruby systemd):\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // systemd-analyze verify only warns about these (exit 0): check.sh
    // must still fail, naming the problem.
    let shipped = std::fs::read_to_string(script("shoal.service")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // Whole lines, so a mention in a comment is not what gets changed.
    for (what, from, to, named) in [
        (
            "bad value",
            "\nKillMode=process\n",
            "\nKillMode=proces\n",
            "proces",
        ),
        (
            "unknown key",
            "\nRestartSec=2s\n",
            "\nRestartSecs=2s\n",
            "RestartSecs",
        ),
        (
            "unknown flag",
            " daemon --config ",
            " daemon --konfig ",
            "--konfig",
        ),
    ] {
        assert!(shipped.contains(from), "{from:?} is not in shoal.service");
        let bad = tmp.path().join("shoal.service");
        std::fs::write(&bad, shipped.replacen(from, to, 1)).unwrap();
        let out = run(Command::new(script("check.sh"))
            .env("SHOAL_BIN", shoal_bin())
            .env("SHOAL_UNIT", &bad));
        let err = text(&out.stderr);
        assert!(
            !out.status.success(),
            "check.sh passed a unit with a {what}"
        );
        assert!(err.contains(named), "{what}: {err}");
    }
}

/// The worker's provision.sh, started before the init node's, must wait
/// for the tokens and then join.
#[test]
fn provision_sh_forms_a_swarm_of_two_lab_hosts() {
    let lab = shoal_tests::start(
        Lab::builder()
            .nodes(2)
            .data_path(true)
            .daemon_config("heartbeat_ms = 500\n"),
    );
    let shared = tempfile::tempdir().unwrap();
    let dir = shared.path().join("shoal");
    let provision = |role: &str, timeout: &str| -> Vec<String> {
        [
            "bash",
            &script("provision.sh").display().to_string(),
            "--no-install",
            "--advertise-addr",
            "eth0",
            "--data-path-addr",
            "eth1",
            "--timeout",
            timeout,
            role,
            &dir.display().to_string(),
        ]
        .map(String::from)
        .to_vec()
    };

    // No init node yet: a worker gives up at its deadline, saying why.
    let started = Instant::now();
    let out = lab.exec(2, &provision("worker", "2")).unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("gave up after 2s") && err.contains("worker-token"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));

    // The worker first, waiting; then the init node.
    let mut worker = lab
        .command(2, &provision("worker", "60"))
        .unwrap()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let init = lab.exec(1, &provision("init", "60")).unwrap();
    if !init.status.success() {
        let _ = worker.kill();
        let _ = worker.wait();
        panic!(
            "provision init failed: {}{}",
            text(&init.stdout),
            text(&init.stderr)
        );
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = worker.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = worker.kill();
            let _ = worker.wait();
            panic!("provision worker still runs after 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = worker.wait_with_output().unwrap();
    assert!(
        status.success(),
        "provision worker failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("joined the swarm"));

    // What the init node left for the others.
    let h1 = lab.host(1).unwrap();
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(read("manager-addr"), format!("{}:2377", h1.addr));
    for f in ["worker-token", "manager-token"] {
        assert!(read(f).starts_with("SWMTKN-1-"), "{f}: {}", read(f));
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    assert_ne!(read("worker-token"), read("manager-token"));
    assert_eq!(
        read("worker-token"),
        cli(&lab, 1, &["swarm", "join-token", "-q", "worker"])
            .unwrap()
            .trim()
    );

    // Both nodes Ready, on the addresses given to provision.sh.
    let h2 = lab.host(2).unwrap();
    wait_for("2 nodes ready on h1", Duration::from_secs(30), || {
        let Ok(out) = cli(&lab, 1, &["--format", "json", "node", "ls"]) else {
            return false;
        };
        let nodes: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
        nodes.len() == 2 && nodes.iter().all(|n| n["status"] == "ready")
    });
    let nodes: Vec<Value> =
        serde_json::from_str(&cli(&lab, 1, &["--format", "json", "node", "ls"]).unwrap()).unwrap();
    for (h, role) in [(&h1, "manager"), (&h2, "worker")] {
        let n = nodes
            .iter()
            .find(|n| n["addr"] == format!("{}:2377", h.addr))
            .unwrap_or_else(|| panic!("no node with address {} in {nodes:?}", h.addr));
        assert_eq!(n["role"], role, "{n}");
        assert_eq!(n["data_path_addr"], h.data_addr.unwrap().to_string(), "{n}");
    }

    // Re-provisioning changes nothing.
    let again = lab.exec(2, &provision("worker", "10")).unwrap();
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(text(&again.stdout).contains("already in a swarm"));
    let again = lab.exec(1, &provision("init", "10")).unwrap();
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(text(&again.stdout).contains("already in a swarm"));
    assert_eq!(
        read("worker-token"),
        cli(&lab, 1, &["swarm", "join-token", "-q", "worker"])
            .unwrap()
            .trim()
    );
}
