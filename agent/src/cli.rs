//! Command-line interface: `shoal daemon` runs the agent, every other
//! subcommand is a client of the local daemon.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use shoal_raft_store::service::{
    EndpointMode, PortConfig, PublishMode, RestartCondition, ServiceSpec,
};
use shoal_raft_store::state::Availability;
use shoal_tls::Role;

use crate::api::{NodeInfo, NodeRow, Request, Response, SwarmInitArgs, SwarmJoinArgs, VersionInfo};
use crate::client::{self, ClientError};
use crate::config::DEFAULT_SOCKET;

/// Shoal: a swarm-style cluster agent with multi-host overlay networks.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, propagate_version = true)]
pub struct Cli {
    /// Local daemon socket to talk to.
    #[arg(long, global = true, env = "SHOAL_HOST", default_value = DEFAULT_SOCKET)]
    pub host: PathBuf,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable tables.
    Table,
    /// JSON, one document per command.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent on this host (in the foreground).
    Daemon(DaemonArgs),
    /// Show the client and daemon versions.
    Version,
    /// Show this node's id, addresses and swarm state.
    Info,
    /// Manage the swarm (init, join, leave, tokens, CA).
    #[command(subcommand)]
    Swarm(SwarmCmd),
    /// Manage swarm nodes (run on a manager).
    #[command(subcommand)]
    Node(NodeCmd),
    /// This node's view of SWIM gossip (members, replicated tables).
    #[command(subcommand)]
    Gossip(GossipCmd),
    /// Manage overlay networks (run on a manager).
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Manage services (run on a manager).
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Stream cluster events (node up/down, role and availability changes,
    /// networks and services created, updated, removed) as lines, or JSON
    /// objects with --format json (run on a manager).
    Events {
        /// Also show the events of this past period (e.g. 10m, 1h).
        #[arg(long)]
        since: Option<String>,
        /// Print the past events and exit instead of following.
        #[arg(long)]
        no_follow: bool,
    },
    /// Run a process on this node in its own network namespace, attached
    /// to an attachable overlay network: `shoal run --network app -- CMD`.
    Run {
        /// Network name or id (created with --attachable).
        #[arg(long)]
        network: String,
        /// Workload name [default: its id].
        #[arg(long)]
        name: Option<String>,
        /// Address in the network [default: the lowest free one].
        #[arg(long)]
        ip: Option<std::net::Ipv4Addr>,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// List the workloads running on this node.
    Ps,
    /// Stop a workload on this node (SIGTERM); its endpoint is removed.
    Stop {
        /// Workload id, id prefix or name.
        workload: String,
    },
}

/// `shoal network ...`
#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Create an overlay network.
    Create {
        /// Driver (only `overlay`).
        #[arg(short, long, default_value = "overlay")]
        driver: String,
        /// Subnet in CIDR form [default: allocated from the default address pools].
        #[arg(long)]
        subnet: Option<ipnet::Ipv4Net>,
        /// Gateway [default: the subnet's first address].
        #[arg(long)]
        gateway: Option<std::net::Ipv4Addr>,
        /// Let standalone workloads (`shoal run`) attach.
        #[arg(long)]
        attachable: bool,
        /// Make it the routing-mesh network (only one can exist).
        #[arg(long)]
        ingress: bool,
        /// No egress from the network.
        #[arg(long)]
        internal: bool,
        /// Driver options: `encrypted`, `com.docker.network.driver.mtu=N`.
        #[arg(short, long)]
        opt: Vec<String>,
        /// Labels `key=value`.
        #[arg(long)]
        label: Vec<String>,
        /// Network name.
        name: String,
    },
    /// List networks.
    Ls,
    /// Show networks in detail (JSON).
    Inspect {
        /// Also show each node's view: its VTEP, its peers' VTEPs, and any
        /// difference between the desired and the kernel FDB/neighbour entries.
        #[arg(short, long)]
        verbose: bool,
        /// Names or ids.
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks (refused while endpoints are attached).
    Rm {
        /// Names or ids.
        #[arg(required = true)]
        networks: Vec<String>,
    },
}

/// `shoal service ...`
#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Create a service: `service create --name web --replicas 3 --network app -p 8080:80 -- CMD...`.
    Create {
        /// Service name (also its DNS name).
        #[arg(long)]
        name: String,
        /// Number of tasks.
        #[arg(long, default_value = "1", value_parser = parse_replicas, allow_hyphen_values = true)]
        replicas: u64,
        /// Networks to attach (repeatable).
        #[arg(long)]
        network: Vec<String>,
        /// Publish a port: `8080:80[/udp]` or
        /// `published=8080,target=80[,protocol=tcp|udp][,mode=ingress|host]` (repeatable).
        #[arg(short, long, value_parser = parse_publish)]
        publish: Vec<PortConfig>,
        /// `vip` (a virtual IP balanced over the tasks) or `dnsrr` (DNS round robin).
        #[arg(long, default_value = "vip", value_parser = parse_endpoint_mode)]
        endpoint_mode: EndpointMode,
        /// Environment `K=V` (repeatable).
        #[arg(short, long)]
        env: Vec<String>,
        /// Restart when a task ends: `any`, `on-failure` or `none`.
        #[arg(long, default_value = "any", value_parser = parse_restart)]
        restart_condition: RestartCondition,
        /// Labels `key=value`.
        #[arg(long)]
        label: Vec<String>,
        /// The command each task runs, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List services: ID NAME MODE REPLICAS COMMAND PORTS.
    Ls,
    /// Show services in detail (JSON).
    Inspect {
        /// Names or ids.
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// List the tasks of services: ID NAME COMMAND NODE DESIRED STATE CURRENT STATE ERROR.
    Ps {
        /// Names or ids.
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Scale services: `service scale web=5 api=2`.
    Scale {
        /// `SERVICE=REPLICAS` pairs.
        #[arg(required = true, value_parser = parse_scale)]
        scales: Vec<(String, u64)>,
    },
    /// Update a service; tasks are replaced when anything but the replica count changes.
    Update {
        /// New number of tasks.
        #[arg(long, value_parser = parse_replicas, allow_hyphen_values = true)]
        replicas: Option<u64>,
        /// Attach a network (repeatable).
        #[arg(long)]
        network_add: Vec<String>,
        /// Detach a network (repeatable).
        #[arg(long)]
        network_rm: Vec<String>,
        /// Publish another port (same syntax as `create -p`).
        #[arg(long, value_parser = parse_publish)]
        publish_add: Vec<PortConfig>,
        /// Stop publishing a port (the published port number).
        #[arg(long)]
        publish_rm: Vec<u16>,
        /// Add or replace an environment variable `K=V`.
        #[arg(long)]
        env_add: Vec<String>,
        /// Replace the tasks even if nothing changed.
        #[arg(long)]
        force: bool,
        /// Service name or id.
        service: String,
    },
    /// Remove services (their tasks are stopped).
    Rm {
        /// Names or ids.
        #[arg(required = true)]
        services: Vec<String>,
    },
}

fn parse_replicas(s: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .map_err(|_| format!("invalid replicas {s:?}: must be a whole number of 0 or more"))
}

fn parse_publish(s: &str) -> Result<PortConfig, String> {
    s.parse()
}

fn parse_endpoint_mode(s: &str) -> Result<EndpointMode, String> {
    s.parse()
}

fn parse_restart(s: &str) -> Result<RestartCondition, String> {
    s.parse()
}

fn parse_scale(s: &str) -> Result<(String, u64), String> {
    let (name, n) = s
        .split_once('=')
        .ok_or_else(|| format!("invalid scale {s:?}: expected SERVICE=REPLICAS"))?;
    if name.is_empty() {
        return Err(format!("invalid scale {s:?}: expected SERVICE=REPLICAS"));
    }
    Ok((name.to_string(), parse_replicas(n)?))
}

/// Build a service spec from `service create` flags.
fn service_spec(cmd: &ServiceCmd) -> Result<ServiceSpec, ClientError> {
    let ServiceCmd::Create {
        name,
        replicas,
        network,
        publish,
        endpoint_mode,
        env,
        restart_condition,
        label,
        command,
    } = cmd
    else {
        return Err(ClientError::Unexpected("not service create".into()));
    };
    let bad = |m: String| ClientError::Api(crate::api::ApiError::invalid(m));
    if *endpoint_mode == EndpointMode::Dnsrr
        && publish.iter().any(|p| p.mode == PublishMode::Ingress)
    {
        return Err(bad(
            "port published with ingress mode can't be used with dnsrr mode (use mode=host)".into(),
        ));
    }
    for e in env {
        if !e.contains('=') || e.starts_with('=') {
            return Err(bad(format!("--env {e:?}: expected K=V")));
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
    Ok(ServiceSpec {
        name: name.clone(),
        replicas: *replicas,
        networks: network.clone(),
        ports: publish.clone(),
        endpoint_mode: *endpoint_mode,
        env: env.clone(),
        restart_condition: *restart_condition,
        command: command.clone(),
        labels,
    })
}

async fn service_command(cli: &Cli, cmd: &ServiceCmd) -> Result<(), ClientError> {
    use crate::services::{ports_column, replicas_column, state_column, ServiceUpdate};
    let call = |req| client::call(&cli.host, req);
    let resp = match cmd {
        ServiceCmd::Create { .. } => call(Request::ServiceCreate(service_spec(cmd)?)).await?,
        ServiceCmd::Ls => call(Request::ServiceList { services: vec![] }).await?,
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
                    update: ServiceUpdate {
                        replicas: Some(*n),
                        ..Default::default()
                    },
                })
                .await?;
                println!("{name} scaled to {n}");
            }
            return Ok(());
        }
        ServiceCmd::Update {
            replicas,
            network_add,
            network_rm,
            publish_add,
            publish_rm,
            env_add,
            force,
            service,
        } => {
            call(Request::ServiceUpdate {
                service: service.clone(),
                update: ServiceUpdate {
                    replicas: *replicas,
                    network_add: network_add.clone(),
                    network_rm: network_rm.clone(),
                    publish_add: publish_add.clone(),
                    publish_rm: publish_rm.clone(),
                    env_add: env_add.clone(),
                    force: *force,
                },
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
                        "replicated".to_string(),
                        replicas_column(r),
                        r.service.spec.command.join(" "),
                        ports_column(&r.service.spec.ports),
                    ]
                })
                .collect(),
        ),
        (Format::Json, Response::Tasks(rows)) => print_json(&rows),
        (Format::Table, Response::Tasks(rows)) => {
            let now = crate::swarm::now_ms();
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
                            shoal_raft_store::service::TaskState::Failed
                            | shoal_raft_store::service::TaskState::Rejected
                            | shoal_raft_store::service::TaskState::Orphaned => t.message.clone(),
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

/// Build a network spec from `network create` flags.
fn network_spec(cmd: &NetworkCmd) -> Result<shoal_raft_store::network::NetworkSpec, ClientError> {
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
    let bad = |m: String| ClientError::Api(crate::api::ApiError::invalid(m));
    if driver != "overlay" {
        return Err(bad(format!(
            "network driver {driver:?} is not supported: use -d overlay"
        )));
    }
    let mut spec = shoal_raft_store::network::NetworkSpec {
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

/// `shoal gossip ...`
#[derive(Debug, Subcommand)]
pub enum GossipCmd {
    /// Members as this node sees them: id, addresses, alive/suspect/down.
    Members,
    /// Replicated table entries held here.
    Tables {
        /// Only the endpoint table of this network (`ep/<network>`).
        #[arg(long, conflicts_with = "table")]
        network: Option<String>,
        /// Only this table.
        #[arg(long)]
        table: Option<String>,
    },
    /// Write an entry owned by this node (debugging; tables are normally
    /// written by the agent).
    Put {
        /// Table.
        table: String,
        /// Key.
        key: String,
        /// Value (text).
        value: String,
    },
    /// Delete an entry owned by this node (debugging).
    Rm {
        /// Table.
        table: String,
        /// Key.
        key: String,
    },
    /// Gossip counters: packets, bytes, decrypt failures, syncs.
    Metrics,
}

/// `shoal swarm ...`
#[derive(Debug, Subcommand)]
pub enum SwarmCmd {
    /// Create a new swarm with this node as its first manager.
    Init {
        /// Address other nodes reach this node at: `<ip|interface>[:port]`.
        #[arg(long)]
        advertise_addr: String,
        /// Address for VXLAN traffic: `<ip|interface>` [default: the advertise address].
        #[arg(long)]
        data_path_addr: Option<String>,
        /// Address the manager listens on: `<ip|interface>[:port]` [default: 0.0.0.0:2377].
        #[arg(long)]
        listen_addr: Option<String>,
        /// Address pool(s) overlay subnets are allocated from (CIDR; repeatable) [default: 10.0.0.0/8].
        #[arg(long)]
        default_addr_pool: Vec<String>,
        /// Prefix length of subnets allocated from the pools.
        #[arg(long, default_value_t = 24)]
        default_addr_pool_mask_length: u8,
        /// UDP port of the VXLAN data path.
        #[arg(long, default_value_t = 4789)]
        data_path_port: u16,
        /// Node heartbeat period, e.g. 5s or 500ms [default: the daemon's heartbeat_ms, 5s].
        #[arg(long, value_parser = parse_duration_ms)]
        dispatcher_heartbeat: Option<u64>,
        /// Gossip key rotation interval, e.g. 12h or 2s [default: 12h].
        #[arg(long, value_parser = parse_duration_ms)]
        key_rotation_interval: Option<u64>,
    },
    /// Join a swarm as a worker or manager (decided by the token).
    Join {
        /// Join token (SWMTKN-1-...).
        #[arg(long)]
        token: String,
        /// Address other nodes reach this node at: `<ip|interface>[:port]`
        /// [default: the local address that routes to the manager].
        #[arg(long)]
        advertise_addr: Option<String>,
        /// Address for VXLAN traffic: `<ip|interface>` [default: the advertise address].
        #[arg(long)]
        data_path_addr: Option<String>,
        /// Address a manager listens on: `<ip|interface>[:port]` [default: 0.0.0.0:2377].
        #[arg(long)]
        listen_addr: Option<String>,
        /// A manager of the swarm: `HOST[:PORT]` (port 2377 by default).
        remote: String,
    },
    /// Show (or rotate) the join token for workers or managers.
    JoinToken {
        /// Which token.
        #[arg(value_parser = ["worker", "manager"])]
        role: String,
        /// Replace the token's secret; the old token stops working.
        #[arg(long)]
        rotate: bool,
        /// Print only the token.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Leave the swarm.
    Leave {
        /// Leave even when this breaks quorum or erases the swarm (last manager).
        #[arg(short, long)]
        force: bool,
    },
    /// Add a new gossip encryption key now (the ring keeps the 3 newest).
    RotateKeys,
    /// Manage the root CA.
    Ca {
        /// Create a new root CA; nodes get new certificates, the old CA stays trusted meanwhile.
        #[arg(long, required = true)]
        rotate: bool,
    },
}

/// `shoal node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List the nodes of the swarm.
    Ls,
    /// Show one or more nodes in detail (JSON).
    Inspect {
        /// Node id, id prefix, host name, or `self`.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make workers managers.
    Promote {
        /// Nodes to promote.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make managers workers.
    Demote {
        /// Nodes to demote.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Change a node's availability.
    Update {
        /// active, pause or drain.
        #[arg(long)]
        availability: Option<Availability>,
        /// Node id, id prefix, host name, or `self`.
        node: String,
    },
    /// Remove nodes from the swarm.
    Rm {
        /// Remove even if the node is not down.
        #[arg(short, long)]
        force: bool,
        /// Nodes to remove.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

/// Flags of `shoal daemon`; each overrides the config file.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Config file (default /etc/shoal/shoal.toml, used only if it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory for persistent state [default: /var/lib/shoal].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Unix socket of the local API [default: /run/shoal/shoal.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Directory for runtime state such as namespace bind mounts [default: /run/shoal].
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Log filter, e.g. `info` or `shoal=debug` [default: info; RUST_LOG wins].
    #[arg(long)]
    pub log_level: Option<String>,
    /// Upstream resolver of the embedded DNS for names that are not
    /// services (IP or IP:PORT; repeatable) [default: the host's resolv.conf].
    #[arg(long = "dns-upstream")]
    pub dns_upstream: Vec<String>,
    /// Address of the Prometheus /metrics endpoint ("" disables) [default: 127.0.0.1:9323].
    #[arg(long)]
    pub metrics_addr: Option<String>,
}

/// Run a client subcommand; returns the process exit code.
pub async fn run_client(cli: Cli) -> i32 {
    match client_command(&cli).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e}");
            1
        }
    }
}

async fn client_command(cli: &Cli) -> Result<(), ClientError> {
    match &cli.command {
        Command::Daemon(_) => Err(ClientError::Unexpected(
            "daemon is not a client command".into(),
        )),
        Command::Version => {
            let client = VersionInfo::current();
            let server = client::call(&cli.host, Request::Version).await;
            let server = match server {
                Ok(Response::Version(v)) => Ok(v),
                Ok(other) => Err(ClientError::Unexpected(format!("{other:?}"))),
                Err(e) => Err(e),
            };
            match cli.format {
                Format::Json => {
                    #[derive(Serialize)]
                    struct Both<'a> {
                        client: &'a VersionInfo,
                        server: Option<&'a VersionInfo>,
                    }
                    print_json(&Both {
                        client: &client,
                        server: server.as_ref().ok(),
                    });
                }
                Format::Table => {
                    println!("Client:");
                    print_version(&client);
                    if let Ok(s) = &server {
                        println!("\nServer:");
                        print_version(s);
                    }
                }
            }
            server.map(|_| ())
        }
        Command::Info => {
            let info = match client::call(&cli.host, Request::Info).await? {
                Response::Info(i) => i,
                other => return Err(ClientError::Unexpected(format!("{other:?}"))),
            };
            match cli.format {
                Format::Json => print_json(&info),
                Format::Table => print_info(&info),
            }
            Ok(())
        }
        Command::Swarm(cmd) => {
            let (req, quiet) = swarm_request(cmd);
            let resp = client::call(&cli.host, req).await?;
            print_response(cli.format, resp, quiet);
            Ok(())
        }
        Command::Run {
            network,
            name,
            ip,
            argv,
        } => {
            let resp = client::call(
                &cli.host,
                Request::Run {
                    network: network.clone(),
                    name: name.clone(),
                    ip: *ip,
                    argv: argv.clone(),
                },
            )
            .await?;
            match (cli.format, resp) {
                (Format::Table, Response::Workloads(w)) => {
                    for w in w {
                        println!("{}", w.id);
                    }
                }
                (f, r) => print_response(f, r, false),
            }
            Ok(())
        }
        Command::Ps => {
            let resp = client::call(&cli.host, Request::Ps).await?;
            print_response(cli.format, resp, false);
            Ok(())
        }
        Command::Stop { workload } => {
            let resp = client::call(
                &cli.host,
                Request::Stop {
                    workload: workload.clone(),
                },
            )
            .await?;
            print_response(cli.format, resp, false);
            Ok(())
        }
        Command::Service(cmd) => service_command(cli, cmd).await,
        Command::Events { since, no_follow } => {
            let since_ms = match since {
                Some(s) => {
                    let back = parse_duration_ms(s).map_err(|e| {
                        ClientError::Api(crate::api::ApiError::invalid(format!("--since {s}: {e}")))
                    })?;
                    Some(crate::swarm::now_ms().saturating_sub(back))
                }
                None => None,
            };
            let mut after: Option<u64> = None;
            loop {
                match client::call(&cli.host, Request::Events { after, since_ms }).await? {
                    Response::Events { events, last_seq } => {
                        for e in &events {
                            match cli.format {
                                Format::Json => {
                                    println!("{}", serde_json::to_string(e).unwrap_or_default())
                                }
                                Format::Table => println!("{}", e.line()),
                            }
                        }
                        after = Some(last_seq.max(after.unwrap_or(0)));
                    }
                    other => {
                        print_response(cli.format, other, false);
                        return Ok(());
                    }
                }
                if *no_follow {
                    return Ok(());
                }
            }
        }
        Command::Network(cmd) => {
            let req = match cmd {
                NetworkCmd::Create { .. } => Request::NetworkCreate(network_spec(cmd)?),
                NetworkCmd::Ls => Request::NetworkList,
                NetworkCmd::Inspect { networks, verbose } => Request::NetworkInspect {
                    networks: networks.clone(),
                    verbose: *verbose,
                },
                NetworkCmd::Rm { networks } => Request::NetworkRemove {
                    networks: networks.clone(),
                },
            };
            let inspect = matches!(cmd, NetworkCmd::Inspect { .. });
            match client::call(&cli.host, req).await? {
                Response::Networks(docs) if inspect || cli.format == Format::Json => {
                    print_json(&docs)
                }
                Response::Networks(docs) => print_table(
                    &["NETWORK ID", "NAME", "DRIVER", "SCOPE"],
                    docs.iter()
                        .map(|d| {
                            vec![
                                d["Id"].as_str().unwrap_or("").chars().take(12).collect(),
                                d["Name"].as_str().unwrap_or("").to_string(),
                                d["Driver"].as_str().unwrap_or("").to_string(),
                                d["Scope"].as_str().unwrap_or("").to_string(),
                            ]
                        })
                        .collect(),
                ),
                other => print_response(cli.format, other, false),
            }
            Ok(())
        }
        Command::Gossip(cmd) => {
            let req = match cmd {
                GossipCmd::Members => Request::GossipMembers,
                GossipCmd::Tables { network, table } => Request::GossipTables {
                    table: network
                        .as_ref()
                        .map(|n| shoal_membership::EndpointRecord::table(n))
                        .or_else(|| table.clone()),
                },
                GossipCmd::Put { table, key, value } => Request::GossipPut {
                    table: table.clone(),
                    key: key.clone(),
                    value: value.clone(),
                },
                GossipCmd::Rm { table, key } => Request::GossipDelete {
                    table: table.clone(),
                    key: key.clone(),
                },
                GossipCmd::Metrics => Request::GossipMetrics,
            };
            let resp = client::call(&cli.host, req).await?;
            print_response(cli.format, resp, false);
            Ok(())
        }
        Command::Node(cmd) => {
            let (req, inspect) = match cmd {
                NodeCmd::Ls => (Request::NodeList, false),
                NodeCmd::Inspect { nodes } => {
                    let mut all = Vec::new();
                    for n in nodes {
                        match client::call(&cli.host, Request::NodeInspect { node: n.clone() })
                            .await?
                        {
                            Response::Nodes(rows) => all.extend(rows),
                            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
                        }
                    }
                    print_json(&all);
                    return Ok(());
                }
                NodeCmd::Promote { nodes } => (
                    Request::NodeSetRole {
                        nodes: nodes.clone(),
                        role: Role::Manager,
                    },
                    false,
                ),
                NodeCmd::Demote { nodes } => (
                    Request::NodeSetRole {
                        nodes: nodes.clone(),
                        role: Role::Worker,
                    },
                    false,
                ),
                NodeCmd::Update { availability, node } => (
                    Request::NodeUpdate {
                        node: node.clone(),
                        availability: *availability,
                    },
                    false,
                ),
                NodeCmd::Rm { force, nodes } => (
                    Request::NodeRemove {
                        nodes: nodes.clone(),
                        force: *force,
                    },
                    false,
                ),
            };
            let resp = client::call(&cli.host, req).await?;
            print_response(cli.format, resp, inspect);
            Ok(())
        }
    }
}

fn swarm_request(cmd: &SwarmCmd) -> (Request, bool) {
    match cmd {
        SwarmCmd::Init {
            advertise_addr,
            data_path_addr,
            listen_addr,
            default_addr_pool,
            default_addr_pool_mask_length,
            data_path_port,
            dispatcher_heartbeat,
            key_rotation_interval,
        } => (
            Request::SwarmInit(SwarmInitArgs {
                dispatcher_heartbeat_ms: *dispatcher_heartbeat,
                key_rotation_interval_ms: *key_rotation_interval,
                advertise_addr: advertise_addr.clone(),
                data_path_addr: data_path_addr.clone(),
                listen_addr: listen_addr.clone(),
                default_addr_pool: default_addr_pool.clone(),
                default_addr_pool_mask_length: *default_addr_pool_mask_length,
                data_path_port: *data_path_port,
            }),
            false,
        ),
        SwarmCmd::Join {
            token,
            advertise_addr,
            data_path_addr,
            listen_addr,
            remote,
        } => (
            Request::SwarmJoin(SwarmJoinArgs {
                token: token.clone(),
                remote: remote.clone(),
                advertise_addr: advertise_addr.clone(),
                data_path_addr: data_path_addr.clone(),
                listen_addr: listen_addr.clone(),
            }),
            false,
        ),
        SwarmCmd::JoinToken {
            role,
            rotate,
            quiet,
        } => (
            Request::JoinToken {
                role: if role == "manager" {
                    Role::Manager
                } else {
                    Role::Worker
                },
                rotate: *rotate,
            },
            *quiet,
        ),
        SwarmCmd::Leave { force } => (Request::SwarmLeave { force: *force }, false),
        SwarmCmd::Ca { .. } => (Request::CaRotate, false),
        SwarmCmd::RotateKeys => (Request::RotateKeys, false),
    }
}

fn print_response(format: Format, resp: Response, quiet: bool) {
    match (format, resp) {
        (Format::Json, Response::Message(m)) => print_json(&serde_json::json!({ "message": m })),
        (Format::Json, Response::Token { token, .. }) => {
            print_json(&serde_json::json!({ "token": token }))
        }
        (Format::Json, Response::Nodes(rows)) => print_json(&rows),
        (Format::Json, Response::Members(m)) => print_json(&m),
        (Format::Json, Response::Workloads(w)) => print_json(&w),
        (Format::Table, Response::Workloads(w)) => print_table(
            &["ID", "NAME", "NETWORK", "IP", "PID", "COMMAND"],
            w.iter()
                .map(|w| {
                    vec![
                        w.id.chars().take(12).collect(),
                        w.name.clone(),
                        w.attachments
                            .iter()
                            .map(|a| a.network.name.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        w.attachments
                            .iter()
                            .map(|a| a.endpoint.ip.to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                        w.pid.to_string(),
                        w.argv.join(" "),
                    ]
                })
                .collect(),
        ),
        (Format::Json, Response::Entries(e)) => print_json(&e),
        (Format::Json, Response::Metrics(m)) => print_json(&m),
        (Format::Table, Response::Members(m)) => print_table(
            &[
                "NODE ID",
                "GOSSIP ADDRESS",
                "DATA PATH",
                "STATE",
                "INCARNATION",
            ],
            m.iter()
                .map(|v| {
                    vec![
                        v.info.node_id.clone(),
                        v.info.gossip_addr.to_string(),
                        v.info.data_path_addr.to_string(),
                        format!("{:?}", v.state).to_lowercase(),
                        v.incarnation.to_string(),
                    ]
                })
                .collect(),
        ),
        (Format::Table, Response::Entries(e)) => print_table(
            &["TABLE", "KEY", "OWNER", "VERSION", "VALUE"],
            e.iter()
                .map(|x| {
                    vec![
                        x.table.clone(),
                        x.key.clone(),
                        x.owner.clone(),
                        x.version.to_string(),
                        x.value.clone(),
                    ]
                })
                .collect(),
        ),
        (Format::Json, other) => print_json(&other),
        (Format::Table, Response::Message(m)) => println!("{}", m.trim_end()),
        (Format::Table, Response::Token { token, message }) => {
            if quiet {
                println!("{token}");
            } else {
                println!("{}", message.trim_end());
            }
        }
        (Format::Table, Response::Nodes(rows)) => print_nodes(&rows),
        (Format::Table, other) => print_json(&other),
    }
}

fn print_nodes(rows: &[NodeRow]) {
    print_table(
        &[
            "ID",
            "HOSTNAME",
            "STATUS",
            "AVAILABILITY",
            "MANAGER STATUS",
            "GOSSIP",
        ],
        rows.iter()
            .map(|r| {
                vec![
                    format!("{}{}", r.node.id, if r.is_self { " *" } else { "" }),
                    r.node.hostname.clone(),
                    r.node.status.to_string(),
                    r.node.availability.to_string(),
                    r.manager_status.clone(),
                    r.gossip.clone(),
                ]
            })
            .collect(),
    );
}

/// Print aligned columns, docker style (three spaces between columns).
fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, v) in widths.iter_mut().zip(r) {
            *w = (*w).max(v.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (v, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(v);
            } else {
                s.push_str(&format!("{v:<w$}   ", w = *w));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn print_json<T: Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("Error: cannot encode output: {e}"),
    }
}

fn print_version(v: &VersionInfo) {
    println!(" Version:      {}", v.version);
    println!(" API version:  {}", v.protocol);
    println!(" OS/Arch:      {}", v.os_arch);
}

fn print_info(i: &NodeInfo) {
    println!("Node ID:        {}", i.node_id);
    println!("Hostname:       {}", i.hostname);
    println!("Addresses:      {}", i.addresses.join(", "));
    println!("Data dir:       {}", i.data_dir);
    println!("Daemon version: {}", i.daemon_version);
    println!("Swarm:          {}", i.swarm.state);
    if let Some(c) = &i.swarm.cluster_id {
        println!(" Cluster ID:    {c}");
    }
    if let Some(r) = &i.swarm.role {
        println!(" Role:          {r}");
    }
    if let Some(a) = &i.swarm.node_addr {
        println!(" Node Address:  {a}");
    }
    if let Some(a) = &i.swarm.data_path_addr {
        println!(" Data Path:     {a}");
    }
    if !i.swarm.managers.is_empty() {
        println!(" Managers:      {}", i.swarm.managers.join(", "));
    }
    if let Some(r) = &i.swarm.raft {
        println!(
            " Raft:          id {} term {} leader {} commit {} applied {} ({} of {} managers reachable)",
            r.id,
            r.term,
            r.leader.map(|l| l.to_string()).unwrap_or_else(|| "none".into()),
            r.commit,
            r.applied,
            r.reachable,
            r.voters
        );
    }
}

/// Parse `500ms`, `5s`, `2m`, `12h` (or plain milliseconds) into
/// milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 5s, 2m, 12h"))?;
    let mult = match unit {
        "" | "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unit must be ms, s, m or h"
            ))
        }
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("invalid duration {s:?}: must be positive and not absurdly large"))
}

#[cfg(test)]
mod tests {
    use super::parse_duration_ms;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("5s"), Ok(5000));
        assert_eq!(parse_duration_ms("12h"), Ok(43_200_000));
        assert_eq!(parse_duration_ms("250"), Ok(250));
        assert!(parse_duration_ms("5x").is_err());
        assert!(parse_duration_ms("0s").is_err());
        assert!(parse_duration_ms("s").is_err());
        assert!(parse_duration_ms("99999999999999999999h").is_err());
    }
}
