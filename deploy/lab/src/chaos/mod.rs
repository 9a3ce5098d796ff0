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
//!
//! Data flow: [`run`] (here) starts the lab and what the faults hit (a
//! workload per host, the service), then runs `faults.rs` (the schedule
//! and the driver that applies it) and `writers.rs` (client loops that
//! record what was acknowledged in a [`Ledger`]) side by side; after
//! healing, `checks.rs` compares the cluster with the ledger, and the
//! outcome is a [`ChaosReport`]. Commands and requests into the hosts go
//! through `crate::probe`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::probe::kill_workloads;
use crate::{Lab, LabError};

mod checks;
mod faults;
pub mod linearize;
mod writers;

pub use checks::{mac_text, overlay_fdb, Check, CheckFn};
pub use faults::{heal_all, schedule, Event, Fault};
pub use writers::Ledger;
// The probes that used to live here, at their old paths.
pub use crate::probe::{cli_timeout, run_timeout};

use checks::{
    check_containers, check_fdb, check_gossip, check_logs, check_networks, check_nodes,
    check_service, mesh_answers, running_tasks,
};
use faults::{drive, Faulted};
use writers::{register_client, writer};

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
    /// Run the service's tasks and the workloads as host processes of this
    /// command (an HTTP server on port 80 answering `GET /` with 200, e.g.
    /// `shoal-lab http-echo --port 80`). `None` (the default): containers
    /// of the lab's echo image — every host runs its own containerd and
    /// pulls from a registry on h1, so SIGKILLed daemons must adopt their
    /// containers.
    pub host_processes: Option<Vec<String>>,
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
            host_processes: None,
            verbose: true,
            keep_on_failure: false,
        }
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "shoal-lab chaos --seed {} --minutes {} --nodes {} --managers {} --writers {}{}{}{}",
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
            if self.services { "" } else { " --no-services" },
            if self.host_processes.is_some() {
                " --host-processes"
            } else {
                ""
            }
        )
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
    let containers = cfg.host_processes.is_none();
    let mut daemon_config = CHAOS_DAEMON_CONFIG.to_string();
    if containers {
        daemon_config.push_str(&format!(
            "insecure_registries = [\"{}\"]\n",
            crate::registry_addr(1)
        ));
    }
    let lab = Lab::builder()
        .nodes(cfg.nodes)
        .managers(cfg.managers)
        .containerd(containers)
        .daemon_config(&daemon_config)
        .start()?;
    lab.init_swarm(cfg.managers)?;
    // What tasks and workloads run: `run`/`service create` arguments.
    let workload: Vec<String> = match &cfg.host_processes {
        Some(cmd) => ["--runtime", "host", "--"]
            .iter()
            .map(|s| s.to_string())
            .chain(cmd.iter().cloned())
            .collect(),
        None => vec![echo_image(&lab, cfg.nodes).map_err(setup)?],
    };
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
                    &["run", "--network", "chaos-wl", "--name", &format!("wl{h}")]
                        .into_iter()
                        .chain(workload.iter().map(String::as_str))
                        .collect::<Vec<_>>(),
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
        if let Err(e) = create_service(&lab, &workload) {
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
    let registers_from = Instant::now();
    let driven = thread::scope(|s| {
        for id in 0..cfg.writers {
            let (lab, faulted, stop, ledger, scaling) = (&lab, &faulted, &stop, &ledger, &scaling);
            s.spawn(move || writer(lab, cfg, id, faulted, stop, ledger, scaling));
            s.spawn(move || register_client(lab, cfg, id, registers_from, faulted, stop, ledger));
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
    println!(
        "chaos: {} register operations on {} names ({} with an unknown outcome)",
        ledger.history.len(),
        ledger
            .history
            .iter()
            .map(|o| o.key.as_str())
            .collect::<BTreeSet<_>>()
            .len(),
        ledger
            .history
            .iter()
            .filter(|o| o.outcome == linearize::Outcome::Unknown)
            .count()
    );
    let mut checks: Vec<Check> = vec![
        Check::new("register history linearizable", |_, l| {
            if l.history.is_empty() {
                return Err("no register operation was recorded".into());
            }
            linearize::check(&l.history)
        }),
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
    if containers {
        checks.push(Check::new(
            "containers adopted, none left over",
            |lab, _| check_containers(lab),
        ));
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

/// Starts a registry on h1 holding the lab's echo image and has every
/// host pull it (so a task placed during a partition from h1 finds it):
/// the image reference.
fn echo_image(lab: &Lab, nodes: usize) -> Result<String, String> {
    let reg = lab
        .start_registry(1)
        .map_err(|e| format!("starting the registry: {e}"))?;
    let layout = crate::image::build_echo_image(&lab.dir().join("echo-image"))
        .map_err(|e| format!("building the echo image: {e}"))?;
    let reference = format!("{reg}/shoal/echo:1");
    crate::image::push(lab, 1, &layout, &reference)
        .map_err(|e| format!("pushing the echo image: {e}"))?;
    for h in 1..=nodes {
        cli_timeout(
            lab,
            h,
            &["image", "pull", &reference],
            Duration::from_secs(60),
        )
        .map_err(|e| format!("pulling the echo image on h{h}: {e}"))?;
    }
    Ok(reference)
}

/// Creates [`CHAOS_SERVICE`] and waits until its tasks run.
fn create_service(lab: &Lab, workload: &[String]) -> Result<(), String> {
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
    ];
    args.extend(workload.iter().map(String::as_str));
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
