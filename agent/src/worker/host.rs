//! Host-process workloads (`--runtime host`): the process started in the
//! workload's network namespace (and, for tasks, its own mount and UTS
//! namespaces), with Docker's default capabilities only and
//! `no_new_privs`, its output through Shoal's logging process. They run
//! with the daemon's privileges otherwise (the host's files, PID
//! namespace): containers are the default.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use shoal_api::Workload;

use super::overlay::StartSpec;

/// Start the process in the workload's namespaces, with Docker's
/// default capabilities only and `no_new_privs`; a reaper thread
/// records its exit code.
pub fn spawn(
    w: &Workload,
    spec: &StartSpec,
    log: &Path,
    exits: Arc<Mutex<BTreeMap<u32, i32>>>,
) -> anyhow::Result<u32> {
    // Host-process workloads get Docker's
    // default capability set only — CHOWN, DAC_OVERRIDE, FSETID,
    // FOWNER, MKNOD, NET_RAW, SETGID, SETUID, SETFCAP, SETPCAP,
    // NET_BIND_SERVICE, SYS_CHROOT, KILL, AUDIT_WRITE, i.e.
    // `00000000a80425fb` — and `no_new_privs`. util-linux `setpriv`
    // (beside `nsenter` and `unshare`) shrinks the bounding set and
    // clears the inheritable and ambient sets, then execs the workload:
    // root, it keeps exactly the bounding set as permitted and effective.
    const DROP_PRIVILEGES: &[&str] = &[
        "setpriv",
        "--no-new-privs",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--bounding-set=-all,+chown,+dac_override,+fsetid,+fowner,+mknod,+net_raw,+setgid,\
         +setuid,+setfcap,+setpcap,+net_bind_service,+sys_chroot,+kill,+audit_write",
        "--",
    ];
    let log = super::containers::spawn_logger(log)?;
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net={}", w.netns.display())).arg("--");
    if let Some((hostname, resolv)) = &spec.sandbox {
        // Own UTS namespace (host name = task) and mount namespace
        // (resolv.conf pointing at the embedded DNS).
        cmd.args(["unshare", "--mount", "--uts", "--", "sh", "-c"])
            .arg(
                "mount --bind \"$1\" /etc/resolv.conf && hostname \"$2\" && shift 2 && exec \"$@\"",
            )
            .arg("shoal-task")
            .arg(resolv)
            .arg(hostname);
    }
    // Last before the workload's own argv (after the sandbox's mount
    // and hostname, which need CAP_SYS_ADMIN); every step execs the
    // next, so the pid is the workload's.
    cmd.args(DROP_PRIVILEGES)
        .args(&spec.argv)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {:?}: {e}", spec.argv))?;
    let pid = child.id();
    std::thread::spawn(move || {
        let mut child = child;
        let code = match child.wait() {
            Ok(st) => st
                .code()
                .or_else(|| {
                    use std::os::unix::process::ExitStatusExt;
                    st.signal().map(|s| 128 + s)
                })
                .unwrap_or(-1),
            Err(_) => -1,
        };
        if let Ok(mut m) = exits.lock() {
            m.insert(pid, code);
        }
    });
    Ok(pid)
}
