//! Crash durability of the managers' Raft log: kill -9 of one manager, and
//! of all three at once, in the middle of a write burst, over seeded
//! rounds — every write a client saw acknowledged is there afterwards on
//! every manager (`tests/corruption.rs` damages the log on disk instead).
//! Needs root and the built `shoal` binary. `SHOAL_SEED=N` replays a run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use shoal_lab::chaos::cli_timeout;
use shoal_lab::Lab;
use shoal_tests::{start, wait_until};

const MANAGERS: usize = 3;

fn seed() -> u64 {
    let seed = std::env::var("SHOAL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("durability seed: {seed} (SHOAL_SEED={seed} replays it)");
    seed
}

/// Networks every manager lists (a fresh read on each).
fn networks_on(lab: &Lab, host: usize) -> Option<Vec<String>> {
    let out = cli_timeout(
        lab,
        host,
        &["--format", "json", "network", "ls"],
        Duration::from_secs(10),
    )
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    Some(
        v.as_array()?
            .iter()
            .filter_map(|n| n["Name"].as_str().map(String::from))
            .collect(),
    )
}

#[test]
fn acknowledged_writes_survive_kill_9_of_managers_during_a_burst() {
    let seed = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let lab = start(
        Lab::builder()
            .nodes(MANAGERS)
            .daemon_config("heartbeat_ms = 500\ngossip_profile = \"fast\"\n"),
    );
    lab.form_swarm(MANAGERS, MANAGERS).unwrap();
    let lab = Arc::new(lab);

    // One writer per manager: each acknowledged name is recorded.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (1..=MANAGERS)
        .map(|h| {
            let (lab, acked, stop) = (lab.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("d{h}-{i}");
                    i += 1;
                    let r = cli_timeout(
                        &lab,
                        h,
                        &["network", "create", &name],
                        Duration::from_secs(15),
                    );
                    match r {
                        Ok(_) => acked.lock().unwrap().push(name),
                        // Unknown outcome (daemon killed, no quorum): not
                        // acknowledged, not checked.
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            })
        })
        .collect();

    let pause = |rng: &mut rand::rngs::StdRng, lo: u64, hi: u64| {
        std::thread::sleep(Duration::from_millis(rng.gen_range(lo..hi)));
    };
    // Rounds of one manager killed mid-burst and brought back.
    for round in 0..4 {
        pause(&mut rng, 300, 1500);
        let victim = rng.gen_range(1..=MANAGERS);
        eprintln!("round {round}: kill -9 h{victim}");
        lab.kill(victim).unwrap();
        pause(&mut rng, 200, 1500);
        lab.restart(victim).unwrap();
    }
    // Then all three at once.
    pause(&mut rng, 500, 1500);
    let before = acked.lock().unwrap().len();
    eprintln!("kill -9 of every manager ({before} writes acknowledged so far)");
    for h in 1..=MANAGERS {
        lab.kill(h).unwrap();
    }
    pause(&mut rng, 200, 1000);
    for h in 1..=MANAGERS {
        lab.restart(h).unwrap();
    }
    // The writers go on once the restarted managers elect a leader again:
    // wait for the first write acknowledged after the full restart.
    wait_until(
        "a write acknowledged after every manager restarted",
        Duration::from_secs(60),
        || (acked.lock().unwrap().len() > before).then_some(()),
    );
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        before > 20,
        "the burst wrote only {before} before the full kill"
    );

    for h in 1..=MANAGERS {
        let (names, _) = wait_until(
            "a fresh read on the restarted manager",
            Duration::from_secs(30),
            || networks_on(&lab, h),
        );
        let missing: Vec<_> = acked.iter().filter(|n| !names.contains(n)).collect();
        assert!(
            missing.is_empty(),
            "seed {seed}: h{h} lost {} acknowledged writes of {}: {missing:?}",
            missing.len(),
            acked.len()
        );
    }
}
