//! Services end to end on real kernels: the scheduler spreads tasks over
//! three lab hosts, every host answers on the published port through the
//! routing mesh, tasks resolve `web` (VIP) and `tasks.web` through the
//! embedded DNS and reach the service through the VIP, a dead node's task
//! is replaced and traffic keeps flowing, scaling down and removing leave
//! no kernel state behind, and bad input is refused without side effects.
//! Needs root, iproute2, nftables, curl and the built binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shoal_lab::Lab;
use shoal_tests::{cli, create_echo, exec, json, wait_for, wait_until};

/// h1's underlay address; the test's own upstream resolver listens there.
const UPSTREAM: &str = "10.77.0.1:5353";

fn config() -> String {
    format!(
        "heartbeat_ms = 500\ngossip_profile = \"fast\"\nmetrics_addr = \"\"\ndns_upstream = [\"{UPSTREAM}\"]\n"
    )
}

/// Running tasks of `svc`: (task id, node host name, state).
fn running(lab: &Lab, svc: &str) -> Vec<(String, String)> {
    json(lab, 1, &["service", "ps", svc])
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "running" && t["desired"] == "running")
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_string(),
                t["node_hostname"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// GET http://addr:port/ from `host`'s namespace: the body, if answered.
fn http(lab: &Lab, host: usize, url: &str) -> Option<String> {
    let (ok, out) = exec(lab, host, &["curl", "-s", "--max-time", "2", url]);
    ok.then(|| out.trim().to_string())
}

/// A task workload on `host` (from `shoal ps`): (pid, task id).
fn task_on(lab: &Lab, host: usize) -> Option<(u32, String)> {
    json(lab, host, &["ps"])
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["task"].is_string())
        .map(|w| {
            (
                w["pid"].as_u64().unwrap() as u32,
                w["task"].as_str().unwrap().to_string(),
            )
        })
}

/// Run `argv` inside a task's network and mount namespaces.
fn in_task(lab: &Lab, host: usize, pid: u32, argv: &[&str]) -> (bool, String) {
    let t = pid.to_string();
    let mut a = vec!["nsenter", "-t", &t, "-n", "-m", "--"];
    a.extend_from_slice(argv);
    exec(lab, host, &a)
}

/// The test's own upstream resolver, in h1's namespace: it knows one name.
struct Upstream {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    fn start(ns: &str) -> Upstream {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let ns = ns.to_string();
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let sock = std::net::UdpSocket::bind(UPSTREAM).unwrap();
                sock.set_nonblocking(true).unwrap();
                let records: BTreeMap<String, std::net::Ipv4Addr> =
                    [("upstream.test".to_string(), "192.0.2.53".parse().unwrap())].into();
                let _server = shoal::worker::dns::spawn_static(sock, records).unwrap();
                ready_tx.send(()).unwrap();
                tokio::task::spawn_blocking(move || {
                    let _ = rx.recv();
                })
                .await
                .unwrap();
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Upstream {
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn services_balance_resolve_fail_over_and_clean_up() {
    let lab = Lab::builder()
        .nodes(3)
        .daemon_config(&config())
        .start()
        .unwrap();
    assert_eq!(lab.host(1).unwrap().addr.to_string(), "10.77.0.1");
    let _upstream = Upstream::start(&lab.host(1).unwrap().ns);
    lab.init_swarm(1).unwrap();
    cli(&lab, 1, &["network", "create", "-d", "overlay", "app"]).unwrap();
    wait_for("gossip everywhere", Duration::from_secs(20), || {
        (1..=3).all(|h| cli(&lab, h, &["gossip", "members"]).is_ok())
    });

    // Bad input: nothing created.
    let bad: &[(&[&str], &str)] = &[
        (&["--network", "nope"], "network nope not found"),
        (&["--replicas", "-1"], "invalid replicas"),
        (&["-p", "8080"], "invalid publish"),
        (&["-p", "published=80,target=x"], "invalid publish"),
    ];
    for (args, want) in bad {
        let mut a = vec!["service", "create", "--runtime", "host", "--name", "bad"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--", "sleep", "1"]);
        let e = cli(&lab, 1, &a).unwrap_err();
        assert!(e.contains(want), "{args:?}: {e}");
    }
    assert_eq!(json(&lab, 1, &["service", "ls"]), serde_json::json!([]));

    // Tasks run the lab's tiny HTTP server, answering with their task name.
    let echo = shoal_tests::shoal_lab_bin().display().to_string();
    let t0 = std::time::Instant::now();
    cli(
        &lab,
        1,
        &[
            "service",
            "create",
            "--runtime",
            "host",
            "--name",
            "web",
            "--replicas",
            "3",
            "--network",
            "app",
            "-p",
            "8080:80",
            "--",
            echo.as_str(),
            "http-echo",
            "--port",
            "80",
        ],
    )
    .unwrap();
    // A second service may not take the same port.
    let e = cli(
        &lab,
        1,
        &[
            "service",
            "create",
            "--runtime",
            "host",
            "--name",
            "other",
            "-p",
            "8080:81",
            "--",
            "sleep",
            "9",
        ],
    )
    .unwrap_err();
    assert!(
        e.contains("port 8080/tcp is already in use by service web"),
        "{e}"
    );

    let (tasks, took) = wait_until("3 running tasks", Duration::from_secs(60), || {
        let r = running(&lab, "web");
        (r.len() == 3).then_some(r)
    });
    let nodes: BTreeSet<&String> = tasks.iter().map(|(_, n)| n).collect();
    assert_eq!(nodes.len(), 3, "spread over the 3 nodes: {tasks:?}");
    eprintln!("3 tasks running after {took:?}");

    // Routing mesh: every host answers on 8080, and more than one task
    // answers over many requests.
    for h in 1..=3 {
        let url = format!("http://{}:8080/", lab.host(h).unwrap().addr);
        let took = wait_for("published port answers", Duration::from_secs(30), || {
            http(&lab, h, &url).is_some_and(|b| b.starts_with("web."))
        });
        eprintln!(
            "h{h}:8080 answers after {took:?} (since create: {:?})",
            t0.elapsed()
        );
    }
    let url1 = format!("http://{}:8080/", lab.host(1).unwrap().addr);
    let answers: BTreeSet<String> = (0..12).filter_map(|_| http(&lab, 2, &url1)).collect();
    assert!(answers.len() > 1, "balanced over tasks: {answers:?}");

    // `network inspect --verbose`: every node's view, in sync, with the
    // other two nodes as peers.
    let (views, took) = wait_until("every node in sync", Duration::from_secs(20), || {
        let v = json(&lab, 1, &["network", "inspect", "--verbose", "app"])[0]["Nodes"].clone();
        let ok = (1..=3).all(|h| {
            let n = &v[format!("h{h}")];
            n["InSync"] == true && n["Peers"].as_array().is_some_and(|p| p.len() == 2)
        });
        ok.then_some(v)
    });
    eprintln!("inspect --verbose: all in sync after {took:?}: {views}");
    assert_eq!(views["h2"]["VTEP"], "10.77.0.2");

    // DNS and VIP from inside a task.
    let (pid, _) = task_on(&lab, 1).expect("a task on h1");
    let svc = json(&lab, 1, &["service", "inspect", "web"]);
    let app_id = json(&lab, 1, &["network", "inspect", "app"])[0]["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let vip = svc[0]["vips"][&app_id].as_str().unwrap().to_string();
    let (ok, out) = in_task(&lab, 1, pid, &["getent", "hosts", "web"]);
    assert!(
        ok && out.starts_with(&format!("{vip} ")),
        "web -> VIP {vip}: {out}"
    );
    let (ok, out) = in_task(&lab, 1, pid, &["getent", "ahostsv4", "tasks.web"]);
    let ips: BTreeSet<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(ok && ips.len() == 3, "tasks.web -> 3 IPs: {out}");
    let (ok, out) = in_task(
        &lab,
        1,
        pid,
        &["curl", "-s", "--max-time", "3", "http://web/"],
    );
    assert!(
        ok && out.starts_with("web."),
        "HTTP to web via the VIP: {out}"
    );
    // Other names go to the node's upstream (the test's own resolver).
    let (ok, out) = in_task(&lab, 1, pid, &["getent", "hosts", "upstream.test"]);
    assert!(ok && out.starts_with("192.0.2.53"), "forwarded: {out}");

    // Kill -9 a worker node running a task (and the task): it is replaced
    // elsewhere, and the mesh keeps answering.
    let victim = 3;
    let (vpid, vtask) = task_on(&lab, victim).expect("a task on h3");
    lab.kill(victim).unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vpid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let (_, took) = wait_until("replacement task running", Duration::from_secs(60), || {
        let r = running(&lab, "web");
        (r.len() == 3 && !r.iter().any(|(id, _)| *id == vtask)).then_some(r)
    });
    eprintln!("task of the killed node replaced after {took:?}");
    let took = wait_for(
        "mesh serves only live tasks",
        Duration::from_secs(30),
        || (0..6).all(|_| http(&lab, 2, &url1).is_some()),
    );
    eprintln!("mesh answering every request again after {took:?}");
    let ok = (0..20).filter(|_| http(&lab, 1, &url1).is_some()).count();
    assert_eq!(ok, 20, "every request succeeds after failure detection");
    let (ok, out) = in_task(&lab, 1, pid, &["getent", "ahostsv4", "tasks.web"]);
    let ips: BTreeSet<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(ok && ips.len() == 3, "DNS has the 3 live tasks: {out}");

    // Scale down, then remove: no task state left on the live nodes.
    cli(&lab, 1, &["service", "scale", "web=1"]).unwrap();
    wait_for("1 task left", Duration::from_secs(30), || {
        running(&lab, "web").len() == 1
            && (1..=2)
                .map(|h| {
                    json(&lab, h, &["ps"])
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|w| w["task"].is_string())
                        .count()
                })
                .sum::<usize>()
                == 1
    });
    cli(&lab, 1, &["service", "rm", "web"]).unwrap();
    wait_for("no workloads left", Duration::from_secs(30), || {
        (1..=2).all(|h| json(&lab, h, &["ps"]).as_array().unwrap().is_empty())
    });
    for h in 1..=2 {
        let (_, tables) = exec(&lab, h, &["nft", "list", "tables"]);
        assert!(!tables.contains("shoal-publish"), "h{h}: {tables}");
        // Records, logs, resolv.conf and namespace files all go.
        let dir = lab.host(h).unwrap().run_dir.join("workloads");
        wait_for("workload files removed", Duration::from_secs(10), || {
            std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none())
        });
        // The reconciler removes a network's namespace once nothing here
        // uses it (within its period).
        let nets = lab.host(h).unwrap().run_dir.join("overlay/netns");
        wait_for(
            "network namespaces removed",
            Duration::from_secs(10),
            || std::fs::read_dir(&nets).map_or(true, |mut d| d.next().is_none()),
        );
    }
    assert_eq!(json(&lab, 1, &["service", "ls"]), serde_json::json!([]));
}

/// `--mode global`: one task on every ready, active node, through the
/// routing mesh on every host; a drained node loses its task and gets it
/// back when active again; `--replicas` and `scale` are refused.
#[test]
fn a_global_service_follows_the_nodes() {
    let lab = Lab::builder()
        .nodes(3)
        .daemon_config(&config())
        .start()
        .unwrap();
    lab.init_swarm(1).unwrap();
    let lab = &lab;
    let create = |extra: &[&str]| {
        let mut f = extra.to_vec();
        f.extend_from_slice(&["-p", "8090:80"]);
        create_echo(lab, "g", &f)
    };
    let e = create(&["--mode", "global", "--replicas", "2"]).unwrap_err();
    assert!(
        e.contains("replicas can only be used with replicated mode"),
        "{e}"
    );
    create(&["--mode", "global"]).unwrap();
    let on_every_host = |n: usize| {
        move || {
            let r = running(lab, "g");
            let hosts: BTreeSet<&String> = r.iter().map(|(_, h)| h).collect();
            (r.len() == n && hosts.len() == n).then_some(r.clone())
        }
    };
    wait_until(
        "a task on each of 3 hosts",
        Duration::from_secs(30),
        on_every_host(3),
    );
    let ls = json(lab, 1, &["service", "ls"]);
    assert_eq!(ls[0]["spec"]["mode"], "global", "{ls}");
    assert_eq!(
        (ls[0]["running"].as_u64(), ls[0]["desired"].as_u64()),
        (Some(3), Some(3))
    );
    let (ok, table) = exec(lab, 1, &["shoal", "service", "ls"]);
    assert!(
        ok && table.contains("global") && table.contains("3/3"),
        "{table}"
    );
    for h in 1..=3 {
        let addr = format!("http://{}:8090/", lab.host(h).unwrap().addr);
        wait_until(
            &format!("the mesh on h{h}"),
            Duration::from_secs(20),
            || http(lab, h, &addr).filter(|b| b.starts_with("g.")),
        );
    }
    let e = cli(lab, 1, &["service", "scale", "g=5"]).unwrap_err();
    assert!(
        e.contains("scale can only be used with replicated mode"),
        "{e}"
    );

    // h3 drained: its task goes, the others stay; active: it comes back.
    let h3 = shoal_tests::node_id(lab, 3);
    cli(lab, 1, &["node", "update", "--availability", "drain", &h3]).unwrap();
    let (two, _) = wait_until(
        "2 tasks after the drain",
        Duration::from_secs(30),
        on_every_host(2),
    );
    assert!(two.iter().all(|(_, h)| h != "h3"), "{two:?}");
    cli(lab, 1, &["node", "update", "--availability", "active", &h3]).unwrap();
    wait_until(
        "h3 has its task again",
        Duration::from_secs(30),
        on_every_host(3),
    );
    cli(lab, 1, &["service", "rm", "g"]).unwrap();
}

/// `--constraint` with node labels and roles: tasks go only where every
/// constraint holds, wait `pending` saying so where none does, and move
/// off a node that loses its label; bad constraints and labels are
/// refused with the reason.
#[test]
fn constraints_and_node_labels_place_tasks() {
    let lab = Lab::builder()
        .nodes(3)
        .daemon_config(&config())
        .start()
        .unwrap();
    lab.init_swarm(1).unwrap();
    let lab = &lab;
    let create = |name: &str, replicas: &str, constraint: &str| {
        cli(
            lab,
            1,
            &[
                "service",
                "create",
                "--runtime",
                "host",
                "--name",
                name,
                "--replicas",
                replicas,
                "--constraint",
                constraint,
                "--",
                "sleep",
                "100000",
            ],
        )
    };
    let e = create("bad", "1", "node.role=manager").unwrap_err();
    assert!(e.contains("expected one operator from ==, !="), "{e}");
    let e = cli(lab, 1, &["node", "update", "--label-rm", "nope", "h2"]).unwrap_err();
    assert!(e.contains("key nope doesn't exist in node's labels"), "{e}");
    cli(lab, 1, &["node", "update", "--label-add", "zone=a", "h2"]).unwrap();
    let inspect = json(lab, 1, &["node", "inspect", "h2"]);
    assert_eq!(inspect[0]["labels"]["zone"], "a", "{inspect}");

    create("zoned", "2", "node.labels.zone==a").unwrap();
    create("boss", "1", "node.role==manager").unwrap();
    create("nowhere", "1", "node.labels.zone==b").unwrap();
    let hosts =
        |svc: &str| -> Vec<String> { running(lab, svc).into_iter().map(|(_, h)| h).collect() };
    wait_until("zoned on h2 only", Duration::from_secs(30), || {
        (hosts("zoned") == ["h2", "h2"]).then_some(())
    });
    wait_until("boss on the manager", Duration::from_secs(30), || {
        (hosts("boss") == ["h1"]).then_some(())
    });
    let pending = |svc: &str| {
        json(lab, 1, &["service", "ps", svc])
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["node"] == "" && t["state"] == "new")
            .map(|t| t["message"].as_str().unwrap_or_default().to_string())
    };
    let (why, _) = wait_until("nowhere pending", Duration::from_secs(30), || {
        pending("nowhere")
    });
    assert_eq!(
        why,
        "no suitable node (scheduling constraints not satisfied on 3 nodes)"
    );

    // `service update --constraint-rm/--constraint-add`: nowhere's
    // impossible constraint swapped for one that holds on the manager.
    cli(
        lab,
        1,
        &[
            "service",
            "update",
            "--constraint-rm",
            "node.labels.zone == b",
            "--constraint-add",
            "node.role==manager",
            "nowhere",
        ],
    )
    .unwrap();
    let spec = json(lab, 1, &["service", "inspect", "nowhere"]);
    assert_eq!(
        spec[0]["spec"]["constraints"],
        serde_json::json!(["node.role==manager"])
    );
    wait_until(
        "nowhere now on the manager",
        Duration::from_secs(30),
        || (hosts("nowhere") == ["h1"]).then_some(()),
    );

    // h2 loses the label: its tasks stop and wait, as nowhere fits them.
    cli(lab, 1, &["node", "update", "--label-rm", "zone", "h2"]).unwrap();
    wait_until(
        "zoned tasks off h2, pending",
        Duration::from_secs(30),
        || (hosts("zoned").is_empty() && pending("zoned").is_some()).then_some(()),
    );
    // --replicas-max-per-node 1 on the 2 workers: 2 run, 1 waits.
    cli(
        lab,
        1,
        &[
            "service",
            "create",
            "--runtime",
            "host",
            "--name",
            "one-each",
            "--replicas",
            "3",
            "--replicas-max-per-node",
            "1",
            "--constraint",
            "node.role==worker",
            "--",
            "sleep",
            "100000",
        ],
    )
    .unwrap();
    let (why, _) = wait_until(
        "one-each: 2 running, 1 pending",
        Duration::from_secs(30),
        || {
            let mut h = hosts("one-each");
            h.sort();
            (h == ["h2", "h3"]).then(|| pending("one-each")).flatten()
        },
    );
    assert_eq!(why, "no suitable node (max replicas per node limit exceed)");
    // spread=node.labels.zone over zone a (h1) and zone b (h2, h3): 6
    // tasks are 3 in each zone, so h1 takes 3 (plain spread would give 2).
    cli(lab, 1, &["node", "update", "--label-add", "zone=a", "h1"]).unwrap();
    for h in ["h2", "h3"] {
        cli(lab, 1, &["node", "update", "--label-add", "zone=b", h]).unwrap();
    }
    let e = cli(
        lab,
        1,
        &[
            "service",
            "create",
            "--runtime",
            "host",
            "--name",
            "x",
            "--placement-pref",
            "spread=zone",
            "--",
            "sleep",
            "1",
        ],
    )
    .unwrap_err();
    assert!(e.contains("expected spread=node.labels.<label>"), "{e}");
    cli(
        lab,
        1,
        &[
            "service",
            "create",
            "--runtime",
            "host",
            "--name",
            "zones",
            "--replicas",
            "6",
            "--placement-pref",
            "spread=node.labels.zone",
            "--",
            "sleep",
            "100000",
        ],
    )
    .unwrap();
    let (per_host, _) = wait_until("6 zones tasks", Duration::from_secs(30), || {
        let h = hosts("zones");
        (h.len() == 6).then_some(h)
    });
    let on = |name: &str| per_host.iter().filter(|h| *h == name).count();
    assert_eq!((on("h1"), on("h2") + on("h3")), (3, 3), "{per_host:?}");
    for s in ["zoned", "boss", "nowhere", "one-each", "zones"] {
        cli(lab, 1, &["service", "rm", s]).unwrap();
    }
}

/// `shoal network rm NETWORK`, answering `answer` to its prompt: (success,
/// stdout, stderr).
fn network_rm(lab: &Lab, args: &[&str], answer: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut argv = vec![
        lab.shoal_bin().display().to_string(),
        "network".into(),
        "rm".into(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    let mut child = lab
        .command(1, &argv)
        .unwrap()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(answer.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The seed's "customize the default ingress network": `network rm
/// ingress` warns and asks, is refused while a service publishes a port,
/// and a custom `--ingress` network with its own subnet, gateway and MTU
/// then carries the routing mesh on every host.
#[test]
fn a_custom_ingress_network_replaces_the_default_one() {
    let lab = Lab::builder()
        .nodes(3)
        .daemon_config(&config())
        .start()
        .unwrap();
    lab.form_swarm(3, 1).unwrap();
    let lab = &lab;
    let ingress = json(lab, 1, &["network", "inspect", "ingress"]);
    assert_eq!(ingress[0]["Ingress"], true, "{ingress}");
    create_echo(lab, "web", &["--replicas", "2", "-p", "8080:80"]).unwrap();

    // Asked, and answered no: nothing happens.
    let (ok, out, _) = network_rm(lab, &["ingress"], "n\n");
    assert!(ok, "{out}");
    assert!(
        out.contains("WARNING! Before removing the routing-mesh network")
            && out.contains("Are you sure you want to continue? [y/N]"),
        "{out}"
    );
    assert_eq!(
        json(lab, 1, &["network", "inspect", "ingress"])[0]["Ingress"],
        true
    );
    // Confirmed (or forced) while web publishes: refused with the reason.
    for (args, answer) in [(&["ingress"][..], "y\n"), (&["-f", "ingress"][..], "")] {
        let (ok, _, err) = network_rm(lab, args, answer);
        assert!(
            !ok && err
                .contains("ingress network cannot be removed because service web depends on it"),
            "{err}"
        );
    }
    cli(lab, 1, &["service", "rm", "web"]).unwrap();
    let (ok, out, err) = network_rm(lab, &["ingress"], "y\n");
    assert!(ok && out.contains("ingress"), "{out} {err}");
    let nets = json(lab, 1, &["network", "ls"]);
    assert!(
        nets.as_array()
            .unwrap()
            .iter()
            .all(|n| n["Ingress"] != true),
        "{nets}"
    );

    // The seed's replacement.
    cli(
        lab,
        1,
        &[
            "network",
            "create",
            "--driver",
            "overlay",
            "--ingress",
            "--subnet=10.11.0.0/16",
            "--gateway=10.11.0.2",
            "--opt",
            "com.docker.network.driver.mtu=1200",
            "my-ingress",
        ],
    )
    .unwrap();
    let e = cli(lab, 1, &["network", "create", "--ingress", "second"]).unwrap_err();
    assert!(e.contains("ingress"), "{e}");
    let mine = json(lab, 1, &["network", "inspect", "my-ingress"]);
    let ipam = &mine[0]["IPAM"]["Config"][0];
    assert_eq!(
        (ipam["Subnet"].as_str(), ipam["Gateway"].as_str()),
        (Some("10.11.0.0/16"), Some("10.11.0.2")),
        "{mine}"
    );
    create_echo(lab, "web", &["--replicas", "2", "-p", "8080:80"]).unwrap();
    for h in 1..=3 {
        let url = format!("http://{}:8080/", lab.host(h).unwrap().addr);
        wait_until(
            &format!("the mesh over my-ingress on h{h}"),
            Duration::from_secs(30),
            || http(lab, h, &url).filter(|b| b.starts_with("web.")),
        );
    }
    // A task's interface on my-ingress: an address of its subnet, MTU 1200.
    let host = (1..=3)
        .find(|h| task_on(lab, *h).is_some())
        .expect("a web task");
    let (pid, _) = task_on(lab, host).unwrap();
    let (_, addrs) = in_task(lab, host, pid, &["ip", "-o", "-4", "addr"]);
    let dev = addrs
        .lines()
        .find(|l| l.contains(" inet 10.11."))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no address in 10.11.0.0/16: {addrs}"))
        .to_string();
    let (_, link) = in_task(lab, host, pid, &["ip", "link", "show", &dev]);
    assert!(link.contains("mtu 1200"), "{link}");
    cli(lab, 1, &["service", "rm", "web"]).unwrap();
}
