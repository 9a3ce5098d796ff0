//! Command-line interface: `shoal daemon` runs the agent, every other
//! subcommand is a client of the local daemon.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::api::{NodeInfo, Request, Response, VersionInfo};
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
}
