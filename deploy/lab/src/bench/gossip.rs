//! The gossip (membership) benchmarks: `bench propagation` (an entry
//! written on one host -> in every other host's table), `bench failure`
//! (SIGKILL -> a host's entries gone everywhere; false positives while a
//! host is SIGSTOPped), `bench gossip-bandwidth` (idle and loaded bytes/s
//! per node) and `bench sim` (the in-process SWIM simulation of
//! `shoal-membership`, no lab).
//!
//! Data flow: `gossip_lab` starts a swarm and waits until every node sees
//! every other alive; writers and pollers then use the daemons' gossip API
//! through [`Conn`]; each result goes out as one JSON line through
//! `super::emit`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{emit, ms, percentile, runtime};
use crate::probe::{Conn, Request, Response};
use crate::{Lab, LabError};

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
