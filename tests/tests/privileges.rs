//! Host-process workloads (`shoal run` and service tasks) run with Docker's
//! default capabilities only and `no_new_privs`: their /proc status says
//! so, and creating a link in their namespace (CAP_NET_ADMIN) fails.
//! Needs root, iproute2, util-linux and the built binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;
use shoal_lab::Lab;
use shoal_tests::{cli, exec, start, wait_until};

const CONFIG: &str = "heartbeat_ms = 500\ngossip_profile = \"fast\"\nmetrics_addr = \"\"\n";

/// CHOWN, DAC_OVERRIDE, FSETID, FOWNER, MKNOD, NET_RAW, SETGID, SETUID,
/// SETFCAP, SETPCAP, NET_BIND_SERVICE, SYS_CHROOT, KILL, AUDIT_WRITE.
const DOCKER_CAPS: &str = "00000000a80425fb";

/// Tries what only CAP_NET_ADMIN may, says how it went, then stays.
const PROBE: &str = "ip link add dummy0 type dummy; echo \"probe rc=$?\"; exec sleep 600";

/// The workload on `host` that `pick` chooses from `shoal ps`: (id, pid).
fn workload(lab: &Lab, host: usize, pick: impl Fn(&Value) -> bool) -> Option<(String, u32)> {
    let out = cli(lab, host, &["--format", "json", "ps"]).ok()?;
    let v: Value = serde_json::from_str(&out).ok()?;
    v.as_array()?
        .iter()
        .find(|w| pick(w) && w["pid"].as_u64().is_some_and(|p| p > 0))
        .map(|w| {
            (
                w["id"].as_str().unwrap().to_string(),
                w["pid"].as_u64().unwrap() as u32,
            )
        })
}

/// Waits for the probe to have run in workload `id` (pid `pid`) and to be
/// `sleep`, then checks its privileges.
fn assert_confined(lab: &Lab, what: &str, id: &str, pid: u32) {
    let log = lab
        .host(1)
        .unwrap()
        .run_dir
        .join("workloads")
        .join(format!("{id}.log"));
    let (out, _) = wait_until(
        &format!("the probe of the {what} to run"),
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|s| s.contains("probe rc="))
        },
    );
    assert!(
        !out.contains("probe rc=0") && out.contains("Operation not permitted"),
        "the {what} could add a link: {out}"
    );
    let (status, _) = wait_until(
        &format!("the {what} to be sleep"),
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .filter(|s| s.lines().any(|l| l == "Name:\tsleep"))
        },
    );
    for line in [
        format!("CapPrm:\t{DOCKER_CAPS}"),
        format!("CapEff:\t{DOCKER_CAPS}"),
        format!("CapBnd:\t{DOCKER_CAPS}"),
        "CapInh:\t0000000000000000".to_string(),
        "CapAmb:\t0000000000000000".to_string(),
        "NoNewPrivs:\t1".to_string(),
    ] {
        assert!(
            status.lines().any(|l| l == line),
            "{what}: no {line:?} in /proc/{pid}/status:\n{status}"
        );
    }
    // Nothing was made in its namespace.
    let t = pid.to_string();
    let (ok, out) = exec(
        lab,
        1,
        &["nsenter", "-t", &t, "-n", "ip", "link", "show", "dummy0"],
    );
    assert!(!ok, "{what}: dummy0 exists: {out}");
}

#[test]
fn workloads_run_with_dockers_default_capabilities_and_no_new_privs() {
    let lab = start(Lab::builder().nodes(1).daemon_config(CONFIG));
    lab.init_swarm(1).unwrap();
    cli(
        &lab,
        1,
        &[
            "network",
            "create",
            "--attachable",
            "--subnet",
            "10.0.9.0/24",
            "app",
        ],
    )
    .unwrap();

    // `shoal run`: nsenter, then setpriv.
    cli(
        &lab,
        1,
        &[
            "run",
            "--runtime",
            "host",
            "--network",
            "app",
            "--name",
            "probe",
            "--",
            "sh",
            "-c",
            PROBE,
        ],
    )
    .unwrap();
    let (id, pid) = wait_until("the run workload", Duration::from_secs(10), || {
        workload(&lab, 1, |w| w["name"] == "probe")
    })
    .0;
    assert_confined(&lab, "run workload", &id, pid);

    // A service task: nsenter, unshare, the sandbox's mount and hostname
    // (with CAP_SYS_ADMIN), then setpriv.
    cli(
        &lab,
        1,
        &[
            "service",
            "create",
            "--runtime",
            "host",
            "--name",
            "probe-svc",
            "--network",
            "app",
            "--",
            "sh",
            "-c",
            PROBE,
        ],
    )
    .unwrap();
    let (id, pid) = wait_until("the service task", Duration::from_secs(20), || {
        workload(&lab, 1, |w| w["task"].is_string())
    })
    .0;
    assert_confined(&lab, "service task", &id, pid);

    cli(&lab, 1, &["service", "rm", "probe-svc"]).unwrap();
    cli(&lab, 1, &["stop", "probe"]).unwrap();
}
