//! Chaos against a lab swarm (5 hosts, 3 managers): a seeded schedule of
//! SIGKILL + restart, SIGSTOP pauses, restarts and partitions while CLI
//! writers create/remove networks, put gossip entries and scale a service
//! published on 18080 (created before the faults); afterwards every
//! acknowledged write is on every manager, every node is Ready, gossip
//! tables agree, workloads' FDB entries are right, the service has the
//! last acknowledged number of running tasks and answers through the
//! routing mesh on every host, and no daemon panicked. Tasks and
//! workloads are containers (each host runs containerd and pulls the
//! lab's echo image from a registry on h1), so every SIGKILLed daemon
//! must adopt the containers it left running.
//! One run with a fixed seed, one with a random (printed) seed; replay any
//! with `SHOAL_SEED=… cargo test -p shoal-tests --test chaos` or the
//! printed `shoal-lab chaos …` command. The long run is the binary's
//! (`shoal-lab chaos --minutes 30`). Needs root, containerd, runc, docker-registry, skopeo, busybox-static
//! and the built binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;
use std::time::Duration;

use shoal_lab::chaos::{self, ChaosConfig};

/// The two runs share two cores: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn short_run(seed: u64) {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = ChaosConfig {
        duration: Duration::from_secs(40),
        nodes: 5,
        managers: 3,
        settle: Duration::from_secs(60),
        // Containers of the lab's echo image (the default).
        ..ChaosConfig::new(seed)
    };
    eprintln!("chaos seed {seed}; replay: {}", cfg.replay_command());
    let report = chaos::run(&cfg, &[]).unwrap_or_else(|e| {
        panic!(
            "chaos run could not run (seed {seed}): {e}\nreplay: {}\n({})",
            cfg.replay_command(),
            shoal_tests::NEEDS
        )
    });
    assert!(
        !report.events.is_empty(),
        "seed {seed}: the schedule injected no fault"
    );
    assert!(
        !report.ledger.created.is_empty() && !report.ledger.puts.is_empty(),
        "seed {seed}: no write was acknowledged during the run: {:?}",
        report.ledger
    );
    assert!(
        report.ledger.service_replicas.is_some(),
        "seed {seed}: the run had no service: {:?}",
        report.ledger
    );
    eprintln!(
        "seed {seed}: {} service scales acknowledged, final replicas {:?}",
        report.ledger.scales, report.ledger.service_replicas
    );
    assert!(report.passed(), "{}", report.failure_text());
}

#[test]
fn chaos_fixed_seed() {
    short_run(42);
}

#[test]
fn chaos_random_seed() {
    let seed = std::env::var("SHOAL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    short_run(seed);
}
