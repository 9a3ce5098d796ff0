//! The control-plane benchmarks: `bench raft` (committed writes/s and
//! commit latency through a manager's API), `bench failover` (leader
//! SIGKILL -> first write through a survivor) and `bench session` (a store
//! change -> every node holds it through its session; the leader's CPU
//! per heartbeat).
//!
//! Data flow: a fresh 3-manager lab; proposers and pollers talk to the
//! daemons' unix sockets through [`Conn`]; each result goes out as one JSON
//! line through `super::emit`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{emit, ms, percentile, runtime};
use crate::probe::{Availability, Conn, Request, Response};
use crate::{Lab, LabError};

/// Which host leads, from the managers' `info`.
async fn leader_host(lab: &Lab, managers: &[usize]) -> Option<usize> {
    let mut by_raft_id = std::collections::BTreeMap::new();
    let mut leader = None;
    for &h in managers {
        let socket = lab.host(h).ok()?.socket;
        let Ok(mut c) = Conn::open(&socket).await else {
            continue;
        };
        if let Ok(Response::Info(i)) = c.call(Request::Info).await {
            if let Some(r) = i.swarm.raft {
                by_raft_id.insert(r.id, h);
                leader = leader.or(r.leader);
            }
        }
    }
    leader.and_then(|l| by_raft_id.get(&l).copied())
}

async fn wait_leader(lab: &Lab, managers: &[usize], timeout: Duration) -> Result<usize, LabError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(h) = leader_host(lab, managers).await {
            return Ok(h);
        }
        if Instant::now() > deadline {
            return Err(LabError::Bench(format!(
                "no raft leader within {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn update(avail: Availability) -> Request {
    Request::NodeUpdate {
        node: "self".into(),
        availability: Some(avail),
        label_add: Default::default(),
        label_rm: Vec::new(),
    }
}

/// `bench raft`: 3 managers, proposers on the leader's API socket.
pub fn raft(seconds: u64, out: Option<&Path>) -> Result<(), LabError> {
    let lab = Lab::builder().nodes(3).start()?;
    lab.init_swarm(3)?;
    let rt = runtime()?;
    let leader = rt.block_on(wait_leader(&lab, &[1, 2, 3], Duration::from_secs(10)))?;
    let socket = lab.host(leader)?.socket;
    let mut results = Vec::new();
    for proposers in [1usize, 64, 256] {
        let r = rt.block_on(run_proposers(
            &socket,
            proposers,
            Duration::from_secs(seconds),
        ))?;
        let summary = format!(
            "raft: {proposers:>3} proposers -> {:>7.0} committed writes/s, p50 {:.2} ms, p99 {:.2} ms ({} writes, {} errors)",
            r.rate, ms(r.p50), ms(r.p99), r.writes, r.errors
        );
        let line = json!({
            "bench": "raft", "managers": 3, "proposers": proposers, "seconds": seconds,
            "writes": r.writes, "errors": r.errors, "writes_per_sec": r.rate.round(),
            "p50_ms": ms(r.p50), "p99_ms": ms(r.p99),
            "path": "shoal CLI API (unix socket) -> daemon -> raft propose -> commit + apply",
        });
        emit(out, &summary, &line)?;
        results.push(line);
    }
    lab.down()
}

struct RunResult {
    writes: u64,
    errors: u64,
    rate: f64,
    p50: Duration,
    p99: Duration,
}

async fn run_proposers(socket: &Path, n: usize, dur: Duration) -> Result<RunResult, LabError> {
    // Warm up one connection first so the first samples are not setup.
    let mut warm = Conn::open(socket).await.map_err(LabError::Bench)?;
    for i in 0..20 {
        let a = if i % 2 == 0 {
            Availability::Active
        } else {
            Availability::Pause
        };
        warm.call(update(a)).await.map_err(LabError::Bench)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..n {
        let socket: PathBuf = socket.to_owned();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let Ok(mut c) = Conn::open(&socket).await else {
                return (lat, 1);
            };
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                let a = if i % 2 == 0 {
                    Availability::Active
                } else {
                    Availability::Pause
                };
                i += 1;
                let start = Instant::now();
                match c.call(update(a)).await {
                    Ok(_) => lat.push(start.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t
            .await
            .map_err(|e| LabError::Bench(format!("proposer task: {e}")))?;
        all.extend(lat);
        errors += e;
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    Ok(RunResult {
        writes: all.len() as u64,
        errors,
        rate: all.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
    })
}

/// `bench failover`: kill -9 the leader, time the first successful write
/// through a surviving manager; restart, let it catch up; repeat.
pub fn failover(trials: usize, out: Option<&Path>) -> Result<(), LabError> {
    let lab = Lab::builder().nodes(3).start()?;
    lab.init_swarm(3)?;
    let rt = runtime()?;
    let managers = [1usize, 2, 3];
    let mut times = Vec::new();
    for trial in 1..=trials {
        let leader = rt.block_on(wait_leader(&lab, &managers, Duration::from_secs(10)))?;
        let survivor = managers.iter().copied().find(|&h| h != leader).unwrap_or(1);
        let socket = lab.host(survivor)?.socket;
        // The survivor must be caught up and writing before the kill.
        rt.block_on(async {
            let mut c = Conn::open(&socket).await.map_err(LabError::Bench)?;
            c.call(update(Availability::Active))
                .await
                .map_err(LabError::Bench)
        })?;
        let killed = Instant::now();
        lab.kill(leader)?;
        let took = rt.block_on(first_write(&socket, killed, Duration::from_secs(30)))?;
        println!("failover trial {trial}: leader h{leader} killed -> write ok via h{survivor} in {:.0} ms", ms(took));
        times.push(took);
        lab.restart(leader)?;
        rt.block_on(wait_all_reachable(&lab, &managers, Duration::from_secs(20)))?;
    }
    let mut sorted = times.clone();
    sorted.sort_unstable();
    let median = percentile(&sorted, 0.5);
    let summary = format!(
        "failover: median {:.0} ms, min {:.0} ms, max {:.0} ms over {trials} trials (tick 50 ms, election timeout 10 ticks = 0.5-1 s randomised)",
        ms(median),
        ms(sorted[0]),
        ms(sorted[sorted.len() - 1])
    );
    let line = json!({
        "bench": "failover", "managers": 3, "trials": trials,
        "ms": times.iter().map(|t| ms(*t)).collect::<Vec<_>>(),
        "median_ms": ms(median),
        "tick_ms": 50, "election_ticks": 10,
    });
    emit(out, &summary, &line)?;
    lab.down()
}

/// Every manager sees every manager (after a restart), so the next trial
/// starts from a whole cluster.
async fn wait_all_reachable(
    lab: &Lab,
    managers: &[usize],
    timeout: Duration,
) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    'outer: loop {
        if Instant::now() > deadline {
            return Err(LabError::Bench(format!(
                "managers did not all see each other within {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for &h in managers {
            let socket = lab.host(h)?.socket;
            let Ok(mut c) = Conn::open(&socket).await else {
                continue 'outer;
            };
            let Ok(Response::Info(i)) = c.call(Request::Info).await else {
                continue 'outer;
            };
            match i.swarm.raft {
                Some(r) if r.reachable == managers.len() && r.leader.is_some() => {}
                _ => continue 'outer,
            }
        }
        return Ok(());
    }
}

async fn first_write(socket: &Path, since: Instant, limit: Duration) -> Result<Duration, LabError> {
    loop {
        if since.elapsed() > limit {
            return Err(LabError::Bench(format!(
                "no successful write within {limit:?}"
            )));
        }
        let attempt = async {
            let mut c = Conn::open(socket).await?;
            c.call(update(Availability::Active)).await
        };
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
            return Ok(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The first key id a node holds, from `info`.
async fn newest_key(socket: &Path) -> Option<u32> {
    let mut c = Conn::open(socket).await.ok()?;
    match c.call(Request::Info).await {
        Ok(Response::Info(i)) => i.swarm.keys.first().map(|k| k.id),
        _ => None,
    }
}

/// `bench session`.
pub fn session(nodes: usize, trials: usize, out: Option<&Path>) -> Result<(), LabError> {
    let heartbeat_ms = 1000u64;
    let lab = Lab::builder()
        .nodes(nodes)
        .daemon_config(&format!("heartbeat_ms = {heartbeat_ms}\n"))
        .start()?;
    lab.init_swarm(3)?;
    let rt = runtime()?;
    let leader = rt.block_on(wait_leader(&lab, &[1, 2, 3], Duration::from_secs(10)))?;
    let sockets: Vec<PathBuf> = (1..=nodes)
        .map(|h| lab.host(h).map(|h| h.socket))
        .collect::<Result<_, _>>()?;
    let leader_socket = lab.host(leader)?.socket;
    let mut times = Vec::new();
    for _ in 0..trials {
        let took = rt.block_on(async {
            let mut c = Conn::open(&leader_socket).await.map_err(LabError::Bench)?;
            let start = Instant::now();
            let Response::Message(msg) =
                c.call(Request::RotateKeys).await.map_err(LabError::Bench)?
            else {
                return Err(LabError::Bench("unexpected answer to rotate-keys".into()));
            };
            let id: u32 = msg
                .split_whitespace()
                .find_map(|w| w.trim_end_matches(';').parse().ok())
                .ok_or_else(|| LabError::Bench(format!("no key id in {msg:?}")))?;
            // Poll every node in parallel until it holds the new key.
            let mut tasks = Vec::new();
            for s in &sockets {
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while Instant::now() < deadline {
                        if newest_key(&s).await == Some(id) {
                            return Some(Instant::now());
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    None
                }));
            }
            let mut last = start;
            for t in tasks {
                let at = t
                    .await
                    .map_err(|e| LabError::Bench(e.to_string()))?
                    .ok_or_else(|| LabError::Bench("a node never got the new key".into()))?;
                last = last.max(at);
            }
            Ok(last - start)
        })?;
        times.push(took);
    }
    times.sort_unstable();
    // Leader CPU over an idle window, per heartbeat received.
    let pid = lab
        .host(leader)?
        .daemon
        .map(|d| d.pid)
        .ok_or_else(|| LabError::Bench("leader has no daemon pid".into()))?;
    let window = Duration::from_secs(10);
    let t0 = super::proc_cpu_ticks(pid)
        .ok_or_else(|| LabError::Bench("cannot read /proc stat".into()))?;
    std::thread::sleep(window);
    let t1 = super::proc_cpu_ticks(pid)
        .ok_or_else(|| LabError::Bench("cannot read /proc stat".into()))?;
    let tick_ms = 1000.0 / 100.0; // USER_HZ
    let cpu_ms = (t1.saturating_sub(t0)) as f64 * tick_ms;
    let beats = (nodes as f64) * window.as_secs_f64() * 1000.0 / heartbeat_ms as f64;
    let summary = format!(
        "session: {nodes} nodes, store change -> all nodes assigned: p50 {:.1} ms, p99 {:.1} ms over {trials} changes; leader CPU {:.1} ms/s idle = {:.3} ms per heartbeat (upper bound: includes raft ticks), heartbeat {heartbeat_ms} ms",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        cpu_ms / window.as_secs_f64(),
        cpu_ms / beats
    );
    let line = json!({
        "bench": "session", "nodes": nodes, "managers": 3, "trials": trials,
        "assign_p50_ms": ms(percentile(&times, 0.5)), "assign_p99_ms": ms(percentile(&times, 0.99)),
        "leader_cpu_ms_per_s": cpu_ms / window.as_secs_f64(),
        "leader_cpu_ms_per_heartbeat": cpu_ms / beats, "heartbeat_ms": heartbeat_ms,
    });
    emit(out, &summary, &line)?;
    lab.down()
}
