//! The chaos suite (`shoal-lab chaos`, `tests/tests/chaos.rs`): a seeded
//! schedule of faults (SIGKILL + restart, SIGSTOP pauses, daemon restarts,
//! partitions) against a lab swarm while client loops write to the store
//! through the CLI, then checks that what was acknowledged survived and the
//! cluster converged.
//!
//! The schedule is a pure function of the seed and the lab shape
//! ([`schedule`]): the same seed gives the same faults at the same offsets,
//! so a failing run can be replayed (`shoal-lab chaos --seed S ...`). The
//! writers' timing is not deterministic (real processes), only their choices
//! are seeded. Never more than a minority of managers is faulted at once,
//! so writes can always make progress through the healthy majority.
//!
//! Checks after the schedule (everything healed and restarted first), each
//! polled until it holds or the settle deadline passes:
//! - every acknowledged `network create` (not acknowledged-removed) is listed
//!   by every manager, and every acknowledged `network rm` is absent;
//! - `node ls` on every manager shows every node `ready`;
//! - every node holds the same entries (key, owner, version) of the chaos
//!   gossip table;
//! - every running workload's host has an FDB entry (MAC -> VTEP) for every
//!   other host's workload, and no duplicates;
//! - the service created before the faults (`web`, published on 18080, which
//!   the writers scale between 2 and 4) has the last acknowledged replica
//!   count, exactly that many running tasks and task processes, and its
//!   published port answers on every host;
//! - no daemon log contains `panicked`;
//! - whatever extra [`Check`]s the caller adds (e.g. "services answer").

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::probe::{host_netns, http_get, in_netns, kill_workloads};
use crate::{Lab, LabError};
// The probes that used to live here, at their old paths.
pub use crate::probe::{cli_timeout, run_timeout};

/// Daemon timings for chaos labs: fast heartbeats and gossip, so a run
/// converges quickly after the last fault.
pub const CHAOS_DAEMON_CONFIG: &str = "heartbeat_ms = 500\ngossip_profile = \"fast\"\n";

/// The gossip table the writers put entries into.
pub const CHAOS_TABLE: &str = "chaos";

/// The service of a chaos run, and the port it publishes.
pub const CHAOS_SERVICE: &str = "web";
/// The published port of [`CHAOS_SERVICE`].
pub const CHAOS_SERVICE_PORT: u16 = 18080;
/// Replicas [`CHAOS_SERVICE`] is created with.
const CHAOS_SERVICE_REPLICAS: u64 = 3;

/// What a chaos service task runs by default: a tiny Python HTTP server
/// answering with its task name and id (tests cannot count on a current
/// `shoal-lab` binary; `shoal-lab chaos` runs its own `http-echo`).
const PY_ECHO: &str = r#"
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.0'
    def do_GET(self):
        b = (os.environ.get('SHOAL_TASK_NAME', '?') + ' ' + os.environ.get('SHOAL_TASK_ID', '?') + '\n').encode()
        self.send_response(200)
        self.send_header('Content-Length', str(len(b)))
        self.send_header('Connection', 'close')
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(('0.0.0.0', 80), H).serve_forever()
"#;

/// How long one CLI call of a writer or a check may take (a paused daemon
/// accepts connections and never answers).
const CLI_TIMEOUT: Duration = Duration::from_secs(10);

/// What a chaos run does.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Seed of the schedule and of the writers' choices.
    pub seed: u64,
    /// How long faults are injected.
    pub duration: Duration,
    /// Hosts in the lab.
    pub nodes: usize,
    /// Managers among them (h1..hM).
    pub managers: usize,
    /// Concurrent writer loops.
    pub writers: usize,
    /// After the schedule: how long the checks may take to hold.
    pub settle: Duration,
    /// Run one workload per host on an attachable network and check the
    /// kernel FDB state at the end.
    pub workloads: bool,
    /// Create a service publishing a port before the faults, let the
    /// writers scale it, and check it at the end.
    pub services: bool,
    /// The command of the service's tasks: an HTTP server on port 80 that
    /// answers `GET /` with 200 (e.g. `shoal-lab http-echo --port 80`).
    pub service_command: Vec<String>,
    /// Print each fault as it is applied.
    pub verbose: bool,
    /// When a check fails, leave the lab running (recorded in the kept
    /// logs' directory as `lab.json`) to look at with `shoal-lab --state`.
    pub keep_on_failure: bool,
}

impl ChaosConfig {
    /// Defaults: 7 nodes, 3 managers, 2 writers, 5 minutes, settle 90 s.
    pub fn new(seed: u64) -> Self {
        ChaosConfig {
            seed,
            duration: Duration::from_secs(300),
            nodes: 7,
            managers: 3,
            writers: 2,
            settle: Duration::from_secs(90),
            workloads: true,
            services: true,
            service_command: vec!["python3".into(), "-c".into(), PY_ECHO.into()],
            verbose: true,
            keep_on_failure: false,
        }
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "shoal-lab chaos --seed {} --minutes {} --nodes {} --managers {} --writers {}{}{}",
            self.seed,
            self.duration.as_secs_f64() / 60.0,
            self.nodes,
            self.managers,
            self.writers,
            if self.workloads {
                ""
            } else {
                " --no-workloads"
            },
            if self.services { "" } else { " --no-services" }
        )
    }
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the daemon, restart it after the fault's duration.
    Kill(usize),
    /// SIGSTOP the daemon, SIGCONT after the fault's duration.
    Pause(usize),
    /// Restart the daemon (SIGTERM, start, wait until it answers).
    Restart(usize),
    /// Cut these hosts off from all others; heal after the duration.
    Partition(Vec<usize>),
}

impl Fault {
    /// The hosts the fault takes out.
    pub fn hosts(&self) -> Vec<usize> {
        match self {
            Fault::Kill(h) | Fault::Pause(h) | Fault::Restart(h) => vec![*h],
            Fault::Partition(hs) => hs.clone(),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(h) => write!(f, "kill -9 h{h}"),
            Fault::Pause(h) => write!(f, "SIGSTOP h{h}"),
            Fault::Restart(h) => write!(f, "restart h{h}"),
            Fault::Partition(hs) => {
                let l: Vec<String> = hs.iter().map(|h| format!("h{h}")).collect();
                write!(f, "partition {} | rest", l.join(","))
            }
        }
    }
}

/// A fault at an offset from the start of the schedule, lasting `length`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When it starts.
    pub at: Duration,
    /// How long it lasts (zero for a restart).
    pub length: Duration,
    /// What happens.
    pub fault: Fault,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "t={:>6.1}s {} for {:.1}s",
            self.at.as_secs_f64(),
            self.fault,
            self.length.as_secs_f64()
        )
    }
}

/// The fault schedule of `cfg`: a pure function of the seed, the duration
/// and the lab shape. Each host is in at most one fault at a time, at most
/// one partition is active (heal removes all), at most `(managers - 1) / 2`
/// managers and half the workers are faulted at once.
pub fn schedule(cfg: &ChaosConfig) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let managers: Vec<usize> = (1..=cfg.managers.min(cfg.nodes)).collect();
    let workers: Vec<usize> = (cfg.managers + 1..=cfg.nodes).collect();
    let max_managers = cfg.managers.saturating_sub(1) / 2;
    let max_workers = workers.len().div_ceil(2);
    let mut events: Vec<Event> = Vec::new();
    let mut t = Duration::from_millis(rng.gen_range(500..2_000));
    while t < cfg.duration {
        let active: Vec<&Event> = events
            .iter()
            .filter(|e| e.at <= t && t < e.at + e.length.max(Duration::from_secs(3)))
            .collect();
        let busy: BTreeSet<usize> = active.iter().flat_map(|e| e.fault.hosts()).collect();
        let partition_active = active
            .iter()
            .any(|e| matches!(e.fault, Fault::Partition(_)));
        let free_m: Vec<usize> = managers
            .iter()
            .copied()
            .filter(|h| !busy.contains(h))
            .collect();
        let free_w: Vec<usize> = workers
            .iter()
            .copied()
            .filter(|h| !busy.contains(h))
            .collect();
        let room_m =
            max_managers.saturating_sub(busy.iter().filter(|h| **h <= cfg.managers).count());
        let room_w = max_workers.saturating_sub(busy.iter().filter(|h| **h > cfg.managers).count());
        let pick = |from: &[usize], room: usize, rng: &mut StdRng| -> Option<usize> {
            (room > 0 && !from.is_empty()).then(|| from[rng.gen_range(0..from.len())])
        };
        let kind = rng.gen_range(0..4u8);
        let length = Duration::from_millis(rng.gen_range(1_000..6_000));
        let fault = match kind {
            3 if !partition_active => {
                // A minority of managers and/or some workers on one side.
                let nm = if room_m > 0 {
                    rng.gen_range(0..=room_m)
                } else {
                    0
                };
                let nw = if room_w > 0 {
                    rng.gen_range(0..=room_w)
                } else {
                    0
                };
                let mut side = Vec::new();
                let mut fm = free_m.clone();
                for _ in 0..nm.min(fm.len()) {
                    side.push(fm.remove(rng.gen_range(0..fm.len())));
                }
                let mut fw = free_w.clone();
                for _ in 0..nw.min(fw.len()) {
                    side.push(fw.remove(rng.gen_range(0..fw.len())));
                }
                side.sort_unstable();
                (!side.is_empty()).then_some(Fault::Partition(side))
            }
            _ => {
                let manager = rng.gen_bool(0.5);
                let host = if manager {
                    pick(&free_m, room_m, &mut rng).or_else(|| pick(&free_w, room_w, &mut rng))
                } else {
                    pick(&free_w, room_w, &mut rng).or_else(|| pick(&free_m, room_m, &mut rng))
                };
                host.map(|h| match kind {
                    0 => Fault::Kill(h),
                    1 => Fault::Pause(h),
                    _ => Fault::Restart(h),
                })
            }
        };
        if let Some(fault) = fault {
            let length = if matches!(fault, Fault::Restart(_)) {
                Duration::ZERO
            } else {
                length
            };
            events.push(Event {
                at: t,
                length,
                fault,
            });
        }
        t += Duration::from_millis(rng.gen_range(700..3_000));
    }
    events
}

/// Writes that were acknowledged (the CLI exited 0), and the rest.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// Networks whose create was acknowledged.
    pub created: BTreeSet<String>,
    /// Networks whose rm was acknowledged.
    pub removed: BTreeSet<String>,
    /// Networks whose rm was attempted without acknowledgement (state unknown).
    pub rm_unknown: BTreeSet<String>,
    /// Gossip keys whose put was acknowledged, with the host that took it.
    pub puts: BTreeMap<String, usize>,
    /// The service's replica count as last acknowledged (create, then
    /// scales; one scale in flight at a time, so acknowledgements are in
    /// commit order). `None` without a service.
    pub service_replicas: Option<u64>,
    /// Scales acknowledged during the run.
    pub scales: u64,
    /// Replica counts of scales that were not acknowledged: they may still
    /// have been applied (even after a later acknowledged one, when the
    /// daemon that took them was paused with the request in hand).
    pub scale_unknown: BTreeSet<u64>,
    /// Writes that failed or timed out (not acknowledged).
    pub failed: u64,
}

/// The body of a [`Check`].
pub type CheckFn = Box<dyn Fn(&Lab, &Ledger) -> Result<(), String> + Send + Sync>;

/// Entries of a gossip table as (key, owner, version).
type TableView = BTreeSet<(String, String, u64)>;

/// An extra check run after the built-in ones (polled until it returns
/// `Ok` or the settle deadline passes), e.g. "every service answers".
pub struct Check {
    /// Shown in the report.
    pub name: String,
    /// The check itself.
    pub run: CheckFn,
}

impl Check {
    /// A named check.
    pub fn new(
        name: &str,
        run: impl Fn(&Lab, &Ledger) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        Check {
            name: name.to_string(),
            run: Box::new(run),
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct ChaosReport {
    /// The configuration (seed included).
    pub config: ChaosConfig,
    /// The faults applied.
    pub events: Vec<Event>,
    /// What the writers got acknowledged.
    pub ledger: Ledger,
    /// Each check: name, `Ok(how long it took to hold)` or the last failure.
    pub checks: Vec<(String, Result<Duration, String>)>,
}

impl ChaosReport {
    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|(_, r)| r.is_ok())
    }

    /// The failed checks and the replay command, for an assertion message.
    pub fn failure_text(&self) -> String {
        let mut s = format!("chaos run with seed {} failed:\n", self.config.seed);
        for (name, r) in &self.checks {
            if let Err(e) = r {
                s.push_str(&format!("  check `{name}`: {e}\n"));
            }
        }
        s.push_str(&format!("replay: {}\n", self.config.replay_command()));
        s
    }
}

/// Errors that stop a run before it can check anything.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// The lab failed.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// Setting up the swarm or workloads failed.
    #[error("chaos setup (seed {seed}): {what}")]
    Setup {
        /// The run's seed.
        seed: u64,
        /// What failed.
        what: String,
    },
}

fn json(text: &str, what: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("{what}: not JSON ({e}): {text}"))
}

/// The hosts now faulted, shared by the fault driver and the writers.
struct Faulted(Mutex<BTreeSet<usize>>);

impl Faulted {
    fn set(&self, hosts: &[usize], on: bool) {
        let mut g = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for h in hosts {
            if on {
                g.insert(*h);
            } else {
                g.remove(h);
            }
        }
    }

    fn healthy(&self, among: impl Iterator<Item = usize>) -> Vec<usize> {
        let g = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        among.filter(|h| !g.contains(h)).collect()
    }
}

/// One writer loop: network create/rm through healthy managers and gossip
/// puts on healthy nodes, until `stop`.
fn writer(
    lab: &Lab,
    cfg: &ChaosConfig,
    id: usize,
    faulted: &Faulted,
    stop: &AtomicBool,
    ledger: &Mutex<Ledger>,
    scaling: &Mutex<()>,
) {
    let mut rng =
        StdRng::seed_from_u64(cfg.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(id as u64 + 1)));
    let mut mine: Vec<String> = Vec::new();
    let mut n = 0u64;
    let record =
        |f: &dyn Fn(&mut Ledger)| f(&mut ledger.lock().unwrap_or_else(PoisonError::into_inner));
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let roll = rng.gen_range(0..100u32);
        if roll < 35 {
            let nodes = faulted.healthy(1..=cfg.nodes);
            let Some(&host) = nodes.get(rng.gen_range(0..nodes.len().max(1))) else {
                thread::sleep(Duration::from_millis(100));
                continue;
            };
            let key = format!("w{id}-{n}");
            let val = format!("v{n}");
            match cli_timeout(
                lab,
                host,
                &["gossip", "put", CHAOS_TABLE, &key, &val],
                CLI_TIMEOUT,
            ) {
                Ok(_) => record(&|l| {
                    l.puts.insert(key.clone(), host);
                }),
                Err(_) => record(&|l| l.failed += 1),
            }
            continue;
        }
        let managers = faulted.healthy(1..=cfg.managers);
        let Some(&host) = managers.get(rng.gen_range(0..managers.len().max(1))) else {
            thread::sleep(Duration::from_millis(100));
            continue;
        };
        if cfg.services && (35..38).contains(&roll) {
            let replicas = rng.gen_range(2..=4u64);
            // One scale in flight at a time: acknowledgements then come in
            // commit order and the last one is the expected count.
            let _one = scaling.lock().unwrap_or_else(PoisonError::into_inner);
            let arg = format!("{CHAOS_SERVICE}={replicas}");
            match cli_timeout(lab, host, &["service", "scale", &arg], CLI_TIMEOUT) {
                Ok(_) => record(&|l| {
                    l.service_replicas = Some(replicas);
                    l.scales += 1;
                }),
                Err(_) => record(&|l| {
                    l.failed += 1;
                    l.scale_unknown.insert(replicas);
                }),
            }
            continue;
        }
        if roll < 50 && !mine.is_empty() {
            let name = mine.remove(rng.gen_range(0..mine.len()));
            match cli_timeout(lab, host, &["network", "rm", &name], CLI_TIMEOUT) {
                Ok(_) => record(&|l| {
                    l.removed.insert(name.clone());
                }),
                Err(_) => record(&|l| {
                    l.failed += 1;
                    l.rm_unknown.insert(name.clone());
                }),
            }
        } else {
            let name = format!("chaos-w{id}-{n}");
            match cli_timeout(
                lab,
                host,
                &["network", "create", "--attachable", &name],
                CLI_TIMEOUT,
            ) {
                Ok(_) => {
                    record(&|l| {
                        l.created.insert(name.clone());
                    });
                    mine.push(name);
                }
                Err(_) => record(&|l| l.failed += 1),
            }
        }
    }
}

fn apply(lab: &Lab, fault: &Fault, start: bool) -> Result<(), LabError> {
    match (fault, start) {
        (Fault::Kill(h), true) => lab.kill(*h),
        (Fault::Kill(h), false) => lab.restart(*h),
        (Fault::Pause(h), true) => lab.pause(*h),
        (Fault::Pause(h), false) => lab.resume(*h),
        (Fault::Restart(h), true) => lab.restart(*h),
        (Fault::Restart(_), false) => Ok(()),
        (Fault::Partition(side), true) => {
            let rest: Vec<usize> = (1..=lab.len()).filter(|h| !side.contains(h)).collect();
            lab.partition(side, &rest)
        }
        (Fault::Partition(_), false) => lab.heal(),
    }
}

/// Follows the schedule in real time (late steps run late, in order).
fn drive(
    lab: &Lab,
    cfg: &ChaosConfig,
    events: &[Event],
    faulted: &Faulted,
) -> Result<(), LabError> {
    let mut steps: Vec<(Duration, usize, bool)> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        steps.push((e.at, i, true));
        if e.length > Duration::ZERO {
            steps.push((e.at + e.length, i, false));
        }
    }
    // Ends before starts at the same instant: a host is freed before reuse.
    steps.sort_by_key(|&(t, i, start)| (t, start, i));
    let t0 = Instant::now();
    for (at, i, start) in steps {
        if let Some(wait) = at.checked_sub(t0.elapsed()) {
            thread::sleep(wait);
        }
        let e = &events[i];
        let hosts = e.fault.hosts();
        if start {
            faulted.set(&hosts, true);
        }
        if cfg.verbose {
            println!(
                "chaos: [{:>6.1}s] {} {}",
                t0.elapsed().as_secs_f64(),
                if start { "start" } else { "end  " },
                e.fault
            );
        }
        apply(lab, &e.fault, start)?;
        if !start || e.length == Duration::ZERO {
            faulted.set(&hosts, false);
        }
    }
    Ok(())
}

/// Heals every partition, resumes paused daemons and restarts dead ones.
pub fn heal_all(lab: &Lab) -> Result<(), LabError> {
    lab.heal()?;
    for h in 1..=lab.len() {
        match lab.daemon_state(h)? {
            crate::DaemonState::Paused => lab.resume(h)?,
            crate::DaemonState::Exited(_) => lab.restart(h)?,
            crate::DaemonState::Running => {}
        }
    }
    Ok(())
}

/// Starts a lab swarm for `cfg`, runs the schedule with writers, heals, and
/// checks. The lab is removed at the end (also on error).
pub fn run(cfg: &ChaosConfig, extra: &[Check]) -> Result<ChaosReport, ChaosError> {
    println!("chaos: seed {}", cfg.seed);
    let events = schedule(cfg);
    if cfg.verbose {
        println!("chaos: {} faults over {:?}", events.len(), cfg.duration);
    }
    let setup = |what: String| ChaosError::Setup {
        seed: cfg.seed,
        what,
    };
    let lab = Lab::builder()
        .nodes(cfg.nodes)
        .managers(cfg.managers)
        .daemon_config(CHAOS_DAEMON_CONFIG)
        .start()?;
    lab.init_swarm(cfg.managers)?;
    let mut workload_net = None;
    if cfg.workloads {
        cli_timeout(
            &lab,
            1,
            &[
                "network",
                "create",
                "--attachable",
                "--subnet",
                "10.99.0.0/24",
                "chaos-wl",
            ],
            CLI_TIMEOUT,
        )
        .map_err(|e| setup(format!("creating chaos-wl: {e}")))?;
        // Endpoints are published in gossip, which starts once sessions
        // delivered the key ring.
        let deadline = Instant::now() + Duration::from_secs(60);
        for h in 1..=cfg.nodes {
            loop {
                let r = cli_timeout(
                    &lab,
                    h,
                    &[
                        "run",
                        "--network",
                        "chaos-wl",
                        "--name",
                        &format!("wl{h}"),
                        "--",
                        "sleep",
                        "1000000",
                    ],
                    CLI_TIMEOUT,
                );
                match r {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => {
                        return Err(setup(format!("shoal run on h{h}: {e}")))
                    }
                    Err(_) => thread::sleep(Duration::from_millis(250)),
                }
            }
        }
        workload_net = Some("chaos-wl".to_string());
    }
    let mut initial = Ledger::default();
    // A fault-free baseline: a routing mesh that is broken before any fault
    // is not the faults' doing (reported as its own failed check).
    let mut baseline = None;
    if cfg.services {
        if let Err(e) = create_service(&lab, cfg) {
            kill_workloads(&lab);
            return Err(setup(e));
        }
        initial.service_replicas = Some(CHAOS_SERVICE_REPLICAS);
        let started = Instant::now();
        let mut last;
        loop {
            last = mesh_answers(&lab);
            if last.is_ok() || started.elapsed() > Duration::from_secs(30) {
                break;
            }
            thread::sleep(Duration::from_millis(500));
        }
        if let Err(e) = &last {
            println!("chaos: before any fault, the routing mesh does not answer: {e}");
        }
        baseline = Some(last.map(|()| started.elapsed()));
    }
    let faulted = Faulted(Mutex::new(BTreeSet::new()));
    let stop = AtomicBool::new(false);
    let ledger = Mutex::new(initial);
    let scaling = Mutex::new(());
    let driven = thread::scope(|s| {
        for id in 0..cfg.writers {
            let (lab, faulted, stop, ledger, scaling) = (&lab, &faulted, &stop, &ledger, &scaling);
            s.spawn(move || writer(lab, cfg, id, faulted, stop, ledger, scaling));
        }
        let r = drive(&lab, cfg, &events, &faulted);
        // Writes go on a little past the last fault, then stop.
        thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        r
    });
    if let Err(e) = driven {
        kill_workloads(&lab);
        return Err(e.into());
    }
    heal_all(&lab)?;
    let ledger = ledger.into_inner().unwrap_or_else(PoisonError::into_inner);
    println!(
        "chaos: schedule done: {} networks created, {} removed, {} gossip puts acknowledged, {} service scales acknowledged (expected replicas {:?}, unacknowledged {:?}), {} writes not acknowledged",
        ledger.created.len(),
        ledger.removed.len(),
        ledger.puts.len(),
        ledger.scales,
        ledger.service_replicas,
        ledger.scale_unknown,
        ledger.failed
    );
    let mut checks: Vec<Check> = vec![
        Check::new("acknowledged networks on every manager", {
            let managers = cfg.managers;
            move |lab, l| check_networks(lab, managers, l)
        }),
        Check::new("every node Ready", {
            let (managers, nodes) = (cfg.managers, cfg.nodes);
            move |lab, _| check_nodes(lab, managers, nodes)
        }),
        Check::new("gossip tables agree", {
            let nodes = cfg.nodes;
            move |lab, _| check_gossip(lab, nodes)
        }),
    ];
    if let Some(net) = workload_net {
        checks.push(Check::new("workload FDB state", move |lab, _| {
            check_fdb(lab, &net)
        }));
    }
    if cfg.services {
        checks.push(Check::new("service replicas and routing mesh", {
            let managers = cfg.managers;
            move |lab, l| check_service(lab, managers, l)
        }));
    }
    checks.push(Check::new("no daemon panicked", |lab, _| check_logs(lab)));
    let deadline = Instant::now() + cfg.settle;
    let mut results = Vec::new();
    if let Some(b) = baseline {
        results.push(("routing mesh answers before the faults".to_string(), b));
    }
    let started = Instant::now();
    for c in checks.iter().chain(extra) {
        let mut last;
        loop {
            last = (c.run)(&lab, &ledger);
            if last.is_ok() || Instant::now() > deadline {
                break;
            }
            thread::sleep(Duration::from_millis(500));
        }
        let r = last.map(|()| started.elapsed());
        println!(
            "chaos: check {:<40} {}",
            c.name,
            match &r {
                Ok(d) => format!("ok (held after {:.1} s)", d.as_secs_f64()),
                Err(e) => format!("FAILED: {e}"),
            }
        );
        results.push((c.name.clone(), r));
    }
    let report = ChaosReport {
        config: cfg.clone(),
        events,
        ledger,
        checks: results,
    };
    if !report.passed() {
        // Keep the logs where a human can read them.
        let keep = std::env::temp_dir().join(format!("shoal-chaos-{}", cfg.seed));
        let _ = std::fs::create_dir_all(&keep);
        for h in lab.hosts() {
            let _ = std::fs::copy(&h.log, keep.join(format!("{}.log", h.name)));
        }
        println!("chaos: daemon logs copied to {}", keep.display());
        print!("{}", report.failure_text());
        if cfg.keep_on_failure {
            let file = keep.join("lab.json");
            lab.detach()?.save(&file)?;
            println!(
                "chaos: lab left running: shoal-lab --state {0} exec h1 -- shoal service ps {CHAOS_SERVICE}; remove it with shoal-lab --state {0} down",
                file.display()
            );
            return Ok(report);
        }
    } else {
        println!("chaos: seed {} passed", cfg.seed);
    }
    // Workload and task processes outlive their daemons: stop them before
    // the lab goes.
    kill_workloads(&lab);
    lab.down()?;
    Ok(report)
}

/// Creates [`CHAOS_SERVICE`] and waits until its tasks run.
fn create_service(lab: &Lab, cfg: &ChaosConfig) -> Result<(), String> {
    let replicas = CHAOS_SERVICE_REPLICAS.to_string();
    let publish = format!("{CHAOS_SERVICE_PORT}:80");
    let mut args = vec![
        "service",
        "create",
        "--name",
        CHAOS_SERVICE,
        "--replicas",
        &replicas,
        "-p",
        &publish,
        "--",
    ];
    args.extend(cfg.service_command.iter().map(String::as_str));
    cli_timeout(lab, 1, &args, CLI_TIMEOUT).map_err(|e| format!("service create: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = running_tasks(lab, 1);
        match &last {
            Ok(n) if *n as u64 == CHAOS_SERVICE_REPLICAS => return Ok(()),
            _ if Instant::now() > deadline => {
                return Err(format!(
                "{CHAOS_SERVICE}: {CHAOS_SERVICE_REPLICAS} tasks not running within 60 s: {last:?}"
            ))
            }
            _ => thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// Tasks of [`CHAOS_SERVICE`] running (and meant to) per `host`'s `service ps`.
fn running_tasks(lab: &Lab, host: usize) -> Result<usize, String> {
    let v = json(
        &cli_timeout(
            lab,
            host,
            &["--format", "json", "service", "ps", CHAOS_SERVICE],
            CLI_TIMEOUT,
        )
        .map_err(|e| format!("service ps on h{host}: {e}"))?,
        "service ps",
    )?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter(|t| t["state"] == "running" && t["desired"] == "running")
                .count()
        })
        .unwrap_or_default())
}

fn check_service(lab: &Lab, managers: usize, l: &Ledger) -> Result<(), String> {
    let expected = l
        .service_replicas
        .ok_or("no acknowledged replica count for the service")?;
    let spec = json(
        &cli_timeout(
            lab,
            1,
            &["--format", "json", "service", "inspect", CHAOS_SERVICE],
            CLI_TIMEOUT,
        )
        .map_err(|e| format!("service inspect on h1: {e}"))?,
        "service inspect",
    )?;
    let replicas = spec[0]["spec"]["replicas"]
        .as_u64()
        .ok_or_else(|| format!("service inspect: no spec.replicas in {spec}"))?;
    if replicas != expected && !l.scale_unknown.contains(&replicas) {
        return Err(format!(
            "{CHAOS_SERVICE} has {replicas} replicas; last acknowledged {expected} (unacknowledged scales: {:?})",
            l.scale_unknown
        ));
    }
    for h in 1..=managers {
        let n = running_tasks(lab, h)?;
        if n as u64 != replicas {
            return Err(format!(
                "service ps on h{h}: {n} running tasks, want {replicas}"
            ));
        }
    }
    // The nodes agree: exactly that many task processes in the lab.
    let mut processes = Vec::new();
    for h in 1..=lab.len() {
        let v = json(
            &cli_timeout(lab, h, &["--format", "json", "ps"], CLI_TIMEOUT)
                .map_err(|e| format!("ps on h{h}: {e}"))?,
            "ps",
        )?;
        for w in v.as_array().cloned().unwrap_or_default() {
            let name = w["name"].as_str().unwrap_or_default();
            if w["task"].is_string() && name.starts_with(&format!("{CHAOS_SERVICE}.")) {
                processes.push(format!("{name}@h{h}"));
            }
        }
    }
    if processes.len() as u64 != replicas {
        return Err(format!(
            "{} task workloads on the nodes, want {replicas}: {processes:?}",
            processes.len()
        ));
    }
    mesh_answers(lab)
}

/// Every host answers on [`CHAOS_SERVICE_PORT`] (3 requests each, from the
/// host's own namespace to its underlay address).
fn mesh_answers(lab: &Lab) -> Result<(), String> {
    for h in 1..=lab.len() {
        let addr = std::net::SocketAddr::from((
            lab.host(h).map_err(|e| e.to_string())?.addr,
            CHAOS_SERVICE_PORT,
        ));
        let ns = host_netns(lab, h).map_err(|e| e.to_string())?;
        in_netns(&ns, || {
            for i in 0..3 {
                let body = http_get(addr, Duration::from_secs(2))
                    .map_err(|e| format!("h{h} request {}: {e}", i + 1))?;
                if !body.starts_with(&format!("{CHAOS_SERVICE}.")) {
                    return Err(format!("h{h} {addr}: unexpected answer {body:?}"));
                }
            }
            Ok(())
        })??;
    }
    Ok(())
}

fn check_networks(lab: &Lab, managers: usize, l: &Ledger) -> Result<(), String> {
    for h in 1..=managers {
        let v = json(
            &cli_timeout(lab, h, &["--format", "json", "network", "ls"], CLI_TIMEOUT)
                .map_err(|e| format!("network ls on h{h}: {e}"))?,
            "network ls",
        )?;
        let names: BTreeSet<String> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n["Name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let missing: Vec<&String> = l
            .created
            .iter()
            .filter(|n| {
                !l.removed.contains(*n) && !l.rm_unknown.contains(*n) && !names.contains(*n)
            })
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "h{h} lacks {} acknowledged network(s): {:?}",
                missing.len(),
                missing.iter().take(10).collect::<Vec<_>>()
            ));
        }
        let back: Vec<&String> = l.removed.iter().filter(|n| names.contains(*n)).collect();
        if !back.is_empty() {
            return Err(format!("h{h} still lists removed network(s) {back:?}"));
        }
    }
    Ok(())
}

fn check_nodes(lab: &Lab, managers: usize, nodes: usize) -> Result<(), String> {
    for h in 1..=managers {
        let v = json(
            &cli_timeout(lab, h, &["--format", "json", "node", "ls"], CLI_TIMEOUT)
                .map_err(|e| format!("node ls on h{h}: {e}"))?,
            "node ls",
        )?;
        let rows = v.as_array().cloned().unwrap_or_default();
        if rows.len() != nodes {
            return Err(format!(
                "node ls on h{h} shows {} nodes, want {nodes}",
                rows.len()
            ));
        }
        let bad: Vec<String> = rows
            .iter()
            .filter(|r| r["status"] != "ready")
            .map(|r| format!("{} {}", r["hostname"], r["status"]))
            .collect();
        if !bad.is_empty() {
            return Err(format!("node ls on h{h}: not ready: {bad:?}"));
        }
    }
    Ok(())
}

fn check_gossip(lab: &Lab, nodes: usize) -> Result<(), String> {
    let mut first: Option<(usize, TableView)> = None;
    for h in 1..=nodes {
        let v = json(
            &cli_timeout(
                lab,
                h,
                &[
                    "--format",
                    "json",
                    "gossip",
                    "tables",
                    "--table",
                    CHAOS_TABLE,
                ],
                CLI_TIMEOUT,
            )
            .map_err(|e| format!("gossip tables on h{h}: {e}"))?,
            "gossip tables",
        )?;
        let set: TableView = v
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e["key"].as_str().unwrap_or_default().to_string(),
                            e["owner"].as_str().unwrap_or_default().to_string(),
                            e["version"].as_u64().unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        match &first {
            None => first = Some((h, set)),
            Some((f, fs)) if *fs != set => {
                let only_f: Vec<_> = fs.difference(&set).take(5).collect();
                let only_h: Vec<_> = set.difference(fs).take(5).collect();
                return Err(format!(
                    "h{f} ({} entries) and h{h} ({} entries) differ: only on h{f} {only_f:?}, only on h{h} {only_h:?}",
                    fs.len(),
                    set.len()
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A MAC as `aa:bb:..` from the JSON byte array `ps` prints.
pub fn mac_text(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|b| format!("{:02x}", b.as_u64().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(":")
        })
        .unwrap_or_default()
}

/// The FDB lines (`bridge fdb show dev vx0`, remote entries only) of the
/// overlay namespace of network `net_id` on `host`.
pub fn overlay_fdb(lab: &Lab, host: usize, net_id: &str) -> Result<Vec<String>, String> {
    let ns = lab
        .host(host)
        .map_err(|e| e.to_string())?
        .run_dir
        .join("overlay/netns")
        .join(net_id);
    let argv: Vec<OsString> = vec![
        "nsenter".into(),
        format!("--net={}", ns.display()).into(),
        "bridge".into(),
        "fdb".into(),
        "show".into(),
        "dev".into(),
        "vx0".into(),
    ];
    let out = run_timeout(lab, host, &argv, CLI_TIMEOUT)?;
    Ok(out
        .lines()
        .filter(|l| l.contains(" dst "))
        .map(str::to_string)
        .collect())
}

fn check_fdb(lab: &Lab, net: &str) -> Result<(), String> {
    // (host, mac, network id) of every running workload on `net`.
    let mut wl: Vec<(usize, String, String)> = Vec::new();
    for h in 1..=lab.len() {
        let v = json(
            &cli_timeout(lab, h, &["--format", "json", "ps"], CLI_TIMEOUT)
                .map_err(|e| format!("ps on h{h}: {e}"))?,
            "ps",
        )?;
        for w in v.as_array().cloned().unwrap_or_default() {
            if w["network"]["name"] == net {
                wl.push((
                    h,
                    mac_text(&w["endpoint"]["mac"]),
                    w["network"]["id"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    for (h, _, net_id) in &wl {
        let fdb = overlay_fdb(lab, *h, net_id)?;
        for (o, mac, _) in wl.iter().filter(|(o, _, _)| o != h) {
            let vtep = lab.host(*o).map_err(|e| e.to_string())?.addr.to_string();
            let n = fdb
                .iter()
                .filter(|l| l.starts_with(mac.as_str()) && l.contains(&format!("dst {vtep} ")))
                .count();
            if n != 1 {
                return Err(format!(
                    "h{h}: {n} FDB entries for h{o}'s workload {mac} -> {vtep} (want 1): {fdb:?}"
                ));
            }
        }
        let mut seen = BTreeSet::new();
        if let Some(dup) = fdb.iter().find(|l| !seen.insert(l.as_str())) {
            return Err(format!("h{h}: duplicate FDB entry {dup}"));
        }
    }
    Ok(())
}

fn check_logs(lab: &Lab) -> Result<(), String> {
    for h in lab.hosts() {
        let text = std::fs::read_to_string(&h.log)
            .map_err(|e| format!("reading {}: {e}", h.log.display()))?;
        if let Some(line) = text.lines().find(|l| l.contains("panicked")) {
            return Err(format!("{} ({}): {line}", h.name, h.log.display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(seed: u64) -> ChaosConfig {
        ChaosConfig {
            duration: Duration::from_secs(600),
            ..ChaosConfig::new(seed)
        }
    }

    #[test]
    fn same_seed_same_schedule() {
        assert_eq!(schedule(&cfg(7)), schedule(&cfg(7)));
        assert_ne!(schedule(&cfg(7)), schedule(&cfg(8)));
    }

    #[test]
    fn never_more_than_a_minority_of_managers_faulted() {
        for seed in 0..20 {
            let c = cfg(seed);
            let ev = schedule(&c);
            assert!(ev.len() > 50, "seed {seed}: only {} faults", ev.len());
            let mut ms = 0u64;
            while ms < 600_000 {
                let t = Duration::from_millis(ms);
                let active: Vec<&Event> = ev
                    .iter()
                    .filter(|e| e.at <= t && t < e.at + e.length)
                    .collect();
                let hosts: Vec<usize> = active.iter().flat_map(|e| e.fault.hosts()).collect();
                let uniq: BTreeSet<usize> = hosts.iter().copied().collect();
                assert_eq!(
                    uniq.len(),
                    hosts.len(),
                    "seed {seed} t {t:?}: a host in two faults"
                );
                assert!(
                    uniq.iter().filter(|h| **h <= c.managers).count() <= 1,
                    "seed {seed} t {t:?}: {active:?}"
                );
                assert!(
                    active
                        .iter()
                        .filter(|e| matches!(e.fault, Fault::Partition(_)))
                        .count()
                        <= 1
                );
                ms += 250;
            }
        }
    }
}
