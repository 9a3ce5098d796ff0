//! `shoal-lab`: bring up a cluster of namespace hosts running real shoal
//! daemons on this machine, and poke at it. The lab brought up by `up`
//! outlives the command; its record lives in /run/shoal-lab/lab.json so
//! later invocations (`exec`, `kill`, `partition`, `down`, ...) find it.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use shoal_lab::{is_alive, HostId, Lab, LabState, LAB_ROOT};

#[derive(Parser)]
#[command(
    name = "shoal-lab",
    version,
    about = "A shoal cluster of network-namespace hosts on this machine (needs root)"
)]
struct Cli {
    /// Where the lab brought up by `up` is recorded.
    #[arg(
        long,
        global = true,
        env = "SHOAL_LAB_STATE",
        default_value = "/run/shoal-lab/lab.json"
    )]
    state: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create hosts h1..hN, each running `shoal daemon`, and leave them running.
    Up {
        /// Number of hosts (1..=250).
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Form a swarm with this many managers (h1..hM; the rest join as
        /// workers). Without it the daemons run outside any swarm.
        #[arg(long)]
        managers: Option<usize>,
        /// Give each host a second network, eth1 10.77.1.N/24, for the data path.
        #[arg(long)]
        data_path: bool,
        /// Give each host its own containerd, run an OCI registry on h1
        /// (10.77.0.1:5000, plain HTTP, in every daemon's
        /// insecure_registries) and push the echo test image to it as
        /// 10.77.0.1:5000/shoal/echo:1.
        #[arg(long)]
        containerd: bool,
    },
    /// Stop the daemons and remove everything the lab created.
    Down,
    /// Show hosts, addresses and daemon states.
    Status,
    /// Run a command in a host's namespace with SHOAL_HOST set:
    /// `shoal-lab exec h2 -- shoal info`.
    Exec {
        /// h1, h2, ...
        host: HostId,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        argv: Vec<OsString>,
    },
    /// SIGKILL a host's daemon.
    Kill { host: HostId },
    /// SIGSTOP a host's daemon.
    Pause { host: HostId },
    /// SIGCONT a paused daemon.
    Resume { host: HostId },
    /// Stop (if running) and start a host's daemon with the same data.
    Restart { host: HostId },
    /// Cut two groups of hosts off from each other: `partition h1,h2 h3,h4`.
    Partition {
        /// One side: h1,h2
        #[arg(value_parser = parse_hosts)]
        a: Hosts,
        /// The other side: h3,h4
        #[arg(value_parser = parse_hosts)]
        b: Hosts,
    },
    /// Remove all partitions.
    Heal,
    /// Remove labs under /run/shoal-lab whose owning process is gone.
    Gc,
    /// Run a benchmark against a fresh lab; prints a summary and a JSON line.
    Bench {
        /// raft: committed writes/s and p50/p99 commit latency through the
        /// daemon API, 3 managers, 1/64/256 proposers. failover: kill -9
        /// leader -> first successful write, per trial.
        /// session: 20 hosts, store change -> every node assigned (p50/p99),
        /// leader CPU per heartbeat.
        /// propagation / failure / gossip-bandwidth: SWIM gossip on 20 hosts;
        /// sim: 1,000 simulated members in one process (--seed).
        /// reconcile: 10,000 remote endpoints into one network namespace.
        /// overlay: 2 hosts, workload <-> workload ping RTT and TCP
        /// throughput over VXLAN vs the underlay.
        /// service: 5 hosts, 20 http-echo tasks: create -> all answering
        /// through the VIP and the mesh on every host, task kill ->
        /// replacement answering, requests/s mesh vs VIP vs direct.
        /// all: every benchmark, then bench-report.json and bench-report.md
        /// in --out-dir (--quick: short parameters).
        #[arg(value_parser = ["raft", "failover", "session", "propagation", "failure", "gossip-bandwidth", "sim", "reconcile", "overlay", "service", "all"])]
        name: String,
        /// Directory of the report (all).
        #[arg(long, default_value = "bench")]
        out_dir: PathBuf,
        /// Short parameters so `all` finishes in minutes.
        #[arg(long)]
        quick: bool,
        /// Only these benchmarks (all), comma-separated.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Seed (sim).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Seconds per proposer count (raft).
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Trials (failover).
        #[arg(long, default_value_t = 5)]
        trials: usize,
        /// Tasks of the service (service).
        #[arg(long, default_value_t = 20)]
        replicas: usize,
        /// Tasks as host processes (`--runtime host`) instead of containers
        /// from the lab registry's echo image (service).
        #[arg(long)]
        host_processes: bool,
        /// Append the JSON line(s) to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Chaos: a seeded schedule of kills, pauses, restarts and partitions
    /// against a lab swarm while clients write; then checks that every
    /// acknowledged write survived and the cluster converged.
    Chaos {
        /// Seed of the schedule (default: random, printed first).
        #[arg(long)]
        seed: Option<u64>,
        /// Minutes of faults.
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
        /// Hosts.
        #[arg(long, default_value_t = 7)]
        nodes: usize,
        /// Managers among them.
        #[arg(long, default_value_t = 3)]
        managers: usize,
        /// Concurrent writer loops.
        #[arg(long, default_value_t = 2)]
        writers: usize,
        /// Seconds the checks may take to hold after the faults.
        #[arg(long, default_value_t = 90)]
        settle: u64,
        /// No workloads (and no FDB check).
        #[arg(long)]
        no_workloads: bool,
        /// No service (and no service check, no scaling by the writers).
        #[arg(long)]
        no_services: bool,
        /// Tasks and workloads as host processes (this binary's
        /// `http-echo`) instead of containers of the lab's echo image.
        #[arg(long)]
        host_processes: bool,
        /// When a check fails, leave the lab running to look at.
        #[arg(long)]
        keep_on_failure: bool,
    },
    /// (internal) Answer every HTTP request with SHOAL_TASK_NAME and
    /// SHOAL_TASK_ID (what service tasks run in the bench and chaos labs).
    #[command(hide = true)]
    HttpEcho {
        #[arg(long, default_value_t = 80)]
        port: u16,
    },
    /// (internal) Answer every UDP datagram with SHOAL_TASK_NAME and
    /// SHOAL_TASK_ID (UDP service tasks in the tests).
    #[command(hide = true)]
    UdpEcho {
        #[arg(long, default_value_t = 53)]
        port: u16,
    },
    /// (internal) Accept one TCP connection, read to EOF, print JSON.
    #[command(hide = true)]
    TcpSink {
        #[arg(long)]
        listen: String,
        /// Hash what arrives (FNV-1a 64).
        #[arg(long)]
        hash: bool,
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// (internal) Connect, send for --seconds or --bytes, print JSON.
    #[command(hide = true)]
    TcpSource {
        #[arg(long)]
        to: String,
        #[arg(long)]
        seconds: Option<f64>,
        #[arg(long)]
        bytes: Option<u64>,
        #[arg(long)]
        hash: bool,
    },
}

/// A comma-separated host list, one CLI argument (clap would read a
/// `Vec<HostId>` field as several arguments).
#[derive(Clone)]
struct Hosts(Vec<HostId>);

fn parse_hosts(s: &str) -> Result<Hosts, String> {
    s.split(',')
        .map(|h| h.trim().parse::<HostId>().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()
        .map(Hosts)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shoal-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let state_file = cli.state;
    match cli.cmd {
        Cmd::Up {
            nodes,
            managers,
            data_path,
            containerd,
        } => up(&state_file, nodes, managers, data_path, containerd)?,
        Cmd::Down => down(&state_file)?,
        Cmd::Status => status(&load(&state_file)?)?,
        Cmd::Exec { host, argv } => {
            let lab = load(&state_file)?;
            let status = lab
                .command(host, &argv)?
                .status()
                .with_context(|| format!("running {argv:?} on {host}"))?;
            let code = status
                .code()
                .or_else(|| status.signal().map(|s| 128 + s))
                .unwrap_or(1);
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        Cmd::Kill { host } => {
            let lab = load(&state_file)?;
            lab.kill(host)?;
            println!("{host}: daemon {}", lab.daemon_state(host)?);
        }
        Cmd::Pause { host } => {
            let lab = load(&state_file)?;
            lab.pause(host)?;
            println!("{host}: daemon {}", lab.daemon_state(host)?);
        }
        Cmd::Resume { host } => {
            let lab = load(&state_file)?;
            lab.resume(host)?;
            println!("{host}: daemon {}", lab.daemon_state(host)?);
        }
        Cmd::Restart { host } => {
            let lab = load(&state_file)?;
            lab.restart(host)?;
            let pid = lab.host(host)?.daemon.map(|d| d.pid).unwrap_or_default();
            println!("{host}: daemon restarted (pid {pid}) and answering");
        }
        Cmd::Partition { a, b } => {
            let lab = load(&state_file)?;
            lab.partition(&a.0, &b.0)?;
            println!("partitioned {} | {}", list(&a.0), list(&b.0));
        }
        Cmd::Heal => {
            load(&state_file)?.heal()?;
            println!("healed: all partitions removed");
        }
        Cmd::Gc => gc(&state_file)?,
        Cmd::Chaos {
            seed,
            minutes,
            nodes,
            managers,
            writers,
            settle,
            no_workloads,
            no_services,
            host_processes,
            keep_on_failure,
        } => {
            shoal_lab::preflight()?;
            let seed = seed.unwrap_or_else(rand::random);
            let cfg = shoal_lab::chaos::ChaosConfig {
                duration: Duration::from_secs_f64(minutes.max(0.0) * 60.0),
                nodes,
                managers,
                writers,
                settle: Duration::from_secs(settle),
                workloads: !no_workloads,
                services: !no_services,
                keep_on_failure,
                host_processes: match host_processes {
                    false => None,
                    true => Some(vec![
                        std::env::current_exe()
                            .context("finding shoal-lab itself")?
                            .to_string_lossy()
                            .into_owned(),
                        "http-echo".into(),
                        "--port".into(),
                        "80".into(),
                    ]),
                },
                ..shoal_lab::chaos::ChaosConfig::new(seed)
            };
            let report = shoal_lab::chaos::run(&cfg, &[])?;
            if !report.passed() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::HttpEcho { port } => shoal_lab::bench::http_echo(port)?,
        Cmd::UdpEcho { port } => shoal_lab::bench::udp_echo(port)?,
        Cmd::TcpSink {
            listen,
            hash,
            timeout,
        } => {
            let v = shoal_lab::bench::tcp_sink(&listen, hash, Duration::from_secs(timeout))?;
            println!("{v}");
        }
        Cmd::TcpSource {
            to,
            seconds,
            bytes,
            hash,
        } => {
            if seconds.is_none() && bytes.is_none() {
                bail!("tcp-source needs --seconds or --bytes");
            }
            println!(
                "{}",
                shoal_lab::bench::tcp_source(&to, seconds, bytes, hash)?
            );
        }
        Cmd::Bench {
            name,
            seconds,
            trials,
            out,
            seed,
            out_dir,
            quick,
            only,
            replicas,
            host_processes,
        } => {
            shoal_lab::preflight()?;
            match name.as_str() {
                "all" => {
                    let size = if quick {
                        shoal_lab::bench::Size::Quick
                    } else {
                        shoal_lab::bench::Size::Full
                    };
                    let report = shoal_lab::bench::all(size, &out_dir, &only)?;
                    let failed = report["benches"]
                        .as_array()
                        .is_some_and(|b| b.iter().any(|b| b["pass"] == false));
                    if failed {
                        return Ok(ExitCode::FAILURE);
                    }
                }
                "overlay" => shoal_lab::bench::overlay(
                    seconds.min(30) as f64,
                    50,
                    &std::env::current_exe().context("finding shoal-lab itself")?,
                    out.as_deref(),
                )?,
                "service" => shoal_lab::bench::service(
                    replicas,
                    3,
                    3.0,
                    8,
                    &std::env::current_exe().context("finding shoal-lab itself")?,
                    host_processes,
                    out.as_deref(),
                )?,
                "raft" => shoal_lab::bench::raft(seconds, out.as_deref())?,
                "session" => shoal_lab::bench::session(20, trials.max(20), out.as_deref())?,
                "propagation" => shoal_lab::bench::propagation(20, 50, out.as_deref())?,
                "failure" => shoal_lab::bench::failure(20, out.as_deref())?,
                "gossip-bandwidth" => shoal_lab::bench::bandwidth(20, out.as_deref())?,
                "sim" => shoal_lab::bench::sim(1000, seed, out.as_deref())?,
                "reconcile" => shoal_lab::bench::reconcile(10_000, out.as_deref())?,
                _ => shoal_lab::bench::failover(trials, out.as_deref())?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list(hosts: &[HostId]) -> String {
    hosts
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn load(state_file: &Path) -> Result<Lab> {
    if !state_file.exists() {
        bail!(
            "no lab is up ({} does not exist): start one with `shoal-lab up --nodes 5`",
            state_file.display()
        );
    }
    Ok(Lab::from_state_file(state_file)?)
}

fn up(
    state_file: &Path,
    nodes: usize,
    managers: Option<usize>,
    data_path: bool,
    containerd: bool,
) -> Result<()> {
    shoal_lab::preflight()?;
    if let Some(dir) = state_file.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Creating the state file first is the lock against a second `up`.
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(state_file)
    {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let which = LabState::load(state_file)
                .map(|s| format!("lab {}", s.prefix))
                .unwrap_or_else(|_| "a lab".into());
            bail!(
                "{which} is already up (recorded in {}): run `shoal-lab down` first",
                state_file.display()
            );
        }
        Err(e) => return Err(e).with_context(|| format!("creating {}", state_file.display())),
    }
    let mut builder = Lab::builder().nodes(nodes).data_path(data_path);
    if let Some(m) = managers {
        builder = builder.managers(m);
    }
    if containerd {
        builder = builder.containerd(true).daemon_config(&format!(
            "insecure_registries = [\"{}\"]\n",
            shoal_lab::registry_addr(1)
        ));
    }
    let lab = match builder.start() {
        Ok(lab) => lab,
        Err(e) => {
            let _ = fs::remove_file(state_file);
            return Err(e.into());
        }
    };
    if containerd {
        let pushed = lab.start_registry(1).and_then(|reg| {
            let layout = shoal_lab::image::build_echo_image(&lab.dir().join("echo-image"))?;
            let reference = format!("{reg}/shoal/echo:1");
            shoal_lab::image::push(&lab, 1, &layout, &reference)?;
            Ok(reference)
        });
        match pushed {
            Ok(r) => println!(
                "registry on h1; image {r} pushed (GET / answers with the container's host name)"
            ),
            Err(e) => {
                let _ = fs::remove_file(state_file);
                return Err(e.into());
            }
        }
    }
    if let Some(m) = managers {
        if let Err(e) = lab.init_swarm(m) {
            let _ = fs::remove_file(state_file);
            return Err(e.into());
        }
    }
    let state = lab.detach()?;
    state.save(state_file)?;
    println!(
        "lab {} is up: {} hosts on a private underlay (namespace {}, bridge ul0, 10.77.0.0/24){}",
        state.prefix,
        state.hosts.len(),
        state.underlay_ns,
        if state.data_path {
            "; data path on dp0, 10.77.1.0/24"
        } else {
            ""
        }
    );
    for h in &state.hosts {
        let data = h
            .data_addr
            .map(|a| format!("  data {a}"))
            .unwrap_or_default();
        let pid = h.daemon.map(|d| d.pid).unwrap_or_default();
        println!(
            "  {:<4} netns {:<14} {}{}  daemon pid {}  socket {}",
            h.name,
            h.ns,
            h.addr,
            data,
            pid,
            h.socket.display()
        );
    }
    if let Some(m) = state.managers {
        println!("swarm: h1..h{m} managers, the rest workers:  shoal-lab exec h1 -- shoal node ls");
    }
    println!("reach a host:  shoal-lab exec h2 -- shoal info");
    println!("logs:          {}/hN/daemon.log", state.dir.display());
    println!("tear down:     shoal-lab down");
    Ok(())
}

fn down(state_file: &Path) -> Result<()> {
    if !state_file.exists() {
        println!("no lab is up ({} does not exist)", state_file.display());
        return Ok(());
    }
    let state = match LabState::load(state_file) {
        Ok(s) => s,
        Err(e)
            if fs::metadata(state_file)
                .map(|m| m.len() == 0)
                .unwrap_or(false) =>
        {
            // An interrupted `up` leaves its empty lock file behind.
            fs::remove_file(state_file)?;
            println!("removed an empty state file ({e}); nothing else was recorded");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let prefix = state.prefix.clone();
    Lab::from_state_file(state_file)?.down()?;
    fs::remove_file(state_file).with_context(|| format!("removing {}", state_file.display()))?;
    println!("lab {prefix} is down");
    Ok(())
}

fn status(lab: &Lab) -> Result<()> {
    let st = lab.state();
    println!(
        "lab {}  underlay {}  dir {}{}",
        st.prefix,
        st.underlay_ns,
        st.dir.display(),
        st.managers
            .map(|m| format!("  managers {m} (recorded)"))
            .unwrap_or_default()
    );
    for h in &st.hosts {
        let state = lab.daemon_state(h.index)?;
        let answers = lab.answers(h.index, Duration::from_secs(2))?;
        let cut = if h.blocked.is_empty() {
            String::new()
        } else {
            let b: Vec<HostId> = h.blocked.iter().map(|&i| HostId(i)).collect();
            format!("  cut off from {}", list(&b))
        };
        println!(
            "  {:<4} {:<14} {:<11} pid {:<8} {:<22} {}{}",
            h.name,
            h.ns,
            h.addr,
            h.daemon.map(|d| d.pid).unwrap_or_default(),
            state.to_string(),
            if answers { "answers" } else { "no answer" },
            cut
        );
    }
    Ok(())
}

/// Cleans labs whose owner is gone, from their own recorded state only.
fn gc(state_file: &Path) -> Result<()> {
    let root = Path::new(LAB_ROOT);
    let current = LabState::load(state_file).ok().map(|s| s.prefix);
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            println!("nothing to collect ({} does not exist)", root.display());
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
    };
    let mut cleaned = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        if !dir.is_dir() || !shoal_lab::names::is_valid_prefix(&name) {
            continue;
        }
        let state = match LabState::load(&dir.join("state.json")) {
            Ok(s) if s.dir == dir => s,
            Ok(_) => {
                println!("{name}: state.json names another directory; left alone");
                continue;
            }
            Err(e) => {
                println!("{name}: {e}; left alone");
                continue;
            }
        };
        match state.owner {
            Some(owner) if is_alive(&owner) => {
                println!("{name}: in use by pid {}", owner.pid);
                continue;
            }
            None if current.as_deref() == Some(name.as_str()) => {
                println!(
                    "{name}: the lab of `shoal-lab up` ({}); use `shoal-lab down`",
                    state_file.display()
                );
                continue;
            }
            _ => {}
        }
        match Lab::from_state(state).and_then(Lab::down) {
            Ok(()) => {
                println!("{name}: removed");
                cleaned += 1;
            }
            Err(e) => println!("{name}: {e}"),
        }
    }
    println!("gc: {cleaned} lab(s) removed");
    Ok(())
}
