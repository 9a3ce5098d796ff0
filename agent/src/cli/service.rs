//! `shoal service ...` and `shoal network create`: flags to specs, and
//! the service tables.

use shoal_api::client::{self, ClientError};
use shoal_api::{Request, Response, RollingChanges};
use shoal_model::service::{
    ContainerSpec, EndpointMode, Mount, PublishMode, Runtime, ServiceMode, ServiceSpec,
};
use shoal_model::update::{FailureAction, UpdateConfig, UpdateOrder};

use super::args::{
    Cli, ContainerArgs, Mode, NetworkCmd, OnFailure, OnRollbackFailure, Order, RollbackArgs,
    RuntimeArg, ServiceCmd, UpdateArgs,
};
use super::output::{
    ports_column, print_json, print_response, print_table, replicas_column, state_column,
};
use super::Format;

fn on_failure(o: OnFailure) -> FailureAction {
    match o {
        OnFailure::Pause => FailureAction::Pause,
        OnFailure::Continue => FailureAction::Continue,
        OnFailure::Rollback => FailureAction::Rollback,
    }
}

fn order(o: Order) -> UpdateOrder {
    match o {
        Order::StopFirst => UpdateOrder::StopFirst,
        Order::StartFirst => UpdateOrder::StartFirst,
    }
}

/// What `--update-*` and `--rollback-*` change.
fn rolling_changes(u: &UpdateArgs, r: &RollbackArgs) -> (RollingChanges, RollingChanges) {
    let update = RollingChanges {
        parallelism: u.update_parallelism,
        delay_ms: u.update_delay,
        order: u.update_order.map(order),
        failure_action: u.update_failure_action.map(on_failure),
        monitor_ms: u.update_monitor,
        max_failure_ratio: u.update_max_failure_ratio,
    };
    let rollback = RollingChanges {
        parallelism: r.rollback_parallelism,
        delay_ms: r.rollback_delay,
        order: r.rollback_order.map(order),
        failure_action: r.rollback_failure_action.map(|a| match a {
            OnRollbackFailure::Pause => FailureAction::Pause,
            OnRollbackFailure::Continue => FailureAction::Continue,
        }),
        monitor_ms: r.rollback_monitor,
        max_failure_ratio: r.rollback_max_failure_ratio,
    };
    (update, rollback)
}

/// Build a service spec from `service create` flags.
fn service_spec(cmd: &ServiceCmd) -> Result<ServiceSpec, ClientError> {
    let ServiceCmd::Create {
        name,
        replicas,
        mode,
        constraint,
        replicas_max_per_node,
        placement_pref,
        rolling,
        rollback_flags,
        health,
        network,
        publish,
        endpoint_mode,
        env,
        restart_condition,
        label,
        container,
        command,
        config,
        secret,
    } = cmd
    else {
        return Err(ClientError::Unexpected("not service create".into()));
    };
    let bad = |m: String| ClientError::Api(shoal_api::ApiError::invalid(m));
    if *endpoint_mode == EndpointMode::Dnsrr
        && publish.iter().any(|p| p.mode == PublishMode::Ingress)
    {
        return Err(bad(
            "port published with ingress mode can't be used with dnsrr mode (use mode=host)".into(),
        ));
    }
    let (image, command, mut container, env) = container_settings(container, command, env)?;
    container.healthcheck = health.config();
    let mut networks = Vec::new();
    let mut aliases = std::collections::BTreeMap::new();
    for n in network {
        let (name, alias) = parse_network(n).map_err(bad)?;
        if !alias.is_empty() {
            aliases.insert(name.clone(), alias);
        }
        networks.push(name);
    }
    for (flag, list, refs) in [
        ("config", config, &mut container.configs),
        ("secret", secret, &mut container.secrets),
    ] {
        for s in list {
            refs.push(super::files::parse_ref(flag, s)?);
        }
    }
    let mut labels = std::collections::BTreeMap::new();
    for l in label {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        if k.is_empty() {
            return Err(bad(format!("--label {l:?}: expected key=value")));
        }
        labels.insert(k.to_string(), v.to_string());
    }
    let (mode, replicas) = match (mode, replicas) {
        (Mode::Global, Some(_)) => {
            return Err(bad("replicas can only be used with replicated mode".into()))
        }
        (Mode::Global, None) => (ServiceMode::Global, 0),
        (Mode::Replicated, r) => (ServiceMode::Replicated, r.unwrap_or(1)),
    };
    let (mut update_config, mut rollback_config) =
        (UpdateConfig::default(), UpdateConfig::default());
    let (u, r) = rolling_changes(rolling, rollback_flags);
    u.apply(&mut update_config);
    r.apply(&mut rollback_config);
    Ok(ServiceSpec {
        mode,
        constraints: constraint.clone(),
        max_replicas_per_node: *replicas_max_per_node,
        placement_prefs: placement_pref.clone(),
        update_config,
        rollback_config,
        name: name.clone(),
        replicas,
        networks,
        ports: publish.clone(),
        endpoint_mode: *endpoint_mode,
        env,
        restart_condition: *restart_condition,
        command,
        labels,
        image,
        container,
        force_update: 0,
        aliases,
    })
}

/// `--network NAME` or `--network name=NAME[,alias=A]...`: the network and
/// the service's aliases on it.
fn parse_network(s: &str) -> Result<(String, Vec<String>), String> {
    if !s.contains('=') {
        return Ok((s.to_string(), Vec::new()));
    }
    let (mut name, mut aliases) = (String::new(), Vec::new());
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("name" | "target", v)) => name = v.to_string(),
            Some(("alias", v)) => aliases.push(v.to_string()),
            _ => {
                return Err(format!(
                    "--network {s:?}: expected name=NETWORK[,alias=NAME]..."
                ))
            }
        }
    }
    if name.is_empty() {
        return Err(format!("--network {s:?}: name= is required"));
    }
    Ok((name, aliases))
}

/// What `service create` and `run` share: the image and command from the
/// positional arguments, the container settings from the flags, and the
/// environment (`-e` after `--env-file`, each `K=V`).
pub(super) fn container_settings(
    container: &ContainerArgs,
    positional: &[String],
    env: &[String],
) -> Result<(String, Vec<String>, ContainerSpec, Vec<String>), ClientError> {
    let bad = |m: String| ClientError::Api(shoal_api::ApiError::invalid(m));
    let mut all_env = Vec::new();
    for f in &container.env_file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| bad(format!("--env-file {}: {e}", f.display())))?;
        all_env.extend(parse_env_file(&text));
    }
    all_env.extend(env.iter().cloned());
    for e in &all_env {
        if !e.contains('=') || e.starts_with('=') {
            return Err(bad(format!("--env {e:?}: expected K=V")));
        }
    }
    let (image, command, runtime) = match container.runtime {
        RuntimeArg::Host => (String::new(), positional.to_vec(), Runtime::Host),
        RuntimeArg::Container => {
            let (image, rest) = positional
                .split_first()
                .ok_or_else(|| bad("an image is required".into()))?;
            (image.clone(), rest.to_vec(), Runtime::Container)
        }
    };
    let mounts = container
        .mount
        .iter()
        .map(|m| parse_mount(m).map_err(bad))
        .collect::<Result<Vec<_>, _>>()?;
    let spec = ContainerSpec {
        runtime,
        entrypoint: container.entrypoint.as_ref().map(|e| {
            if e.is_empty() {
                Vec::new()
            } else {
                vec![e.clone()]
            }
        }),
        user: container.user.clone(),
        workdir: container.workdir.clone(),
        mounts,
        read_only: container.read_only,
        cap_add: container.cap_add.clone(),
        cap_drop: container.cap_drop.clone(),
        limit_memory: container.limit_memory,
        limit_nano_cpus: container.limit_cpu,
        reserve_memory: container.reserve_memory,
        reserve_nano_cpus: container.reserve_cpu,
        configs: Vec::new(),
        secrets: Vec::new(),
        healthcheck: None,
    };
    Ok((image, command, spec, all_env))
}

/// `K=V` lines of an env file; `#` comments and blank lines skipped, a
/// bare `K` takes this shell's value (as docker).
fn parse_env_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once('=') {
            Some(_) => l.to_string(),
            None => format!("{l}={}", std::env::var(l).unwrap_or_default()),
        })
        .collect()
}

/// `type=bind|volume|tmpfs,source=SRC,target=DST[,readonly]` (docker's
/// `--mount`, with its aliases `src`, `dst`/`destination`, `ro`).
pub(crate) fn parse_mount(s: &str) -> Result<Mount, String> {
    let mut m = Mount {
        typ: "volume".into(),
        source: String::new(),
        target: String::new(),
        readonly: false,
    };
    for field in s.split(',') {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (field.trim(), None),
        };
        match (k, v) {
            ("type", Some(t)) if ["bind", "volume", "tmpfs"].contains(&t) => m.typ = t.into(),
            ("type", Some(t)) => {
                return Err(format!("invalid mount type {t:?}: bind, volume or tmpfs"))
            }
            ("source" | "src", Some(v)) => m.source = v.into(),
            ("target" | "dst" | "destination", Some(v)) => m.target = v.into(),
            ("readonly" | "ro", None | Some("1" | "true")) => m.readonly = true,
            ("readonly" | "ro", Some("0" | "false")) => m.readonly = false,
            _ => return Err(format!("invalid field {field:?} in --mount {s:?}")),
        }
    }
    if m.target.is_empty() {
        return Err(format!("--mount {s:?}: target is required"));
    }
    if !m.target.starts_with('/') {
        return Err(format!(
            "--mount {s:?}: invalid mount target, must be an absolute path"
        ));
    }
    match m.typ.as_str() {
        "bind" if !m.source.starts_with('/') => Err(format!(
            "--mount {s:?}: a bind source must be an absolute host path"
        )),
        "tmpfs" if !m.source.is_empty() => Err(format!("--mount {s:?}: tmpfs takes no source")),
        "volume"
            if m.source.is_empty()
                || !m
                    .source
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) =>
        {
            Err(format!(
                "--mount {s:?}: a volume needs a name of [a-zA-Z0-9_.-]"
            ))
        }
        _ => Ok(m),
    }
}

pub(super) async fn service_command(cli: &Cli, cmd: &ServiceCmd) -> Result<(), ClientError> {
    use shoal_api::ServiceUpdate;
    let call = |req| client::call(&cli.host, req);
    let resp = match cmd {
        ServiceCmd::Create { container, .. } => {
            let req = Request::ServiceCreate {
                spec: Box::new(service_spec(cmd)?),
                resolve_image: !container.no_resolve_image,
            };
            match call(req).await? {
                Response::Created { id, warnings } => {
                    for w in warnings {
                        eprintln!("{w}");
                    }
                    outln!("{id}");
                    return Ok(());
                }
                other => other,
            }
        }
        ServiceCmd::Ls => call(Request::ServiceList { services: vec![] }).await?,
        ServiceCmd::Logs { opts, service } => {
            return super::logs::print(&cli.host, opts, |after| Request::ServiceLogs {
                service: service.clone(),
                tail: opts.tail.0,
                after: after.clone(),
            })
            .await;
        }
        ServiceCmd::Inspect { services } => {
            match call(Request::ServiceList {
                services: services.clone(),
            })
            .await?
            {
                Response::Services(rows) => {
                    print_json(&rows);
                    return Ok(());
                }
                other => other,
            }
        }
        ServiceCmd::Ps { services } => {
            call(Request::ServicePs {
                services: services.clone(),
            })
            .await?
        }
        ServiceCmd::Scale { scales } => {
            for (name, n) in scales {
                call(Request::ServiceUpdate {
                    service: name.clone(),
                    update: Box::new(ServiceUpdate {
                        replicas: Some(*n),
                        ..Default::default()
                    }),
                })
                .await?;
                outln!("{name} scaled to {n}");
            }
            return Ok(());
        }
        ServiceCmd::Update {
            rollback: true,
            service,
            ..
        } => {
            call(Request::ServiceRollback {
                service: service.clone(),
            })
            .await?
        }
        ServiceCmd::Rollback { service } => {
            call(Request::ServiceRollback {
                service: service.clone(),
            })
            .await?
        }
        ServiceCmd::Update {
            replicas,
            network_add,
            network_rm,
            publish_add,
            publish_rm,
            env_add,
            env_rm,
            constraint_add,
            constraint_rm,
            placement_pref_add,
            placement_pref_rm,
            label_add,
            label_rm,
            force,
            rolling,
            rollback_flags,
            health,
            service,
            ..
        } => {
            call(Request::ServiceUpdate {
                service: service.clone(),
                update: Box::new(ServiceUpdate {
                    replicas: *replicas,
                    network_add: network_add.clone(),
                    network_rm: network_rm.clone(),
                    publish_add: publish_add.clone(),
                    publish_rm: publish_rm.clone(),
                    env_add: env_add.clone(),
                    env_rm: env_rm.clone(),
                    constraint_add: constraint_add.clone(),
                    constraint_rm: constraint_rm.clone(),
                    placement_pref_add: placement_pref_add.clone(),
                    placement_pref_rm: placement_pref_rm.clone(),
                    label_add: label_add.clone(),
                    label_rm: label_rm.clone(),
                    force: *force,
                    update_config: rolling_changes(rolling, rollback_flags).0,
                    rollback_config: rolling_changes(rolling, rollback_flags).1,
                    health: health.config(),
                    ..Default::default()
                }),
            })
            .await?
        }
        ServiceCmd::Rm { services } => {
            call(Request::ServiceRemove {
                services: services.clone(),
            })
            .await?
        }
    };
    match (cli.format, resp) {
        (Format::Json, Response::Services(rows)) => print_json(&rows),
        (Format::Table, Response::Services(rows)) => print_table(
            &["ID", "NAME", "MODE", "REPLICAS", "COMMAND", "PORTS"],
            rows.iter()
                .map(|r| {
                    vec![
                        r.service.id.chars().take(12).collect(),
                        r.service.spec.name.clone(),
                        r.service.spec.mode.to_string(),
                        replicas_column(r),
                        r.service.spec.command.join(" "),
                        ports_column(&r.service.spec.ports),
                    ]
                })
                .collect(),
        ),
        (Format::Json, Response::Tasks(rows)) => print_json(&rows),
        (Format::Table, Response::Tasks(rows)) => {
            let now = shoal_model::now_ms();
            let mut seen = std::collections::BTreeSet::new();
            print_table(
                &[
                    "ID",
                    "NAME",
                    "COMMAND",
                    "NODE",
                    "DESIRED STATE",
                    "CURRENT STATE",
                    "ERROR",
                ],
                rows.iter()
                    .map(|r| {
                        let t = &r.task;
                        // Older tasks of a slot are history, as in Docker.
                        let first = seen.insert((t.service.clone(), t.slot));
                        let name = if first {
                            t.name()
                        } else {
                            format!(" \\_ {}", t.name())
                        };
                        let error = match t.state {
                            shoal_model::service::TaskState::Failed
                            | shoal_model::service::TaskState::Rejected
                            | shoal_model::service::TaskState::Orphaned => t.message.clone(),
                            _ => String::new(),
                        };
                        vec![
                            t.id.chars().take(12).collect(),
                            name,
                            r.command.join(" "),
                            r.node_hostname.clone(),
                            t.desired.to_string(),
                            state_column(t, now),
                            error,
                        ]
                    })
                    .collect(),
            )
        }
        (format, other) => print_response(format, other, false),
    }
    Ok(())
}

/// `network create -d bridge` flags as a local network (the daemon checks
/// them).
pub(super) fn local_network_spec(
    cmd: &NetworkCmd,
) -> Result<shoal_api::LocalNetworkSpec, ClientError> {
    let NetworkCmd::Create {
        driver,
        subnet,
        gateway,
        attachable,
        ingress,
        internal,
        opt,
        label,
        name,
    } = cmd
    else {
        return Err(ClientError::Unexpected("not network create".into()));
    };
    let bad = |m: String| ClientError::Api(shoal_api::ApiError::invalid(m));
    if *attachable || *ingress {
        return Err(bad(
            "--attachable and --ingress are for overlay networks (-d overlay)".into(),
        ));
    }
    let pairs = |list: &[String], flag: &str| {
        list.iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => Err(bad(format!("{flag} {kv:?}: expected key=value"))),
            })
            .collect::<Result<std::collections::BTreeMap<_, _>, _>>()
    };
    Ok(shoal_api::LocalNetworkSpec {
        name: name.clone(),
        driver: driver.clone(),
        subnet: *subnet,
        gateway: *gateway,
        internal: *internal,
        options: pairs(opt, "--opt")?,
        labels: pairs(label, "--label")?,
    })
}

/// Build a network spec from `network create` flags.
pub(super) fn network_spec(
    cmd: &NetworkCmd,
) -> Result<shoal_model::network::NetworkSpec, ClientError> {
    let NetworkCmd::Create {
        driver,
        subnet,
        gateway,
        attachable,
        ingress,
        internal,
        opt,
        label,
        name,
    } = cmd
    else {
        return Err(ClientError::Unexpected("not network create".into()));
    };
    let bad = |m: String| ClientError::Api(shoal_api::ApiError::invalid(m));
    if driver != "overlay" {
        return Err(bad(format!(
            "network driver {driver:?} is not supported by Shoal yet: use -d overlay (or \
             -d bridge, for shoal_gwbridge only)"
        )));
    }
    let mut spec = shoal_model::network::NetworkSpec {
        name: name.clone(),
        subnet: *subnet,
        gateway: *gateway,
        attachable: *attachable,
        ingress: *ingress,
        internal: *internal,
        ..Default::default()
    };
    for o in opt {
        match o.split_once('=') {
            None if o == "encrypted" => spec.encrypted = true,
            Some(("encrypted", v)) if v.is_empty() || v == "true" => spec.encrypted = true,
            Some(("com.docker.network.driver.mtu", v)) => {
                let mtu: u32 = v
                    .parse()
                    .ok()
                    .filter(|m| (576..=9000).contains(m))
                    .ok_or_else(|| {
                        bad(format!("--opt {o}: MTU must be a number from 576 to 9000"))
                    })?;
                spec.mtu = Some(mtu);
            }
            _ => {
                return Err(bad(format!(
                    "--opt {o}: unknown option (known: encrypted, com.docker.network.driver.mtu=N)"
                )))
            }
        }
    }
    for l in label {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        if k.is_empty() {
            return Err(bad(format!("--label {l:?}: expected key=value")));
        }
        spec.labels.insert(k.to_string(), v.to_string());
    }
    Ok(spec)
}
