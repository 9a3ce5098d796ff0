//! The overlay benchmarks: `bench reconcile` (programming remote endpoints
//! into an overlay namespace with the netdriver, in one lab host) and
//! `bench overlay` (ping RTT and TCP throughput workload -> workload over
//! VXLAN and over an encrypted overlay, against the same over the
//! underlay, with the daemons' CPU while encrypting), with the `tcp-sink` and
//! `tcp-source` programs it runs inside the namespaces.
//!
//! Data flow: `overlay_pair` starts two hosts with one workload per network each
//! through the CLI ([`cli_timeout`]); `ping` and the sink/source run in the
//! hosts' or workloads' namespaces ([`run_timeout`], [`Lab::command`]) and
//! report on stdout; the figures go out as one JSON line through
//! `super::emit`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::emit;
use crate::probe::{cli_timeout, run_timeout};
use crate::{Lab, LabError};

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

/// One workload per host on one network: (pid, overlay IP) on h1 and h2.
type Pair = [(u32, String); 2];

/// A started two-host lab with one workload per host on each of two
/// attachable overlays, `bench` (VXLAN) and `sbench` (`--opt encrypted`):
/// the lab, and per network per host (pid, overlay IP).
fn overlay_pair() -> Result<(Lab, [Pair; 2]), LabError> {
    let lab = Lab::builder()
        .nodes(2)
        .daemon_config("heartbeat_ms = 500\ngossip_profile = \"fast\"\n")
        .start()?;
    lab.init_swarm(1)?;
    let t = Duration::from_secs(10);
    for (name, subnet, opt) in [
        ("bench", "10.0.9.0/24", None),
        ("sbench", "10.0.10.0/24", Some("encrypted")),
    ] {
        let mut argv = vec!["network", "create", "--attachable", "--subnet", subnet];
        if let Some(o) = opt {
            argv.extend(["--opt", o]);
        }
        argv.push(name);
        cli_timeout(&lab, 1, &argv, t)
            .map_err(|e| LabError::Bench(format!("network create {name}: {e}")))?;
    }
    let mut nets = Vec::new();
    for net in ["bench", "sbench"] {
        let mut wl = Vec::new();
        for h in 1..=2 {
            wl.push(workload(&lab, h, net)?);
        }
        let w2 = wl.pop().unwrap_or_default();
        let w1 = wl.pop().unwrap_or_default();
        nets.push([w1, w2]);
    }
    let s = nets.pop().unwrap_or_default();
    let p = nets.pop().unwrap_or_default();
    Ok((lab, [p, s]))
}

/// `shoal run` a sleeper named after `net` on host `h`: (pid, overlay IP).
fn workload(lab: &Lab, h: usize, net: &str) -> Result<(u32, String), LabError> {
    let t = Duration::from_secs(10);
    let deadline = Instant::now() + Duration::from_secs(60);
    let argv = [
        "run",
        "--runtime",
        "host",
        "--network",
        net,
        "--name",
        net,
        "--",
        "sleep",
        "100000",
    ];
    loop {
        match cli_timeout(lab, h, &argv, t) {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                return Err(LabError::Bench(format!("shoal run on h{h}: {e}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
    let ps: Value = serde_json::from_str(
        &cli_timeout(lab, h, &["--format", "json", "ps"], t).map_err(LabError::Bench)?,
    )
    .map_err(|e| LabError::Bench(format!("ps on h{h}: {e}")))?;
    let w = ps
        .as_array()
        .and_then(|a| a.iter().find(|w| w["name"] == net))
        .cloned()
        .unwrap_or_default();
    let pid = w["pid"].as_u64().unwrap_or_default() as u32;
    let ip = w["endpoint"]["ip"].as_str().unwrap_or_default().to_string();
    if pid == 0 || ip.is_empty() {
        return Err(LabError::Bench(format!(
            "no workload {net} in ps on h{h}: {ps}"
        )));
    }
    Ok((pid, ip))
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

/// `bench overlay`: two hosts, one workload each on a VXLAN overlay and
/// on an encrypted one; ping RTT and one TCP stream workload -> workload
/// over each, against the same between the hosts' underlay addresses,
/// and the two daemons' CPU while the encrypted stream runs. `lab_bin`
/// is the shoal-lab binary (its `tcp-sink`/`tcp-source` run inside the
/// namespaces).
pub fn overlay(
    seconds: f64,
    pings: usize,
    lab_bin: &Path,
    out: Option<&Path>,
) -> Result<(), LabError> {
    let (lab, [[(pid1, _), (pid2, ip2)], [(spid1, _), (spid2, sip2)]]) = overlay_pair()?;
    // Each overlay is up once one ping gets through.
    for (pid, ip) in [(pid1, &ip2), (spid1, &sip2)] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(ping_stats(&lab, 1, Some(pid), ip, 1), Ok(p) if p.3 == 0.0) {
            if Instant::now() > deadline {
                return Err(LabError::Bench(format!(
                    "workloads cannot ping {ip} over the overlay in 30 s"
                )));
            }
        }
    }
    let under2 = lab.host(2)?.addr.to_string();
    let o = ping_stats(&lab, 1, Some(pid1), &ip2, pings)?;
    let e = ping_stats(&lab, 1, Some(spid1), &sip2, pings)?;
    let u = ping_stats(&lab, 1, None, &under2, pings)?;
    let o_bps = throughput(
        &lab,
        lab_bin,
        (1, Some(pid1)),
        (2, Some(pid2)),
        &format!("{ip2}:5201"),
        seconds,
    )?;
    let daemons = [lab.host(1)?.daemon, lab.host(2)?.daemon].map(|d| d.map_or(0, |d| d.pid));
    let ticks = || daemons.map(|p| super::proc_cpu_ticks(p).unwrap_or(0));
    let (t0, w0) = (ticks(), Instant::now());
    let e_bps = throughput(
        &lab,
        lab_bin,
        (1, Some(spid1)),
        (2, Some(spid2)),
        &format!("{sip2}:5203"),
        seconds,
    )?;
    let (t1, wall) = (ticks(), w0.elapsed().as_secs_f64());
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let cpu = |i: usize| ((t1[i].saturating_sub(t0[i])) as f64 / hz / wall * 1000.0).round() / 10.0;
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
    let mbit = |b: f64| b * 8.0 / 1e6;
    let summary =
        format!(
        "overlay: ping {pings} x 0.1 s avg: VXLAN {:.3} ms, encrypted {:.3} ms, underlay {:.3} ms \
         (encrypted/VXLAN {:.2}); one TCP stream {seconds} s: VXLAN {:.0} Mbit/s, encrypted {:.0} \
         Mbit/s, underlay {:.0} Mbit/s (encrypted target >= 3000); daemon CPU while encrypted: \
         sender {}%, receiver {}%",
        o.1, e.1, u.1, ratio(e.1, o.1), mbit(o_bps), mbit(e_bps), mbit(u_bps), cpu(0), cpu(1)
    );
    let line = json!({"bench": "overlay", "hosts": 2, "pings": pings, "seconds": seconds,
        "overlay_rtt_ms": {"min": o.0, "avg": o.1, "max": o.2}, "overlay_ping_loss_pct": o.3,
        "encrypted_rtt_ms": {"min": e.0, "avg": e.1, "max": e.2}, "encrypted_ping_loss_pct": e.3,
        "underlay_rtt_ms": {"min": u.0, "avg": u.1, "max": u.2}, "underlay_ping_loss_pct": u.3,
        "rtt_avg_ratio": ratio(o.1, u.1), "encrypted_rtt_vs_vxlan": ratio(e.1, o.1),
        "overlay_bytes_per_sec": o_bps.round(), "encrypted_bytes_per_sec": e_bps.round(),
        "underlay_bytes_per_sec": u_bps.round(),
        "throughput_ratio": ratio(o_bps, u_bps), "encrypted_vs_vxlan": ratio(e_bps, o_bps),
        "daemon_cpu_pct": {"sender": cpu(0), "receiver": cpu(1)},
        "path": "workload netns -> veth -> br0 -> vx0 (VXLAN, UDP 4789) | dp0 (TAP -> AES-256-GCM in the daemon -> UDP 4790) -> underlay veth/bridge -> peer"});
    emit(out, &summary, &line)?;
    lab.down()
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
    fn fnv_is_stable() {
        let mut h = Fnv64::default();
        h.update(b"a");
        assert_eq!(h.digest(), 0xaf63_dc4c_8601_ec8c);
    }
}
