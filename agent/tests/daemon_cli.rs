//! The CLI and the daemon as real processes over a real unix socket (no
//! namespaces needed, so these run without root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// A daemon on temp dirs, killed on drop.
struct TestDaemon {
    child: Child,
    dir: tempfile::TempDir,
}

impl TestDaemon {
    fn start() -> TestDaemon {
        let dir = tempfile::tempdir().unwrap();
        let child = spawn_daemon(dir.path(), &[]);
        let d = TestDaemon { child, dir };
        wait_for(|| UnixStream::connect(d.socket()).is_ok(), "daemon socket");
        d
    }
    fn socket(&self) -> PathBuf {
        self.dir.path().join("shoal.sock")
    }
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(SHOAL)
            .arg("--host")
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `shoal daemon` arguments for a daemon living in `dir` (an empty config
/// file is made there if none exists).
fn daemon_args(dir: &Path) -> Vec<std::ffi::OsString> {
    let config = dir.join("shoal.toml");
    if !config.exists() {
        std::fs::write(&config, "").unwrap();
    }
    vec![
        "daemon".into(),
        "--config".into(),
        config.into(),
        "--data-dir".into(),
        dir.join("data").into(),
        "--socket".into(),
        dir.join("shoal.sock").into(),
        "--run-dir".into(),
        dir.join("run").into(),
    ]
}

fn spawn_daemon(dir: &Path, extra: &[&str]) -> Child {
    Command::new(SHOAL)
        .args(daemon_args(dir))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Wait for a child to exit within a deadline and return its stderr.
fn wait_exit(mut child: Child) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status, err);
        }
        assert!(Instant::now() < deadline, "daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn info_and_version_round_trip() {
    let d = TestDaemon::start();
    let out = d.cli(&["--format", "json", "info"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = info["node_id"].as_str().unwrap();
    assert_eq!(id.len(), 25);
    assert_eq!(info["swarm"]["state"], "inactive");

    let out = d.cli(&["info"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains(id));
    assert!(stdout(&out).contains("inactive"));

    let out = d.cli(&["version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = stdout(&out);
    assert!(s.contains("Client:") && s.contains("Server:"), "{s}");

    let out = d.cli(&["--format", "json", "version"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["server"]["protocol"], 1);
}

#[test]
fn node_id_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let get_id = || {
        let mut child = spawn_daemon(dir.path(), &[]);
        let sock = dir.path().join("shoal.sock");
        wait_for(|| UnixStream::connect(&sock).is_ok(), "socket");
        let out = Command::new(SHOAL)
            .args(["--format", "json", "--host"])
            .arg(&sock)
            .arg("info")
            .output()
            .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        v["node_id"].as_str().unwrap().to_string()
    };
    assert_eq!(get_id(), get_id());
}

#[test]
fn absent_daemon_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nothing.sock");
    let out = Command::new(SHOAL)
        .arg("--host")
        .arg(&sock)
        .arg("info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "Error: cannot reach shoal daemon at {}: is `shoal daemon` running?",
            sock.display()
        )
    );
}

#[test]
fn default_socket_is_named_in_the_error() {
    let out = Command::new(SHOAL)
        .env_remove("SHOAL_HOST")
        .arg("info")
        .output()
        .unwrap();
    // A daemon may really run on this machine; only check the message when not.
    if !out.status.success() {
        assert!(
            stderr(&out).contains(
                "cannot reach shoal daemon at /run/shoal/shoal.sock: is `shoal daemon` running?"
            ),
            "{}",
            stderr(&out)
        );
    }
}

fn raw_exchange(sock: &Path, payload: &[u8]) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(payload).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

#[test]
fn malformed_and_oversized_frames_get_errors_and_daemon_keeps_serving() {
    let d = TestDaemon::start();
    let sock = d.socket();

    let r = raw_exchange(&sock, &frame(b"this is not json"));
    assert_eq!(r["result"]["Err"]["code"], "bad_request", "{r}");
    assert!(r["result"]["Err"]["message"]
        .as_str()
        .unwrap()
        .contains("malformed request"));

    let r = raw_exchange(
        &sock,
        &frame(br#"{"version":1,"request":{"op":"no_such_op"}}"#),
    );
    assert_eq!(r["result"]["Err"]["code"], "bad_request", "{r}");

    let r = raw_exchange(&sock, &frame(br#"{"version":99,"request":{"op":"info"}}"#));
    assert_eq!(r["result"]["Err"]["code"], "unsupported_version", "{r}");

    let r = raw_exchange(&sock, &u32::MAX.to_be_bytes());
    assert_eq!(r["result"]["Err"]["code"], "bad_request", "{r}");
    assert!(r["result"]["Err"]["message"]
        .as_str()
        .unwrap()
        .contains("exceeds"));

    // A malformed frame does not end the connection: a good one follows.
    let mut payload = frame(b"garbage");
    payload.extend(frame(br#"{"version":1,"request":{"op":"info"}}"#));
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&payload).unwrap();
    for expect_ok in [false, true] {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["result"].get("Ok").is_some(), expect_ok, "{v}");
    }

    let out = d.cli(&["info"]);
    assert!(
        out.status.success(),
        "daemon stopped serving: {}",
        stderr(&out)
    );
}

#[test]
fn second_daemon_on_same_data_dir_is_refused() {
    let d = TestDaemon::start();
    let child = Command::new(SHOAL)
        .arg("daemon")
        .arg("--config")
        .arg(d.dir.path().join("shoal.toml"))
        .arg("--data-dir")
        .arg(d.dir.path().join("data"))
        .arg("--socket")
        .arg(d.dir.path().join("other.sock"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, err) = wait_exit(child);
    assert!(!status.success());
    assert!(err.contains("is in use by another shoal daemon"), "{err}");
    assert!(err.contains(&format!("pid {}", d.child.id())), "{err}");
}

#[test]
fn sigterm_exits_cleanly_and_removes_socket() {
    let dir = tempfile::tempdir().unwrap();
    let child = spawn_daemon(dir.path(), &[]);
    let sock = dir.path().join("shoal.sock");
    wait_for(|| UnixStream::connect(&sock).is_ok(), "socket");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let (status, err) = wait_exit(child);
    assert!(status.success(), "{err}");
    assert!(!sock.exists());
    // The lock is released: a new daemon starts on the same data dir.
    let again = TestDaemon {
        child: spawn_daemon(dir.path(), &[]),
        dir,
    };
    wait_for(|| UnixStream::connect(again.socket()).is_ok(), "restart");
}

#[test]
fn bad_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("shoal.toml"),
        "log_level = \"info\"\ndata_dri = \"/x\"\n",
    )
    .unwrap();
    let (status, err) = wait_exit(spawn_daemon(dir.path(), &[]));
    assert!(!status.success());
    assert!(err.contains("shoal.toml"), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("data_dri"), "{err}");
}

#[test]
fn unwritable_data_dir_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the data dir should be: even root cannot write there.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let child = Command::new(SHOAL)
        .arg("daemon")
        .arg("--config")
        .arg("/dev/null")
        .arg("--data-dir")
        .arg(blocker.join("data"))
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (status, err) = wait_exit(child);
    assert!(!status.success());
    assert!(
        err.contains("data dir") && err.contains("file/data"),
        "{err}"
    );
}

#[test]
fn corrupted_node_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/node-id"), "not-an-id!").unwrap();
    let (status, err) = wait_exit(spawn_daemon(dir.path(), &[]));
    assert!(!status.success());
    assert!(
        err.contains("node-id") && err.contains("corrupted"),
        "{err}"
    );
}

#[test]
fn unknown_subcommand_uses_clap_message() {
    let out = Command::new(SHOAL).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unrecognized subcommand"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_closed_stdout_ends_the_cli_quietly_with_exit_0() {
    // `shoal info | grep -q active`: grep exits at the first match and the
    // CLI's later writes fail with EPIPE. Here the reading end is closed
    // before the CLI even starts, so every write fails.
    let d = TestDaemon::start();
    for args in [&["info"][..], &["version"], &["--format", "json", "info"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(SHOAL)
            .arg("--host")
            .arg(d.socket())
            .args(args)
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}");
    }
}

/// Permission bits in octal, as `ls -l` users read them: "0700".
fn mode(p: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode();
    format!("{:04o}", m & 0o7777)
}

/// A port free on 127.0.0.1 for both TCP and UDP (at the time of asking).
fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `spawn_daemon`, but with umask 000: whatever is private is so by the
/// daemon's own doing.
fn spawn_daemon_umask0(dir: &Path) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(SHOAL)
        .args(daemon_args(dir))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn secrets_at_rest_are_private_even_with_umask_000() {
    let dir = tempfile::tempdir().unwrap();
    let (control, gossip) = (free_port(), free_port());
    std::fs::write(
        dir.path().join("shoal.toml"),
        format!("gossip_port = {gossip}\nmetrics_addr = \"\"\nheartbeat_ms = 200\n"),
    )
    .unwrap();
    let d = TestDaemon {
        child: spawn_daemon_umask0(dir.path()),
        dir,
    };
    wait_for(|| UnixStream::connect(d.socket()).is_ok(), "daemon socket");
    let data = d.dir.path().join("data");
    assert_eq!(mode(&data), "0700", "data dir");
    assert_eq!(mode(&d.socket()), "0660", "API socket");

    let addr = format!("127.0.0.1:{control}");
    let out = d.cli(&[
        "swarm",
        "init",
        "--advertise-addr",
        &addr,
        "--listen-addr",
        &addr,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode(&data.join("swarm/node.key")), "0600", "node.key");
    let resume = d.dir.path().join("run/gossip.json");
    wait_for(|| resume.exists(), "the gossip resume file");
    assert_eq!(mode(&resume), "0600", "gossip.json");
    assert_eq!(mode(&data), "0700", "data dir after swarm init");
}

#[test]
fn a_data_dir_open_to_others_is_tightened_with_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let child = spawn_daemon(dir.path(), &[]);
    let sock = dir.path().join("shoal.sock");
    wait_for(|| UnixStream::connect(&sock).is_ok(), "socket");
    assert_eq!(mode(&data), "0700");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let (status, err) = wait_exit(child);
    assert!(status.success(), "{err}");
    assert!(
        err.contains("data dir was open to others (mode 0755): restricted to 0700"),
        "{err}"
    );
}

/// The socket is never at its path with another mode: it is bound
/// elsewhere and renamed there (inotify sees a move, never a create), and
/// the private directory it was bound in is gone.
#[test]
fn the_api_socket_is_moved_into_place_with_its_mode() {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let dir = tempfile::tempdir().unwrap();
    let watch = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
    watch
        .add_watch(
            dir.path(),
            AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO,
        )
        .unwrap();
    let d = TestDaemon {
        child: spawn_daemon(dir.path(), &[]),
        dir,
    };
    let mut events = Vec::new();
    let drain = |events: &mut Vec<(AddWatchFlags, String)>| {
        while let Ok(batch) = watch.read_events() {
            events.extend(batch.into_iter().map(|e| {
                let name = e.name.map(|n| n.to_string_lossy().into_owned());
                (e.mask, name.unwrap_or_default())
            }));
        }
    };
    wait_for(
        || {
            drain(&mut events);
            UnixStream::connect(d.socket()).is_ok()
        },
        "daemon socket",
    );
    drain(&mut events);
    let of_socket: Vec<_> = events.iter().filter(|(_, n)| n == "shoal.sock").collect();
    assert!(
        of_socket
            .iter()
            .all(|(m, _)| m.contains(AddWatchFlags::IN_MOVED_TO)),
        "the socket was created in place: {events:?}"
    );
    assert!(!of_socket.is_empty(), "no event for the socket: {events:?}");
    assert_eq!(mode(&d.socket()), "0660");
    let left: Vec<String> = std::fs::read_dir(d.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".s"))
        .collect();
    assert!(left.is_empty(), "staging left behind: {left:?}");
}
