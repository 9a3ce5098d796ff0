//! Shoal's objects as Docker's, and Docker's service spec as Shoal's: the
//! one place the two vocabularies meet. Durations are nanoseconds, times
//! RFC 3339, enums Docker's lower-case words.

use std::collections::BTreeMap;

use serde_json::Value;
use shoal_model::configs::{FileKind, FileRef, StoredFile};
use shoal_model::service::{
    self as model, EndpointMode, Protocol, PublishMode, RestartCondition, Runtime, ServiceMode,
    TaskState,
};
use shoal_model::update::{FailureAction, UpdateOrder, UpdateState};

use super::types as d;
use crate::{NodeRow, ServiceRow, TaskRow};

const NS_PER_MS: i64 = 1_000_000;

/// Unix ms as RFC 3339 (`2026-12-01T10:00:00.123Z`).
pub fn rfc3339(ms: u64) -> String {
    crate::dto::rfc3339_ms(ms)
}

/// What the renderers need to know of a network.
#[derive(Debug, Clone, Default)]
pub struct NetRef {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Prefix length of its subnet.
    pub prefix: u8,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Flags.
    pub ingress: bool,
    /// Flags.
    pub attachable: bool,
    /// Flags.
    pub internal: bool,
}

/// Networks by id.
pub type Nets = BTreeMap<String, NetRef>;

// --- service spec, Shoal → Docker ---------------------------------------

/// A stored spec as Docker's `ServiceSpec`.
pub fn spec_to_docker(s: &model::ServiceSpec) -> d::ServiceSpec {
    let c = &s.container;
    let limit = |cpu: Option<i64>, mem: Option<i64>| {
        (cpu.is_some() || mem.is_some()).then(|| d::Limit {
            nano_cpus: cpu.unwrap_or(0),
            memory_bytes: mem.unwrap_or(0),
        })
    };
    let update = |u: &shoal_model::update::UpdateConfig| d::UpdateConfig {
        parallelism: u.parallelism,
        delay: u.delay_ms as i64 * NS_PER_MS,
        failure_action: match u.failure_action {
            FailureAction::Pause => "pause",
            FailureAction::Continue => "continue",
            FailureAction::Rollback => "rollback",
        }
        .into(),
        monitor: i64::try_from(u.monitor_ms).unwrap_or(i64::MAX / NS_PER_MS) * NS_PER_MS,
        max_failure_ratio: u.max_failure_ratio.get() as f32,
        order: match u.order {
            UpdateOrder::StopFirst => "stop-first",
            UpdateOrder::StartFirst => "start-first",
        }
        .into(),
    };
    d::ServiceSpec {
        name: s.name.clone(),
        labels: s.labels.clone(),
        task_template: d::TaskSpec {
            container_spec: Some(d::ContainerSpec {
                image: s.image.clone(),
                command: c.entrypoint.clone(),
                args: s.command.clone(),
                env: s.env.clone(),
                dir: c.workdir.clone().unwrap_or_default(),
                user: c.user.clone().unwrap_or_default(),
                read_only: c.read_only,
                mounts: c
                    .mounts
                    .iter()
                    .map(|m| d::Mount {
                        r#type: m.typ.clone(),
                        source: m.source.clone(),
                        target: m.target.clone(),
                        read_only: m.readonly,
                    })
                    .collect(),
                capability_add: c.cap_add.clone(),
                capability_drop: c.cap_drop.clone(),
                configs: c
                    .configs
                    .iter()
                    .map(|r| ref_to_docker(FileKind::Config, r))
                    .collect(),
                secrets: c
                    .secrets
                    .iter()
                    .map(|r| ref_to_docker(FileKind::Secret, r))
                    .collect(),
                healthcheck: c.healthcheck.as_ref().map(|h| {
                    let ns =
                        |ms: u64| i64::try_from(ms).unwrap_or(i64::MAX / NS_PER_MS) * NS_PER_MS;
                    d::HealthConfig {
                        test: h.test.clone(),
                        interval: ns(h.interval_ms),
                        timeout: ns(h.timeout_ms),
                        retries: i64::try_from(h.retries).unwrap_or(i64::MAX),
                        start_period: ns(h.start_period_ms),
                    }
                }),
                ..Default::default()
            }),
            resources: Some(d::Resources {
                limits: limit(c.limit_nano_cpus, c.limit_memory),
                reservations: limit(c.reserve_nano_cpus, c.reserve_memory),
            }),
            restart_policy: Some(d::RestartPolicy {
                condition: s.restart_condition.to_string(),
                delay: Some(5_000 * NS_PER_MS),
                max_attempts: Some(0),
            }),
            placement: Some(d::Placement {
                constraints: s.constraints.clone(),
                preferences: s
                    .placement_prefs
                    .iter()
                    .map(|p| d::PlacementPreference {
                        spread: d::Spread {
                            spread_descriptor: p.strip_prefix("spread=").unwrap_or(p).to_string(),
                        },
                    })
                    .collect(),
                max_replicas: s.max_replicas_per_node,
            }),
            networks: s
                .networks
                .iter()
                .map(|n| d::NetworkAttachmentConfig {
                    target: n.clone(),
                    aliases: s.aliases.get(n).cloned().unwrap_or_default(),
                })
                .collect(),
            force_update: s.force_update,
            runtime: match c.runtime {
                Runtime::Container => String::new(),
                Runtime::Host => "shoal-host".into(),
            },
        },
        mode: match s.mode {
            ServiceMode::Replicated => d::ServiceMode {
                replicated: Some(d::Replicated {
                    replicas: Some(s.replicas),
                }),
                ..Default::default()
            },
            ServiceMode::Global => d::ServiceMode {
                global: Some(d::Empty {}),
                ..Default::default()
            },
        },
        update_config: Some(update(&s.update_config)),
        rollback_config: Some(update(&s.rollback_config)),
        networks: Vec::new(),
        endpoint_spec: Some(d::EndpointSpec {
            mode: s.endpoint_mode.to_string(),
            ports: s.ports.iter().map(port_to_docker).collect(),
        }),
    }
}

fn ref_to_docker(kind: FileKind, r: &FileRef) -> d::FileReference {
    let file = Some(d::FileTarget {
        name: r.target.clone(),
        uid: r.uid.clone(),
        gid: r.gid.clone(),
        mode: r.mode,
    });
    match kind {
        FileKind::Config => d::FileReference {
            file,
            config_id: r.id.clone(),
            config_name: r.name.clone(),
            ..Default::default()
        },
        FileKind::Secret => d::FileReference {
            file,
            secret_id: r.id.clone(),
            secret_name: r.name.clone(),
            ..Default::default()
        },
    }
}

fn ref_from_docker(kind: FileKind, r: &d::FileReference) -> FileRef {
    let (id, name) = match kind {
        FileKind::Config => (&r.config_id, &r.config_name),
        FileKind::Secret => (&r.secret_id, &r.secret_name),
    };
    let f = r.file.clone().unwrap_or_default();
    FileRef {
        id: id.clone(),
        name: name.clone(),
        target: f.name,
        uid: f.uid,
        gid: f.gid,
        mode: f.mode,
    }
}

/// A config or secret as Docker's object (a secret's data never).
pub fn file_to_docker(kind: FileKind, f: &StoredFile) -> d::FileObject {
    use base64::Engine as _;
    d::FileObject {
        id: f.id.clone(),
        version: d::ObjectVersion { index: f.version },
        created_at: rfc3339(f.created_at),
        updated_at: rfc3339(f.updated_at),
        spec: d::FileSpec {
            name: f.name.clone(),
            labels: f.labels.clone(),
            data: (kind == FileKind::Config)
                .then(|| base64::engine::general_purpose::STANDARD.encode(&f.data)),
            driver: None,
            templating: None,
        },
    }
}

fn port_to_docker(p: &model::PortConfig) -> d::PortConfig {
    d::PortConfig {
        name: String::new(),
        protocol: p.protocol.to_string(),
        target_port: p.target.into(),
        published_port: p.published.into(),
        publish_mode: p.mode.to_string(),
    }
}

// --- service spec, Docker → Shoal ---------------------------------------

/// Fields Shoal does not apply; the create or update answer warns.
const IGNORED: &[&str] = &[
    "Hosts",
    "Sysctls",
    "Ulimits",
    "Privileges",
    "TTY",
    "OpenStdin",
    "Groups",
    "StopSignal",
    "StopGracePeriod",
    "Hostname",
    "Isolation",
    "OomScoreAdj",
];

fn non_empty(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => o.values().any(non_empty),
    }
}

/// A Docker `ServiceSpec` (already [`super::gojson::normalize`]d) as
/// Shoal's, with the warnings for what it leaves out. Errors name the
/// field. Network targets stay as given (ids or names: the store resolves
/// both).
pub fn spec_from_docker(raw: &Value) -> Result<(model::ServiceSpec, Vec<String>), String> {
    let ds: d::ServiceSpec =
        serde_json::from_value(raw.clone()).map_err(|e| format!("invalid service spec: {e}"))?;
    let mut warnings = Vec::new();
    let cs_raw = &raw["TaskTemplate"]["ContainerSpec"];
    for field in IGNORED {
        if non_empty(&cs_raw[field]) {
            warnings.push(format!(
                "ContainerSpec.{field} is not supported by Shoal and was ignored"
            ));
        }
    }
    if non_empty(&raw["TaskTemplate"]["LogDriver"]) {
        warnings.push("TaskTemplate.LogDriver is not supported by Shoal and was ignored (tasks log to json-file)".into());
    }
    let (mode, replicas) = match (&ds.mode.replicated, &ds.mode.global) {
        _ if ds.mode.replicated_job.is_some() || ds.mode.global_job.is_some() => {
            return Err(
                "Mode: replicated-job and global-job services are not supported by Shoal".into(),
            )
        }
        (Some(_), Some(_)) => return Err("Mode: set Replicated or Global, not both".into()),
        (None, Some(_)) => (ServiceMode::Global, 0),
        (Some(r), None) => (ServiceMode::Replicated, r.replicas.unwrap_or(1)),
        (None, None) => (ServiceMode::Replicated, 1),
    };
    let tt = &ds.task_template;
    let cs = tt.container_spec.clone().unwrap_or_default();
    let res = tt.resources.clone().unwrap_or_default();
    let pos = |n: i64| (n > 0).then_some(n);
    let runtime = match tt.runtime.as_str() {
        "" | "container" => Runtime::Container,
        "shoal-host" => Runtime::Host,
        other => {
            return Err(format!(
                "TaskTemplate.Runtime {other:?} is not supported by Shoal"
            ))
        }
    };
    let restart_condition = match tt.restart_policy.as_ref().map(|r| r.condition.as_str()) {
        None | Some("") => RestartCondition::Any,
        Some(c) => c
            .parse()
            .map_err(|e| format!("RestartPolicy.Condition: {e}"))?,
    };
    let placement = tt.placement.clone().unwrap_or_default();
    let ep = ds.endpoint_spec.clone().unwrap_or_default();
    let endpoint_mode = match ep.mode.as_str() {
        "" => EndpointMode::Vip,
        m => m.parse().map_err(|e| format!("EndpointSpec.Mode: {e}"))?,
    };
    let ports = ep
        .ports
        .iter()
        .map(port_from_docker)
        .collect::<Result<Vec<_>, _>>()?;
    let networks = if tt.networks.is_empty() {
        &ds.networks
    } else {
        &tt.networks
    };
    let update_config = update_from_docker("UpdateConfig", ds.update_config.as_ref())?;
    let rollback_config = update_from_docker("RollbackConfig", ds.rollback_config.as_ref())?;
    let spec = model::ServiceSpec {
        name: ds.name.clone(),
        replicas,
        networks: networks.iter().map(|n| n.target.clone()).collect(),
        ports,
        endpoint_mode,
        env: cs.env.clone(),
        restart_condition,
        command: cs.args.clone(),
        labels: ds.labels.clone(),
        image: cs.image.clone(),
        container: model::ContainerSpec {
            runtime,
            entrypoint: cs.command.clone(),
            user: Some(cs.user.clone()).filter(|u| !u.is_empty()),
            workdir: Some(cs.dir.clone()).filter(|u| !u.is_empty()),
            mounts: cs
                .mounts
                .iter()
                .map(|m| model::Mount {
                    typ: if m.r#type.is_empty() {
                        "volume".into()
                    } else {
                        m.r#type.clone()
                    },
                    source: m.source.clone(),
                    target: m.target.clone(),
                    readonly: m.read_only,
                })
                .collect(),
            read_only: cs.read_only,
            cap_add: cs.capability_add.clone(),
            cap_drop: cs.capability_drop.clone(),
            limit_memory: res.limits.as_ref().and_then(|l| pos(l.memory_bytes)),
            limit_nano_cpus: res.limits.as_ref().and_then(|l| pos(l.nano_cpus)),
            reserve_memory: res.reservations.as_ref().and_then(|l| pos(l.memory_bytes)),
            reserve_nano_cpus: res.reservations.as_ref().and_then(|l| pos(l.nano_cpus)),
            configs: cs
                .configs
                .iter()
                .map(|r| ref_from_docker(FileKind::Config, r))
                .collect(),
            secrets: cs
                .secrets
                .iter()
                .map(|r| ref_from_docker(FileKind::Secret, r))
                .collect(),
            healthcheck: cs
                .healthcheck
                .as_ref()
                .map(health_from_docker)
                .transpose()?,
        },
        mode,
        constraints: placement.constraints.clone(),
        max_replicas_per_node: placement.max_replicas,
        placement_prefs: placement
            .preferences
            .iter()
            .map(|p| format!("spread={}", p.spread.spread_descriptor))
            .collect(),
        update_config,
        force_update: tt.force_update,
        rollback_config,
        aliases: networks
            .iter()
            .filter(|n| !n.aliases.is_empty())
            .map(|n| (n.target.clone(), n.aliases.clone()))
            .collect(),
    };
    Ok((spec, warnings))
}

/// Docker's `UpdateConfig` (or `RollbackConfig`: `which`) as Shoal's;
/// unset fields take docker's defaults.
fn update_from_docker(
    which: &str,
    u: Option<&d::UpdateConfig>,
) -> Result<shoal_model::update::UpdateConfig, String> {
    let mut c = shoal_model::update::UpdateConfig::default();
    let Some(u) = u else { return Ok(c) };
    c.parallelism = u.parallelism;
    c.delay_ms = (u.delay.max(0) / NS_PER_MS) as u64;
    if u.monitor > 0 {
        c.monitor_ms = (u.monitor / NS_PER_MS) as u64;
    }
    c.max_failure_ratio = shoal_model::update::FailureRatio::new(f64::from(u.max_failure_ratio))
        .map_err(|e| format!("{which}.MaxFailureRatio: {e}"))?;
    c.order = match u.order.as_str() {
        "" | "stop-first" => UpdateOrder::StopFirst,
        "start-first" => UpdateOrder::StartFirst,
        o => {
            return Err(format!(
                "{which}.Order {o:?}: expected stop-first or start-first"
            ))
        }
    };
    c.failure_action = match u.failure_action.as_str() {
        "" | "pause" => FailureAction::Pause,
        "continue" => FailureAction::Continue,
        "rollback" if which == "UpdateConfig" => FailureAction::Rollback,
        a if which == "UpdateConfig" => {
            return Err(format!(
                "{which}.FailureAction {a:?}: expected pause, continue or rollback"
            ))
        }
        a => {
            return Err(format!(
                "{which}.FailureAction {a:?}: expected pause or continue"
            ))
        }
    };
    Ok(c)
}

/// Docker's `HealthConfig` as Shoal's (durations to ms; negative ones
/// refused as the daemon does).
fn health_from_docker(h: &d::HealthConfig) -> Result<shoal_model::health::HealthConfig, String> {
    let ms = |ns: i64, what: &str| match ns {
        n if n < 0 => Err(format!("Healthcheck.{what} cannot be negative")),
        n if n > 0 && n < NS_PER_MS => Err(format!(
            "Healthcheck.{what} in Healthcheck cannot be less than 1ms"
        )),
        n => Ok((n / NS_PER_MS) as u64),
    };
    let h = shoal_model::health::HealthConfig {
        test: h.test.clone(),
        interval_ms: ms(h.interval, "Interval")?,
        timeout_ms: ms(h.timeout, "Timeout")?,
        retries: u64::try_from(h.retries)
            .map_err(|_| "Healthcheck.Retries cannot be negative".to_string())?,
        start_period_ms: ms(h.start_period, "StartPeriod")?,
    };
    h.check().map_err(|e| format!("Healthcheck.Test: {e}"))?;
    Ok(h)
}

fn port_from_docker(p: &d::PortConfig) -> Result<model::PortConfig, String> {
    let u16_of = |n: u64, what: &str| {
        u16::try_from(n).map_err(|_| format!("EndpointSpec.Ports: {what} {n} is not a port"))
    };
    let target = u16_of(p.target_port, "TargetPort")?;
    if target == 0 {
        return Err("EndpointSpec.Ports: TargetPort is required".into());
    }
    Ok(model::PortConfig {
        protocol: match p.protocol.as_str() {
            "" | "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            o => {
                return Err(format!(
                    "EndpointSpec.Ports: protocol {o:?} is not supported (tcp or udp)"
                ))
            }
        },
        target,
        published: u16_of(p.published_port, "PublishedPort")?,
        mode: match p.publish_mode.as_str() {
            "" | "ingress" => PublishMode::Ingress,
            "host" => PublishMode::Host,
            m => {
                return Err(format!(
                    "EndpointSpec.Ports: PublishMode {m:?}: expected ingress or host"
                ))
            }
        },
    })
}

// --- objects --------------------------------------------------------------

/// A service row as Docker's `Service`; `status` adds `ServiceStatus`
/// (`?status=true`).
pub fn service_to_docker(row: &ServiceRow, nets: &Nets, status: bool) -> d::Service {
    let s = &row.service;
    let spec = spec_to_docker(&s.spec);
    let endpoint_spec = spec.endpoint_spec.clone().unwrap_or_default();
    d::Service {
        id: s.id.clone(),
        version: d::ObjectVersion { index: s.version },
        created_at: rfc3339(s.created_at),
        updated_at: rfc3339(s.updated_at),
        previous_spec: s.previous_spec.as_deref().map(spec_to_docker),
        endpoint: d::Endpoint {
            ports: endpoint_spec.ports.clone(),
            spec: endpoint_spec,
            virtual_ips: s
                .vips
                .iter()
                .map(|(nid, ip)| d::VirtualIp {
                    network_id: nid.clone(),
                    addr: format!("{ip}/{}", nets.get(nid).map_or(32, |n| n.prefix)),
                })
                .collect(),
        },
        spec,
        update_status: s.update_status.as_ref().map(|u| d::UpdateStatus {
            state: match u.state {
                UpdateState::Updating => "updating",
                UpdateState::Paused => "paused",
                UpdateState::Completed => "completed",
                UpdateState::RollbackStarted => "rollback_started",
                UpdateState::RollbackCompleted => "rollback_completed",
                UpdateState::RollbackPaused => "rollback_paused",
            }
            .into(),
            started_at: (u.started_at > 0).then(|| rfc3339(u.started_at)),
            completed_at: (u.completed_at > 0).then(|| rfc3339(u.completed_at)),
            message: u.message.clone(),
        }),
        service_status: status.then_some(d::ServiceStatus {
            running_tasks: row.running,
            desired_tasks: row.desired,
            completed_tasks: 0,
        }),
    }
}

/// A task row as Docker's `Task`; `spec` is the task template it runs.
pub fn task_to_docker(row: &TaskRow, spec: &d::TaskSpec, nets: &Nets) -> d::Task {
    let t = &row.task;
    let failed = matches!(t.state, TaskState::Failed | TaskState::Rejected);
    d::Task {
        id: t.id.clone(),
        version: d::ObjectVersion { index: t.version },
        created_at: rfc3339(t.created_at),
        updated_at: rfc3339(t.updated_at),
        labels: BTreeMap::new(),
        spec: spec.clone(),
        service_id: t.service.clone(),
        slot: t.slot,
        node_id: t.node.clone(),
        status: d::TaskStatus {
            timestamp: rfc3339(t.updated_at),
            state: task_state(t.state).into(),
            message: if failed {
                String::new()
            } else {
                t.message.clone()
            },
            err: if failed {
                t.message.clone()
            } else {
                String::new()
            },
            container_status: (t.state >= TaskState::Starting).then(|| d::ContainerStatus {
                container_id: t.id.clone(),
                pid: 0,
                exit_code: t.exit_code.unwrap_or(0).into(),
            }),
            port_status: d::Empty {},
        },
        desired_state: task_state(t.desired).into(),
        networks_attachments: t
            .endpoints
            .iter()
            .map(|(nid, ep)| {
                let n = nets.get(nid).cloned().unwrap_or_else(|| NetRef {
                    id: nid.clone(),
                    prefix: 32,
                    ..Default::default()
                });
                d::NetworkAttachment {
                    addresses: vec![format!("{}/{}", ep.ip, n.prefix)],
                    network: d::AttachedNetwork {
                        id: n.id.clone(),
                        version: d::ObjectVersion::default(),
                        spec: d::AttachedNetworkSpec {
                            name: n.name,
                            labels: n.labels,
                            scope: "swarm".into(),
                            ingress: n.ingress,
                            attachable: n.attachable,
                            internal: n.internal,
                        },
                    },
                }
            })
            .collect(),
    }
}

/// Docker's word for a task state.
pub fn task_state(s: TaskState) -> &'static str {
    match s {
        TaskState::New => "new",
        TaskState::Assigned => "assigned",
        TaskState::Starting => "starting",
        TaskState::Running => "running",
        TaskState::Complete => "complete",
        TaskState::Shutdown => "shutdown",
        TaskState::Failed => "failed",
        TaskState::Rejected => "rejected",
        TaskState::Orphaned => "orphaned",
    }
}

/// A node row as Docker's `Node`; `trust_root` is the cluster's CA.
pub fn node_to_docker(row: &NodeRow, trust_root: &str) -> d::Node {
    let n = &row.node;
    let manager = n.role == shoal_model::Role::Manager;
    d::Node {
        id: n.id.to_string(),
        version: d::ObjectVersion { index: n.version },
        created_at: rfc3339(n.created_at),
        updated_at: rfc3339(n.updated_at),
        spec: d::NodeSpec {
            name: String::new(),
            labels: row.labels.clone(),
            role: n.role.to_string(),
            availability: n.availability.to_string().to_ascii_lowercase(),
        },
        description: d::NodeDescription {
            hostname: n.hostname.clone(),
            platform: d::Platform {
                architecture: std::env::consts::ARCH.into(),
                os: std::env::consts::OS.into(),
            },
            resources: row
                .resources
                .as_ref()
                .map(|r| d::Limit {
                    nano_cpus: r.nano_cpus,
                    memory_bytes: r.memory_bytes,
                })
                .unwrap_or_default(),
            engine: d::EngineDescription {
                engine_version: format!("shoal-{}", env!("CARGO_PKG_VERSION")),
            },
            tls_info: d::TlsInfo {
                trust_root: trust_root.to_string(),
            },
        },
        status: d::NodeStatus {
            state: n.status.to_string().to_ascii_lowercase(),
            message: String::new(),
            addr: n.addr.ip().to_string(),
        },
        manager_status: manager.then(|| d::ManagerStatus {
            leader: row.manager_status == "Leader",
            reachability: if row.manager_status == "Unreachable" {
                "unreachable".into()
            } else {
                "reachable".into()
            },
            addr: n.addr.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gojson::normalize;
    use serde_json::json;

    fn parse(v: Value) -> Result<(model::ServiceSpec, Vec<String>), String> {
        let mut v = v;
        normalize(&mut v);
        spec_from_docker(&v)
    }

    /// What `docker service create --name web --replicas 2 --network net1
    /// -p 8080:80 -e A=1 --restart-condition on-failure nginx:alpine sh -c
    /// 'sleep 1d'` sends (CLI 28.2.2).
    fn cli_create() -> Value {
        json!({"Name":"web","Labels":{"tier":"fe"},"TaskTemplate":{"ContainerSpec":{"Image":"nginx:alpine","Args":["sh","-c","sleep 1d"],"Env":["A=1"],"Init":false,"DNSConfig":{}},
            "Resources":{"Limits":{},"Reservations":{}},"RestartPolicy":{"Condition":"on-failure","Delay":5000000000u64,"MaxAttempts":0},"Placement":{},"Networks":[{"Target":"abc"}],"ForceUpdate":0},
            "Mode":{"Replicated":{"Replicas":2}},"EndpointSpec":{"Mode":"vip","Ports":[{"Protocol":"tcp","TargetPort":80,"PublishedPort":8080,"PublishMode":"ingress"},
            {"Protocol":"udp","TargetPort":53,"PublishedPort":53,"PublishMode":"host"}]}})
    }

    #[test]
    fn the_clis_create_request_reads_and_round_trips() {
        let (s, warnings) = parse(cli_create()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            (s.name.as_str(), s.replicas, s.mode),
            ("web", 2, ServiceMode::Replicated)
        );
        assert_eq!(s.image, "nginx:alpine");
        assert_eq!(s.command, ["sh", "-c", "sleep 1d"]);
        assert_eq!(s.container.entrypoint, None);
        assert_eq!(s.networks, ["abc"]);
        assert_eq!(s.restart_condition, RestartCondition::OnFailure);
        assert_eq!(s.ports[1].mode, PublishMode::Host);
        assert_eq!(s.ports[1].protocol, Protocol::Udp);
        // What Shoal writes back reads as the same spec (the CLI's
        // get-modify-post of update and scale).
        let back = serde_json::to_value(spec_to_docker(&s)).unwrap();
        assert_eq!(back["TaskTemplate"]["ForceUpdate"], 0);
        assert_eq!(back["Labels"]["tier"], "fe");
        let (again, _) = parse(back).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn missing_replicas_is_one_and_docker_py_spelling_reads() {
        let mut v = cli_create();
        v["Mode"] = json!({"Replicated": {}});
        assert_eq!(parse(v).unwrap().0.replicas, 1);
        let mut v = cli_create();
        v["Mode"] = json!({"global": {}});
        assert_eq!(parse(v).unwrap().0.mode, ServiceMode::Global);
        let mut v = cli_create();
        v["Mode"] = json!({"replicated": {"replicas": 4}});
        assert_eq!(parse(v).unwrap().0.replicas, 4);
    }

    #[test]
    fn what_shoal_cannot_honour_is_refused_or_warned() {
        let mut v = cli_create();
        v["TaskTemplate"]["ContainerSpec"]["Healthcheck"] = json!({"Test": ["CMD-SHELL", "wget -q localhost"], "Interval": 2_000_000_000u64, "Retries": 2});
        let h = parse(v.clone()).unwrap().0.container.healthcheck.unwrap();
        assert_eq!((h.interval_ms, h.retries, h.timeout_ms), (2_000, 2, 0));
        v["TaskTemplate"]["ContainerSpec"]["Healthcheck"]["Test"] = json!(["SHELL", "x"]);
        assert!(parse(v).unwrap_err().contains("Healthcheck.Test"));
        let mut v = cli_create();
        v["TaskTemplate"]["ContainerSpec"]["Healthcheck"] =
            json!({"Test": ["CMD", "true"], "Timeout": -1});
        assert!(parse(v).unwrap_err().contains("cannot be negative"));
        let mut v = cli_create();
        v["TaskTemplate"]["ContainerSpec"]["Secrets"] = json!([{"SecretName": "pw", "File": {"Name": "db", "UID": "0", "GID": "0", "Mode": 256}}]);
        let s = parse(v).unwrap().0;
        let r = &s.container.secrets[0];
        assert_eq!(
            (r.name.as_str(), r.target.as_str(), r.mode),
            ("pw", "db", 0o400)
        );
        let mut v = cli_create();
        v["TaskTemplate"]["ContainerSpec"]["Healthcheck"] = json!({"Test": ["NONE"]});
        assert!(parse(v).is_ok());
        let mut v = cli_create();
        v["Mode"] = json!({"ReplicatedJob": {}});
        assert!(parse(v).unwrap_err().contains("not supported"));
        let mut v = cli_create();
        v["TaskTemplate"]["ContainerSpec"]["Hosts"] = json!(["1.2.3.4 x"]);
        assert_eq!(parse(v).unwrap().1.len(), 1);
        let mut v = cli_create();
        v["EndpointSpec"]["Ports"][0]["TargetPort"] = json!(70000);
        assert!(parse(v).unwrap_err().contains("not a port"));
        let mut v = cli_create();
        v["TaskTemplate"]["RestartPolicy"]["Condition"] = json!("sometimes");
        assert!(parse(v).unwrap_err().contains("RestartPolicy.Condition"));
    }
}
