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

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal::api::{self, Request, RequestFrame, Response, ResponseFrame, PROTOCOL_VERSION};
use shoal_raft_store::state::Availability;
use tokio::net::UnixStream;

use crate::{Lab, LabError};

/// A connection to one daemon's local API.
struct Conn {
    stream: UnixStream,
}

impl Conn {
    async fn open(socket: &Path) -> Result<Conn, String> {
        UnixStream::connect(socket)
            .await
            .map(|stream| Conn { stream })
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))
    }

    async fn call(&mut self, request: Request) -> Result<Response, String> {
        let frame = RequestFrame {
            version: PROTOCOL_VERSION,
            request,
        };
        api::write_frame(&mut self.stream, &frame)
            .await
            .map_err(|e| e.to_string())?;
        let resp: ResponseFrame = api::read_frame(&mut self.stream)
            .await
            .map_err(|e| e.to_string())?;
        resp.result.map_err(|e| e.message)
    }
}

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
    let (lab, rt, sockets) = gossip_lab(nodes)?;
    let window = Duration::from_secs(20);
    let measure = |rt: &tokio::runtime::Runtime| {
        let a = rt.block_on(total_sent(&sockets));
        std::thread::sleep(window);
        let b = rt.block_on(total_sent(&sockets));
        (b.saturating_sub(a)) as f64 / window.as_secs_f64() / nodes as f64
    };
    let idle = measure(&rt);
    let per_host = 10_000 / nodes;
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
