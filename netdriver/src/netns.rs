//! Network namespaces without global names. A namespace is made on a
//! short-lived helper thread (`unshare(CLONE_NEWNET)` affects only the
//! calling thread) and kept alive by bind-mounting that thread's
//! `/proc/thread-self/ns/net` onto a file under the daemon's run dir, never
//! under `/run/netns`, so that many daemons can share one kernel (the lab).
//! Netlink sockets stay bound to the namespace they were opened in, so a
//! connection into a namespace is also opened on a helper thread that has
//! `setns`-ed into it; the helper enters the caller's tokio runtime first,
//! because `rtnetlink::new_connection()` registers its socket with the
//! current reactor ("there is no reactor running" otherwise).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use tokio::task::JoinHandle;

use crate::batch::RawSock;
use crate::NetError;

/// Netlink sockets bound to one namespace: an rtnetlink connection for
/// dumps and structural requests, and two raw sockets for batched entry
/// programming (FDB on one, neighbours on the other, in parallel: the
/// kernel does a request's work in the sending thread, so two sockets on
/// two blocking threads use two cores). Dropping it stops the connection
/// task and closes the sockets, releasing their references on the
/// namespace (needed for the namespace to go away).
pub(crate) struct NsConn {
    pub(crate) handle: rtnetlink::Handle,
    pub(crate) raw: [Raw; 2],
    task: JoinHandle<()>,
}

/// A raw batch socket shared with the blocking thread that drives it.
pub(crate) type Raw = Arc<Mutex<RawSock>>;

impl Drop for NsConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type ConnParts = (
    rtnetlink::proto::Connection<rtnetlink::packet_route::RouteNetlinkMessage>,
    rtnetlink::Handle,
    [RawSock; 2],
);

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> NetError + 'a {
    move |source| NetError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

fn ns_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(nix::Error) -> NetError + 'a {
    move |source| NetError::Namespace {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Make a new namespace on the calling thread and bind-mount it at `path`
/// (which must not exist). Only call on a thread that dies afterwards or
/// that is meant to stay in the new namespace.
fn unshare_and_bind(path: &Path) -> Result<(), NetError> {
    unshare(CloneFlags::CLONE_NEWNET).map_err(ns_err(path, "unshare(CLONE_NEWNET)"))?;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(path, "create namespace file"))?;
    if let Err(e) = mount(
        Some("/proc/thread-self/ns/net"),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        let _ = std::fs::remove_file(path);
        return Err(NetError::Namespace {
            path: path.to_path_buf(),
            op: "bind mount",
            source: e,
        });
    }
    Ok(())
}

fn enter(path: &Path) -> Result<(), NetError> {
    let f = File::open(path).map_err(io_err(path, "open namespace file"))?;
    setns(&f, CloneFlags::CLONE_NEWNET).map_err(ns_err(path, "setns"))
}

/// Run `f` on a fresh thread (never a pooled one: it changes namespace and
/// must die with it) and wait for its answer without blocking the runtime.
async fn on_helper_thread<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("shoal-netns".to_string())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| NetError::Thread {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    rx.await.map_err(|_| NetError::Thread {
        path: path.to_path_buf(),
        reason: "helper thread panicked".to_string(),
    })?
}

fn new_connection_here(path: &Path) -> Result<ConnParts, NetError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(io_err(path, "open netlink socket"))?;
    let raw = [
        RawSock::open().map_err(io_err(path, "open netlink socket"))?,
        RawSock::open().map_err(io_err(path, "open netlink socket"))?,
    ];
    Ok((conn, handle, raw))
}

fn spawn_conn(parts: ConnParts) -> NsConn {
    let (conn, handle, [a, b]) = parts;
    NsConn {
        handle,
        raw: [Arc::new(Mutex::new(a)), Arc::new(Mutex::new(b))],
        task: tokio::spawn(conn),
    }
}

/// Open a netlink connection inside the namespace bind-mounted at `path`.
pub(crate) async fn connect(path: &Path) -> Result<NsConn, NetError> {
    let rt = tokio::runtime::Handle::current();
    let p = path.to_path_buf();
    let parts = on_helper_thread(path, move || {
        let _guard = rt.enter();
        enter(&p)?;
        new_connection_here(&p)
    })
    .await?;
    Ok(spawn_conn(parts))
}

/// Open a netlink connection in the caller's own namespace (the daemon's).
pub(crate) fn connect_here() -> Result<NsConn, NetError> {
    Ok(spawn_conn(new_connection_here(Path::new(
        "/proc/thread-self/ns/net",
    ))?))
}

/// Create a namespace bind-mounted at `path` and open a connection in it.
pub(crate) async fn create_and_connect(path: &Path) -> Result<NsConn, NetError> {
    let rt = tokio::runtime::Handle::current();
    let p = path.to_path_buf();
    let parts = on_helper_thread(path, move || {
        let _guard = rt.enter();
        unshare_and_bind(&p)?;
        match new_connection_here(&p) {
            Ok(parts) => Ok(parts),
            Err(e) => {
                let _ = remove_netns(&p);
                Err(e)
            }
        }
    })
    .await?;
    Ok(spawn_conn(parts))
}

/// Create a network namespace that has no global name, kept alive by a bind
/// mount at `path` (which must not exist; its parent must). Used for
/// workload sandboxes by `shoal run` and for lab hosts; the loopback device
/// is brought up by the caller when needed.
pub fn create_netns(path: &Path) -> Result<(), NetError> {
    let p: PathBuf = path.to_path_buf();
    std::thread::Builder::new()
        .name("shoal-netns".to_string())
        .spawn(move || unshare_and_bind(&p))
        .map_err(|e| NetError::Thread {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?
        .join()
        .map_err(|_| NetError::Thread {
            path: path.to_path_buf(),
            reason: "helper thread panicked".to_string(),
        })?
}

/// Remove a namespace made by [`create_netns`] (or by the driver): detach
/// the bind mount and delete the file. The kernel frees the namespace, and
/// the devices in it, once nothing else holds it (processes, sockets, other
/// mounts). Idempotent: a missing path is not an error.
pub fn remove_netns(path: &Path) -> Result<(), NetError> {
    // Stacked mounts (a bind made twice) are all detached.
    for _ in 0..16 {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => break,
            Err(e) => {
                return Err(NetError::Namespace {
                    path: path.to_path_buf(),
                    op: "umount",
                    source: e,
                })
            }
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetError::Io {
            path: path.to_path_buf(),
            op: "remove namespace file",
            source: e,
        }),
    }
}
