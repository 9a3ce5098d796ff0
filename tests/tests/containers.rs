//! Service tasks as containers from an image, end to end: each lab host
//! runs its own containerd, h1 runs an OCI registry holding the echo test
//! image. A 3-replica service answers through the routing mesh on every
//! host, each host pulled the image for itself, the tasks are isolated as
//! Docker isolates them (no host data dir, no CAP_NET_ADMIN, PID 1 is the
//! entrypoint), a process past `--limit-memory` is OOM-killed (exit 137)
//! and replaced, an unknown image is rejected with the registry's reason
//! and leaves nothing in containerd. Needs root, iproute2, nftables, curl,
//! containerd, runc, docker-registry, skopeo, busybox-static and the built
//! binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;
use shoal_lab::{image, registry_addr, Lab};
use shoal_tests::{cli, exec, json, lab_with_echo_image, wait_until};

const HOSTS: usize = 3;

fn config() -> String {
    format!(
        "heartbeat_ms = 500\ngossip_profile = \"fast\"\nmetrics_addr = \"\"\nlog_level = \"info,shoal::worker::containers=debug\"\n\
         insecure_registries = [\"{}\"]\n",
        registry_addr(1)
    )
}

/// Tasks of `svc`: (id, state, desired, node host name, exit code, message).
fn tasks(lab: &Lab, svc: &str) -> Vec<Value> {
    json(lab, 1, &["service", "ps", svc])
        .as_array()
        .unwrap()
        .clone()
}

fn running(lab: &Lab, svc: &str) -> Vec<Value> {
    tasks(lab, svc)
        .into_iter()
        .filter(|t| t["state"] == "running" && t["desired"] == "running")
        .collect()
}

/// The test's lab: containerd on every host, the echo image, a swarm.
fn lab_with_image() -> (Lab, String, tempfile::TempDir) {
    lab_with_echo_image(HOSTS, &config())
}

/// `ctr -n shoal ARGS` on `host`: stdout, or the failure.
fn ctr(lab: &Lab, host: usize, args: &[&str]) -> String {
    let mut a = vec!["-n", "shoal"];
    a.extend_from_slice(args);
    let out = lab.ctr(host, &a, Duration::from_secs(30)).unwrap();
    assert!(out.status.success(), "ctr {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run `argv` inside task `id`'s container (its namespaces, user and
/// capabilities) on `host`: (success, output).
fn in_container(lab: &Lab, host: usize, id: &str, argv: &[&str]) -> (bool, String) {
    let mut a = vec!["exec", id, "--"];
    a.extend_from_slice(argv);
    match cli(lab, host, &a) {
        Ok(out) => (true, out),
        Err(e) => (false, e),
    }
}

/// Waits until `host`'s containerd has no container left; on timeout
/// shows what is there and the daemon's log.
fn no_container_left(lab: &Lab, host: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ctr(lab, host, &["containers", "ls", "-q"])
        .trim()
        .is_empty()
    {
        if std::time::Instant::now() > deadline {
            let ctd =
                std::fs::read_to_string(lab.host(host).unwrap().dir.join("ctd/containerd.log"))
                    .unwrap_or_default();
            eprintln!(
                "containerd log:\n{}",
                ctd.lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            let log = std::fs::read_to_string(lab.host(host).unwrap().log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "h{host} still has containers: {}\ntasks: {}\nlog:\n{}",
                ctr(lab, host, &["containers", "ls"]),
                ctr(lab, host, &["tasks", "ls"]),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Network `app` and service `web` (3 replicas of the image, `extra`
/// flags) on it; its running tasks once all 3 run, and how long that took.
fn web_service(lab: &Lab, reference: &str, extra: &[&str]) -> (Vec<Value>, Duration) {
    cli(lab, 1, &["network", "create", "app"]).unwrap();
    let mut args = vec![
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--network",
        "app",
    ];
    args.extend_from_slice(extra);
    args.push(reference);
    cli(lab, 1, &args).unwrap();
    let mut seen = String::new();
    wait_until("3 running containers", Duration::from_secs(90), || {
        let now: Vec<String> = tasks(lab, "web")
            .iter()
            .map(|t| format!("{} {} {}", t["id"], t["state"], t["message"]))
            .collect();
        if now.join("\n") != seen {
            seen = now.join("\n");
            eprintln!("tasks:\n{seen}");
        }
        let r = running(lab, "web");
        (r.len() == 3).then_some(r)
    })
}

fn host_of(lab: &Lab, hostname: &str) -> usize {
    (1..=HOSTS)
        .find(|h| lab.host(*h).unwrap().name == hostname)
        .unwrap_or_else(|| panic!("no host named {hostname}"))
}

#[test]
fn a_service_from_an_image_runs_isolated_containers_on_every_host() {
    let (lab, reference, dir) = lab_with_image();
    let (tasks_up, took) = web_service(&lab, &reference, &["-p", "8080:80"]);
    eprintln!("3 containers running after {took:?}");
    // The tag was pinned to the registry's digest at create.
    let inspect = json(&lab, 1, &["service", "inspect", "web"]);
    let image = inspect[0]["spec"]["image"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        image.starts_with(&format!("{reference}@sha256:")),
        "{inspect}"
    );
    // Every host pulled the image for itself.
    for h in 1..=HOSTS {
        let images = ctr(&lab, h, &["images", "ls", "-q"]);
        assert!(images.contains("shoal/echo"), "h{h} images: {images}");
    }
    // The mesh answers on every host with the task's name and id.
    let ids: Vec<String> = tasks_up
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    for h in 1..=HOSTS {
        let url = format!("http://{}:8080/", lab.host(h).unwrap().addr);
        let (body, _) = wait_until(
            &format!("h{h} answers on 8080"),
            Duration::from_secs(30),
            || {
                let (ok, out) = exec(&lab, h, &["curl", "-s", "--max-time", "2", &url]);
                let out = out.trim().to_string();
                let id = out
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                (ok && out.starts_with("web.") && ids.contains(&id)).then_some(out)
            },
        );
        eprintln!("h{h}:8080 -> {body}");
    }

    // Inside a container: `web` resolves (embedded DNS) to the VIP, which
    // balances over the tasks. (busybox-static's resolver-using tools
    // crash without NSS in a static glibc: the name is looked up with
    // nslookup, the VIP asked with nc.)
    let t0 = tasks_up[0]["id"].as_str().unwrap().to_string();
    let h0 = host_of(&lab, tasks_up[0]["node_hostname"].as_str().unwrap());
    let inspect = json(&lab, 1, &["service", "inspect", "web"]);
    let (_, ns) = in_container(&lab, h0, &t0, &["nslookup", "web"]);
    let vip = ns
        .split("Name:")
        .nth(1)
        .and_then(|rest| rest.split("Address:").nth(1))
        .map(|a| a.trim().to_string())
        .unwrap_or_else(|| panic!("web does not resolve: {ns}"));
    let vips: Vec<String> = inspect[0]["vips"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(vips.contains(&vip), "web -> {vip}, VIPs {vips:?}");
    let (answer, _) = wait_until(
        "web answering through the VIP",
        Duration::from_secs(30),
        || {
            // busybox-static's wget crashes on non-loopback addresses
            // here; nc speaks the request.
            let get = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {vip} 80");
            let (ok, out) = in_container(&lab, h0, &t0, &["sh", "-c", &get]);
            let body = out.lines().last().unwrap_or_default().to_string();
            let id = body
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            let out = body;
            (ok && ids.contains(&id)).then_some(out)
        },
    );
    eprintln!("http://web/ ({vip}) from {t0} -> {answer}");
    let (_, ns) = in_container(&lab, h0, &t0, &["nslookup", "tasks.web", "127.0.0.11"]);
    assert!(ns.matches("Address").count() >= 3, "tasks.web: {ns}");

    // Isolation, inside one task's container.
    let t = &tasks_up[0];
    let id = t["id"].as_str().unwrap();
    let h = host_of(&lab, t["node_hostname"].as_str().unwrap());
    // PID 1 is the entrypoint (/bin/echo-server execs httpd), in a PID
    // namespace of its own: the host's processes are not there.
    let (ok, out) = in_container(&lab, h, id, &["cat", "/proc/1/cmdline"]);
    assert!(ok && out.starts_with("httpd\0-f\0-p\080"), "PID 1: {out:?}");
    let (_, procs) = in_container(&lab, h, id, &["ls", "/proc"]);
    let pids = procs
        .split_whitespace()
        .filter(|p| p.parse::<u32>().is_ok())
        .count();
    assert!(pids <= 3, "{pids} processes visible: {procs}");
    let (ok, out) = in_container(&lab, h, id, &["ls", "/var/lib/shoal"]);
    assert!(!ok, "the host's data dir is visible: {out}");
    let (ok, out) = in_container(&lab, h, id, &["ip", "link", "add", "d0", "type", "dummy"]);
    assert!(!ok, "ip link add worked inside the container: {out}");
    let (_, status) = in_container(&lab, h, id, &["cat", "/proc/self/status"]);
    assert!(status.contains("CapEff:\t00000000a80425fb"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    // Docker's default seccomp profile filters its system calls.
    assert!(status.contains("Seccomp:\t2"), "{status}");
    // exec: stdout and stderr apart, the command's status; -i feeds
    // stdin; -it gives it a terminal (driven here through util-linux
    // `script`, which runs the CLI on a pty).
    let out = lab
        .shoal(
            h,
            &[
                "exec",
                id,
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 5",
            ],
        )
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let shoal = lab.shoal_bin().display().to_string();
    let mut cat = lab
        .command(
            h,
            &[
                shoal.as_str(),
                "exec",
                "-i",
                id,
                "--",
                "sh",
                "-c",
                "cat; echo done",
            ],
        )
        .unwrap()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = cat.stdin.take().unwrap();
        stdin.write_all(b"hello through stdin\n").unwrap();
    }
    let out = cat.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello through stdin\ndone\n"
    );
    let tty = lab
        .exec(
            h,
            &[
                "script",
                "-qefc",
                &format!("{shoal} exec -it {id} -- sh -c '[ -t 0 ] && [ -t 1 ] && echo on-a-tty $TERM; exit 3'"),
                "/dev/null",
            ],
        )
        .unwrap();
    let said = String::from_utf8_lossy(&tty.stdout);
    assert!(said.contains("on-a-tty xterm"), "{said}");
    assert_eq!(tty.status.code(), Some(3), "{tty:?}");
    let e = cli(&lab, h, &["exec", id, "--", "/no/such/binary"]).unwrap_err();
    assert!(e.contains("no such file") || e.contains("not found"), "{e}");
    let (_, host) = in_container(&lab, h, id, &["hostname"]);
    assert_eq!(host.trim(), id);
    let (_, resolv) = in_container(&lab, h, id, &["cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 127.0.0.11"), "{resolv}");

    // `image ls` lists what this node pulled; `image rm` is refused while
    // a container here uses it; pulling an unknown tag names the reason.
    let images = json(&lab, h, &["image", "ls"]);
    let row = images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["repository"] == format!("{}/shoal/echo", registry_addr(1)).as_str())
        .unwrap_or_else(|| panic!("{images}"))
        .clone();
    assert_eq!(row["tag"], "1", "{row}");
    let pinned = inspect[0]["spec"]["image"].as_str().unwrap().to_string();
    let e = cli(&lab, h, &["image", "rm", &pinned]).unwrap_err();
    assert!(e.contains("is using its referenced image"), "{e}");
    let e = cli(
        &lab,
        h,
        &["image", "pull", &reference.replace(":1", ":nope")],
    )
    .unwrap_err();
    assert!(e.contains("manifest unknown"), "{e}");
    let (ok, out) = exec(&lab, h, &["shoal", "image", "ls"]);
    assert!(
        ok && out.contains("REPOSITORY") && out.contains("shoal/echo"),
        "{out}"
    );
    // `image import` of a `docker save` archive (a relative path: the CLI
    // sends it whole), then listed under the archive's name.
    let layout = dir.path().join("echo");
    image::save(
        &layout,
        "docker-archive",
        &dir.path().join("saved.tar"),
        "local/echo:saved",
    )
    .unwrap();
    let out = lab
        .command(
            h,
            &[
                lab.shoal_bin().to_str().unwrap(),
                "image",
                "import",
                "saved.tar",
            ],
        )
        .unwrap()
        .current_dir(dir.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("Loaded image: docker.io/local/echo:saved"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let images = json(&lab, h, &["image", "ls"]);
    assert!(
        images
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["repository"] == "docker.io/local/echo" && i["tag"] == "saved"),
        "{images}"
    );

    // A standalone container (`shoal run`) on an attachable network: it
    // runs, answers inside, and `stop` removes it from containerd.
    cli(&lab, 1, &["network", "create", "--attachable", "lan"]).unwrap();
    let solo = cli(
        &lab,
        2,
        &["run", "--network", "lan", "--name", "solo", &reference],
    )
    .unwrap()
    .trim()
    .to_string();
    let (_, host) = in_container(&lab, 2, "solo", &["hostname"]);
    assert_eq!(host.trim(), "solo");
    let (ok, body) = wait_until("solo serves", Duration::from_secs(10), || {
        let (ok, b) = in_container(&lab, 2, "solo", &["wget", "-qO-", "http://127.0.0.1/"]);
        ok.then_some((ok, b))
    })
    .0;
    assert!(ok && body.trim() == "solo", "{body}");
    let ps = json(&lab, 2, &["ps"]);
    assert!(
        ps.as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == solo.as_str()
                && w["state"] == "running"
                && w["image"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("shoal/echo")),
        "{ps}"
    );
    cli(&lab, 2, &["stop", "solo"]).unwrap();
    wait_until("solo removed", Duration::from_secs(30), || {
        (!ctr(&lab, 2, &["containers", "ls", "-q"]).contains(&solo)).then_some(())
    });

    // Removing the service leaves no container behind on any host.
    cli(&lab, 1, &["service", "rm", "web"]).unwrap();
    for h in 1..=HOSTS {
        no_container_left(&lab, h);
    }
    // Then the image can go.
    cli(&lab, h, &["image", "rm", &pinned]).unwrap();
    assert!(!ctr(&lab, h, &["images", "ls", "-q"]).contains(&pinned));
}

/// Task rows of `svc` whose state is `state`.
fn in_state(lab: &Lab, svc: &str, state: &str) -> Vec<Value> {
    tasks(lab, svc)
        .into_iter()
        .filter(|t| t["state"] == state)
        .collect()
}

#[test]
fn limits_oom_kill_and_unknown_images() {
    let (lab, reference, _dir) = lab_with_image();
    // A process allocating past --limit-memory is OOM-killed: the task
    // fails with 137 and is replaced.
    cli(
        &lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "hog",
            "--limit-memory",
            "32M",
            "--entrypoint",
            "awk",
            &reference,
            "BEGIN { s = \"x\"; while (1) s = s s }",
        ],
    )
    .unwrap();
    let (failed, _) = wait_until("an OOM-killed task", Duration::from_secs(90), || {
        in_state(&lab, "hog", "failed").into_iter().next()
    });
    assert_eq!(failed["exit_code"], 137, "{failed}");
    assert!(
        failed["message"].as_str().unwrap().contains("137"),
        "{failed}"
    );
    wait_until("a replacement task", Duration::from_secs(60), || {
        (tasks(&lab, "hog").len() >= 2).then_some(())
    });
    cli(&lab, 1, &["service", "rm", "hog"]).unwrap();

    // Reservations: each node reports its memory (24 GiB here, the same
    // machine); 10 GiB per task fits twice on a node, so of 7 tasks on 3
    // nodes one waits, pending, saying why.
    let node = json(&lab, 1, &["node", "inspect", "self"]);
    let mem = node[0]["resources"]["memory_bytes"].as_i64().unwrap_or(0);
    assert!(mem > 0, "{node}");
    let per_node = mem / (10 << 30);
    let replicas = (per_node * HOSTS as i64 + 1).to_string();
    cli(
        &lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "big",
            "--replicas",
            &replicas,
            "--reserve-memory",
            "10G",
            &reference,
        ],
    )
    .unwrap();
    let (pending, _) = wait_until("a pending task", Duration::from_secs(60), || {
        let r = running(&lab, "big").len() as i64;
        let p: Vec<Value> = tasks(&lab, "big")
            .into_iter()
            .filter(|t| t["node"] == "" && t["state"] == "new")
            .collect();
        (r == per_node * HOSTS as i64 && p.len() == 1).then(|| p[0].clone())
    });
    assert_eq!(
        pending["message"], "no suitable node (insufficient memory on 3 nodes)",
        "{pending}"
    );
    let (ok, table) = exec(&lab, 1, &["shoal", "service", "ps", "big"]);
    assert!(ok && table.contains("pending"), "{table}");
    cli(&lab, 1, &["service", "rm", "big"]).unwrap();

    // `service logs` gathers what tasks on two different hosts wrote.
    cli(
        &lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "talk",
            "--replicas",
            "2",
            "--entrypoint",
            "sh",
            &reference,
            "-c",
            "echo hello from $HOSTNAME; echo oops from $HOSTNAME >&2; \
             i=0; while sleep 1; do i=$((i+1)); echo tick $i; done",
        ],
    )
    .unwrap();
    let (up, _) = wait_until("2 talking tasks", Duration::from_secs(60), || {
        let r = running(&lab, "talk");
        (r.len() == 2).then_some(r)
    });
    let hosts: std::collections::BTreeSet<String> = up
        .iter()
        .map(|t| t["node_hostname"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(hosts.len(), 2, "{up:?}");
    let (logs, _) = wait_until("both tasks' lines", Duration::from_secs(30), || {
        let out = cli(&lab, 1, &["service", "logs", "talk"]).ok()?;
        up.iter()
            .all(|t| {
                let (id, host) = (
                    t["id"].as_str().unwrap(),
                    t["node_hostname"].as_str().unwrap(),
                );
                out.lines().any(|l| {
                    l.contains(&format!("{id}@{host}"))
                        && l.ends_with(&format!("| hello from {id}"))
                })
            })
            .then_some(out)
    });
    eprintln!("service logs talk:\n{logs}");
    // stderr lines go to stderr, with the same context.
    let out = lab.shoal(1, &["service", "logs", "talk"]).unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    for t in &up {
        let id = t["id"].as_str().unwrap();
        assert!(stderr.contains(&format!("| oops from {id}")), "{stderr}");
        assert!(!stdout.contains("oops"), "{stdout}");
    }
    // --tail 1 --timestamps: one line per task, each with its RFC 3339
    // nanosecond time first.
    let out = lab
        .shoal(1, &["service", "logs", "--tail", "1", "-t", "talk"])
        .unwrap();
    let last =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = last.lines().collect();
    assert_eq!(lines.len(), 2, "{last}");
    for l in &lines {
        let stamp = l.split(' ').next().unwrap();
        assert!(
            stamp.len() == 30 && stamp.ends_with('Z') && stamp.as_bytes()[19] == b'.',
            "{l}"
        );
    }
    // --follow prints lines written after it started, from both tasks.
    let mut follow = lab
        .command(
            1,
            &[
                lab.shoal_bin().to_str().unwrap(),
                "service",
                "logs",
                "-f",
                "--tail",
                "0",
                "talk",
            ],
        )
        .unwrap()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let pipe = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 2 && std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            assert!(l.contains("| tick "), "only new lines: {l}");
            for t in &up {
                if l.contains(t["id"].as_str().unwrap()) {
                    seen.insert(t["id"].as_str().unwrap().to_string());
                }
            }
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(seen.len(), 2, "--follow showed new lines of {seen:?}");
    cli(&lab, 1, &["service", "rm", "talk"]).unwrap();

    // An unknown tag: rejected with the registry's reason, nothing left in
    // containerd on any host.
    let ghost = reference.replace(":1", ":nope");
    cli(
        &lab,
        1,
        &[
            "service",
            "create",
            "--name",
            "ghost",
            "--no-resolve-image",
            &ghost,
        ],
    )
    .unwrap();
    let (rejected, _) = wait_until("a rejected task", Duration::from_secs(60), || {
        in_state(&lab, "ghost", "rejected").into_iter().next()
    });
    let msg = rejected["message"].as_str().unwrap();
    assert!(msg.contains("manifest unknown"), "{msg}");
    cli(&lab, 1, &["service", "rm", "ghost"]).unwrap();
    for h in 1..=HOSTS {
        no_container_left(&lab, h);
        let images = ctr(&lab, h, &["images", "ls", "-q"]);
        assert!(!images.contains(":nope"), "h{h}: {images}");
    }

    // The registry down: a task of an image no node has yet is rejected
    // with the reason, and runs once the registry is back.
    let v2 = image::build_echo_image_version(&_dir.path().join("echo2"), "2").unwrap();
    let reference2 = reference.replace(":1", ":2");
    image::push(&lab, 1, &v2, &reference2).unwrap();
    let reg = lab.host(1).unwrap().registry.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(reg.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("the registry gone", Duration::from_secs(10), || {
        (!shoal_lab::is_alive(&reg)).then_some(())
    });
    cli(
        &lab,
        1,
        &["service", "create", "--name", "later", &reference2],
    )
    .unwrap();
    let (rejected, _) = wait_until(
        "a task rejected while the registry is down",
        Duration::from_secs(60),
        || in_state(&lab, "later", "rejected").into_iter().next(),
    );
    let msg = rejected["message"].as_str().unwrap().to_lowercase();
    assert!(msg.contains("connection refused"), "{msg}");
    lab.start_registry(1).unwrap();
    wait_until(
        "the task running once the registry is back",
        Duration::from_secs(60),
        || (running(&lab, "later").len() == 1).then_some(()),
    );
    cli(&lab, 1, &["service", "rm", "later"]).unwrap();
}

#[test]
fn a_daemon_restart_keeps_its_containers_running_and_adopts_them() {
    let (lab, reference, _dir) = lab_with_image();
    let (up, _) = web_service(&lab, &reference, &[]);
    // Two tasks on different hosts: `a` pings `b` while b's daemon restarts.
    let on = |t: &Value| host_of(&lab, t["node_hostname"].as_str().unwrap());
    let a = up.iter().find(|t| on(t) != 1).unwrap().clone();
    let b = up
        .iter()
        .find(|t| on(t) != on(&a) && on(t) != 1)
        .unwrap_or_else(|| up.iter().find(|t| on(t) != on(&a)).unwrap())
        .clone();
    let (ha, hb) = (on(&a), on(&b));
    let (a_id, b_id) = (
        a["id"].as_str().unwrap().to_string(),
        b["id"].as_str().unwrap().to_string(),
    );
    let b_pid = json(&lab, hb, &["ps"])
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == b_id.as_str())
        .unwrap()["pid"]
        .clone();
    let (_, b_ip) = in_container(
        &lab,
        hb,
        &b_id,
        &[
            "sh",
            "-c",
            "ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1",
        ],
    );
    let b_ip = b_ip.trim().to_string();
    let names: Vec<String> = (1..=HOSTS).map(|h| lab.host(h).unwrap().name).collect();
    let on = |t: &Value| {
        1 + names
            .iter()
            .position(|n| t["node_hostname"] == n.as_str())
            .unwrap()
    };
    let lab = std::sync::Arc::new(lab);
    let pinger = {
        let (lab, a_id, b_ip) = (lab.clone(), a_id.clone(), b_ip.clone());
        std::thread::spawn(move || {
            in_container(
                &lab,
                ha,
                &a_id,
                &["ping", "-c", "40", "-i", "0.2", "-W", "1", &b_ip],
            )
        })
    };
    std::thread::sleep(Duration::from_millis(1000));
    lab.restart(hb).unwrap();
    let (ok, out) = pinger.join().unwrap();
    assert!(
        ok && out.contains(" 0% packet loss"),
        "ping across the restart: {out}"
    );
    // The restarted daemon reports the same container, same pid, running.
    wait_until(
        "the adopted task still running",
        Duration::from_secs(30),
        || {
            let ps = json(&lab, hb, &["ps"]);
            let w = ps
                .as_array()
                .unwrap()
                .iter()
                .find(|w| w["id"] == b_id.as_str())?
                .clone();
            (w["pid"] == b_pid).then_some(())
        },
    );
    assert!(running(&lab, "web")
        .iter()
        .any(|t| t["id"] == b_id.as_str()));
    // No duplicate: one container per task, nothing else.
    let list = ctr(&lab, hb, &["containers", "ls", "-q"]);
    let ids: Vec<&str> = list.split_whitespace().collect();
    let here: Vec<String> = running(&lab, "web")
        .into_iter()
        .filter(|t| on(t) == hb)
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), here.len(), "containers {ids:?}, tasks {here:?}");
    // Its log kept flowing: `shoal logs` works for the adopted task.
    cli(&lab, hb, &["logs", &b_id]).unwrap();
}
