//! How the lab looks at and pokes its daemons, for the benchmarks
//! ([`crate::bench`]) and the chaos suite ([`crate::chaos`]) alike: a
//! connection to a daemon's local API, the CLI or any command in a host's
//! namespace under a time limit, entering a network namespace, one HTTP
//! `GET`, and killing the workload processes a lab's daemons report.
//!
//! Data flow: a benchmark or a chaos check holds a [`Lab`]; it calls these
//! helpers with a host number, they run in (or talk into) that host's
//! namespace and hand back text, API answers or errors as strings. Nothing
//! here keeps state. This is also the one place that names the daemon's own
//! types (`shoal`, `shoal-raft-store`): the rest of the lab imports them
//! from here.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use tokio::net::UnixStream;

use crate::{Lab, LabError};

// The daemon's types the lab reads and writes: imported here only.
use shoal_api::{self as api, RequestFrame, ResponseFrame, PROTOCOL_VERSION};
pub(crate) use shoal_api::{Request, Response, TaskRow, Workload};
pub(crate) use shoal_model::service::TaskState;
pub(crate) use shoal_model::state::Availability;

/// A connection to one daemon's local API.
pub(crate) struct Conn {
    stream: UnixStream,
}

impl Conn {
    pub(crate) async fn open(socket: &Path) -> Result<Conn, String> {
        UnixStream::connect(socket)
            .await
            .map(|stream| Conn { stream })
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))
    }

    pub(crate) async fn call(&mut self, request: Request) -> Result<Response, String> {
        let frame = RequestFrame {
            version: PROTOCOL_VERSION,
            request,
        };
        api::write_frame(&mut self.stream, &frame)
            .await
            .map_err(|e| e.to_string())?;
        let resp: ResponseFrame = api::read_frame(&mut self.stream)
            .await
            .map_err(|e| e.to_string())?;
        resp.result.map_err(|e| e.message)
    }
}

/// Workloads on `host`, through its daemon's API.
pub(crate) async fn workloads(lab: &Lab, host: usize) -> Result<Vec<Workload>, String> {
    let socket = lab.host(host).map_err(|e| e.to_string())?.socket;
    let mut c = Conn::open(&socket).await?;
    match c.call(Request::Ps).await? {
        Response::Workloads(w) => Ok(w),
        other => Err(format!("unexpected answer to ps: {other:?}")),
    }
}

/// Runs the shoal CLI on `host` with a time limit; `Ok(stdout)` on exit 0.
pub fn cli_timeout(
    lab: &Lab,
    host: usize,
    args: &[&str],
    limit: Duration,
) -> Result<String, String> {
    let mut argv: Vec<OsString> = vec![lab.shoal_bin().into_os_string()];
    argv.extend(args.iter().map(OsString::from));
    run_timeout(lab, host, &argv, limit)
}

/// Runs `argv` in `host`'s namespace with a time limit (killed after it);
/// `Ok(stdout)` on exit 0, else `Err(stderr or why)`.
pub fn run_timeout(
    lab: &Lab,
    host: usize,
    argv: &[OsString],
    limit: Duration,
) -> Result<String, String> {
    let mut cmd = lab.command(host, argv).map_err(|e| e.to_string())?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {argv:?} on h{host}: {e}"))?;
    // Drain both pipes on threads so a large answer cannot block the child.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    match status {
        Some(st) if st.success() => Ok(out),
        Some(st) => Err(format!("{} ({st})", err.trim())),
        None => Err(format!("timed out after {limit:?}")),
    }
}

/// Moves the calling thread into the network namespace at `ns` (a
/// `/run/netns/..` name, a daemon's bind mount or `/proc/PID/ns/net`).
pub fn enter_netns(ns: &Path) -> Result<(), String> {
    let f = std::fs::File::open(ns).map_err(|e| format!("opening {}: {e}", ns.display()))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("entering {}: {e}", ns.display()))
}

/// Runs `f` on a fresh thread inside the network namespace `ns`.
pub fn in_netns<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    std::thread::scope(|s| {
        s.spawn(|| enter_netns(ns).map(|()| f()))
            .join()
            .map_err(|_| format!("the thread in {} panicked", ns.display()))?
    })
}

/// A lab host's network namespace path.
pub fn host_netns(lab: &Lab, host: usize) -> Result<PathBuf, LabError> {
    Ok(PathBuf::from("/run/netns").join(lab.host(host)?.ns))
}

/// One `GET /` over a fresh connection (keep-alive off): the body of a
/// `200` answer, else why not. Runs in the calling thread's namespace.
pub fn http_get(addr: std::net::SocketAddr, timeout: Duration) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("{addr}: {e}"))?;
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut resp = Vec::new();
    s.take(64 * 1024)
        .read_to_end(&mut resp)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: no HTTP answer ({} bytes)", resp.len()))?;
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1) != Some("200") {
        let line = head.lines().next().unwrap_or_default();
        return Err(format!("{addr}: {line}"));
    }
    Ok(body.trim().to_string())
}

/// SIGKILLs every workload process (`shoal run` and tasks) the lab's
/// daemons report: they outlive their daemons, so a lab going down would
/// leak them.
pub fn kill_workloads(lab: &Lab) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    for h in 1..=lab.len() {
        for w in rt.block_on(workloads(lab, h)).unwrap_or_default() {
            kill_if_same(w.pid, &w.argv);
        }
    }
}

/// Whether a process's command line `now` is the command `argv`: argv[0]
/// may differ by its directory (a shim like pyenv's execs the real
/// interpreter), so its file name and the arguments are compared.
fn same_command(now: &[String], argv: &[String]) -> bool {
    let base = |a: &String| a.rsplit('/').next().unwrap_or_default().to_string();
    now.len() == argv.len()
        && now.first().map(base) == argv.first().map(base)
        && now.get(1..) == argv.get(1..)
}

/// SIGKILLs `pid` if it still runs `argv` (not a recycled pid).
pub(crate) fn kill_if_same(pid: u32, argv: &[String]) {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return;
    };
    let now: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if pid > 1 && same_command(&now, argv) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_command_ignores_the_directory_of_argv0_only() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let argv = v(&["python3", "-c", "x"]);
        assert!(same_command(
            &v(&["/root/.pyenv/versions/3.11.7/bin/python3", "-c", "x"]),
            &argv
        ));
        assert!(!same_command(&v(&["python3", "-c", "y"]), &argv));
        assert!(!same_command(&v(&["python2", "-c", "x"]), &argv));
        assert!(!same_command(&v(&["python3", "-c"]), &argv));
    }
}
