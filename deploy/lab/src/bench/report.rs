//! `bench all`: every benchmark in [`BENCHES`], one after the other, at a
//! [`Size`], then one report (`bench-report.json` and `bench-report.md`)
//! with the machine it ran on, each benchmark's figures, and whether they
//! meet their targets.
//!
//! Data flow: each entry runs with its JSON lines appended to
//! `bench-results.jsonl` in the output directory; the lines it added are
//! read back, judged (`targets`), summarised (`headline`) and written into
//! the report. A benchmark that fails is recorded and the rest still run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{
    bandwidth_with, failover, failure, overlay, propagation, raft, reconcile, service, session, sim,
};
use crate::LabError;

/// How big a `bench all` run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// The parameters the README's figures use.
    Full,
    /// Short parameters: the whole report in a few minutes.
    Quick,
}

/// One benchmark of `bench all`: its name, its parameters as text, and how
/// to run it (appending its JSON lines to the given file).
pub struct BenchSpec {
    /// `bench <name>`.
    pub name: &'static str,
    /// The parameters it runs with at a size, for the report.
    pub params: fn(Size) -> Value,
    /// Runs it, appending JSON lines to the file.
    pub run: fn(Size, &Path) -> Result<(), LabError>,
}

fn pick<T>(size: Size, full: T, quick: T) -> T {
    match size {
        Size::Full => full,
        Size::Quick => quick,
    }
}

/// Every benchmark `bench all` runs, in order. Adding one is one entry.
pub const BENCHES: &[BenchSpec] = &[
    BenchSpec {
        name: "raft",
        params: |s| json!({"seconds": pick(s, 5, 1)}),
        run: |s, o| raft(pick(s, 5, 1), Some(o)),
    },
    BenchSpec {
        name: "failover",
        params: |s| json!({"trials": pick(s, 5, 2)}),
        run: |s, o| failover(pick(s, 5, 2), Some(o)),
    },
    BenchSpec {
        name: "session",
        params: |s| json!({"nodes": pick(s, 20, 5), "trials": pick(s, 20, 5)}),
        run: |s, o| session(pick(s, 20, 5), pick(s, 20, 5), Some(o)),
    },
    BenchSpec {
        name: "propagation",
        params: |s| json!({"nodes": pick(s, 20, 8), "entries": pick(s, 50, 10)}),
        run: |s, o| propagation(pick(s, 20, 8), pick(s, 50, 10), Some(o)),
    },
    BenchSpec {
        name: "failure",
        params: |s| json!({"nodes": pick(s, 20, 8)}),
        run: |s, o| failure(pick(s, 20, 8), Some(o)),
    },
    BenchSpec {
        name: "gossip-bandwidth",
        params: |s| json!({"nodes": pick(s, 20, 8), "entries": pick(s, 10_000, 2_000), "window_s": pick(s, 20, 5)}),
        run: |s, o| {
            bandwidth_with(
                pick(s, 20, 8),
                pick(s, 10_000, 2_000),
                Duration::from_secs(pick(s, 20, 5)),
                Some(o),
            )
        },
    },
    BenchSpec {
        name: "sim",
        params: |s| json!({"members": pick(s, 1000, 300), "seed": 1}),
        run: |s, o| sim(pick(s, 1000, 300), 1, Some(o)),
    },
    BenchSpec {
        name: "reconcile",
        params: |s| json!({"endpoints": pick(s, 10_000, 2_000)}),
        run: |s, o| reconcile(pick(s, 10_000, 2_000), Some(o)),
    },
    BenchSpec {
        name: "overlay",
        params: |s| json!({"seconds": pick(s, 3.0, 2.0), "pings": pick(s, 50, 20)}),
        run: |s, o| overlay(pick(s, 3.0, 2.0), pick(s, 50, 20), &self_exe()?, Some(o)),
    },
    BenchSpec {
        name: "service",
        params: |s| json!({"nodes": 5, "replicas": pick(s, 20, 10), "kills": pick(s, 3, 2), "seconds": pick(s, 3.0, 2.0), "clients": 8}),
        run: |s, o| {
            service(
                pick(s, 20, 10),
                pick(s, 3, 2),
                pick(s, 3.0, 2.0),
                8,
                &self_exe()?,
                false,
                Some(o),
            )
        },
    },
];

/// This program (the shoal-lab binary when `bench all` runs).
fn self_exe() -> Result<PathBuf, LabError> {
    std::env::current_exe().map_err(|e| LabError::io("finding the shoal-lab binary".to_string(), e))
}

/// A target a figure is held to: (what, target text, value, pass).
fn targets(line: &Value) -> Vec<(String, String, f64, bool)> {
    let f = |k: &str| line[k].as_f64();
    let mut t = Vec::new();
    let mut add = |what: &str, target: &str, v: Option<f64>, ok: fn(f64) -> bool| {
        if let Some(v) = v {
            t.push((what.to_string(), target.to_string(), v, ok(v)));
        }
    };
    match line["bench"].as_str().unwrap_or_default() {
        "raft" if line["proposers"] == 64 => add(
            "writes/s, 64 proposers",
            ">= 5000",
            f("writes_per_sec"),
            |v| v >= 5000.0,
        ),
        "raft" if line["proposers"] == 256 => add(
            "writes/s, 256 proposers",
            ">= 8000",
            f("writes_per_sec"),
            |v| v >= 8000.0,
        ),
        "failover" => add("median ms", "< 1000", f("median_ms"), |v| v < 1000.0),
        "propagation" => add("p99 ms", "< 200", f("p99_ms"), |v| v < 200.0),
        "failure" => {
            add(
                "gone everywhere ms",
                "< 3000",
                f("gone_everywhere_ms"),
                |v| v < 3000.0,
            );
            add("false positives", "= 0", f("false_positives"), |v| v == 0.0);
        }
        "gossip-bandwidth" => {
            add(
                "idle B/s per node",
                "<= 1000",
                f("idle_bytes_per_node_per_s"),
                |v| v <= 1000.0,
            );
            add(
                "loaded B/s per node",
                "<= 1000",
                f("loaded_bytes_per_node_per_s"),
                |v| v <= 1000.0,
            );
        }
        "reconcile" => add("add entries/s", ">= 80000", f("add_per_sec"), |v| {
            v >= 80_000.0
        }),
        "service" => {
            add(
                "warm create -> every host's mesh answering ms",
                "<= 3000",
                f("mesh_all_hosts_ms"),
                |v| v <= 3_000.0,
            );
            add(
                "replacement answering, median ms (target)",
                "<= 2000",
                f("replace_median_ms"),
                |v| v <= 2_000.0,
            );
            add(
                "all tasks answering through the VIP ms",
                "< 30000",
                f("vip_all_tasks_ms"),
                |v| v < 30_000.0,
            );
            add(
                "replacement answering, median ms",
                "< 10000",
                f("replace_median_ms"),
                |v| v < 10_000.0,
            );
            add("mesh request errors", "= 0", f("mesh_errors"), |v| v == 0.0);
        }
        "overlay" => add(
            "overlay ping loss %",
            "= 0",
            f("overlay_ping_loss_pct"),
            |v| v == 0.0,
        ),
        _ => {}
    }
    t
}

/// The headline figures of one JSON line, for the markdown table.
fn headline(line: &Value) -> String {
    let g = |k: &str| line[k].clone();
    match line["bench"].as_str().unwrap_or_default() {
        "raft" => format!("{} proposers: {} writes/s, p50 {} ms, p99 {} ms", g("proposers"), g("writes_per_sec"), g("p50_ms"), g("p99_ms")),
        "failover" => format!("median {} ms (trials {})", g("median_ms"), g("ms")),
        "session" => format!("{} nodes: assign p50 {} ms, p99 {} ms; leader {:.3} ms/heartbeat", g("nodes"), g("assign_p50_ms"), g("assign_p99_ms"), line["leader_cpu_ms_per_heartbeat"].as_f64().unwrap_or_default()),
        "propagation" => format!("{} nodes: p50 {} ms, p99 {} ms", g("nodes"), g("p50_ms"), g("p99_ms")),
        "failure" => format!("{} nodes: gone everywhere {} ms, false positives {}", g("nodes"), g("gone_everywhere_ms"), g("false_positives")),
        "gossip-bandwidth" => format!("{} nodes: idle {} B/s/node, {} entries {} B/s/node", g("nodes"), g("idle_bytes_per_node_per_s"), g("entries"), g("loaded_bytes_per_node_per_s")),
        "sim" => {
            let r = &line["report"];
            format!("99.99% after {} ms, crash detected by all after {} ms, {} false positives", r["propagation_9999"], r["failure_detection_all"], r["false_positives"])
        }
        "reconcile" => format!("{} entries: add {}/s, delete {}/s", g("entries"), g("add_per_sec"), g("del_per_sec")),
        "overlay" => format!(
            "RTT avg overlay {} ms / underlay {} ms (x{}); TCP overlay {:.0} / underlay {:.0} Mbit/s (x{})",
            line["overlay_rtt_ms"]["avg"], line["underlay_rtt_ms"]["avg"], g("rtt_avg_ratio"),
            line["overlay_bytes_per_sec"].as_f64().unwrap_or_default() * 8.0 / 1e6,
            line["underlay_bytes_per_sec"].as_f64().unwrap_or_default() * 8.0 / 1e6,
            g("throughput_ratio")
        ),
        "service" => format!(
            "{} replicas: all answering via VIP {} ms, mesh on every host {} ms; task kill -> replacement answering {} ms (median); req/s mesh {} / VIP {} / direct {} (mesh/direct x{})",
            g("replicas"), g("vip_all_tasks_ms"), g("mesh_all_hosts_ms"), g("replace_median_ms"),
            g("mesh_rps"), g("vip_rps"), g("direct_rps"), g("mesh_direct_ratio")
        ),
        _ => line.to_string(),
    }
}

fn read_file(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The machine the report was made on.
fn machine() -> Value {
    let cpu = read_file(Path::new("/proc/cpuinfo"))
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string());
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": read_file(Path::new("/proc/sys/kernel/osrelease")).trim(),
        "cpu": cpu,
        "date": command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "git_commit": command_line("git", &["rev-parse", "HEAD"]),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

/// `bench all`: runs every [`BENCHES`] entry (a failing one is recorded and
/// the rest still run), then writes `bench-report.json` and
/// `bench-report.md` into `out_dir`. Returns the report.
pub fn all(size: Size, out_dir: &Path, only: &[String]) -> Result<Value, LabError> {
    std::fs::create_dir_all(out_dir)
        .map_err(|e| LabError::io(format!("creating {}", out_dir.display()), e))?;
    let lines_file = out_dir.join("bench-results.jsonl");
    let mut benches = Vec::new();
    for b in BENCHES
        .iter()
        .filter(|b| only.is_empty() || only.iter().any(|o| o == b.name))
    {
        println!("=== bench {} ===", b.name);
        let before = read_file(&lines_file).lines().count();
        let start = Instant::now();
        let r = (b.run)(size, &lines_file);
        let secs = start.elapsed().as_secs_f64();
        let results: Vec<Value> = read_file(&lines_file)
            .lines()
            .skip(before)
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let t: Vec<Value> = results
            .iter()
            .flat_map(targets)
            .map(|(what, target, value, pass)| json!({"what": what, "target": target, "value": value, "pass": pass}))
            .collect();
        let pass = match (&r, t.is_empty()) {
            (Err(_), _) => Some(false),
            (Ok(()), true) => None,
            (Ok(()), false) => Some(t.iter().all(|x| x["pass"] == true)),
        };
        if let Err(e) = &r {
            println!("bench {} failed: {e}", b.name);
        }
        benches.push(json!({"name": b.name, "params": (b.params)(size), "secs": (secs * 10.0).round() / 10.0,
            "error": r.err().map(|e| e.to_string()), "results": results, "targets": t, "pass": pass}));
    }
    let report = json!({"machine": machine(), "size": format!("{size:?}").to_lowercase(), "benches": benches});
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    let jp = out_dir.join("bench-report.json");
    std::fs::write(&jp, text).map_err(|e| LabError::io(format!("writing {}", jp.display()), e))?;
    let md = markdown(&report);
    let mp = out_dir.join("bench-report.md");
    std::fs::write(&mp, &md).map_err(|e| LabError::io(format!("writing {}", mp.display()), e))?;
    println!("{md}");
    println!("wrote {} and {}", jp.display(), mp.display());
    Ok(report)
}

fn markdown(report: &Value) -> String {
    let m = &report["machine"];
    let s = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    let mut md = format!(
        "# Shoal benchmark report ({})\n\n{} cores, {}, kernel {}, {} build, {}, commit {}\n\n| bench | parameters | figures | target | pass |\n|---|---|---|---|---|\n",
        s(&report["size"]), m["cores"], s(&m["cpu"]), s(&m["kernel"]), s(&m["profile"]), s(&m["date"]), s(&m["git_commit"])
    );
    for b in report["benches"].as_array().cloned().unwrap_or_default() {
        let targets: Vec<String> = b["targets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| format!("{} {} ({})", s(&t["what"]), s(&t["target"]), t["value"]))
            .collect();
        let figures: Vec<String> = match b["error"].as_str() {
            Some(e) => vec![format!("ERROR: {e}")],
            None => b["results"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(headline)
                .collect(),
        };
        let pass = match b["pass"].as_bool() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            s(&b["name"]),
            b["params"].to_string().replace('|', "/"),
            figures.join("<br>").replace('|', "/"),
            if targets.is_empty() {
                "-".into()
            } else {
                targets.join("<br>")
            },
            pass
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_judge_figures() {
        let t = targets(&json!({"bench": "failover", "median_ms": 683.0}));
        assert_eq!(t.len(), 1);
        assert!(t[0].3);
        let t = targets(
            &json!({"bench": "failure", "gone_everywhere_ms": 3500.0, "false_positives": 0}),
        );
        assert_eq!(t.iter().filter(|x| !x.3).count(), 1);
        assert!(targets(&json!({"bench": "session"})).is_empty());
    }
}
