//! Health checks, end to end on two lab hosts with containerd: a task
//! whose `--health-cmd` has not passed stays `starting` (in its start
//! period) and out of DNS; it
//! runs (healthy) and resolves once its check passes; when the check
//! starts failing it fails as an "unhealthy container", leaves DNS and is
//! replaced. An image's HEALTHCHECK runs without flags, and
//! `--no-healthcheck` turns it off. Needs root, iproute2, nftables,
//! containerd, runc, docker-registry, skopeo, busybox-static and the
//! built binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_lab::{image, registry_addr, Lab};
use shoal_tests::{cli, json, lab_with_echo_image, wait_until};

const HOSTS: usize = 2;

fn tasks(lab: &Lab, svc: &str) -> Vec<Value> {
    json(lab, 1, &["service", "ps", svc])
        .as_array()
        .unwrap()
        .clone()
}

fn host_of(lab: &Lab, t: &Value) -> usize {
    let name = t["node_hostname"].as_str().unwrap();
    (1..=HOSTS)
        .find(|h| lab.host(*h).unwrap().name == name)
        .unwrap_or_else(|| panic!("no host named {name}"))
}

/// Runs `argv` in task `t`'s container: its output, or the failure.
fn in_task(lab: &Lab, t: &Value, argv: &[&str]) -> Result<String, String> {
    let mut a = vec!["exec", t["id"].as_str().unwrap(), "--"];
    a.extend_from_slice(argv);
    cli(lab, host_of(lab, t), &a)
}

/// The task's address on its one network.
fn ip_of(t: &Value) -> String {
    let eps = t["endpoints"].as_object().unwrap();
    eps.values().next().unwrap()["ip"]
        .as_str()
        .unwrap()
        .to_string()
}

/// What `tasks.web` resolves to, asked from the client task.
fn resolved(lab: &Lab, client: &Value) -> String {
    in_task(lab, client, &["nslookup", "tasks.web", "127.0.0.11"]).unwrap_or_else(|e| e)
}

fn live(lab: &Lab, svc: &str) -> Vec<Value> {
    tasks(lab, svc)
        .into_iter()
        .filter(|t| t["desired"] == "running")
        .collect()
}

#[test]
fn health_checks_gate_load_balancing_and_replace_unhealthy_tasks() {
    let config = format!(
        "heartbeat_ms = 500\ngossip_profile = \"fast\"\nmetrics_addr = \"\"\n\
         insecure_registries = [\"{}\"]\n",
        registry_addr(1)
    );
    let (lab, reference, dir) = lab_with_echo_image(HOSTS, &config);
    cli(&lab, 1, &["network", "create", "app"]).unwrap();
    let create = |name: &str, extra: &[&str], image: &str| {
        let mut a = vec![
            "service",
            "create",
            "--name",
            name,
            "--network",
            "app",
            "--replicas",
        ];
        a.extend_from_slice(extra);
        a.push(image);
        cli(&lab, 1, &a).unwrap();
    };
    create("client", &["1"], &reference);
    create(
        "web",
        &[
            "2",
            "--health-cmd",
            "test -e /tmp/ready && test ! -e /tmp/sick",
            "--health-interval",
            "300ms",
            "--health-retries",
            "2",
            "--health-start-period",
            "5m",
        ],
        &reference,
    );
    let (client, _) = wait_until("the client runs", Duration::from_secs(90), || {
        live(&lab, "client")
            .into_iter()
            .find(|t| t["state"] == "running")
    });
    let (web, _) = wait_until(
        "both web containers started",
        Duration::from_secs(90),
        || {
            let w = live(&lab, "web");
            (w.len() == 2 && w.iter().all(|t| t["state"] == "starting")).then_some(w)
        },
    );
    // Both containers up (`starting` is reported before the pull).
    for t in &web {
        wait_until("the container runs", Duration::from_secs(60), || {
            in_task(&lab, t, &["true"]).ok()
        });
    }
    // Ten probe intervals: the check never passed (its failures in the
    // start period do not count), so neither task runs nor resolves.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let now = tasks(&lab, "web");
        for t in &web {
            let n = now.iter().find(|n| n["id"] == t["id"]).unwrap();
            assert!(
                n["state"] == "starting" && n["desired"] == "running",
                "a task whose check never passed left starting: {n}"
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let ns = resolved(&lab, &client);
    for t in &web {
        assert!(!ns.contains(&ip_of(t)), "unhealthy task in DNS: {ns}");
    }

    // The first task's check passes: it runs, healthy, and resolves.
    let (a, b) = (&web[0], &web[1]);
    in_task(&lab, a, &["touch", "/tmp/ready"]).unwrap();
    wait_until("task a healthy", Duration::from_secs(20), || {
        tasks(&lab, "web")
            .iter()
            .any(|t| t["id"] == a["id"] && t["state"] == "running" && t["message"] == "healthy")
            .then_some(())
    });
    let table = cli(&lab, 1, &["--format", "table", "service", "ps", "web"]).unwrap();
    assert!(table.contains("(healthy)"), "{table}");
    wait_until("a in tasks.web", Duration::from_secs(20), || {
        resolved(&lab, &client).contains(&ip_of(a)).then_some(())
    });
    let ns = resolved(&lab, &client);
    assert!(!ns.contains(&ip_of(b)), "b not healthy yet: {ns}");
    in_task(&lab, b, &["touch", "/tmp/ready"]).unwrap();
    wait_until("b in tasks.web", Duration::from_secs(20), || {
        resolved(&lab, &client).contains(&ip_of(b)).then_some(())
    });

    // a's check starts failing: it fails, leaves DNS, and is replaced.
    in_task(&lab, a, &["touch", "/tmp/sick"]).unwrap();
    let (failed, _) = wait_until("a unhealthy", Duration::from_secs(20), || {
        tasks(&lab, "web")
            .into_iter()
            .find(|t| t["id"] == a["id"] && t["state"] == "failed")
    });
    let msg = failed["message"].as_str().unwrap();
    assert!(msg.starts_with("unhealthy container"), "{failed}");
    let table = cli(&lab, 1, &["--format", "table", "service", "ps", "web"]).unwrap();
    assert!(table.contains("(unhealthy)"), "{table}");
    wait_until("a out of tasks.web", Duration::from_secs(20), || {
        let ns = resolved(&lab, &client);
        (!ns.contains(&ip_of(a)) && ns.contains(&ip_of(b))).then_some(())
    });
    wait_until("a replaced", Duration::from_secs(60), || {
        live(&lab, "web")
            .iter()
            .any(|t| t["slot"] == a["slot"] && t["id"] != a["id"])
            .then_some(())
    });

    // An image's HEALTHCHECK runs without flags; --no-healthcheck stops it.
    let hc = image::build_echo_image_with(
        &dir.path().join("echo-hc"),
        "hc",
        Some(json!({"Test": ["CMD-SHELL", "test ! -e /tmp/sick"], "Interval": 300_000_000, "Retries": 1})),
    )
    .unwrap();
    let hc_ref = format!("{}/shoal/echo:hc", registry_addr(1));
    image::push(&lab, 1, &hc, &hc_ref).unwrap();
    create("img", &["1"], &hc_ref);
    let (t, _) = wait_until("img healthy", Duration::from_secs(90), || {
        live(&lab, "img")
            .into_iter()
            .find(|t| t["state"] == "running" && t["message"] == "healthy")
    });
    cli(&lab, 1, &["service", "update", "--no-healthcheck", "img"]).unwrap();
    wait_until(
        "img running without a check",
        Duration::from_secs(60),
        || {
            live(&lab, "img")
                .iter()
                .any(|n| n["id"] != t["id"] && n["state"] == "running" && n["message"] == "running")
                .then_some(())
        },
    );
    // Bad checks are refused with the reason.
    let e = cli(
        &lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "bad",
            "--runtime",
            "host",
            "--health-cmd",
            "true",
            "sleep",
            "60",
        ],
    )
    .unwrap_err();
    assert!(e.contains("health checks run inside containers"), "{e}");
}
