//! Engine API routes of the daemon and the swarm itself: `/_ping`,
//! `/version`, `/info`, `/events`, `/swarm` (inspect, init, join, leave,
//! update).

use std::time::Duration;

use hyper::StatusCode;
use serde_json::json;
use shoal_api::engine::convert::rfc3339;
use shoal_api::engine::types as d;
use shoal_api::engine::{gojson, API_VERSION, MIN_API_VERSION};
use shoal_api::{NodeInfo, Request, Response, SwarmInitArgs, SwarmJoinArgs, SwarmState};
use shoal_model::Role;

use super::{ask, empty, ok, Answer, Call, Failure};
use crate::daemon::Daemon;

/// Docker's answer on a node outside any swarm.
pub const NOT_IN_SWARM: &str = "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.";

/// Docker's answer on a worker.
pub const NOT_A_MANAGER: &str = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";

/// This node's facts (`shoal info`).
pub async fn node_info(d: &Daemon) -> Result<NodeInfo, Failure> {
    match ask(d, Request::Info).await? {
        Response::Info(i) => Ok(*i),
        other => Err(unexpected(&other)),
    }
}

/// An answer of the wrong kind (a bug, not bad input).
pub fn unexpected(r: &Response) -> Failure {
    Failure::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("unexpected answer from the daemon: {r:?}"),
    )
}

/// Refuse with Docker's 503 unless this node is a manager.
pub async fn require_manager(d: &Daemon) -> Result<NodeInfo, Failure> {
    let info = node_info(d).await?;
    match (info.swarm.state, info.swarm.role) {
        (SwarmState::Active, Some(Role::Manager)) => Ok(info),
        (SwarmState::Active, _) => Err(Failure::unavailable(NOT_A_MANAGER)),
        (SwarmState::Inactive, _) => Err(Failure::unavailable(NOT_IN_SWARM)),
    }
}

/// `HEAD|GET /_ping`: `OK`, and the `Swarm` header the CLI uses to hide
/// commands.
pub async fn ping(d: &Daemon, head: bool) -> Answer {
    let info = node_info(d).await?;
    let swarm = match (info.swarm.state, info.swarm.role) {
        (SwarmState::Inactive, _) => "inactive",
        (_, Some(Role::Manager)) => "active/manager",
        _ => "active/worker",
    };
    let mut r = super::with_type(
        StatusCode::OK,
        if head {
            Default::default()
        } else {
            "OK".into()
        },
        "text/plain; charset=utf-8",
    );
    let h = r.headers_mut();
    h.insert("Swarm", hyper::header::HeaderValue::from_static(swarm));
    h.insert(
        "Cache-Control",
        hyper::header::HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    h.insert(
        "Pragma",
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    Ok(r)
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn operating_system() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "linux".into())
}

fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

/// `GET /version`.
pub fn version() -> Answer {
    let v = env!("CARGO_PKG_VERSION");
    let (os, arch) = (std::env::consts::OS, go_arch());
    let kernel = kernel_version();
    ok(&json!({
        "Platform": {"Name": "Shoal"},
        "Components": [{"Name": "Engine", "Version": v, "Details": {
            "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "GitCommit": "",
            "GoVersion": "", "Os": os, "Arch": arch, "BuildTime": "", "Experimental": "false",
            "KernelVersion": kernel,
        }}],
        "Version": v, "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "", "GoVersion": "", "Os": os, "Arch": arch, "KernelVersion": kernel,
        "BuildTime": "",
    }))
}

/// Go's name of this architecture (`amd64`, as `docker version` shows).
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `GET /info`: the node, and its Swarm section.
pub async fn info(d: &Daemon) -> Answer {
    let info = node_info(d).await?;
    let s = &info.swarm;
    let manager = s.state == SwarmState::Active && s.role == Some(Role::Manager);
    let (mut nodes, mut managers, mut remote, mut cluster) =
        (0usize, 0usize, Vec::new(), serde_json::Value::Null);
    if manager {
        if let Response::Nodes(rows) = ask(d, Request::NodeList).await? {
            nodes = rows.len();
            for r in rows.iter().filter(|r| r.node.role == Role::Manager) {
                managers += 1;
                remote.push(
                    json!({"NodeID": r.node.id.to_string(), "Addr": r.node.addr.to_string()}),
                );
            }
        }
        if let Ok(sw) = swarm_doc(d).await {
            cluster = serde_json::to_value(&sw)
                .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            if let Some(o) = cluster.as_object_mut() {
                o.remove("JoinTokens");
            }
        }
    } else {
        remote = s
            .managers
            .iter()
            .map(|a| json!({"NodeID": "", "Addr": a}))
            .collect();
    }
    let local_state = match s.state {
        SwarmState::Active => "active",
        SwarmState::Inactive => "inactive",
    };
    let node_addr = s
        .node_addr
        .as_deref()
        .map(|a| a.rsplit_once(':').map_or(a, |(ip, _)| ip).to_string())
        .unwrap_or_default();
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let swarm = json!({
        "NodeID": if s.state == SwarmState::Active { info.node_id.as_str() } else { "" },
        "NodeAddr": node_addr, "LocalNodeState": local_state, "ControlAvailable": manager,
        "Error": "", "RemoteManagers": if remote.is_empty() { serde_json::Value::Null } else { remote.into() },
        "Nodes": nodes, "Managers": managers, "Cluster": cluster,
    });
    let mut doc = json!({
        "ID": info.node_id, "Containers": 0, "ContainersRunning": 0, "ContainersPaused": 0,
        "ContainersStopped": 0, "Images": 0, "Driver": "overlayfs", "DriverStatus": [],
        "Plugins": {"Volume": [], "Network": ["overlay"], "Authorization": null, "Log": ["json-file"]},
        "MemoryLimit": true, "SwapLimit": false, "CpuCfsPeriod": true, "CpuCfsQuota": true,
        "IPv4Forwarding": true, "Debug": false, "NFd": 0, "OomKillDisable": false,
        "NGoroutines": 0, "SystemTime": rfc3339(shoal_model::now_ms()), "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs", "NEventsListener": 0, "KernelVersion": kernel_version(),
        "OperatingSystem": operating_system(), "OSType": "linux", "OSVersion": "",
        "Architecture": std::env::consts::ARCH, "IndexServerAddress": "", "RegistryConfig": null,
        "NCPU": ncpu, "MemTotal": mem_total(), "DockerRootDir": info.data_dir, "Name": info.hostname,
    });
    let more = json!({
        "Labels": [], "ExperimentalBuild": false, "ServerVersion": info.daemon_version,
        "Runtimes": {"runc": {"path": "runc"}}, "DefaultRuntime": "runc", "LiveRestoreEnabled": true,
        "Isolation": "", "InitBinary": "", "SecurityOptions": ["name=seccomp,profile=builtin"],
        "Warnings": null,
    });
    if let (Some(o), serde_json::Value::Object(m)) = (doc.as_object_mut(), more) {
        o.extend(m);
    }
    doc["Swarm"] = swarm;
    ok(&doc)
}

/// The cluster object as Docker's `Swarm`.
async fn swarm_doc(d: &Daemon) -> Result<d::Swarm, Failure> {
    let sw = match ask(d, Request::SwarmInspect).await? {
        Response::Swarm(s) => *s,
        other => return Err(unexpected(&other)),
    };
    Ok(d::Swarm {
        id: sw.id,
        version: d::ObjectVersion { index: sw.version },
        created_at: rfc3339(sw.created_at),
        updated_at: rfc3339(sw.created_at),
        spec: d::SwarmSpec {
            name: "default".into(),
            orchestration: d::Orchestration {
                task_history_retention_limit: Some(5),
            },
            raft: d::RaftSpec {
                snapshot_interval: 10_000,
                election_tick: 10,
                heartbeat_tick: 2,
            },
            dispatcher: d::Dispatcher {
                heartbeat_period: sw.heartbeat_period_ms as i64 * 1_000_000,
            },
            ca_config: d::CaConfig {
                node_cert_expiry: 90 * 24 * 3600 * 1_000_000_000,
                force_rotate: 0,
            },
            ..Default::default()
        },
        tls_info: d::TlsInfo {
            trust_root: sw.ca_cert_pem,
        },
        root_rotation_in_progress: sw.root_rotation_in_progress,
        default_addr_pool: sw.default_addr_pools,
        subnet_size: sw.default_addr_pool_mask_len.into(),
        data_path_port: sw.data_path_port.into(),
        join_tokens: d::JoinTokens {
            worker: sw.worker_token,
            manager: sw.manager_token,
        },
    })
}

/// `GET /swarm`.
pub async fn swarm_inspect(d: &Daemon) -> Answer {
    let info = node_info(d).await?;
    match (info.swarm.state, info.swarm.role) {
        (SwarmState::Inactive, _) => {
            return Err(Failure::unavailable("This node is not part of a swarm"))
        }
        (_, Some(Role::Worker)) => return Err(Failure::unavailable(NOT_A_MANAGER)),
        _ => {}
    }
    ok(&swarm_doc(d).await?)
}

fn some(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

/// `POST /swarm/init`: answers the new node id as a JSON string.
pub async fn swarm_init(d: &Daemon, c: &Call) -> Answer {
    let r: d::InitRequest = c.decode()?;
    if r.force_new_cluster {
        return Err(Failure::bad("ForceNewCluster is not supported by Shoal"));
    }
    if r.auto_lock_managers || r.spec.encryption_config.auto_lock_managers {
        return Err(Failure::bad("autolock is not supported by Shoal"));
    }
    if !matches!(r.availability.as_str(), "" | "active") {
        return Err(Failure::bad(format!(
            "Availability {:?} at init is not supported by Shoal: run `docker node update --availability` after",
            r.availability
        )));
    }
    let heartbeat_ns = r.spec.dispatcher.heartbeat_period;
    let args = SwarmInitArgs {
        advertise_addr: r.advertise_addr,
        data_path_addr: some(r.data_path_addr),
        listen_addr: some(r.listen_addr),
        default_addr_pool: r.default_addr_pool,
        default_addr_pool_mask_length: match r.subnet_size {
            0 => 24,
            n => u8::try_from(n)
                .map_err(|_| Failure::bad(format!("SubnetSize {n} is not a prefix length")))?,
        },
        data_path_port: match r.data_path_port {
            0 => 4789,
            n => u16::try_from(n)
                .map_err(|_| Failure::bad(format!("DataPathPort {n} is not a port")))?,
        },
        dispatcher_heartbeat_ms: (heartbeat_ns > 0)
            .then_some((heartbeat_ns / 1_000_000).max(1) as u64),
        key_rotation_interval_ms: None,
    };
    ask(d, Request::SwarmInit(args)).await?;
    ok(&node_info(d).await?.node_id)
}

/// `POST /swarm/join`: returns once this node has joined.
pub async fn swarm_join(d: &Daemon, c: &Call) -> Answer {
    let r: d::JoinRequest = c.decode()?;
    let remote = r
        .remote_addrs
        .first()
        .cloned()
        .ok_or_else(|| Failure::bad("at least 1 RemoteAddr is required to join"))?;
    if !matches!(r.availability.as_str(), "" | "active") {
        return Err(Failure::bad(format!(
            "Availability {:?} at join is not supported by Shoal: run `docker node update --availability` after",
            r.availability
        )));
    }
    let args = SwarmJoinArgs {
        token: r.join_token,
        remote,
        advertise_addr: some(r.advertise_addr),
        data_path_addr: some(r.data_path_addr),
        listen_addr: some(r.listen_addr),
    };
    ask(d, Request::SwarmJoin(args)).await?;
    empty(StatusCode::OK)
}

/// `POST /swarm/leave[?force=1]`; refusals are 503, as moby's.
pub async fn swarm_leave(d: &Daemon, c: &Call) -> Answer {
    if node_info(d).await?.swarm.state == SwarmState::Inactive {
        return Err(Failure::unavailable("This node is not part of a swarm"));
    }
    match ask(
        d,
        Request::SwarmLeave {
            force: c.flag("force"),
        },
    )
    .await
    {
        Ok(_) => empty(StatusCode::OK),
        Err(f) if f.status == StatusCode::BAD_REQUEST => Err(Failure::unavailable(f.message)),
        Err(f) => Err(f),
    }
}

/// `POST /swarm/update?version=N&rotateWorkerToken=…`: token and root CA
/// rotation; the settings Shoal keeps fixed may only be sent back as read.
pub async fn swarm_update(d: &Daemon, c: &Call) -> Answer {
    require_manager(d).await?;
    let spec: d::SwarmSpec = c.decode()?;
    c.version()?;
    let now = swarm_doc(d).await?;
    if c.flag("rotateManagerUnlockKey") || spec.encryption_config.auto_lock_managers {
        return Err(Failure::bad("autolock is not supported by Shoal"));
    }
    if spec.dispatcher.heartbeat_period != 0
        && spec.dispatcher.heartbeat_period != now.spec.dispatcher.heartbeat_period
    {
        return Err(Failure::bad(
            "changing Dispatcher.HeartbeatPeriod after init is not supported by Shoal",
        ));
    }
    if !spec.labels.is_empty() {
        return Err(Failure::bad("swarm labels are not supported by Shoal"));
    }
    for (flag, role) in [
        ("rotateWorkerToken", Role::Worker),
        ("rotateManagerToken", Role::Manager),
    ] {
        if c.flag(flag) {
            ask(d, Request::JoinToken { role, rotate: true }).await?;
        }
    }
    if spec.ca_config.force_rotate > now.spec.ca_config.force_rotate {
        ask(d, Request::CaRotate).await?;
    }
    empty(StatusCode::OK)
}

/// `GET /events[?since=&until=&filters=]`: Docker's event stream, one
/// JSON object per line, long-polled from the manager's event log.
pub async fn events(d: &std::sync::Arc<Daemon>, c: &Call) -> Answer {
    require_manager(d).await?;
    let filters = c.filters()?;
    gojson::check_filters(
        &filters,
        &["type", "event", "service", "node", "network", "scope"],
    )
    .map_err(Failure::bad)?;
    let secs = |k: &str| -> Result<Option<f64>, Failure> {
        c.query
            .get(k)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<f64>()
                    .map_err(|_| Failure::bad(format!("invalid {k} {v:?}: expected unix seconds")))
            })
            .transpose()
    };
    let since_ms = secs("since")?.map(|s| (s * 1000.0) as u64);
    let until_ms = secs("until")?.map(|s| (s * 1000.0) as u64);
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<hyper::body::Frame<hyper::body::Bytes>, std::io::Error>,
    >(16);
    let daemon = d.clone();
    tokio::spawn(async move {
        let mut after = None;
        let mut first = true;
        loop {
            let req = Request::Events {
                after,
                since_ms: if first {
                    since_ms.or(Some(shoal_model::now_ms()))
                } else {
                    None
                },
            };
            first = false;
            let (events, last) = match daemon.handle(req).await {
                Ok(Response::Events { events, last_seq }) => (events, last_seq),
                _ => return,
            };
            after = Some(last);
            for e in events {
                if until_ms.is_some_and(|u| e.time_ms > u) {
                    return;
                }
                if !event_matches(&e, &filters) {
                    continue;
                }
                let mut line = serde_json::to_vec(&docker_event(&e)).unwrap_or_default();
                line.push(b'\n');
                if tx
                    .send(Ok(hyper::body::Frame::data(line.into())))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if until_ms.is_some_and(|u| shoal_model::now_ms() > u) {
                return;
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let body = http_body_util::StreamBody::new(receiver_stream(rx));
    super::stream(http_body_util::BodyExt::boxed(body), "application/json")
}

/// A channel's receiving end as the stream a streamed body reads.
pub fn receiver_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Docker's event filters: `type`, `event` (the action), `scope`, and
/// `service`/`node`/`network` (id prefix or name; with several of them,
/// an event of any of those objects).
fn event_matches(e: &shoal_api::Event, f: &gojson::Filters) -> bool {
    let objects: Vec<&str> = ["service", "node", "network"]
        .into_iter()
        .filter(|k| f.contains_key(*k))
        .collect();
    let object_ok = objects.is_empty()
        || objects.iter().any(|k| {
            e.kind == *k && gojson::any_match(f.get(*k), |v| e.id.starts_with(v) || e.name == v)
        });
    object_ok
        && gojson::any_match(f.get("type"), |v| v == e.kind)
        && gojson::any_match(f.get("event"), |v| v == e.action)
        && gojson::any_match(f.get("scope"), |v| v == "swarm")
}

/// One event as Docker writes it.
fn docker_event(e: &shoal_api::Event) -> serde_json::Value {
    let mut attrs = serde_json::Map::new();
    attrs.insert("name".into(), e.name.clone().into());
    for (k, v) in &e.attributes {
        attrs.insert(k.clone(), v.clone().into());
    }
    json!({
        "Type": e.kind, "Action": e.action,
        "Actor": {"ID": e.id, "Attributes": attrs},
        "scope": "swarm",
        "time": e.time_ms / 1000,
        "timeNano": u128::from(e.time_ms) * 1_000_000,
    })
}
