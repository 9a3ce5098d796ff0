//! A manager's Raft log damaged on disk — cut short, or bytes flipped —
//! is refused when the daemon starts, with an error naming the log (never
//! a silent reset to a shorter log, never a panic). The damage is done
//! right after a burst of writes and a kill -9, so the log's newest
//! commits are among what it loses. Needs root and the built `shoal`
//! binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use shoal_lab::Lab;
use shoal_tests::{cli, start};

/// Kill the single manager of a fresh swarm after some writes and damage
/// its log with `damage`; its restart must fail, naming the file.
fn damaged_log_is_refused(damage: impl Fn(&std::path::Path)) -> String {
    let lab = start(Lab::builder().nodes(1));
    lab.form_swarm(1, 1).unwrap();
    for i in 0..30 {
        cli(&lab, 1, &["network", "create", &format!("n{i}")]).unwrap();
    }
    let h1 = lab.host(1).unwrap();
    lab.kill(1).unwrap();
    let db = h1.data_dir.join("swarm/raft/db");
    assert!(db.exists(), "sled keeps its log in {}", db.display());
    damage(&db);
    let t0 = Instant::now();
    let r = lab.restart(1);
    assert!(r.is_err(), "a damaged log was accepted");
    assert!(t0.elapsed() < Duration::from_secs(60));
    let log = std::fs::read_to_string(&h1.log).unwrap();
    assert!(!log.contains("panicked"), "no panic:\n{log}");
    log
}

#[test]
fn a_log_cut_short_on_disk_is_refused_at_start_naming_the_file() {
    let log = damaged_log_is_refused(|db| {
        let f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len / 3).unwrap();
    });
    assert!(
        log.contains("swarm/raft"),
        "the error names the log:\n{log}"
    );
}

#[test]
fn a_corrupted_log_on_disk_is_refused_at_start_naming_the_file() {
    let log = damaged_log_is_refused(|db| {
        let mut bytes = std::fs::read(db).unwrap();
        let n = bytes.len();
        for b in &mut bytes[n / 4..n * 3 / 4] {
            *b ^= 0x5a;
        }
        std::fs::write(db, bytes).unwrap();
    });
    assert!(
        log.contains("swarm/raft"),
        "the error names the log:\n{log}"
    );
}
