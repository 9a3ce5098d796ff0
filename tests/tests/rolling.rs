//! Rolling updates end to end on a 3-host lab, in their own test binary
//! (so no other lab shares the two cores while a client counts lost
//! requests): a start-first update under load through the routing mesh
//! loses no request; an update whose tasks fail rolls itself back. Needs
//! root, iproute2, nftables and the built binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;
use shoal_lab::Lab;
use shoal_tests::{cli, create_echo, json, wait_until};

fn config() -> String {
    "heartbeat_ms = 500\ngossip_profile = \"fast\"\nmetrics_addr = \"\"\n".to_string()
}

/// Running tasks of `svc`: task ids.
fn running(lab: &Lab, svc: &str) -> Vec<String> {
    json(lab, 1, &["service", "ps", svc])
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "running" && t["desired"] == "running")
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

/// A rolling update with `--update-order start-first` under load: a
/// client keeps asking through the routing mesh while every task is
/// replaced, and no request fails; `service inspect` shows the update
/// `completed` and every task runs the new spec.
#[test]
fn a_start_first_update_loses_no_request_through_the_mesh() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let lab = Lab::builder()
        .nodes(3)
        .daemon_config(&config())
        .start()
        .unwrap();
    lab.init_swarm(1).unwrap();
    create_echo(
        &lab,
        "web",
        &[
            "--replicas",
            "3",
            "--update-order",
            "start-first",
            "-p",
            "8095:80",
        ],
    )
    .unwrap();
    wait_until("3 running", Duration::from_secs(30), || {
        (running(&lab, "web").len() == 3).then_some(())
    });
    let addr = std::net::SocketAddr::from((lab.host(1).unwrap().addr, 8095));
    let ns = shoal_lab::bench::host_netns(&lab, 1).unwrap();
    wait_until("the mesh answers", Duration::from_secs(20), || {
        shoal_lab::bench::in_netns(&ns, || {
            shoal_lab::bench::http_get(addr, Duration::from_secs(5)).ok()
        })
        .ok()
        .flatten()
    });
    let (stop, ok, failed) = (AtomicBool::new(false), AtomicU64::new(0), AtomicU64::new(0));
    let errors = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        s.spawn(|| {
            shoal_lab::bench::in_netns(&ns, || {
                while !stop.load(Ordering::Relaxed) {
                    match shoal_lab::bench::http_get(addr, Duration::from_secs(5)) {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            errors.lock().unwrap().push(e);
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
            .unwrap();
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cli(&lab, 1, &["service", "update", "--env-add", "V=2", "web"]).unwrap();
            wait_until("the update completed", Duration::from_secs(60), || {
                let v = json(&lab, 1, &["service", "inspect", "web"]);
                (v[0]["update_status"]["state"] == "completed").then_some(())
            });
        }));
        stop.store(true, Ordering::Relaxed);
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    });
    let (ok, failed) = (ok.into_inner(), failed.into_inner());
    eprintln!("{ok} requests answered during the update, {failed} failed");
    assert!(ok > 50, "the client barely ran: {ok}");
    assert_eq!(failed, 0, "{:?}", errors.into_inner().unwrap());
    let tasks = json(&lab, 1, &["service", "ps", "web"]);
    let live: Vec<&Value> = tasks
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["desired"] == "running")
        .collect();
    assert_eq!(live.len(), 3, "{tasks}");
}

/// `--update-failure-action rollback`: an update whose tasks fail goes
/// back to the previous spec by itself; `service rollback` of a service
/// never updated is refused.
#[test]
fn a_failing_update_rolls_back() {
    let lab = Lab::builder()
        .nodes(2)
        .daemon_config(&config())
        .start()
        .unwrap();
    lab.init_swarm(1).unwrap();
    let echo = shoal_tests::shoal_lab_bin().display().to_string();
    let script = format!("test -z \"$BROKEN\" || exit 3; exec {echo} http-echo --port 80");
    cli(
        &lab,
        1,
        &[
            "service",
            "create",
            "--runtime",
            "host",
            "--name",
            "web",
            "--replicas",
            "2",
            "--",
            "sh",
            "-c",
            &script,
        ],
    )
    .unwrap();
    wait_until("2 running", Duration::from_secs(30), || {
        (running(&lab, "web").len() == 2).then_some(())
    });
    let e = cli(&lab, 1, &["service", "rollback", "web"]).unwrap_err();
    assert!(e.contains("has no previous spec to roll back to"), "{e}");
    cli(
        &lab,
        1,
        &[
            "service",
            "update",
            "--env-add",
            "BROKEN=1",
            "--update-failure-action",
            "rollback",
            "web",
        ],
    )
    .unwrap();
    let (spec, _) = wait_until("rolled back", Duration::from_secs(60), || {
        let v = json(&lab, 1, &["service", "inspect", "web"]);
        (v[0]["update_status"]["state"] == "rollback_completed" && running(&lab, "web").len() == 2)
            .then(|| v[0]["spec"].clone())
    });
    assert!(
        !spec["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "BROKEN=1"),
        "{spec}"
    );
}
