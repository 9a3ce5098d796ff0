//! `shoal`: daemon and CLI in one binary.

use std::process::ExitCode;

use clap::Parser;
use shoal::cli::{Cli, Command, DaemonArgs};
use shoal::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::ContainerLog { log } => container_log(&runtime, &log),
        Command::Daemon(args) => match runtime.block_on(daemon(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("Error: {e:#}");
                ExitCode::FAILURE
            }
        },
        _ => ExitCode::from(runtime.block_on(shoal::cli::run_client(cli)) as u8),
    }
}

/// The logging process of one workload (started by containerd's shim, or
/// by the daemon beside a host process). The shim closes the pipes and
/// then sends SIGTERM: the handler keeps the process alive until what
/// is still in the pipes is written.
fn container_log(runtime: &tokio::runtime::Runtime, log: &std::path::Path) -> ExitCode {
    let _term = runtime.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    });
    match shoal_runtime::logfile::run_logger(log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: log {}: {e}", log.display());
            ExitCode::FAILURE
        }
    }
}

async fn daemon(args: DaemonArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(s) = args.socket {
        config.socket = s;
    }
    if let Some(s) = args.docker_socket {
        config.docker_socket = Some(s);
    }
    if let Some(r) = args.run_dir {
        config.run_dir = r;
    }
    if let Some(l) = args.log_level {
        config.log_level = l;
    }
    if !args.dns_upstream.is_empty() {
        config.dns_upstream = args.dns_upstream;
    }
    if let Some(m) = args.metrics_addr {
        config.metrics_addr = m;
    }
    config.upstreams().map_err(|e| anyhow::anyhow!("{e}"))?;
    // Absolute paths: they are shown to users and stored in the lab state.
    for p in [
        Some(&mut config.data_dir),
        Some(&mut config.socket),
        Some(&mut config.run_dir),
        config
            .docker_socket
            .as_mut()
            .filter(|p| !p.as_os_str().is_empty()),
    ]
    .into_iter()
    .flatten()
    {
        *p = std::path::absolute(&*p)
            .map_err(|e| anyhow::anyhow!("invalid path {}: {e}", p.display()))?;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log_level))
        .map_err(|e| anyhow::anyhow!("invalid log level {:?}: {e}", config.log_level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    shoal::daemon::run(config).await
}
