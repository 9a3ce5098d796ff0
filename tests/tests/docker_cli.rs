//! The real `docker` CLI drives a Shoal swarm through the Engine API
//! socket each daemon serves (`docker.sock` next to its own socket): the
//! version handshake, `info`, `node ls/update`, `network create/ls/
//! inspect/rm`, `service create` waiting for convergence (no `--detach`),
//! `service ls/ps/scale/update/logs/rm`, and each checked against what the
//! `shoal` CLI reports; Docker's errors (404, 409, 503 on a worker) come
//! back as the docker CLI prints them. Needs root, iproute2, nftables,
//! curl, containerd, runc, docker-registry, skopeo, busybox-static, the
//! docker CLI and the built binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_lab::{registry_addr, Lab};
use shoal_tests::{cli, exec, json, lab_with_echo_image, start, wait_for};

const HOSTS: usize = 3;

fn config() -> String {
    format!(
        "heartbeat_ms = 500\ngossip_profile = \"fast\"\nmetrics_addr = \"\"\ninsecure_registries = [\"{}\"]\n",
        registry_addr(1)
    )
}

/// The Engine API socket of `host`'s daemon.
fn docker_socket(lab: &Lab, host: usize) -> PathBuf {
    lab.host(host).unwrap().socket.with_file_name("docker.sock")
}

/// The docker CLI (`DOCKER_BIN`, else `docker` on PATH).
fn docker_bin() -> String {
    std::env::var("DOCKER_BIN").unwrap_or_else(|_| "docker".into())
}

/// `docker ARGS` against `host`'s daemon: `Ok(stdout)` or `Err(stderr)`.
/// The CLI keeps its config in `home` (never the machine's ~/.docker).
fn docker(lab: &Lab, home: &Path, host: usize, args: &[&str]) -> Result<String, String> {
    let out = Command::new(docker_bin())
        .args(args)
        .env(
            "DOCKER_HOST",
            format!("unix://{}", docker_socket(lab, host).display()),
        )
        .env("DOCKER_CONFIG", home)
        .env_remove("DOCKER_CONTEXT")
        .env_remove("DOCKER_API_VERSION")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run the docker CLI ({}): {e}; install docker.io",
                docker_bin()
            )
        });
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// An HTTP request on `host`'s Engine API socket: (status line, body).
fn raw(lab: &Lab, host: usize, method: &str, path: &str) -> (String, String) {
    raw_with(lab, host, method, path, None)
}

/// [`raw`] with a JSON request body.
fn raw_with(
    lab: &Lab,
    host: usize,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (String, String) {
    // HEAD with -I: curl would wait for the body Content-Length names.
    let verb: &[&str] = if method == "HEAD" {
        &["-I"]
    } else {
        &["-i", "-X", method]
    };
    let data: Vec<&str> = match body {
        Some(b) => vec!["-H", "Content-Type: application/json", "--data-binary", b],
        None => Vec::new(),
    };
    let out = Command::new("curl")
        .arg("-s")
        .args(verb)
        .args(data)
        .arg("--unix-socket")
        .arg(docker_socket(lab, host))
        .arg(format!("http://shoal{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text.lines().next().unwrap_or_default().trim().to_string();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (
        status,
        text.lines().take(20).collect::<Vec<_>>().join("\n") + "\n" + &body,
    )
}

/// The test's lab: containerd on every host, the echo image, a swarm.
fn lab_with_image() -> (Lab, String, tempfile::TempDir) {
    lab_with_echo_image(HOSTS, &config())
}

/// Rows of a docker table, split on runs of 2+ spaces (header first).
fn table(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        })
        .collect()
}

#[test]
fn the_docker_cli_drives_a_shoal_swarm() {
    let (lab, image, dir) = lab_with_image();
    let home = dir.path().join("docker-config");
    std::fs::create_dir_all(&home).unwrap();
    let d = |args: &[&str]| docker(&lab, &home, 1, args);

    // Version negotiation: the CLI talks 1.47 to "Shoal".
    let v = d(&["version"]).unwrap();
    assert!(v.contains("Server: Shoal"), "{v}");
    assert!(v.contains("1.47 (minimum version 1.24)"), "{v}");
    let (status, head) = raw(&lab, 1, "HEAD", "/_ping");
    assert!(status.contains("200"), "{head}");
    assert!(head.contains("Swarm: active/manager"), "{head}");
    assert!(head.contains("Api-Version: 1.47"), "{head}");
    let (status, body) = raw(&lab, 1, "GET", "/v1.99/info");
    assert!(status.contains("400") && body.contains("too new"), "{body}");
    let (status, body) = raw(&lab, 1, "GET", "/v1.24/containers/json");
    assert!(
        status.contains("501") && body.contains("not supported by Shoal"),
        "{body}"
    );
    let (status, body) = raw(&lab, 1, "GET", "/v1.47/nowhere");
    assert!(
        status.contains("404") && body.contains("page not found"),
        "{body}"
    );
    // Bad bodies and queries: 400 naming the problem, nothing created.
    for (path, req, why) in [
        ("/v1.47/services/create", "{not json", "invalid JSON body"),
        (
            "/v1.47/services/create",
            r#"{"Name":"x","TaskTemplate":{"ContainerSpec":{"Image":"busybox"}},"Mode":{"Replicated":{},"Global":{}}}"#,
            "set Replicated or Global, not both",
        ),
        (
            "/v1.47/services/create",
            r#"{"Name":"x","TaskTemplate":{"ContainerSpec":{"Image":"busybox"}},"EndpointSpec":{"Ports":[{"TargetPort":99999}]}}"#,
            "TargetPort 99999 is not a port",
        ),
        ("/v1.47/services/nosuch/update", "{}", "invalid version"),
        ("/v1.47/nodes?filters=%7B", "", "invalid filter"),
        (
            "/v1.47/networks/create",
            r#"{"Name":"b","Driver":"bridge"}"#,
            "not supported by Shoal",
        ),
    ] {
        let method = if req.is_empty() { "GET" } else { "POST" };
        let (status, body) = raw_with(&lab, 1, method, path, Some(req).filter(|r| !r.is_empty()));
        assert!(
            status.contains("400") && body.contains(why),
            "{path} {req}: {body}"
        );
    }
    assert_eq!(json(&lab, 1, &["service", "ls"]), serde_json::json!([]));

    // info and node ls agree with Shoal's own view.
    let i = d(&["info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{.Swarm.Nodes}} {{.Swarm.Managers}} {{.Swarm.NodeID}}"]).unwrap();
    let h1 = shoal_tests::node_id(&lab, 1);
    assert_eq!(i.trim(), format!("active true 3 1 {h1}"));
    let nodes = table(&d(&["node", "ls"]).unwrap());
    assert_eq!(
        nodes[0],
        [
            "ID",
            "HOSTNAME",
            "STATUS",
            "AVAILABILITY",
            "MANAGER STATUS",
            "ENGINE VERSION"
        ]
    );
    assert_eq!(nodes.len(), 1 + HOSTS, "{nodes:?}");
    let me = nodes.iter().find(|r| r[0].starts_with(&h1)).unwrap();
    assert_eq!(
        me[..],
        [
            format!("{h1} *"),
            "h1".into(),
            "Ready".into(),
            "Active".into(),
            "Leader".into(),
            "shoal-0.1.0".into()
        ]
    );

    // node update: the whole spec goes back, availability and labels land.
    assert_eq!(
        d(&["node", "update", "--label-add", "zone=a", "h3"])
            .unwrap()
            .trim(),
        "h3"
    );
    let n3 = json(&lab, 1, &["node", "inspect", "h3"]);
    assert_eq!(n3[0]["labels"]["zone"], "a", "{n3}");

    // Networks.
    let id = d(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--attachable",
        "--subnet",
        "10.30.0.0/24",
        "--label",
        "a=b",
        "net1",
    ])
    .unwrap();
    let id = id.trim();
    let shoal_net = json(&lab, 1, &["network", "inspect", "net1"]);
    assert_eq!(shoal_net[0]["Id"], id);
    assert_eq!(shoal_net[0]["IPAM"]["Config"][0]["Subnet"], "10.30.0.0/24");
    let nets = table(&d(&["network", "ls", "--filter", "driver=overlay"]).unwrap());
    assert_eq!(nets[0], ["NETWORK ID", "NAME", "DRIVER", "SCOPE"]);
    assert!(
        nets.iter().any(|r| r[1..] == ["net1", "overlay", "swarm"]),
        "{nets:?}"
    );
    assert!(
        nets.iter()
            .any(|r| r[1..] == ["ingress", "overlay", "swarm"]),
        "{nets:?}"
    );
    assert_eq!(
        d(&[
            "network",
            "inspect",
            "--format",
            "{{.Name}} {{.Attachable}} {{index .Labels \"a\"}}",
            id
        ])
        .unwrap()
        .trim(),
        "net1 true b"
    );
    let e = d(&["network", "inspect", "nosuch"]).unwrap_err();
    assert!(e.contains("network nosuch not found"), "{e}");

    // A service, waiting for convergence as the CLI does without --detach.
    let out = d(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--network",
        "net1",
        "-p",
        "8080:80",
        "--health-cmd",
        "test -e /www/index.html",
        "--health-interval",
        "500ms",
        "--update-monitor",
        "2s",
        "--update-max-failure-ratio",
        "0.25",
        "--rollback-parallelism",
        "2",
        &image,
    ])
    .unwrap();
    assert!(out.contains("converged"), "{out}");
    let spec = d(&[
        "service",
        "inspect",
        "web",
        "--format",
        "{{json .Spec.TaskTemplate.ContainerSpec.Healthcheck}} {{.Spec.UpdateConfig.Monitor}} {{.Spec.UpdateConfig.MaxFailureRatio}} {{.Spec.RollbackConfig.Parallelism}}",
    ])
    .unwrap();
    assert_eq!(
        spec.trim(),
        r#"{"Test":["CMD-SHELL","test -e /www/index.html"],"Interval":500000000} 2s 0.25 2"#
    );
    let svc = json(&lab, 1, &["service", "inspect", "web"]);
    assert!(
        svc[0]["spec"]["image"]
            .as_str()
            .unwrap()
            .contains("@sha256:"),
        "the CLI pins the digest through /distribution: {svc}"
    );
    let running = |n: usize| {
        json(&lab, 1, &["service", "ps", "web"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["state"] == "running" && t["desired"] == "running")
            .count()
            == n
    };
    assert!(running(3));
    let (ok, body) = exec(
        &lab,
        2,
        &["curl", "-s", "--max-time", "3", "http://10.77.0.2:8080/"],
    );
    assert!(
        ok && !body.is_empty(),
        "the routing mesh answers on h2: {body}"
    );
    let ls = table(&d(&["service", "ls"]).unwrap());
    assert_eq!(ls[0], ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]);
    assert_eq!(
        ls[1][1..],
        ["web", "replicated", "3/3", image.as_str(), "*:8080->80/tcp"]
    );
    let ps = d(&[
        "service",
        "ps",
        "web",
        "--format",
        "{{.Name}} {{.DesiredState}} {{.CurrentState}}",
    ])
    .unwrap();
    let mut names: Vec<&str> = ps.lines().map(|l| l.split(' ').next().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["web.1", "web.2", "web.3"], "{ps}");
    assert!(ps.lines().all(|l| l.contains("Running Running")), "{ps}");

    // Errors as the docker CLI prints them.
    let e = d(&["service", "create", "--detach", "--name", "web", &image]).unwrap_err();
    assert!(
        e.contains("Error response from daemon: service with name web already exists"),
        "{e}"
    );
    let e = docker(&lab, &home, 2, &["node", "ls"]).unwrap_err();
    assert!(
        e.contains("This node is not a swarm manager. Worker nodes can't be used"),
        "{e}"
    );

    // scale and update send the whole spec back with its version.
    assert_eq!(
        d(&["service", "scale", "--detach", "web=1"])
            .unwrap()
            .trim(),
        "web scaled to 1"
    );
    wait_for("web scaled to 1", Duration::from_secs(30), || running(1));
    d(&["service", "update", "--detach", "--env-add", "B=2", "web"]).unwrap();
    let svc = json(&lab, 1, &["service", "inspect", "web"]);
    assert_eq!(svc[0]["spec"]["env"], serde_json::json!(["B=2"]), "{svc}");
    assert_eq!(svc[0]["spec"]["replicas"], 1, "{svc}");

    // Logs through the multiplexed stream, with docker's context.
    let out = d(&[
        "service",
        "create",
        "--detach",
        "--name",
        "talk",
        &image,
        "sh",
        "-c",
        "echo hello; echo oops >&2; sleep 600",
    ])
    .unwrap();
    assert!(!out.trim().is_empty());
    let (logs, stderr) = {
        let mut got = (String::new(), String::new());
        wait_for("talk's logs", Duration::from_secs(30), || {
            let o = Command::new(docker_bin())
                .args(["service", "logs", "talk"])
                .env(
                    "DOCKER_HOST",
                    format!("unix://{}", docker_socket(&lab, 1).display()),
                )
                .env("DOCKER_CONFIG", &home)
                .output()
                .unwrap();
            got = (
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            );
            got.0.contains("hello") && got.1.contains("oops")
        });
        got
    };
    assert!(
        logs.starts_with("talk.1.") && logs.contains("@h") && logs.contains("| hello"),
        "{logs}"
    );
    assert!(
        !logs.contains("oops") && !stderr.contains("hello"),
        "streams stay apart: {logs} / {stderr}"
    );

    // The event log, as docker events prints it (past events: --until).
    let until = (shoal_model::now_ms() / 1000 + 1).to_string();
    let ev = d(&[
        "events",
        "--since",
        "0",
        "--until",
        &until,
        "--filter",
        "type=service",
    ])
    .unwrap();
    assert!(
        ev.lines()
            .any(|l| l.contains(" service create ") && l.contains("name=web")),
        "{ev}"
    );
    assert!(
        ev.lines().all(|l| l.contains(" service ")),
        "only services: {ev}"
    );

    // Removal.
    assert_eq!(
        d(&["service", "rm", "web", "talk"]).unwrap().trim(),
        "web\ntalk"
    );
    assert_eq!(json(&lab, 1, &["service", "ls"]), serde_json::json!([]));
    // The network is free once the tasks' endpoints are.
    wait_for("docker network rm net1", Duration::from_secs(30), || {
        d(&["network", "rm", "net1"]).is_ok()
    });
    let left = json(&lab, 1, &["network", "ls"]);
    assert!(
        left.as_array().unwrap().iter().all(|n| n["Name"] != "net1"),
        "{left}"
    );
    assert!(cli(&lab, 1, &["network", "inspect", "net1"]).is_err());
    let e = d(&["network", "rm", "nosuch"]).unwrap_err();
    assert!(e.contains("network nosuch not found"), "{e}");
}

/// `docker stack deploy` of a compose file: two services on an overlay
/// network, one publishing a port and mounting a config and a secret; the
/// services find each other by their compose names (network aliases);
/// `stack ls/services/ps` list them and `stack rm` leaves nothing behind.
#[test]
fn docker_stack_deploy_runs_a_compose_file() {
    let (lab, image, dir) = lab_with_image();
    let home = dir.path().join("docker-config");
    std::fs::create_dir_all(&home).unwrap();
    let d = |args: &[&str]| docker(&lab, &home, 1, args);
    let app = dir.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("app.conf"), "listen 80\n").unwrap();
    std::fs::write(app.join("db_pw.txt"), "hunter2\n").unwrap();
    let compose = format!(
        "version: \"3.8\"\nservices:\n  front:\n    image: {image}\n    ports: [\"8081:80\"]\n    networks: [appnet]\n    \
         configs:\n      - source: appconf\n        target: /etc/app.conf\n    secrets: [db_pw]\n    deploy:\n      replicas: 2\n  \
         back:\n    image: {image}\n    networks: [appnet]\nnetworks:\n  appnet:\n    driver: overlay\n\
         configs:\n  appconf:\n    file: ./app.conf\nsecrets:\n  db_pw:\n    file: ./db_pw.txt\n"
    );
    let file = app.join("stack.yml");
    std::fs::write(&file, compose).unwrap();
    let out = d(&["stack", "deploy", "-c", file.to_str().unwrap(), "app"]).unwrap();
    for what in [
        "Creating network app_appnet",
        "Creating config app_appconf",
        "Creating secret app_db_pw",
        "Creating service app_front",
        "Creating service app_back",
    ] {
        assert!(out.contains(what), "{what}: {out}");
    }
    let ls = table(&d(&["stack", "ls"]).unwrap());
    assert_eq!(ls[1], ["app", "2"], "{ls:?}");
    wait_for("app's 3 tasks running", Duration::from_secs(60), || {
        let s = d(&[
            "stack",
            "services",
            "app",
            "--format",
            "{{.Name}} {{.Replicas}}",
        ])
        .unwrap();
        s.contains("app_front 2/2") && s.contains("app_back 1/1")
    });
    let ps = d(&[
        "stack",
        "ps",
        "app",
        "--format",
        "{{.Name}} {{.CurrentState}}",
    ])
    .unwrap();
    assert_eq!(
        ps.lines().filter(|l| l.contains("Running")).count(),
        3,
        "{ps}"
    );

    // In a front task: the config and the secret as read-only files, and
    // the back service by its compose name.
    let front = json(&lab, 1, &["service", "ps", "app_front"])
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["state"] == "running")
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_string(),
                t["node_hostname"].as_str().unwrap().to_string(),
            )
        })
        .unwrap();
    let host: usize = front.1.trim_start_matches('h').parse().unwrap();
    let exec_in = |argv: &[&str]| {
        let mut a = vec!["exec", front.0.as_str()];
        a.extend_from_slice(argv);
        cli(&lab, host, &a)
    };
    assert_eq!(exec_in(&["cat", "/etc/app.conf"]).unwrap(), "listen 80\n");
    assert_eq!(
        exec_in(&["cat", "/run/secrets/db_pw"]).unwrap(),
        "hunter2\n"
    );
    let e = exec_in(&["sh", "-c", "echo x > /run/secrets/db_pw"]).unwrap_err();
    assert!(e.contains("Read-only") || e.contains("read-only"), "{e}");
    let mut answer = Ok(String::new());
    let reached = (0..60).any(|_| {
        answer = exec_in(&["timeout", "5", "wget", "-qO-", "http://back/"]);
        let ok = answer.as_ref().is_ok_and(|a| a.contains("app_back.1"));
        if !ok {
            std::thread::sleep(Duration::from_millis(500));
        }
        ok
    });
    assert!(
        reached,
        "front reaches back by its compose name: {answer:?}; {:?}; {:?}",
        exec_in(&["nslookup", "back"]),
        exec_in(&["timeout", "5", "wget", "-O-", "http://back/"]),
    );
    // The secret is never shown back; the config is.
    let s = d(&["secret", "inspect", "app_db_pw"]).unwrap();
    assert!(!s.contains("Data") && !s.contains("aHVudGVyMg"), "{s}");
    let c = d(&[
        "config",
        "inspect",
        "--format",
        "{{json .Spec.Data}}",
        "app_appconf",
    ])
    .unwrap();
    assert_eq!(c.trim(), "\"bGlzdGVuIDgwCg==\"");
    let e = d(&["config", "rm", "app_appconf"]).unwrap_err();
    assert!(
        e.contains("in use by the following service: app_front"),
        "{e}"
    );

    // stack rm takes everything with it.
    let out = d(&["stack", "rm", "app"]).unwrap();
    assert!(out.contains("Removing network app_appnet"), "{out}");
    assert_eq!(json(&lab, 1, &["service", "ls"]), serde_json::json!([]));
    assert_eq!(d(&["config", "ls", "-q"]).unwrap().trim(), "");
    assert_eq!(d(&["secret", "ls", "-q"]).unwrap().trim(), "");
    let nets = json(&lab, 1, &["network", "ls"]);
    assert!(
        nets.as_array()
            .unwrap()
            .iter()
            .all(|n| n["Name"] != "app_appnet"),
        "{nets}"
    );
    assert!(d(&["stack", "ls"]).unwrap().lines().count() <= 1);
}

/// A swarm formed with the docker CLI alone: `swarm init` on h1 (the
/// advertise address chosen when the node has one), `swarm join-token`
/// (shown, rotated), `swarm join` on h2 answering once joined, `info` on
/// the worker, `swarm leave` refused on the last manager with docker's
/// 503 and done with `--force`.
#[test]
fn docker_swarm_init_join_and_leave() {
    let lab = start(
        Lab::builder()
            .nodes(2)
            .daemon_config("heartbeat_ms = 500\ngossip_profile = \"fast\"\nmetrics_addr = \"\"\n"),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = |host: usize, args: &[&str]| docker(&lab, dir.path(), host, args);
    let i = d(1, &["info", "--format", "{{.Swarm.LocalNodeState}}"]).unwrap();
    assert_eq!(i.trim(), "inactive");
    let e = d(1, &["node", "ls"]).unwrap_err();
    assert!(
        e.contains("This node is not a swarm manager. Use \"docker swarm init\""),
        "{e}"
    );
    // h1 has one address besides loopback: no --advertise-addr needed.
    let out = d(1, &["swarm", "init"]).unwrap();
    let h1 = shoal_tests::node_id(&lab, 1);
    assert!(
        out.contains(&format!(
            "Swarm initialized: current node ({h1}) is now a manager."
        )),
        "{out}"
    );
    assert!(out.contains("docker swarm join --token SWMTKN-1-"), "{out}");
    assert!(out.contains("10.77.0.1:2377"), "{out}");
    let token = d(1, &["swarm", "join-token", "-q", "worker"]).unwrap();
    let rotated = d(1, &["swarm", "join-token", "-q", "--rotate", "worker"]).unwrap();
    assert_ne!(token.trim(), rotated.trim());
    let shoal_token = cli(&lab, 1, &["swarm", "join-token", "-q", "worker"]).unwrap();
    assert_eq!(shoal_token.trim(), rotated.trim());
    let e = d(
        2,
        &["swarm", "join", "--token", token.trim(), "10.77.0.1:2377"],
    )
    .unwrap_err();
    assert!(!e.is_empty(), "the old token is refused");
    let out = d(
        2,
        &["swarm", "join", "--token", rotated.trim(), "10.77.0.1:2377"],
    )
    .unwrap();
    assert!(
        out.contains("This node joined a swarm as a worker."),
        "{out}"
    );
    let i = d(
        2,
        &[
            "info",
            "--format",
            "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
        ],
    )
    .unwrap();
    assert_eq!(i.trim(), "active false");
    wait_for("h2 ready in node ls", Duration::from_secs(30), || {
        d(1, &["node", "ls", "--format", "{{.Hostname}} {{.Status}}"])
            .unwrap()
            .contains("h2 Ready")
    });
    let e = d(1, &["swarm", "leave"]).unwrap_err();
    assert!(
        e.contains("Removing the last manager erases all current state of the swarm"),
        "{e}"
    );
    assert_eq!(
        d(2, &["swarm", "leave"]).unwrap().trim(),
        "Node left the swarm."
    );
    assert_eq!(
        d(1, &["swarm", "leave", "--force"]).unwrap().trim(),
        "Node left the swarm."
    );
    let i = d(1, &["info", "--format", "{{.Swarm.LocalNodeState}}"]).unwrap();
    assert_eq!(i.trim(), "inactive");
}

/// docker-py (the Python SDK, as scripts and Ansible use it) against the
/// same socket: version negotiation by `GET /version`, a replicated and a
/// global service (docker-py spells the mode keys in lower case), scale
/// and update through its models, tasks, removal.
#[test]
fn docker_py_manages_services() {
    let (lab, image, _dir) = lab_with_image();
    let script = r#"
import os, sys, time
import docker
c = docker.DockerClient(base_url="unix://" + os.environ["SOCK"], version="auto")
image = os.environ["IMAGE"]
assert c.info()["Swarm"]["LocalNodeState"] == "active"
assert len(c.nodes.list()) == 3, c.nodes.list()
net = c.networks.create("pynet", driver="overlay", attachable=True)
web = c.services.create(image, name="pyweb", networks=["pynet"],
                        mode=docker.types.ServiceMode("replicated", replicas=2))
everywhere = c.services.create(image, name="pyglobal", mode="global")
def running(s, n):
    for _ in range(600):
        ts = [t for t in s.tasks(filters={"desired-state": "running"})
              if t["Status"]["State"] == "running"]
        if len(ts) == n:
            return
        time.sleep(0.1)
    sys.exit("%s: not %d running: %r" % (s.name, n, s.tasks()))
running(web, 2)
running(everywhere, 3)
assert "Global" in everywhere.attrs["Spec"]["Mode"], everywhere.attrs["Spec"]["Mode"]
web.scale(3)
web.reload()
assert web.attrs["Spec"]["Mode"]["Replicated"]["Replicas"] == 3
running(web, 3)
web.update(env=["X=1"])
web.reload()
assert web.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"] == ["X=1"], web.attrs
everywhere.remove()
web.remove()
for _ in range(300):
    try:
        net.remove()
        break
    except docker.errors.APIError:
        time.sleep(0.1)
try:
    c.services.get("pyweb")
    sys.exit("pyweb still there")
except docker.errors.NotFound:
    pass
print("ok")
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .env("SOCK", docker_socket(&lab, 1))
        .env("IMAGE", &image)
        .output()
        .expect("run python3 (with docker-py: apt-get install python3-docker)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.trim().ends_with("ok"),
        "{text}"
    );
    assert_eq!(json(&lab, 1, &["service", "ls"]), serde_json::json!([]));
    let nets = json(&lab, 1, &["network", "ls"]);
    assert!(
        nets.as_array()
            .unwrap()
            .iter()
            .all(|n| n["Name"] != "pynet"),
        "{nets}"
    );
}
