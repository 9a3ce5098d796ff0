//! `shoal daemon`: the process. It owns the data dir ([`lock`]), serves the
//! local API on a unix socket (requests answered by [`handler`]), the
//! Prometheus endpoint (`crate::metrics`) and systemd readiness ([`notify`]),
//! and shuts down cleanly on SIGTERM/SIGINT.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use shoal_api::{
    self as api, ApiError, ErrorCode, FrameError, Request, RequestFrame, Response, ResponseFrame,
    PROTOCOL_VERSION,
};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::swarm::Swarm;

pub mod handler;
pub mod lock;
pub mod notify;

pub use handler::Daemon;
use lock::{load_or_create_node_id, DataDirLock};

/// Mode of the API socket: its owner and group may talk to the daemon.
const SOCKET_MODE: u32 = 0o660;

/// Bind the API socket, replacing a stale socket file but never a live one.
///
/// The socket never exists at `path` with any mode but [`SOCKET_MODE`]:
/// it is bound inside a fresh private (0700) directory next to `path`,
/// where nobody else can reach it, given its mode there, and then renamed
/// into place (a rename keeps the bound socket and is atomic). The
/// directory is removed again.
async fn bind_socket(path: &Path) -> Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "socket {} is in use by another running shoal daemon",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    // Short names: the staging path is no longer than `<dir>/shoal.sock`
    // (unix socket paths are limited to 107 bytes).
    let staging = dir.join(format!(".s{:06x}", rand::random::<u32>() & 0xff_ffff));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .with_context(|| {
            format!(
                "cannot create {} to bind the socket {} in",
                staging.display(),
                path.display()
            )
        })?;
    let tmp = staging.join("s");
    let bound = (|| -> Result<UnixListener> {
        let listener = UnixListener::bind(&tmp)
            .with_context(|| format!("cannot listen on {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(SOCKET_MODE))
            .with_context(|| format!("cannot set permissions of {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| {
            format!(
                "cannot move the socket {} to {}",
                tmp.display(),
                path.display()
            )
        })?;
        Ok(listener)
    })();
    if bound.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    if let Err(e) = std::fs::remove_dir(&staging) {
        warn!("cannot remove {}: {e}", staging.display());
    }
    bound.with_context(|| format!("cannot listen on {}", path.display()))
}

/// IPv4 addresses of the non-loopback interfaces in this network namespace.
pub fn local_ipv4_addrs() -> Vec<String> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter(|a| a.interface_name != "lo")
        .filter_map(|a| {
            a.address
                .and_then(|s| s.as_sockaddr_in().map(|sin| sin.ip().to_string()))
        })
        .collect()
}

/// Serve one client connection until it closes. Every complete frame gets a
/// reply; an oversized frame gets a reply and the connection is closed
/// because the next frame boundary is unknown.
async fn serve_connection(daemon: Arc<Daemon>, stream: UnixStream) {
    let (mut rd, mut wr) = stream.into_split();
    loop {
        let result = match api::read_frame_bytes(&mut rd).await {
            Err(FrameError::Closed) => return,
            Err(FrameError::TooLarge(n)) => {
                let err = ApiError::new(
                    ErrorCode::BadRequest,
                    format!("request frame of {n} bytes exceeds the {} byte limit", api::MAX_FRAME),
                );
                let _ = reply(&mut wr, Err(err)).await;
                return;
            }
            Err(e) => {
                debug!("api connection: {e}");
                return;
            }
            Ok(body) => match serde_json::from_slice::<RequestFrame>(&body) {
                Err(e) => Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("malformed request: {e}"),
                )),
                Ok(frame) if frame.version != PROTOCOL_VERSION => Err(ApiError::new(
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "client speaks protocol version {}, this daemon speaks {}: use matching shoal binaries",
                        frame.version, PROTOCOL_VERSION
                    ),
                )),
                Ok(RequestFrame {
                    request:
                        Request::Exec {
                            workload,
                            argv,
                            interactive,
                            tty,
                        },
                    ..
                }) => match daemon.start_exec(&workload, &argv, interactive, tty).await {
                    // The connection now carries the exec's stdio.
                    Ok(exec) => {
                        if reply(&mut wr, Ok(Response::ExecStarted)).await.is_ok() {
                            exec.relay(rd, wr).await;
                        } else {
                            exec.abandon().await;
                        }
                        return;
                    }
                    Err(e) => Err(e),
                },
                Ok(frame) => daemon.handle(frame.request).await,
            },
        };
        if let Err(e) = reply(&mut wr, result).await {
            debug!("api connection: cannot reply: {e}");
            return;
        }
    }
}

async fn reply(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    result: Result<Response, ApiError>,
) -> Result<(), FrameError> {
    let frame = ResponseFrame {
        version: PROTOCOL_VERSION,
        result,
    };
    api::write_frame(wr, &frame).await
}

/// Run the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<()> {
    let lock = DataDirLock::acquire(&config.data_dir)?;
    std::fs::create_dir_all(&config.run_dir)
        .with_context(|| format!("run dir {} cannot be created", config.run_dir.display()))?;
    shoal_tls::install_crypto_provider();
    let mut node_id = load_or_create_node_id(&config.data_dir)?;
    let (restart, mut restarts) = tokio::sync::mpsc::unbounded_channel();
    let swarm = match crate::swarm::file::load(&config.data_dir)? {
        Some((sf, identity)) => {
            info!(cluster = %sf.cluster_id, role = %sf.role, "resuming swarm membership");
            node_id = sf.node_id.to_string();
            Some(Swarm::resume(&config, restart.clone(), sf, identity).await?)
        }
        None => None,
    };
    let listener = bind_socket(&config.socket).await?;
    let socket = config.socket.clone();
    info!(
        node_id = %node_id,
        data_dir = %config.data_dir.display(),
        socket = %socket.display(),
        lock = %lock.path().display(),
        "shoal daemon started"
    );
    let daemon = Arc::new(Daemon {
        config,
        node_id: std::sync::Mutex::new(node_id),
        swarm: tokio::sync::RwLock::new(swarm),
        membership_op: tokio::sync::Mutex::new(()),
        restart,
    });
    let d = daemon.clone();
    tokio::spawn(async move {
        while restarts.recv().await.is_some() {
            if let Err(e) = d.restart_swarm().await {
                tracing::error!("cannot restart the swarm membership: {e:#}");
            }
        }
    });

    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    // A malformed address is a configuration error; a port in use only
    // costs the metrics (the agent itself must still run).
    let metrics_listener = match crate::metrics::bind(&daemon.config.metrics_addr).await {
        Ok(l) => l,
        Err(e @ crate::metrics::MetricsError::Bind { .. }) => {
            warn!("metrics disabled: {e}");
            None
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(l) = metrics_listener {
        info!(addr = %daemon.config.metrics_addr, "metrics on /metrics");
        let d = daemon.clone();
        crate::metrics::serve(
            l,
            crate::metrics::global().clone(),
            crate::metrics::snapshot_fn(move || {
                let d = d.clone();
                async move {
                    match d.swarm.read().await.as_ref() {
                        Some(s) => s.metrics_snapshot(),
                        None => crate::metrics::Snapshot::default(),
                    }
                }
            }),
        );
    }
    // The Engine API: a socket in use or unbindable costs only itself.
    let docker_socket = daemon.config.docker_socket();
    if let Some(path) = &docker_socket {
        match bind_socket(path).await {
            Ok(l) => {
                info!(socket = %path.display(), "docker engine api listening");
                crate::engine::serve(l, daemon.clone());
            }
            Err(e) => warn!("docker engine api disabled: {e:#}"),
        }
    }
    // Under systemd (Type=notify): the API socket is up, we are ready.
    if let Err(e) = notify::ready() {
        warn!("cannot notify systemd: {e}");
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(daemon.clone(), stream));
                }
                Err(e) => warn!("api socket accept failed: {e}"),
            },
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
        }
    }
    let _ = notify::stopping();
    for s in std::iter::once(&socket).chain(docker_socket.as_ref()) {
        if let Err(e) = std::fs::remove_file(s) {
            warn!("cannot remove socket {}: {e}", s.display());
        }
    }
    let swarm = daemon.swarm.write().await.take();
    if let Some(s) = swarm {
        s.shutdown(false).await;
    }
    drop(lock);
    Ok(())
}
