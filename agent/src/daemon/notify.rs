//! Readiness and status notifications to systemd (`sd_notify(3)`), without
//! libsystemd or a crate: one unix datagram to `$NOTIFY_SOCKET`.
//!
//! `deploy/shoal.service` is `Type=notify`: systemd considers the daemon
//! started only once it sends `READY=1`, so units ordered after shoal (and
//! `systemctl start shoal` itself) wait until the API socket answers. The
//! daemon sends [`ready`] once its API socket is listening and [`stopping`]
//! when it begins to shut down. Outside systemd (`$NOTIFY_SOCKET` unset:
//! the lab, a shell) every call is a no-op returning `Ok(false)`.
//!
//! The socket is a filesystem path (`/run/systemd/notify`) or, when it
//! starts with `@`, a name in the abstract namespace (what systemd uses for
//! services in containers and what tests use).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Environment variable systemd sets to the notification socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// Environment variable systemd sets when the unit has `WatchdogSec=`.
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The pid the watchdog setting is meant for (unset: any).
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// Sends `state` (newline-separated `KEY=VALUE` assignments, e.g.
/// `READY=1`) to `$NOTIFY_SOCKET`. `Ok(false)` when not started by systemd
/// (variable unset or empty), `Ok(true)` when the datagram was sent. An
/// error names the socket and what failed; callers usually log it and go
/// on, since a failed notification must not stop the daemon.
pub fn notify(state: &str) -> io::Result<bool> {
    notify_from(std::env::var_os(NOTIFY_SOCKET).as_deref(), state)
}

/// Tells systemd the daemon is up (its API socket accepts connections).
pub fn ready() -> io::Result<bool> {
    notify("READY=1")
}

/// Tells systemd the daemon is shutting down, so a slow shutdown shows as
/// "deactivating" rather than as a hung service.
pub fn stopping() -> io::Result<bool> {
    notify("STOPPING=1")
}

/// A one-line status shown by `systemctl status shoal` (newlines, which
/// would start a new assignment, become spaces).
pub fn status(text: &str) -> io::Result<bool> {
    notify(&status_line(text))
}

/// Keep-alive for `WatchdogSec=`: send at least every
/// [`watchdog_interval`] / 2.
pub fn watchdog() -> io::Result<bool> {
    notify("WATCHDOG=1")
}

/// The watchdog timeout systemd expects pings within, if the unit sets
/// `WatchdogSec=` and the setting is meant for this process
/// (`$WATCHDOG_PID` unset or equal to our pid). Ping every half of it.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_from(
        std::env::var_os(WATCHDOG_USEC).as_deref(),
        std::env::var_os(WATCHDOG_PID).as_deref(),
        std::process::id(),
    )
}

fn status_line(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    format!("STATUS={one_line}")
}

/// Where a notification goes, parsed from `$NOTIFY_SOCKET`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A socket file.
    Path(OsString),
    /// A name in the abstract namespace (`@name` in the variable).
    Abstract(Vec<u8>),
}

fn parse_target(var: &OsStr) -> io::Result<Target> {
    let bytes = var.as_bytes();
    match bytes.first() {
        Some(b'/') => Ok(Target::Path(var.to_os_string())),
        Some(b'@') if bytes.len() > 1 => Ok(Target::Abstract(bytes[1..].to_vec())),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{NOTIFY_SOCKET}={}: not an absolute socket path or an @abstract name \
                 (vsock targets are not supported)",
                var.to_string_lossy()
            ),
        )),
    }
}

/// [`notify`] with the variable's value passed in (tests must not change
/// the process environment other threads read).
fn notify_from(var: Option<&OsStr>, state: &str) -> io::Result<bool> {
    let Some(var) = var.filter(|v| !v.is_empty()) else {
        return Ok(false);
    };
    if state.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty sd_notify state",
        ));
    }
    let target = parse_target(var)?;
    let context = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot notify systemd on {NOTIFY_SOCKET}={}: {e}",
                var.to_string_lossy()
            ),
        )
    };
    let sock = UnixDatagram::unbound().map_err(context)?;
    let sent = match &target {
        Target::Path(p) => sock.send_to(state.as_bytes(), p),
        Target::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).map_err(context)?;
            sock.send_to_addr(state.as_bytes(), &addr)
        }
    }
    .map_err(context)?;
    if sent != state.len() {
        return Err(context(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", state.len()),
        )));
    }
    Ok(true)
}

fn watchdog_from(usec: Option<&OsStr>, pid: Option<&OsStr>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.to_str()?.trim().parse::<u32>().ok()? != me {
            return None;
        }
    }
    let usec: u64 = usec?.to_str()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notification within 5 s");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn unset_or_empty_is_not_systemd() {
        assert!(!notify_from(None, "READY=1").unwrap());
        assert!(!notify_from(Some(OsStr::new("")), "READY=1").unwrap());
    }

    #[test]
    fn sends_to_a_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        assert!(notify_from(Some(path.as_os_str()), "READY=1").unwrap());
        assert_eq!(recv(&rx), "READY=1");
        assert!(notify_from(Some(path.as_os_str()), &status_line("2 nodes\nready")).unwrap());
        assert_eq!(recv(&rx), "STATUS=2 nodes ready");
        assert!(notify_from(Some(path.as_os_str()), "STOPPING=1").unwrap());
        assert_eq!(recv(&rx), "STOPPING=1");
    }

    #[test]
    fn sends_to_an_abstract_name() {
        let name = format!("shoal-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        let var = format!("@{name}");
        assert!(notify_from(Some(OsStr::new(&var)), "READY=1\nSTATUS=up").unwrap());
        assert_eq!(recv(&rx), "READY=1\nSTATUS=up");
    }

    #[test]
    fn missing_receiver_is_an_error_naming_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        let err = notify_from(Some(path.as_os_str()), "READY=1").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    }

    #[test]
    fn unsupported_targets_and_empty_state_are_refused() {
        for bad in ["relative/sock", "vsock:2:1234", "@"] {
            let err = notify_from(Some(OsStr::new(bad)), "READY=1").unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}: {err}");
            assert!(err.to_string().contains(bad), "{err}");
        }
        let err = notify_from(Some(OsStr::new("/run/x")), "").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn watchdog_interval_for_this_pid_only() {
        let us = |s: &str| Some(OsString::from(s));
        assert_eq!(
            watchdog_from(us("3000000").as_deref(), None, 42),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            watchdog_from(us("500").as_deref(), us("42").as_deref(), 42),
            Some(Duration::from_micros(500))
        );
        assert_eq!(
            watchdog_from(us("500").as_deref(), us("41").as_deref(), 42),
            None
        );
        assert_eq!(watchdog_from(None, None, 42), None);
        assert_eq!(watchdog_from(us("0").as_deref(), None, 42), None);
        assert_eq!(watchdog_from(us("soon").as_deref(), None, 42), None);
        assert_eq!(
            watchdog_from(us("5").as_deref(), us("x").as_deref(), 42),
            None
        );
    }
}
