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

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::probe::{
    cli_timeout, kill_if_same, run_timeout, workloads, Availability, Conn, Request, Response,
    TaskRow, TaskState, Workload,
};
use crate::{Lab, LabError};
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

fn proc_cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the comm.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
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
    let t0 = proc_cpu_ticks(pid).ok_or_else(|| LabError::Bench("cannot read /proc stat".into()))?;
    std::thread::sleep(window);
    let t1 = proc_cpu_ticks(pid).ok_or_else(|| LabError::Bench("cannot read /proc stat".into()))?;
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

// ---- gossip benchmarks (issue: membership) ----

async fn gossip_keys(socket: &Path, table: &str) -> Option<Vec<String>> {
    let mut c = Conn::open(socket).await.ok()?;
    match c
        .call(Request::GossipTables {
            table: Some(table.to_string()),
        })
        .await
    {
        Ok(Response::Entries(e)) => Some(e.into_iter().map(|e| e.key).collect()),
        _ => None,
    }
}

async fn gossip_states(socket: &Path) -> Option<Vec<(String, String)>> {
    let mut c = Conn::open(socket).await.ok()?;
    match c.call(Request::GossipMembers).await {
        Ok(Response::Members(m)) => Some(
            m.into_iter()
                .map(|v| (v.info.node_id, format!("{:?}", v.state)))
                .collect(),
        ),
        _ => None,
    }
}

async fn gossip_metrics(socket: &Path) -> Option<Value> {
    let mut c = Conn::open(socket).await.ok()?;
    match c.call(Request::GossipMetrics).await {
        Ok(Response::Metrics(m)) => Some(m),
        _ => None,
    }
}

async fn put(socket: &Path, table: &str, key: &str, value: &str) -> Result<(), LabError> {
    let mut c = Conn::open(socket).await.map_err(LabError::Bench)?;
    c.call(Request::GossipPut {
        table: table.into(),
        key: key.into(),
        value: value.into(),
    })
    .await
    .map(|_| ())
    .map_err(LabError::Bench)
}

/// A lab of `n` hosts in one swarm with gossip converged (production
/// `lan` gossip timings).
fn gossip_lab(n: usize) -> Result<(Lab, tokio::runtime::Runtime, Vec<PathBuf>), LabError> {
    let lab = Lab::builder()
        .nodes(n)
        .daemon_config("heartbeat_ms = 1000\n")
        .start()?;
    lab.init_swarm(3)?;
    let rt = runtime()?;
    let sockets: Vec<PathBuf> = (1..=n)
        .map(|h| lab.host(h).map(|h| h.socket))
        .collect::<Result<_, _>>()?;
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut all = true;
            for s in &sockets {
                let alive = gossip_states(s)
                    .await
                    .map(|m| m.iter().filter(|(_, st)| st == "Alive").count())
                    .unwrap_or(0);
                all &= alive == n;
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LabError::Bench("gossip did not converge in 60 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })?;
    Ok((lab, rt, sockets))
}

/// Wait until `pred(keys)` holds on every socket; the time of the last.
async fn until_all(
    sockets: &[PathBuf],
    table: &str,
    limit: Duration,
    pred: impl Fn(&[String]) -> bool + Clone + Send + 'static,
) -> Result<Duration, LabError> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in sockets {
        let s = s.clone();
        let table = table.to_string();
        let pred = pred.clone();
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < limit {
                if let Some(k) = gossip_keys(&s, &table).await {
                    if pred(&k) {
                        return Some(start.elapsed());
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            None
        }));
    }
    let mut worst = Duration::ZERO;
    for t in tasks {
        let d = t
            .await
            .map_err(|e| LabError::Bench(e.to_string()))?
            .ok_or_else(|| LabError::Bench(format!("not everywhere within {limit:?}")))?;
        worst = worst.max(d);
    }
    Ok(worst)
}

/// `bench propagation`: an entry written on one host -> in every other
/// host's table, 50 entries.
pub fn propagation(nodes: usize, entries: usize, out: Option<&Path>) -> Result<(), LabError> {
    let (lab, rt, sockets) = gossip_lab(nodes)?;
    let mut times = Vec::new();
    for i in 0..entries {
        let writer = i % nodes;
        let key = format!("e{i}");
        let others: Vec<PathBuf> = sockets
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != writer)
            .map(|(_, s)| s.clone())
            .collect();
        let took = rt.block_on(async {
            let k = key.clone();
            let wait = until_all(&others, "bench", Duration::from_secs(10), move |keys| {
                keys.contains(&k)
            });
            let (_, r) = tokio::join!(put(&sockets[writer], "bench", &key, "x"), wait);
            r
        })?;
        times.push(took);
    }
    times.sort_unstable();
    let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
    let summary = format!(
        "propagation: {nodes} hosts, {entries} entries: written on one host -> in every other host's table p50 {:.1} ms, p99 {:.1} ms (Serf 0.8, same lab: user event p50 370 ms, p99 560 ms)",
        ms(p50),
        ms(p99)
    );
    let line = json!({"bench": "propagation", "nodes": nodes, "entries": entries,
        "p50_ms": ms(p50), "p99_ms": ms(p99), "peer": "serf 0.8: p50 370 ms, p99 560 ms"});
    emit(out, &summary, &line)?;
    lab.down()
}

/// `bench failure`: kill -9 a host -> its entries gone from every other
/// host; then false positives while one host is SIGSTOPped for 1 s bursts.
pub fn failure(nodes: usize, out: Option<&Path>) -> Result<(), LabError> {
    let (lab, rt, sockets) = gossip_lab(nodes)?;
    let victim = nodes; // a worker
    rt.block_on(put(&sockets[victim - 1], "bench", "victim", "x"))?;
    let others: Vec<PathBuf> = sockets[..victim - 1].to_vec();
    rt.block_on(until_all(&others, "bench", Duration::from_secs(10), |k| {
        k.iter().any(|x| x == "victim")
    }))?;
    let killed = Instant::now();
    lab.kill(victim)?;
    rt.block_on(until_all(&others, "bench", Duration::from_secs(30), |k| {
        !k.iter().any(|x| x == "victim")
    }))?;
    let gone = killed.elapsed();
    lab.restart(victim)?;
    // False positives: pause a host for 1 s, 5 times, and watch every
    // other host's view of it.
    let starved = nodes - 1;
    let starved_id = {
        let socket = lab.host(starved)?.socket;
        rt.block_on(async {
            let mut c = Conn::open(&socket).await.map_err(LabError::Bench)?;
            match c.call(Request::Info).await {
                Ok(Response::Info(i)) => Ok(i.node_id),
                _ => Err(LabError::Bench("no info".into())),
            }
        })?
    };
    std::thread::sleep(Duration::from_secs(5));
    let mut false_positives = 0;
    for _ in 0..5 {
        lab.pause(starved)?;
        let pause_start = Instant::now();
        let mut seen_down = false;
        while pause_start.elapsed() < Duration::from_secs(3) {
            if pause_start.elapsed() >= Duration::from_secs(1)
                && lab.daemon_state(starved)? == crate::DaemonState::Paused
            {
                lab.resume(starved)?;
            }
            for (j, s) in sockets.iter().enumerate() {
                if j + 1 == starved {
                    continue;
                }
                if let Some(m) = rt.block_on(gossip_states(s)) {
                    seen_down |= m.iter().any(|(id, st)| *id == starved_id && st == "Down");
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if lab.daemon_state(starved)? == crate::DaemonState::Paused {
            lab.resume(starved)?;
        }
        false_positives += usize::from(seen_down);
        std::thread::sleep(Duration::from_secs(2));
    }
    let summary = format!(
        "failure: {nodes} hosts: kill -9 -> entries gone from every other host in {:.0} ms; false positives during 5 x 1 s SIGSTOP bursts: {false_positives} (Serf 0.8, same lab: member-failed everywhere 8.2 s)",
        ms(gone)
    );
    let line = json!({"bench": "failure", "nodes": nodes, "gone_everywhere_ms": ms(gone),
        "false_positives": false_positives, "stop_bursts": 5, "peer": "serf 0.8: 8.2 s"});
    emit(out, &summary, &line)?;
    lab.down()
}

fn bytes_sent(m: &Value) -> u64 {
    m["udp_bytes_sent"].as_u64().unwrap_or(0) + m["tcp_bytes_sent"].as_u64().unwrap_or(0)
}

async fn total_sent(sockets: &[PathBuf]) -> u64 {
    let mut sum = 0;
    for s in sockets {
        sum += gossip_metrics(s).await.map(|m| bytes_sent(&m)).unwrap_or(0);
    }
    sum
}

/// `bench gossip-bandwidth`: idle bytes/s per node, empty and with 10,000
/// endpoint-like entries.
pub fn bandwidth(nodes: usize, out: Option<&Path>) -> Result<(), LabError> {
    bandwidth_with(nodes, 10_000, Duration::from_secs(20), out)
}

/// `bench gossip-bandwidth` with `entries` loaded entries and a measuring
/// `window` (the quick report uses fewer and shorter).
pub fn bandwidth_with(
    nodes: usize,
    entries: usize,
    window: Duration,
    out: Option<&Path>,
) -> Result<(), LabError> {
    let (lab, rt, sockets) = gossip_lab(nodes)?;
    let measure = |rt: &tokio::runtime::Runtime| {
        let a = rt.block_on(total_sent(&sockets));
        std::thread::sleep(window);
        let b = rt.block_on(total_sent(&sockets));
        (b.saturating_sub(a)) as f64 / window.as_secs_f64() / nodes as f64
    };
    let idle = measure(&rt);
    let per_host = entries / nodes;
    rt.block_on(async {
        for (h, s) in sockets.iter().enumerate() {
            for i in 0..per_host {
                put(
                    s,
                    "ep/bench",
                    &format!("{h:02}-{i:05}-0123456789abcdef0123456789abcdef"),
                    "10.0.0.1/aa:bb:cc:dd:ee:ff/10.77.0.1",
                )
                .await?;
            }
        }
        Ok::<(), LabError>(())
    })?;
    rt.block_on(until_all(
        &sockets,
        "ep/bench",
        Duration::from_secs(120),
        move |k| k.len() >= per_host * nodes,
    ))?;
    std::thread::sleep(Duration::from_secs(5));
    let loaded = measure(&rt);
    let summary = format!(
        "gossip-bandwidth: {nodes} hosts: idle {:.0} B/s per node; with {} entries {:.0} B/s per node (target <= 1 kB/s; Serf 0.8 idle 350 B/s)",
        idle,
        per_host * nodes,
        loaded
    );
    let line = json!({"bench": "gossip-bandwidth", "nodes": nodes, "idle_bytes_per_node_per_s": idle.round(),
        "entries": per_host * nodes, "loaded_bytes_per_node_per_s": loaded.round(), "peer": "serf 0.8 idle: 350 B/s"});
    emit(out, &summary, &line)?;
    lab.down()
}

/// `bench sim`: the in-process SWIM simulation.
pub fn sim(members: usize, seed: u64, out: Option<&Path>) -> Result<(), LabError> {
    let r = shoal_membership::sim::run_sim(members, 0.01, seed);
    let d = |x: Option<Duration>| x.map(ms);
    let summary = format!(
        "sim: {members} members, 1% loss, seed {seed}: entry at 99.99% after {:?} ms (all: {:?} ms, reached {}), crash detected by all after {:?} ms, false positives {}, idle {:.0} B/s per member",
        d(r.propagation_9999), d(r.propagation_all), r.reached, d(r.failure_detection_all), r.false_positives, r.idle_bytes_per_member_per_sec
    );
    let line = json!({"bench": "sim", "report": serde_json::to_value(&r).unwrap_or(Value::Null)});
    emit(out, &summary, &line)
}

/// `bench reconcile`: program `n` remote endpoints (FDB + neighbour each)
/// into one overlay network namespace and remove them, inside a lab host
/// (the netdriver works in the caller's network namespace).
pub fn reconcile(n: usize, out: Option<&Path>) -> Result<(), LabError> {
    let lab = Lab::builder().nodes(1).start()?;
    let host = lab.host(1)?;
    let run_dir = host.run_dir.join("bench-reconcile");
    let ns = PathBuf::from("/run/netns").join(&host.ns);
    let report = std::thread::spawn(move || -> Result<shoal_netdriver::BenchReport, String> {
        let f = std::fs::File::open(&ns).map_err(|e| format!("{}: {e}", ns.display()))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(shoal_netdriver::bench_reconcile(&run_dir, n))
            .map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| LabError::Bench("benchmark thread panicked".into()))?
    .map_err(LabError::Bench)?;
    let summary = format!(
        "reconcile: {n} remote endpoints ({} FDB + neighbour entries): add {:.0} entries/s ({:.3} s), delete {:.0} entries/s ({:.3} s) (target >= 80,000/s; one `bridge`/`ip` process per entry: ~800/s)",
        report.entries, report.add_per_sec, report.add_secs, report.del_per_sec, report.del_secs
    );
    let line = json!({"bench": "reconcile", "endpoints": n, "entries": report.entries,
        "add_per_sec": report.add_per_sec.round(), "del_per_sec": report.del_per_sec.round(),
        "add_secs": report.add_secs, "del_secs": report.del_secs, "peer": "shell driver (ip/bridge per entry): ~800/s"});
    emit(out, &summary, &line)?;
    lab.down()
}

// ---- overlay data path: `bench overlay`, and the TCP sink/source it runs ----

/// 64-bit FNV-1a, to check bytes arrived intact without a crypto hash.
#[derive(Debug, Clone, Copy)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    /// Folds `bytes` in.
    pub fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The digest so far.
    pub fn digest(&self) -> u64 {
        self.0
    }
}

/// What the sink or the source reports (one JSON line on stdout).
fn transfer_json(bytes: u64, secs: f64, hash: Option<u64>) -> Value {
    json!({"bytes": bytes, "secs": secs,
        "bytes_per_sec": if secs > 0.0 { (bytes as f64 / secs).round() } else { 0.0 },
        "fnv64": hash.map(|h| format!("{h:016x}"))})
}

/// `shoal-lab tcp-sink`: accepts one connection on `listen`, reads until
/// EOF and prints `{"bytes", "secs", "bytes_per_sec", "fnv64"}`. Gives up
/// (exit 2) when nothing has finished within `timeout`.
pub fn tcp_sink(listen: &str, hash: bool, timeout: Duration) -> Result<Value, LabError> {
    use std::io::Read;
    let io = |what: &str, e| LabError::io(format!("tcp-sink {listen}: {what}"), e);
    let l = std::net::TcpListener::bind(listen).map_err(|e| io("bind", e))?;
    // Readiness for whoever waits on us: a line on stderr.
    eprintln!("tcp-sink listening on {listen}");
    std::thread::spawn(move || {
        std::thread::sleep(timeout);
        eprintln!("tcp-sink: no complete transfer within {timeout:?}");
        std::process::exit(2);
    });
    let (mut s, _) = l.accept().map_err(|e| io("accept", e))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let mut h = Fnv64::default();
    let mut start = None;
    loop {
        let n = s.read(&mut buf).map_err(|e| io("read", e))?;
        if n == 0 {
            break;
        }
        start.get_or_insert_with(Instant::now);
        total += n as u64;
        if hash {
            h.update(&buf[..n]);
        }
    }
    let secs = start.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
    Ok(transfer_json(total, secs, hash.then(|| h.digest())))
}

/// `shoal-lab tcp-source`: connects to `to` (retrying for 10 s), sends a
/// fixed pseudo-random pattern for `seconds` or `bytes` (whichever is
/// given; both: whichever ends first), closes, and prints the same JSON as
/// the sink (bytes/s as written into the socket).
pub fn tcp_source(
    to: &str,
    seconds: Option<f64>,
    bytes: Option<u64>,
    hash: bool,
) -> Result<Value, LabError> {
    use std::io::Write;
    let io = |what: &str, e| LabError::io(format!("tcp-source {to}: {what}"), e);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match std::net::TcpStream::connect(to) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => return Err(io("connect", e)),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let mut pattern = vec![0u8; 128 * 1024];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for b in pattern.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let limit = seconds.map(Duration::from_secs_f64);
    let mut h = Fnv64::default();
    let mut total = 0u64;
    let start = Instant::now();
    loop {
        if limit.is_some_and(|l| start.elapsed() >= l) {
            break;
        }
        let want = match bytes {
            Some(b) if total >= b => break,
            Some(b) => usize::try_from(b - total)
                .unwrap_or(usize::MAX)
                .min(pattern.len()),
            None => pattern.len(),
        };
        s.write_all(&pattern[..want]).map_err(|e| io("write", e))?;
        if hash {
            h.update(&pattern[..want]);
        }
        total += want as u64;
    }
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| io("shutdown", e))?;
    // Wait for the sink to close: everything was read.
    let mut sink = [0u8; 16];
    let _ = std::io::Read::read(&mut s, &mut sink);
    let secs = start.elapsed().as_secs_f64();
    Ok(transfer_json(total, secs, hash.then(|| h.digest())))
}

/// min/avg/max RTT (ms) and packet loss (%) from `ping -q` output.
pub fn parse_ping(out: &str) -> Option<(f64, f64, f64, f64)> {
    let loss = out
        .split(',')
        .find(|p| p.contains("packet loss"))?
        .split_whitespace()
        .next()?
        .trim_end_matches('%')
        .parse()
        .ok()?;
    let rtt = out.lines().find(|l| l.contains("min/avg/max"))?;
    let nums: Vec<f64> = rtt
        .split('=')
        .nth(1)?
        .split_whitespace()
        .next()?
        .split('/')
        .filter_map(|x| x.parse().ok())
        .collect();
    Some((*nums.first()?, *nums.get(1)?, *nums.get(2)?, loss))
}

/// A started two-host lab with one workload per host on an attachable
/// overlay: the lab, and per host (pid, overlay IP).
fn overlay_pair() -> Result<(Lab, [(u32, String); 2]), LabError> {
    let lab = Lab::builder()
        .nodes(2)
        .daemon_config("heartbeat_ms = 500\ngossip_profile = \"fast\"\n")
        .start()?;
    lab.init_swarm(1)?;
    let t = Duration::from_secs(10);
    cli_timeout(
        &lab,
        1,
        &[
            "network",
            "create",
            "--attachable",
            "--subnet",
            "10.0.9.0/24",
            "bench",
        ],
        t,
    )
    .map_err(|e| LabError::Bench(format!("network create: {e}")))?;
    let mut wl = Vec::new();
    for h in 1..=2 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match cli_timeout(
                &lab,
                h,
                &[
                    "run",
                    "--network",
                    "bench",
                    "--name",
                    "b",
                    "--",
                    "sleep",
                    "100000",
                ],
                t,
            ) {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(LabError::Bench(format!("shoal run on h{h}: {e}")))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
        let ps: Value = serde_json::from_str(
            &cli_timeout(&lab, h, &["--format", "json", "ps"], t).map_err(LabError::Bench)?,
        )
        .map_err(|e| LabError::Bench(format!("ps on h{h}: {e}")))?;
        let pid = ps[0]["pid"].as_u64().unwrap_or_default() as u32;
        let ip = ps[0]["endpoint"]["ip"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if pid == 0 || ip.is_empty() {
            return Err(LabError::Bench(format!("no workload in ps on h{h}: {ps}")));
        }
        wl.push((pid, ip));
    }
    let w2 = wl.pop().unwrap_or_default();
    let w1 = wl.pop().unwrap_or_default();
    Ok((lab, [w1, w2]))
}

/// argv prefix that enters workload `pid`'s network namespace (or none).
fn in_ns(pid: Option<u32>) -> Vec<std::ffi::OsString> {
    match pid {
        Some(p) => vec![
            "nsenter".into(),
            "-t".into(),
            p.to_string().into(),
            "-n".into(),
        ],
        None => Vec::new(),
    }
}

fn ping_stats(
    lab: &Lab,
    host: usize,
    pid: Option<u32>,
    to: &str,
    count: usize,
) -> Result<(f64, f64, f64, f64), LabError> {
    let mut argv = in_ns(pid);
    argv.extend(
        [
            "ping",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.1",
            "-W",
            "1",
            to,
        ]
        .iter()
        .map(std::ffi::OsString::from),
    );
    let limit = Duration::from_secs_f64(count as f64 * 0.1 + 10.0);
    let out = run_timeout(lab, host, &argv, limit)
        .map_err(|e| LabError::Bench(format!("ping {to} from h{host}: {e}")))?;
    parse_ping(&out).ok_or_else(|| LabError::Bench(format!("cannot parse ping output: {out}")))
}

/// Bytes/s from a `tcp-source` on `from` to a `tcp-sink` on `to_host`
/// listening on `addr` (each in a workload namespace when a pid is given).
fn throughput(
    lab: &Lab,
    lab_bin: &Path,
    (from, from_pid): (usize, Option<u32>),
    (to_host, to_pid): (usize, Option<u32>),
    addr: &str,
    seconds: f64,
) -> Result<f64, LabError> {
    let mut sink = in_ns(to_pid);
    sink.extend([
        lab_bin.as_os_str().to_owned(),
        "tcp-sink".into(),
        "--listen".into(),
        addr.into(),
    ]);
    let mut child = lab
        .command(to_host, &sink)?
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| LabError::io("starting tcp-sink".to_string(), e))?;
    let mut src = in_ns(from_pid);
    src.extend([
        lab_bin.as_os_str().to_owned(),
        "tcp-source".into(),
        "--to".into(),
        addr.into(),
        "--seconds".into(),
        seconds.to_string().into(),
    ]);
    let sent = run_timeout(lab, from, &src, Duration::from_secs_f64(seconds + 30.0));
    if let Err(e) = sent {
        let _ = child.kill();
        let _ = child.wait();
        return Err(LabError::Bench(format!("tcp-source to {addr}: {e}")));
    }
    let out = child
        .wait_with_output()
        .map_err(|e| LabError::io("waiting for tcp-sink".to_string(), e))?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        LabError::Bench(format!(
            "tcp-sink output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        ))
    })?;
    v["bytes_per_sec"]
        .as_f64()
        .ok_or_else(|| LabError::Bench(format!("tcp-sink: no bytes_per_sec in {v}")))
}

/// `bench overlay`: two hosts, one workload each on an attachable overlay;
/// ping RTT and TCP throughput workload -> workload over VXLAN, against the
/// same between the hosts' underlay addresses. `lab_bin` is the shoal-lab
/// binary (its `tcp-sink`/`tcp-source` run inside the namespaces).
pub fn overlay(
    seconds: f64,
    pings: usize,
    lab_bin: &Path,
    out: Option<&Path>,
) -> Result<(), LabError> {
    let (lab, [(pid1, ip1), (pid2, ip2)]) = overlay_pair()?;
    let _ = ip1;
    // The overlay is up once one ping gets through.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(ping_stats(&lab, 1, Some(pid1), &ip2, 1), Ok(p) if p.3 == 0.0) {
        if Instant::now() > deadline {
            return Err(LabError::Bench(
                "workloads cannot ping over the overlay in 30 s".into(),
            ));
        }
    }
    let under2 = lab.host(2)?.addr.to_string();
    let o = ping_stats(&lab, 1, Some(pid1), &ip2, pings)?;
    let u = ping_stats(&lab, 1, None, &under2, pings)?;
    let o_bps = throughput(
        &lab,
        lab_bin,
        (1, Some(pid1)),
        (2, Some(pid2)),
        &format!("{ip2}:5201"),
        seconds,
    )?;
    let u_bps = throughput(
        &lab,
        lab_bin,
        (1, None),
        (2, None),
        &format!("{under2}:5202"),
        seconds,
    )?;
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            (a / b * 1000.0).round() / 1000.0
        } else {
            0.0
        }
    };
    let summary = format!(
        "overlay: ping {pings} x 0.1 s: overlay min/avg/max {:.3}/{:.3}/{:.3} ms ({}% loss), underlay {:.3}/{:.3}/{:.3} ms (avg ratio {:.2}); TCP {seconds} s: overlay {:.0} Mbit/s, underlay {:.0} Mbit/s (ratio {:.2})",
        o.0, o.1, o.2, o.3, u.0, u.1, u.2, ratio(o.1, u.1),
        o_bps * 8.0 / 1e6, u_bps * 8.0 / 1e6, ratio(o_bps, u_bps)
    );
    let line = json!({"bench": "overlay", "hosts": 2, "pings": pings, "seconds": seconds,
        "overlay_rtt_ms": {"min": o.0, "avg": o.1, "max": o.2}, "overlay_ping_loss_pct": o.3,
        "underlay_rtt_ms": {"min": u.0, "avg": u.1, "max": u.2}, "underlay_ping_loss_pct": u.3,
        "rtt_avg_ratio": ratio(o.1, u.1),
        "overlay_bytes_per_sec": o_bps.round(), "underlay_bytes_per_sec": u_bps.round(),
        "throughput_ratio": ratio(o_bps, u_bps),
        "path": "workload netns -> veth -> br0 -> vx0 (VXLAN, UDP 4789) -> underlay veth/bridge -> peer"});
    emit(out, &summary, &line)?;
    lab.down()
}

// ---- services: `bench service`, the HTTP echo its tasks run, and the
// in-process HTTP client it measures with (also used by the chaos checks) ----

/// The body `http-echo` answers with: `SHOAL_TASK_NAME SHOAL_TASK_ID\n`
/// (the name says which slot answered, the id which incarnation of it).
fn echo_body() -> Vec<u8> {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| "?".into());
    format!("{} {}\n", var("SHOAL_TASK_NAME"), var("SHOAL_TASK_ID")).into_bytes()
}

/// `shoal-lab http-echo --port P`: a tiny HTTP/1.0 server for service
/// tasks. Every request (whatever its path) gets `200` with the task's
/// name and id, `Content-Length` and `Connection: close`; one thread per
/// connection. Runs until killed.
pub fn http_echo(port: u16) -> Result<(), LabError> {
    let listener = std::net::TcpListener::bind(("0.0.0.0", port))
        .map_err(|e| LabError::io(format!("http-echo: binding 0.0.0.0:{port}"), e))?;
    let body: Arc<[u8]> = echo_body().into();
    for conn in listener.incoming() {
        // A failed accept (e.g. the peer reset first) is that peer's problem.
        let Ok(stream) = conn else { continue };
        let body = body.clone();
        std::thread::spawn(move || {
            let _ = answer(stream, &body);
        });
    }
    Ok(())
}

/// `shoal-lab udp-echo --port P`: answers every datagram with the task's
/// name and id (the `http-echo` body). Runs until killed.
pub fn udp_echo(port: u16) -> Result<(), LabError> {
    let sock = std::net::UdpSocket::bind(("0.0.0.0", port))
        .map_err(|e| LabError::io(format!("udp-echo: binding 0.0.0.0:{port}"), e))?;
    let body = echo_body();
    let mut buf = [0u8; 2048];
    loop {
        // A bad datagram or a peer gone is that peer's problem.
        if let Ok((_, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&body, from);
        }
    }
}

/// Reads one request head (bounded) and writes the echo answer.
fn answer(mut s: std::net::TcpStream, body: &[u8]) -> std::io::Result<()> {
    use std::io::{Read, Write};
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let mut resp = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    resp.extend_from_slice(body);
    s.write_all(&resp)?;
    s.shutdown(std::net::Shutdown::Write)
}

/// The task and the answer of an echo body: (`web.3`, task id).
fn parse_echo(body: &str) -> Option<(String, String)> {
    let mut w = body.split_whitespace();
    Some((w.next()?.to_string(), w.next()?.to_string()))
}

/// Tasks of `service`, through `host`'s API.
async fn service_tasks(lab: &Lab, host: usize, service: &str) -> Result<Vec<TaskRow>, String> {
    let socket = lab.host(host).map_err(|e| e.to_string())?.socket;
    let mut c = Conn::open(&socket).await?;
    match c
        .call(Request::ServicePs {
            services: vec![service.to_string()],
        })
        .await?
    {
        Response::Tasks(t) => Ok(t),
        other => Err(format!("unexpected answer to service ps: {other:?}")),
    }
}

fn is_running(t: &TaskRow) -> bool {
    t.task.state == TaskState::Running && t.task.desired == TaskState::Running
}

/// Task workloads on every host: (host, workload).
async fn task_workloads(lab: &Lab) -> Vec<(usize, Workload)> {
    let mut all = Vec::new();
    for h in 1..=lab.len() {
        if let Ok(ws) = workloads(lab, h).await {
            all.extend(
                ws.into_iter()
                    .filter(|w| w.task.is_some() && w.pid != 0)
                    .map(|w| (h, w)),
            );
        }
    }
    all
}

/// Removes `services` (through `manager`) and makes sure their task
/// processes are gone: waits for the daemons to stop them, then SIGKILLs
/// the ones still there (a daemon's SIGTERM leaves its tasks running by
/// design, so a lab going down would leak them).
pub fn remove_services(lab: &Lab, manager: usize, services: &[&str]) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let before = rt.block_on(task_workloads(lab));
    let mut args = vec!["service", "rm"];
    args.extend_from_slice(services);
    let rm = cli_timeout(lab, manager, &args, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(20);
    while rm.is_ok() && Instant::now() < deadline && !rt.block_on(task_workloads(lab)).is_empty() {
        std::thread::sleep(Duration::from_millis(200));
    }
    for (_, w) in &before {
        kill_if_same(w.pid, &w.argv);
    }
    rm.map(|_| ())
}

/// Daemon timings of the service bench (those of the overlay bench and
/// the chaos lab: fast heartbeats and gossip).
const SERVICE_DAEMON_CONFIG: &str = "heartbeat_ms = 500\ngossip_profile = \"fast\"\n";

/// What a closed loop of clients did.
#[derive(Debug, Clone, Copy)]
struct Load {
    ok: u64,
    errors: u64,
    rate: f64,
}

/// `clients` threads in namespace `ns`, each doing `GET /` to `to` over a
/// fresh connection back to back for `dur`.
fn closed_loop(ns: &Path, to: std::net::SocketAddr, clients: usize, dur: Duration) -> Load {
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let counts: Vec<(u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let stop = &stop;
                s.spawn(move || {
                    if enter_netns(ns).is_err() {
                        return (0, 1);
                    }
                    let (mut ok, mut err) = (0u64, 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        match http_get(to, Duration::from_secs(2)) {
                            Ok(_) => ok += 1,
                            Err(_) => err += 1,
                        }
                    }
                    (ok, err)
                })
            })
            .collect();
        std::thread::sleep(dur);
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((0, 1)))
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let ok: u64 = counts.iter().map(|c| c.0).sum();
    Load {
        ok,
        errors: counts.iter().map(|c| c.1).sum(),
        rate: ok as f64 / secs,
    }
}

fn bench_err(what: &str) -> impl Fn(String) -> LabError + '_ {
    move |e| LabError::Bench(format!("{what}: {e}"))
}

/// Polls `f` every `every` until it yields, or fails after `limit`.
fn poll<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, LabError> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(LabError::Bench(format!("{what}: not within {limit:?}")));
        }
        std::thread::sleep(every);
    }
}

/// `bench service`: 5 hosts (1 manager), an overlay `app`, a service of
/// `replicas` `http-echo` tasks publishing 8080:80. Measures create ->
/// every task answering through the VIP (from inside a task) and -> the
/// routing mesh answering on every host; SIGKILL of a task's process ->
/// its replacement answering through the mesh (`kills` times); and
/// requests/s over fresh connections through the mesh, through the VIP and
/// straight to a task's overlay address. `lab_bin` is this program (the
/// tasks run its `http-echo`).
pub fn service(
    replicas: usize,
    kills: usize,
    seconds: f64,
    clients: usize,
    lab_bin: &Path,
    out: Option<&Path>,
) -> Result<(), LabError> {
    let nodes = 5;
    let lab = Lab::builder()
        .nodes(nodes)
        .daemon_config(SERVICE_DAEMON_CONFIG)
        .start()?;
    lab.init_swarm(1)?;
    let r = service_in(&lab, nodes, replicas, kills, seconds, clients, lab_bin);
    let cleaned = remove_services(&lab, 1, &["web"]);
    let line = r?;
    cleaned.map_err(bench_err("removing the service"))?;
    let summary = format!(
        "service: {nodes} hosts, {replicas} replicas: create -> all {replicas} running {} ms, all {replicas} answering through the VIP {} ms, mesh answering on every host {} ms; task SIGKILL -> replacement answering through the mesh: median {} ms {}; requests/s ({clients} clients, fresh connections): mesh {}, VIP {}, direct {} (mesh/direct {})",
        line["all_running_ms"], line["vip_all_tasks_ms"], line["mesh_all_hosts_ms"],
        line["replace_median_ms"], line["replace_ms"], line["mesh_rps"], line["vip_rps"],
        line["direct_rps"], line["mesh_direct_ratio"]
    );
    emit(out, &summary, &line)?;
    lab.down()
}

fn service_in(
    lab: &Lab,
    nodes: usize,
    replicas: usize,
    kills: usize,
    seconds: f64,
    clients: usize,
    lab_bin: &Path,
) -> Result<Value, LabError> {
    let t = Duration::from_secs(10);
    cli_timeout(lab, 1, &["network", "create", "-d", "overlay", "app"], t)
        .map_err(bench_err("network create app"))?;
    poll(
        "gossip running on every host",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            (1..=nodes)
                .all(|h| cli_timeout(lab, h, &["gossip", "members"], t).is_ok())
                .then_some(())
        },
    )?;
    let rt = runtime()?;
    let bin = lab_bin.to_string_lossy().into_owned();
    let n = replicas.to_string();
    let mesh_addrs: Vec<std::net::SocketAddr> = (1..=nodes)
        .map(|h| {
            lab.host(h)
                .map(|s| std::net::SocketAddr::from((s.addr, 8080)))
        })
        .collect::<Result<_, _>>()?;
    let quick = Duration::from_millis(500);

    // 1. create -> running, VIP and mesh answering.
    let t0 = Instant::now();
    cli_timeout(
        lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            &n,
            "--network",
            "app",
            "-p",
            "8080:80",
            "--",
            &bin,
            "http-echo",
            "--port",
            "80",
        ],
        t,
    )
    .map_err(bench_err("service create"))?;
    let create_ack = t0.elapsed();
    let limit = Duration::from_secs(120);
    let (all_running, vip_all, mesh_each) = std::thread::scope(|s| {
        // Each host's published port, asked from the next host.
        let mesh: Vec<_> = (1..=nodes)
            .map(|h| {
                let from = host_netns(lab, h % nodes + 1);
                let to = mesh_addrs[h - 1];
                s.spawn(move || -> Result<Duration, String> {
                    enter_netns(&from.map_err(|e| e.to_string())?)?;
                    while t0.elapsed() < limit {
                        if http_get(to, quick).is_ok_and(|b| b.starts_with("web.")) {
                            return Ok(t0.elapsed());
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(format!("{to} did not answer within {limit:?}"))
                })
            })
            .collect();
        let running = s.spawn(|| -> Result<Duration, String> {
            while t0.elapsed() < limit {
                let tasks = rt
                    .block_on(service_tasks(lab, 1, "web"))
                    .unwrap_or_default();
                if tasks.iter().filter(|t| is_running(t)).count() == replicas {
                    return Ok(t0.elapsed());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(format!("{replicas} tasks not running within {limit:?}"))
        });
        // The VIP, from inside the first task that runs.
        let vip = (|| -> Result<Duration, String> {
            let svc = match rt.block_on(async {
                let mut c = Conn::open(&lab.host(1).map_err(|e| e.to_string())?.socket).await?;
                c.call(Request::ServiceList {
                    services: vec!["web".into()],
                })
                .await
            })? {
                Response::Services(s) => s,
                other => return Err(format!("service inspect: {other:?}")),
            };
            let svc = svc.first().ok_or("service web not listed")?;
            let app = svc
                .service
                .spec
                .networks
                .first()
                .ok_or("service has no network")?;
            let vip = *svc
                .service
                .vips
                .get(app)
                .ok_or("service has no VIP on app")?;
            let ns = loop {
                if t0.elapsed() > limit {
                    return Err("no task workload appeared".into());
                }
                if let Some((_, w)) = rt.block_on(task_workloads(lab)).into_iter().next() {
                    break w.netns;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            in_netns(&ns, || {
                let mut names = BTreeSet::new();
                while t0.elapsed() < limit {
                    if let Ok((name, _)) = http_get((vip, 80).into(), quick)
                        .map(|b| parse_echo(&b).unwrap_or_default())
                    {
                        names.insert(name);
                        if names.len() >= replicas {
                            return Ok(t0.elapsed());
                        }
                    } else {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                Err(format!(
                    "{} of {replicas} tasks answered through the VIP {vip} within {limit:?}",
                    names.len()
                ))
            })?
        })();
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<Duration, String>>| {
            h.join().unwrap_or_else(|_| Err("thread panicked".into()))
        };
        let mesh: Vec<Result<Duration, String>> = mesh.into_iter().map(join).collect();
        (join(running), vip, mesh)
    });
    let all_running = all_running.map_err(bench_err("tasks running"))?;
    let vip_all = vip_all.map_err(bench_err("VIP"))?;
    let mesh_each: Vec<Duration> = mesh_each
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(bench_err("routing mesh"))?;
    let mesh_all = mesh_each.iter().copied().max().unwrap_or_default();
    println!(
        "service: create acknowledged {:.0} ms, {replicas} running {:.0} ms, all through VIP {:.0} ms, mesh on every host {:.0} ms",
        ms(create_ack), ms(all_running), ms(vip_all), ms(mesh_all)
    );

    // 2. SIGKILL a task's process -> a new task answers through the mesh.
    let client_ns = host_netns(lab, 1)?;
    let mut replace = Vec::new();
    for trial in 0..kills {
        let tasks = rt
            .block_on(service_tasks(lab, 1, "web"))
            .map_err(LabError::Bench)?;
        let known: BTreeSet<String> = tasks.iter().map(|t| t.task.id.clone()).collect();
        let victims = rt.block_on(task_workloads(lab));
        // A different host each trial, workers first.
        let (vh, victim) = victims
            .iter()
            .find(|(h, _)| *h == 2 + trial % (nodes - 1))
            .or_else(|| victims.first())
            .cloned()
            .ok_or_else(|| LabError::Bench("no task workload to kill".into()))?;
        let killed = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .map_err(|e| LabError::Bench(format!("kill {} on h{vh}: {e}", victim.pid)))?;
        let took = in_netns(&client_ns, || {
            let mut i = 0;
            while killed.elapsed() < limit {
                i += 1;
                let to = mesh_addrs[i % nodes];
                if let Ok(Some((_, id))) = http_get(to, quick).map(|b| parse_echo(&b)) {
                    if !known.contains(&id) {
                        return Ok(killed.elapsed());
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(format!("no new task answered within {limit:?}"))
        })
        .and_then(|r| r)
        .map_err(bench_err("replacement"))?;
        println!(
            "service: kill trial {}: {} on h{vh} -> new task answering through the mesh in {:.0} ms",
            trial + 1,
            victim.name,
            ms(took)
        );
        replace.push(took);
        poll(
            "back to full strength",
            limit,
            Duration::from_millis(50),
            || {
                let t = rt
                    .block_on(service_tasks(lab, 1, "web"))
                    .unwrap_or_default();
                (t.iter().filter(|t| is_running(t)).count() == replicas).then_some(())
            },
        )?;
    }
    let mut sorted = replace.clone();
    sorted.sort_unstable();

    // 3. Requests/s: clients in one host's namespace -> another host's
    // published port (mesh); clients in a task on the first host -> the
    // VIP, and -> a task on the second host's overlay address (direct).
    let ws = rt.block_on(task_workloads(lab));
    let app = rt
        .block_on(service_tasks(lab, 1, "web"))
        .map_err(LabError::Bench)?
        .first()
        .and_then(|t| {
            // The app network is the task's non-ingress endpoint.
            ws.iter()
                .find(|(_, w)| w.task.as_deref() == Some(&t.task.id))
                .and_then(|(_, w)| w.attachments.iter().find(|a| !a.network.ingress))
                .map(|a| a.network.id.clone())
        })
        .ok_or_else(|| LabError::Bench("cannot find the app network of the tasks".into()))?;
    let (ch, client) = ws
        .iter()
        .find(|(h, _)| *h == 1)
        .or_else(|| ws.first())
        .cloned()
        .ok_or_else(|| LabError::Bench("no task workload".into()))?;
    let (th, target) = ws
        .iter()
        .find(|(h, _)| *h != ch)
        .cloned()
        .ok_or_else(|| LabError::Bench("no task on a second host".into()))?;
    let target_ip = target
        .ip_on(&app)
        .ok_or_else(|| LabError::Bench(format!("task {} has no address on app", target.name)))?;
    let vip = rt
        .block_on(async {
            let mut c = Conn::open(&lab.host(1)?.socket)
                .await
                .map_err(LabError::Bench)?;
            c.call(Request::ServiceList {
                services: vec!["web".into()],
            })
            .await
            .map_err(LabError::Bench)
        })
        .ok()
        .and_then(|r| match r {
            Response::Services(s) => s.first().and_then(|s| s.service.vips.get(&app).copied()),
            _ => None,
        })
        .ok_or_else(|| LabError::Bench("no VIP on app".into()))?;
    let dur = Duration::from_secs_f64(seconds);
    let mesh = closed_loop(&host_netns(lab, ch)?, mesh_addrs[th - 1], clients, dur);
    let via_vip = closed_loop(&client.netns, (vip, 80).into(), clients, dur);
    let direct = closed_loop(&client.netns, (target_ip, 80).into(), clients, dur);
    let ratio = if direct.rate > 0.0 {
        (mesh.rate / direct.rate * 1000.0).round() / 1000.0
    } else {
        0.0
    };
    Ok(json!({
        "bench": "service", "nodes": nodes, "managers": 1, "replicas": replicas,
        "create_ack_ms": ms(create_ack), "all_running_ms": ms(all_running),
        "vip_all_tasks_ms": ms(vip_all), "mesh_all_hosts_ms": ms(mesh_all),
        "mesh_per_host_ms": mesh_each.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        "kills": kills, "replace_ms": replace.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        "replace_median_ms": ms(percentile(&sorted, 0.5)),
        "clients": clients, "seconds": seconds,
        "mesh_rps": mesh.rate.round(), "mesh_errors": mesh.errors,
        "vip_rps": via_vip.rate.round(), "vip_errors": via_vip.errors,
        "direct_rps": direct.rate.round(), "direct_errors": direct.errors,
        "mesh_direct_ratio": ratio,
        "requests": {"mesh": mesh.ok, "vip": via_vip.ok, "direct": direct.ok},
        "rps_paths": {
            "mesh": format!("h{ch} namespace -> h{th} underlay address:8080 (nftables DNAT -> ingress sandbox -> any task)"),
            "vip": format!("task {} on h{ch} -> VIP {vip}:80 on app (any task)", client.name),
            "direct": format!("task {} on h{ch} -> task {} on h{th} at {target_ip}:80 over app", client.name, target.name),
        },
        "server": "shoal-lab http-echo (thread per connection, HTTP/1.0, Connection: close)",
    }))
}

// ---- `bench all`: every benchmark, one report ----

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
    fn ping_summary_parses() {
        let out = "--- 10.0.9.3 ping statistics ---\n50 packets transmitted, 50 received, 0% packet loss, time 4904ms\nrtt min/avg/max/mdev = 0.041/0.078/0.120/0.014 ms\n";
        assert_eq!(parse_ping(out), Some((0.041, 0.078, 0.120, 0.0)));
        assert_eq!(parse_ping("garbage"), None);
        let lossy = "5 packets transmitted, 3 received, 40% packet loss, time 4ms\nrtt min/avg/max/mdev = 1/2/3/0 ms";
        assert_eq!(parse_ping(lossy), Some((1.0, 2.0, 3.0, 40.0)));
    }

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

    #[test]
    fn echo_bodies_parse() {
        assert_eq!(
            parse_echo("web.3 abc123\n"),
            Some(("web.3".to_string(), "abc123".to_string()))
        );
        assert_eq!(parse_echo("web.3"), None);
    }

    #[test]
    fn http_echo_answers_http_get() {
        // The server thread runs until the test process ends.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let _ = answer(c, b"web.1 t1\n");
            }
        });
        let body = http_get(addr, Duration::from_secs(2)).unwrap();
        assert_eq!(body, "web.1 t1");
    }

    #[test]
    fn fnv_is_stable() {
        let mut h = Fnv64::default();
        h.update(b"a");
        assert_eq!(h.digest(), 0xaf63_dc4c_8601_ec8c);
    }
}
