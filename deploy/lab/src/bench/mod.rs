//! Benchmarks against a fresh lab (`shoal-lab bench <name>`): programs that
//! measure, not timed tests. Each prints a human summary and one JSON line,
//! and appends the JSON line to `--out` when given.
//!
//! - `raft`: committed writes per second and commit latency (p50/p99)
//!   through the daemon's local API (`node update`, which goes through
//!   Raft), 3 managers, with 1, 64 and 256 concurrent proposers.
//! - `failover`: kill -9 of the leader -> first successful write through a
//!   surviving manager, over several trials.
//! - `session`: 20 hosts (3 managers): store change (a new gossip key) ->
//!   every node holds it through its QUIC session, p50/p99; and the
//!   leader's CPU per node heartbeat.
//! - `service`: 5 hosts, 20 `http-echo` tasks: create -> every task
//!   answering through the VIP and the routing mesh on every host; task
//!   SIGKILL -> replacement answering; requests/s mesh vs VIP vs direct.
//!
//! Data flow: each benchmark builds its own [`Lab`](crate::Lab), drives it
//! through the daemons' API and CLI (`crate::probe`), measures, and hands
//! its JSON line to `emit` (stdout, and the `--out` file). `bench all`
//! (`report.rs`) runs them in turn and reads those lines back into one
//! report. One file per family:
//! - `raft.rs`: `raft`, `failover`, `session` (the control plane);
//! - `gossip.rs`: `propagation`, `failure`, `gossip-bandwidth`, `sim`;
//! - `overlay.rs`: `reconcile`, `overlay`, and the `tcp-sink`/`tcp-source`
//!   it runs;
//! - `service.rs`: `service`, and the `http-echo`/`udp-echo` its tasks run;
//! - `report.rs`: `bench all`, the targets figures are held to, the report.
//!
//! The helpers below are what every family shares: percentiles, ms, the
//! runtime, and `emit`.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::LabError;

mod gossip;
mod overlay;
mod raft;
mod report;
mod service;

pub use gossip::{bandwidth, bandwidth_with, failure, propagation, sim};
pub use overlay::{overlay, parse_ping, reconcile, tcp_sink, tcp_source, Fnv64};
pub use raft::{failover, raft, session};
pub use report::{all, BenchSpec, Size, BENCHES};
pub use service::{http_echo, remove_services, service, udp_echo};
// The probes that used to live here, at their old paths.
pub use crate::probe::{enter_netns, host_netns, http_get, in_netns, kill_workloads};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn runtime() -> Result<tokio::runtime::Runtime, LabError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| LabError::io("starting the benchmark runtime".to_string(), e))
}

/// CPU time (user + system, clock ticks) process `pid` has used.
fn proc_cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the comm.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn emit(out: Option<&Path>, summary: &str, line: &Value) -> Result<(), LabError> {
    println!("{summary}");
    println!("{line}");
    if let Some(p) = out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| LabError::io(format!("opening {}", p.display()), e))?;
        writeln!(f, "{line}").map_err(|e| LabError::io(format!("writing {}", p.display()), e))?;
    }
    Ok(())
}
