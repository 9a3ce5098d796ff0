//! The OCI runtime spec of a container, as Docker would write it: the
//! image's entrypoint, cmd, env, workdir and user under the service's
//! overrides; own PID, mount, UTS and IPC namespaces and the network
//! namespace Shoal prepared; Docker's default capabilities, device rules,
//! masked and read-only paths; `no_new_privs`; memory and CPU limits in a
//! cgroup of its own. Built as runtime-spec JSON, checked by `oci-spec`'s
//! types.

use std::collections::BTreeMap;

use oci_spec::runtime::{Capability, Spec};
use serde_json::json;

use crate::container::{ContainerSpec, MountType};
use crate::{Result, RuntimeError};

/// Docker's default capability set (CapEff `00000000a80425fb`).
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// CFS period of `--limit-cpu` (Docker's).
const CPU_PERIOD: u64 = 100_000;

/// Every capability of Linux 5.10 and later, for `--cap-add ALL`.
const ALL_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// `NET_ADMIN`, `cap_net_admin` -> `CAP_NET_ADMIN`, checked against the
/// capabilities `oci-spec` knows.
fn cap_name(s: &str) -> Result<String> {
    let up = s.trim().to_ascii_uppercase();
    let bare = up.strip_prefix("CAP_").unwrap_or(&up);
    bare.parse::<Capability>()
        .map(|_| format!("CAP_{bare}"))
        .map_err(|_| RuntimeError::Invalid(format!("unknown capability: {s:?}")))
}

/// Docker's rule: defaults, minus `--cap-drop`, plus `--cap-add`
/// (`ALL` in either means every capability).
pub fn capabilities(add: &[String], drop: &[String]) -> Result<Vec<String>> {
    let all = |v: &[String]| v.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
    let mut caps: Vec<String> = if all(drop) {
        Vec::new()
    } else {
        let dropped: Vec<String> = drop.iter().map(|c| cap_name(c)).collect::<Result<_>>()?;
        DEFAULT_CAPS
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !dropped.contains(c))
            .collect()
    };
    let added: Vec<String> = if all(add) {
        ALL_CAPS.iter().map(|c| format!("CAP_{c}")).collect()
    } else {
        add.iter().map(|c| cap_name(c)).collect::<Result<_>>()?
    };
    for c in added {
        if !caps.contains(&c) {
            caps.push(c);
        }
    }
    Ok(caps)
}

/// The process arguments docker would run: `--entrypoint` replaces the
/// image's ENTRYPOINT and drops its CMD; arguments replace CMD.
pub fn argv(
    entrypoint: Option<&[String]>,
    command: &[String],
    image_entrypoint: &[String],
    image_cmd: &[String],
) -> Vec<String> {
    match entrypoint {
        Some(ep) => ep.iter().chain(command).cloned().collect(),
        None => {
            let cmd = if command.is_empty() {
                image_cmd
            } else {
                command
            };
            image_entrypoint.iter().chain(cmd).cloned().collect()
        }
    }
}

/// The image's env overridden key by key, then `HOSTNAME` (as docker).
pub fn env(image: &[String], overrides: &[String], hostname: &str) -> Vec<String> {
    let mut m: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut put = |kv: &str| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if !m.contains_key(k) {
            order.push(k.to_string());
        }
        m.insert(k.to_string(), v.to_string());
    };
    put(&format!("HOSTNAME={hostname}"));
    for kv in image.iter().chain(overrides) {
        put(kv);
    }
    order
        .into_iter()
        .map(|k| {
            let v = m.get(&k).cloned().unwrap_or_default();
            format!("{k}={v}")
        })
        .collect()
}

/// The spec of `c`, running `args` as `uid:gid` (+ `gids`).
pub fn build(
    c: &ContainerSpec,
    args: Vec<String>,
    uid: u32,
    gid: u32,
    gids: Vec<u32>,
) -> Result<Spec> {
    if args.is_empty() {
        return Err(RuntimeError::Invalid(
            "no command specified: the image has no ENTRYPOINT or CMD".into(),
        ));
    }
    let caps = capabilities(&c.cap_add, &c.cap_drop)?;
    let cwd = match c.workdir.as_deref().filter(|w| !w.is_empty()) {
        Some(w) if !w.starts_with('/') => {
            return Err(RuntimeError::Invalid(format!(
                "the working directory '{w}' is invalid, it needs to be an absolute path"
            )))
        }
        Some(w) => w.to_string(),
        None if c.image.config.working_dir.is_empty() => "/".into(),
        None => c.image.config.working_dir.clone(),
    };
    let bind = |src: &std::path::Path, dst: &str, ro: bool| {
        let mut o = vec!["rbind", "rprivate"];
        if ro {
            o.push("ro");
        }
        json!({"destination": dst, "type": "bind", "source": src, "options": o})
    };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"]}),
        bind(&c.resolv_conf, "/etc/resolv.conf", false),
        bind(&c.hosts, "/etc/hosts", false),
        bind(&c.hostname_file, "/etc/hostname", false),
    ];
    for m in &c.mounts {
        if !m.target.starts_with('/') {
            return Err(RuntimeError::Invalid(format!(
                "invalid mount target, must be an absolute path: {}",
                m.target
            )));
        }
        mounts.push(match m.typ {
            MountType::Bind => bind(&m.source, &m.target, m.readonly),
            MountType::Tmpfs => {
                let mut o = vec!["nosuid", "nodev", "mode=1777"];
                if m.readonly {
                    o.push("ro");
                }
                json!({"destination": m.target, "type": "tmpfs", "source": "tmpfs", "options": o})
            }
        });
    }
    let mut resources = json!({
        "devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "access": "m"},
            {"allow": true, "type": "b", "access": "m"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 7, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
            {"allow": true, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
            {"allow": true, "type": "c", "major": 5, "minor": 1, "access": "rwm"},
            {"allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
            {"allow": true, "type": "c", "major": 136, "access": "rwm"},
            {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"}
        ]
    });
    if let Some(bytes) = c.memory_limit {
        resources["memory"] = json!({ "limit": bytes });
    }
    if let Some(nano) = c.nano_cpus {
        let quota = (nano as u128 * CPU_PERIOD as u128 / 1_000_000_000) as i64;
        resources["cpu"] = json!({ "quota": quota.max(1000), "period": CPU_PERIOD });
    }
    let v = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid, "additionalGids": gids},
            "args": args,
            "env": env(&c.image.config.env, &c.env, &c.hostname),
            "cwd": cwd,
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps
            },
            "noNewPrivileges": true,
            "oomScoreAdj": 0
        },
        "root": {"path": "rootfs", "readonly": c.read_only},
        "hostname": c.hostname,
        "mounts": mounts,
        "linux": {
            "resources": resources,
            "cgroupsPath": format!("/shoal-{}", c.id),
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network", "path": c.netns}
            ],
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS
        }
    });
    let mut v = v;
    if let Some(profile) = &c.seccomp {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        v["linux"]["seccomp"] = crate::seccomp::oci_seccomp(profile, &caps, &release)?;
    }
    serde_json::from_value(v).map_err(|e| RuntimeError::Invalid(format!("runtime spec: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn argv_follows_docker() {
        let (ep, cmd) = (s(&["/bin/echo-server"]), s(&["-v"]));
        assert_eq!(argv(None, &[], &ep, &cmd), s(&["/bin/echo-server", "-v"]));
        assert_eq!(
            argv(None, &s(&["x"]), &ep, &cmd),
            s(&["/bin/echo-server", "x"])
        );
        assert_eq!(
            argv(Some(&s(&["sh"])), &s(&["-c", "id"]), &ep, &cmd),
            s(&["sh", "-c", "id"])
        );
        assert_eq!(argv(Some(&[]), &[], &ep, &cmd), Vec::<String>::new());
    }

    #[test]
    fn env_overrides_by_key() {
        let e = env(&s(&["PATH=/bin", "A=1"]), &s(&["A=2", "B=3"]), "t1");
        assert_eq!(e, s(&["HOSTNAME=t1", "PATH=/bin", "A=2", "B=3"]));
    }

    #[test]
    fn capabilities_are_dockers_defaults_with_add_and_drop() {
        let d = capabilities(&[], &[]).unwrap();
        assert_eq!(d.len(), 14);
        // CapEff 00000000a80425fb is exactly these bits.
        let bit = |c: &str| match c {
            "CAP_CHOWN" => 0,
            "CAP_DAC_OVERRIDE" => 1,
            "CAP_FOWNER" => 3,
            "CAP_FSETID" => 4,
            "CAP_KILL" => 5,
            "CAP_SETGID" => 6,
            "CAP_SETUID" => 7,
            "CAP_SETPCAP" => 8,
            "CAP_NET_BIND_SERVICE" => 10,
            "CAP_NET_RAW" => 13,
            "CAP_SYS_CHROOT" => 18,
            "CAP_MKNOD" => 27,
            "CAP_AUDIT_WRITE" => 29,
            "CAP_SETFCAP" => 31,
            other => panic!("{other}"),
        };
        let mask: u64 = d.iter().map(|c| 1u64 << bit(c)).sum();
        assert_eq!(format!("{mask:016x}"), "00000000a80425fb");
        let c = capabilities(&s(&["net_admin"]), &s(&["CAP_MKNOD"])).unwrap();
        assert!(c.contains(&"CAP_NET_ADMIN".to_string()) && !c.contains(&"CAP_MKNOD".to_string()));
        assert!(capabilities(&[], &s(&["ALL"])).unwrap().is_empty());
        assert!(capabilities(&s(&["ALL"]), &[]).unwrap().len() > 30);
        let e = capabilities(&s(&["NOPE"]), &[]).unwrap_err();
        assert!(
            e.to_string().contains("unknown capability: \"NOPE\""),
            "{e}"
        );
    }
}
