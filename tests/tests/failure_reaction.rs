//! With the daemon's production defaults (5 s heartbeats, the `lan`
//! gossip profile), a killed worker is marked `Down` from SWIM's verdict
//! plus its lost session — seconds, not three missed heartbeats (15 s) —
//! while a worker paused for a second is never misjudged. Needs root and
//! the built `shoal` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use shoal_tests::{cli, lab, wait_until};

/// The STATUS column of `node ls` for host name `name`.
fn status(lab: &shoal_lab::Lab, name: &str) -> Option<String> {
    let out = cli(lab, 1, &["--format", "json", "node", "ls"]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v.as_array()?
        .iter()
        .find(|n| n["hostname"] == name)
        .and_then(|n| n["status"].as_str().map(String::from))
}

#[test]
fn a_killed_worker_is_down_in_seconds_and_a_paused_one_is_not() {
    let lab = lab(3);
    lab.form_swarm(3, 1).unwrap();
    wait_until("every node Ready", Duration::from_secs(30), || {
        (status(&lab, "h2")? == "ready" && status(&lab, "h3")? == "ready").then_some(())
    });
    // Gossip must be up everywhere (it starts after the session's first
    // assignments), or its verdict cannot count.
    wait_until(
        "gossip sees 3 alive members",
        Duration::from_secs(30),
        || {
            let out = cli(&lab, 1, &["node", "ls"]).ok()?;
            (out.matches("alive").count() == 3).then_some(())
        },
    );

    // A pause of one second: gossip may suspect h2, its session survives.
    lab.pause(2).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    lab.resume(2).unwrap();
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(4) {
        assert_eq!(
            status(&lab, "h2").as_deref(),
            Some("ready"),
            "a paused node was marked down"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // kill -9: down long before three missed 5 s heartbeats (15 s).
    let t0 = Instant::now();
    lab.kill(3).unwrap();
    let (_, took) = wait_until("h3 Down", Duration::from_secs(10), || {
        (status(&lab, "h3")? == "down").then_some(())
    });
    eprintln!(
        "killed worker marked Down after {:.2} s (defaults: 5 s heartbeats, lan gossip)",
        took.as_secs_f64()
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(status(&lab, "h2").as_deref(), Some("ready"));
}
