//! `bench service`: a replicated service of `http-echo` tasks publishing a
//! port, measured from create to every task answering through the VIP and
//! the routing mesh, from a task's SIGKILL to its replacement answering,
//! and in requests/s through the mesh, the VIP and straight to a task.
//! Also the servers service tasks run (`shoal-lab http-echo`, `udp-echo`)
//! and [`remove_services`], which tears a service down without leaking its
//! task processes.
//!
//! Data flow: the CLI ([`cli_timeout`]) creates the network and the
//! service; the daemons' API ([`Conn`]) says which tasks run where;
//! clients on threads inside host or task namespaces ([`in_netns`],
//! [`enter_netns`]) do `GET /` ([`http_get`]) and read which task answered
//! from the echo body; the figures go out as one JSON line through
//! `super::emit`.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{emit, ms, percentile, runtime};
use crate::probe::{
    cli_timeout, enter_netns, host_netns, http_get, in_netns, kill_if_same, workloads, Conn,
    Request, Response, TaskRow, TaskState, Workload,
};
use crate::{Lab, LabError};

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
    host_processes: bool,
    out: Option<&Path>,
) -> Result<(), LabError> {
    let nodes = 5;
    let mut builder = Lab::builder().nodes(nodes);
    builder = if host_processes {
        builder.daemon_config(SERVICE_DAEMON_CONFIG)
    } else {
        builder.containerd(true).daemon_config(&format!(
            "{SERVICE_DAEMON_CONFIG}insecure_registries = [\"{}\"]\n",
            crate::registry_addr(1)
        ))
    };
    let lab = builder.start()?;
    lab.init_swarm(1)?;
    let tasks = if host_processes {
        Tasks::Host(lab_bin.to_string_lossy().into_owned())
    } else {
        let reg = lab.start_registry(1)?;
        let layout = crate::image::build_echo_image(&lab.dir().join("echo-image"))?;
        let reference = format!("{reg}/shoal/echo:1");
        crate::image::push(&lab, 1, &layout, &reference)?;
        Tasks::Image(reference)
    };
    // Images: a first service pulls on every node (cold), the measured
    // one below finds the image there (warm).
    let cold = match &tasks {
        Tasks::Image(_) => {
            let r = cold_create(&lab, nodes, replicas, &tasks);
            let cleaned = remove_services(&lab, 1, &["cold"]);
            let r = r?;
            cleaned.map_err(bench_err("removing the cold service"))?;
            Some(r)
        }
        Tasks::Host(_) => None,
    };
    let r = service_in(&lab, nodes, replicas, kills, seconds, clients, &tasks);
    let cleaned = remove_services(&lab, 1, &["web"]);
    let mut line = r?;
    cleaned.map_err(bench_err("removing the service"))?;
    line["tasks"] = json!(match &tasks {
        Tasks::Image(r) => format!("containers from {r}"),
        Tasks::Host(_) => "host processes (--runtime host)".into(),
    });
    if let Some(cold) = cold {
        line["cold_mesh_all_hosts_ms"] = json!(ms(cold));
    }
    // Idle daemons: what each one holds once the service is gone.
    let rss: Vec<f64> = lab
        .hosts()
        .iter()
        .filter_map(|h| h.daemon.map(|d| d.pid))
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| (kib / 1024.0 * 10.0).round() / 10.0)
        .collect();
    line["daemon_rss_idle_mib"] = json!(rss);
    let summary = format!(
        "service ({}): {nodes} hosts, {replicas} replicas: cold create (first pull) -> mesh answering on every host {} ms; create -> all {replicas} running {} ms, all {replicas} answering through the VIP {} ms, mesh answering on every host {} ms; task SIGKILL -> replacement answering through the mesh: median {} ms {}; requests/s ({clients} clients, fresh connections): mesh {}, VIP {}, direct {} (mesh/direct {}); idle daemon RSS {} MiB",
        line["tasks"], line.get("cold_mesh_all_hosts_ms").cloned().unwrap_or(json!("-")),
        line["all_running_ms"], line["vip_all_tasks_ms"], line["mesh_all_hosts_ms"],
        line["replace_median_ms"], line["replace_ms"], line["mesh_rps"], line["vip_rps"],
        line["direct_rps"], line["mesh_direct_ratio"], line["daemon_rss_idle_mib"]
    );
    emit(out, &summary, &line)?;
    lab.down()
}

/// What the service's tasks run.
enum Tasks {
    /// Containers from this image (in the lab's registry).
    Image(String),
    /// Host processes of this `shoal-lab` binary's `http-echo`.
    Host(String),
}

impl Tasks {
    /// `service create` arguments after the flags.
    fn args(&self) -> Vec<String> {
        match self {
            Tasks::Image(r) => vec![r.clone()],
            Tasks::Host(bin) => ["--runtime", "host", "--", bin, "http-echo", "--port", "80"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// Creates service `cold` (nodes pull the image) and waits until every
/// host's published port 8081 answers: the time from create.
fn cold_create(
    lab: &Lab,
    nodes: usize,
    replicas: usize,
    tasks: &Tasks,
) -> Result<Duration, LabError> {
    let t = Duration::from_secs(10);
    let n = replicas.to_string();
    let mut args: Vec<String> = [
        "service",
        "create",
        "--name",
        "cold",
        "--replicas",
        &n,
        "-p",
        "8081:80",
    ]
    .map(String::from)
    .to_vec();
    args.extend(tasks.args());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    cli_timeout(lab, 1, &argv, t).map_err(bench_err("service create cold"))?;
    let limit = Duration::from_secs(180);
    for h in 1..=nodes {
        let from = host_netns(lab, h % nodes + 1)?;
        let to = std::net::SocketAddr::from((lab.host(h)?.addr, 8081));
        in_netns(&from, || {
            while t0.elapsed() < limit {
                if http_get(to, Duration::from_millis(500)).is_ok_and(|b| b.starts_with("cold.")) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(format!("{to} did not answer within {limit:?}"))
        })
        .and_then(|r| r)
        .map_err(bench_err("cold service"))?;
    }
    let took = t0.elapsed();
    println!(
        "service: cold create (every node pulls) -> mesh answering on every host {:.0} ms",
        ms(took)
    );
    Ok(took)
}

fn service_in(
    lab: &Lab,
    nodes: usize,
    replicas: usize,
    kills: usize,
    seconds: f64,
    clients: usize,
    tasks: &Tasks,
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
    let mut args: Vec<String> = [
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
    ]
    .map(String::from)
    .to_vec();
    args.extend(tasks.args());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    cli_timeout(lab, 1, &argv, t).map_err(bench_err("service create"))?;
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
        "server": match tasks {
            Tasks::Image(_) => "busybox httpd in the echo image (a process per connection)",
            Tasks::Host(_) => "shoal-lab http-echo (thread per connection, HTTP/1.0, Connection: close)",
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
