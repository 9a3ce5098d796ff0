//! The command line as clap parses it: every subcommand, flag and value
//! parser (`--help` text comes from the doc comments here).

use std::path::PathBuf;

pub use super::service_args::{
    HealthArgs, Mode, OnFailure, OnRollbackFailure, Order, RollbackArgs, UpdateArgs,
};
use clap::{Args, Parser, Subcommand, ValueEnum};
use shoal_api::DEFAULT_SOCKET;
use shoal_model::service::{EndpointMode, PortConfig, RestartCondition};
use shoal_model::state::Availability;

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
    /// Internal: a workload's logging process (containerd's shim starts it
    /// with the container's stdout on fd 3 and stderr on fd 4).
    #[command(hide = true)]
    ContainerLog {
        /// The log file.
        log: PathBuf,
    },
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
    Service(Box<ServiceCmd>),
    /// Manage the images on this node (containerd's `shoal` namespace).
    #[command(subcommand)]
    Image(ImageCmd),
    /// Manage configs: files services mount into their tasks (run on a
    /// manager).
    #[command(subcommand)]
    Config(super::files::FileCmd),
    /// Manage secrets: files services mount at /run/secrets, never shown
    /// back (run on a manager).
    #[command(subcommand)]
    Secret(super::files::FileCmd),
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
    /// Run a container on this node, attached to an attachable overlay
    /// network: `shoal run --network app IMAGE [COMMAND] [ARG...]`
    /// (`--runtime host`: a host process, `-- PROGRAM [ARG...]`). It runs
    /// in the background; `shoal ps`, `logs`, `exec` and `stop` reach it.
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
        /// Environment `K=V` (repeatable; containers).
        #[arg(short, long)]
        env: Vec<String>,
        #[command(flatten)]
        container: Box<ContainerArgs>,
        /// The image, then the command and arguments replacing its CMD
        /// (`--runtime host`: the program and its arguments).
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "IMAGE [COMMAND] [ARG...]"
        )]
        argv: Vec<String>,
    },
    /// List the workloads running on this node.
    Ps,
    /// Stop a workload on this node (SIGTERM); its endpoint is removed.
    Stop {
        /// Workload id, id prefix or name.
        workload: String,
    },
    /// Run a command in a container on this node (its namespaces, user,
    /// capabilities, env and cwd): `shoal exec [-i] [-t] TASK -- CMD...`;
    /// its output as it comes, stdout and stderr apart; exits with the
    /// command's status (126: it could not be started).
    Exec {
        /// Keep stdin open: what this command reads goes to the command.
        #[arg(short, long)]
        interactive: bool,
        /// Allocate a terminal for the command (with `-i`, this terminal
        /// is put in raw mode and its size follows).
        #[arg(short, long)]
        tty: bool,
        /// Task or workload id, id prefix or name.
        workload: String,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        argv: Vec<String>,
    },
    /// Show what a workload on this node wrote to stdout and stderr.
    Logs {
        #[command(flatten)]
        opts: LogArgs,
        /// Task or workload id, id prefix or name.
        workload: String,
    },
}

/// What `logs` and `service logs` show.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Number of lines to show from the end of the logs (of each task),
    /// or `all`.
    #[arg(short = 'n', long, default_value = "all", value_parser = parse_tail)]
    pub tail: Tail,
    /// Follow log output: keep printing new lines (of new tasks too)
    /// until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// Show timestamps (RFC 3339 with nanoseconds, when the line was
    /// written).
    #[arg(short, long)]
    pub timestamps: bool,
}

/// `--tail`: a number of lines, or every line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail(pub Option<usize>);

fn parse_tail(s: &str) -> Result<Tail, String> {
    if s == "all" {
        return Ok(Tail(None));
    }
    s.parse()
        .map(|n| Tail(Some(n)))
        .map_err(|_| format!("invalid --tail {s:?}: a number of lines or \"all\""))
}

/// `shoal image ...`
#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// List images: REPOSITORY TAG IMAGE ID CREATED SIZE.
    Ls,
    /// Pull an image from its registry: `[registry[:port]/]name[:tag|@sha256:…]`.
    Pull {
        /// The reference.
        reference: String,
    },
    /// Load an image from an archive on this host, for hosts without a
    /// registry: an OCI image layout in a tar (`skopeo copy …
    /// oci-archive:FILE:NAME`, `docker save` of docker 25+) or a `docker
    /// save` tar.
    Import {
        /// The archive.
        file: PathBuf,
        /// The image's name (`[registry[:port]/]name[:tag]`) [default: the
        /// name in the archive].
        name: Option<String>,
    },
    /// Remove images (refused while a container on this node uses one).
    Rm {
        /// References.
        #[arg(required = true)]
        images: Vec<String>,
    },
}

/// `shoal network ...`
#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Create an overlay network (or, with `-d bridge`, this node's
    /// `shoal_gwbridge` before it joins a swarm).
    Create {
        /// Driver: `overlay` (a swarm network, on a manager) or `bridge`
        /// (only `shoal_gwbridge`, this node's egress bridge; options
        /// `com.docker.network.bridge.name`, `…bridge.enable_icc`,
        /// `…bridge.enable_ip_masquerade`, `com.docker.network.driver.mtu`).
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
    /// Remove networks (refused while endpoints are attached; the ingress
    /// network while a service publishes a port through it, and only after
    /// confirming the warning).
    Rm {
        /// Do not ask before removing the ingress network.
        #[arg(short, long)]
        force: bool,
        /// Names or ids.
        #[arg(required = true)]
        networks: Vec<String>,
    },
}

/// `shoal service ...`
#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Create a service: `service create --name web --replicas 3 --network app -p 8080:80 IMAGE [COMMAND] [ARG...]`.
    Create {
        /// Service name (also its DNS name).
        #[arg(long)]
        name: String,
        /// Number of tasks (replicated mode) [default: 1].
        #[arg(long, value_parser = parse_replicas, allow_hyphen_values = true)]
        replicas: Option<u64>,
        /// `replicated` (`--replicas` tasks) or `global` (one task on every
        /// ready, active node).
        #[arg(long, value_enum, default_value_t = Mode::Replicated)]
        mode: Mode,
        /// Placement constraint (repeatable): `node.id`, `node.hostname`,
        /// `node.role` or `node.labels.K`, then `==` or `!=` and a value.
        #[arg(long)]
        constraint: Vec<String>,
        /// Most tasks of the service on one node (0: no limit).
        #[arg(long, default_value_t = 0)]
        replicas_max_per_node: u64,
        #[command(flatten)]
        rolling: UpdateArgs,
        #[command(flatten)]
        rollback_flags: Box<RollbackArgs>,
        #[command(flatten)]
        health: Box<HealthArgs>,
        /// Placement preference (repeatable, in order):
        /// `spread=node.labels.K` spreads the tasks evenly over the values
        /// of label K.
        #[arg(long)]
        placement_pref: Vec<String>,
        /// Networks to attach (repeatable): `NAME`, or
        /// `name=NAME,alias=A[,alias=B]` to give the service more DNS names
        /// on that network.
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
        /// Mount a config as a file: `NAME` (at /NAME) or
        /// `source=NAME,target=PATH[,uid=N][,gid=N][,mode=0444]` (repeatable).
        #[arg(long)]
        config: Vec<String>,
        /// Mount a secret as a file: `NAME` (at /run/secrets/NAME) or
        /// `source=NAME,target=PATH[,uid=N][,gid=N][,mode=0444]` (repeatable).
        #[arg(long)]
        secret: Vec<String>,
        #[command(flatten)]
        container: Box<ContainerArgs>,
        /// The image (pinned to its digest unless --no-resolve-image), then
        /// the command and arguments replacing its CMD. With `--runtime
        /// host`: the program and its arguments.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "IMAGE [COMMAND] [ARG...]"
        )]
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
    /// Show what a service's tasks wrote to stdout and stderr, gathered
    /// from every node that ran them (run on the leader).
    Logs {
        #[command(flatten)]
        opts: LogArgs,
        /// Service name or id, or a task id.
        service: String,
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
        /// Remove an environment variable (repeatable).
        #[arg(long)]
        env_rm: Vec<String>,
        /// Add a placement constraint (repeatable; same syntax as
        /// `create --constraint`).
        #[arg(long)]
        constraint_add: Vec<String>,
        /// Remove a placement constraint (repeatable; as it was given).
        #[arg(long)]
        constraint_rm: Vec<String>,
        /// Add a placement preference (`spread=node.labels.K`).
        #[arg(long)]
        placement_pref_add: Vec<String>,
        /// Remove a placement preference.
        #[arg(long)]
        placement_pref_rm: Vec<String>,
        /// Add or replace a service label `key=value`.
        #[arg(long)]
        label_add: Vec<String>,
        /// Remove a service label by key.
        #[arg(long)]
        label_rm: Vec<String>,
        /// Replace the tasks even if nothing changed.
        #[arg(long)]
        force: bool,
        /// Go back to the spec before the last update (`service rollback`).
        #[arg(long)]
        rollback: bool,
        #[command(flatten)]
        rolling: UpdateArgs,
        #[command(flatten)]
        rollback_flags: Box<RollbackArgs>,
        #[command(flatten)]
        health: Box<HealthArgs>,
        /// Service name or id.
        service: String,
    },
    /// Go back to the spec before the last update (a rolling update too).
    Rollback {
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
    /// Add a new gossip key and a new data-plane key (encrypted overlays) now; each ring keeps the 3 newest.
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
        /// Add or change a node label, `key=value` (repeatable).
        #[arg(long)]
        label_add: Vec<String>,
        /// Remove a node label by key (repeatable).
        #[arg(long)]
        label_rm: Vec<String>,
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
    /// Unix socket of the Docker Engine API, for the docker CLI ("" turns
    /// it off) [default: docker.sock next to --socket].
    #[arg(long)]
    pub docker_socket: Option<PathBuf>,
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

/// [`parse_duration_ms`], and `0` (docker's "use the default").
pub fn parse_duration_or_zero(s: &str) -> Result<u64, String> {
    match s.trim().trim_end_matches(|c: char| c.is_ascii_alphabetic()) {
        "0" => Ok(0),
        _ => parse_duration_ms(s),
    }
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

/// Where a task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeArg {
    /// A container from the image (containerd, Docker's isolation defaults).
    Container,
    /// A host process with the daemon's own privileges (no isolation
    /// beyond its network, mount and UTS namespaces).
    Host,
}

/// How a task's container runs (`service create`, `run`).
#[derive(Debug, Clone, Args)]
pub struct ContainerArgs {
    /// `container` (default) or `host`: run the command as a host process
    /// with the daemon's privileges.
    #[arg(long, value_enum, default_value_t = RuntimeArg::Container)]
    pub runtime: RuntimeArg,
    /// Overwrite the image's ENTRYPOINT (`""` clears it; its CMD is dropped).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Username or UID, `user[:group]`.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory inside the container.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Read environment variables from a file of `K=V` lines (repeatable).
    #[arg(long)]
    pub env_file: Vec<PathBuf>,
    /// Attach a filesystem mount:
    /// `type=bind|volume|tmpfs,source=SRC,target=DST[,readonly]` (repeatable).
    #[arg(long)]
    pub mount: Vec<String>,
    /// Mount the container's root filesystem as read only.
    #[arg(long)]
    pub read_only: bool,
    /// Add Linux capabilities (repeatable; `ALL`).
    #[arg(long)]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities (repeatable; `ALL`).
    #[arg(long)]
    pub cap_drop: Vec<String>,
    /// Memory limit (`32M`, `1G`; bytes without a unit).
    #[arg(long, value_parser = parse_bytes)]
    pub limit_memory: Option<i64>,
    /// CPU limit (`0.5`: half a CPU).
    #[arg(long, value_parser = parse_cpus)]
    pub limit_cpu: Option<i64>,
    /// Memory reservation: placed only on a node with this much free.
    #[arg(long, value_parser = parse_bytes)]
    pub reserve_memory: Option<i64>,
    /// CPU reservation.
    #[arg(long, value_parser = parse_cpus)]
    pub reserve_cpu: Option<i64>,
    /// Do not query the registry to pin the image's tag to a digest.
    #[arg(long)]
    pub no_resolve_image: bool,
}

/// `32M`, `1g`, `512k`, `100b`, `1048576` -> bytes (docker's RAMInBytes).
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| format!("invalid size: '{s}'"))?;
    if !(n.is_finite() && n > 0.0) || n * mult as f64 > i64::MAX as f64 {
        return Err(format!("invalid size: '{s}'"));
    }
    Ok((n * mult as f64) as i64)
}

/// `0.5` -> 500000000 billionths of a CPU (docker's NanoCPUs).
pub fn parse_cpus(s: &str) -> Result<i64, String> {
    let n: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid CPU count: '{s}'"))?;
    if !(n.is_finite() && n > 0.0 && n <= 1_000_000.0) {
        return Err(format!("invalid CPU count: '{s}'"));
    }
    Ok((n * 1e9) as i64)
}
