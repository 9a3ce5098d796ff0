//! `shoal daemon`: owns the data dir, serves the local API on a unix socket,
//! and shuts down cleanly on SIGTERM/SIGINT.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, info, warn};

use crate::api::{
    self, ApiError, ErrorCode, FrameError, NodeInfo, Request, RequestFrame, Response,
    ResponseFrame, SwarmInfo, SwarmState, VersionInfo, PROTOCOL_VERSION,
};
use crate::config::Config;
use crate::swarm::Swarm;

/// Name of the lock file inside the data dir.
const LOCK_FILE: &str = "shoal.lock";
/// Name of the file holding this node's id.
const NODE_ID_FILE: &str = "node-id";

/// An exclusive hold on a data dir; released when dropped (or when the
/// process dies, since it is an advisory `flock`).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Create the data dir if needed and take its lock, or say who holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("data dir {} cannot be created", data_dir.display()))?;
        let path = data_dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("data dir {} is not writable", data_dir.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                };
                bail!(
                    "data dir {} is in use by another shoal daemon{who}; lock file {}",
                    data_dir.display(),
                    path.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        file.set_len(0)
            .and_then(|_| write!(file, "{}", std::process::id()))
            .and_then(|_| file.sync_all())
            .with_context(|| format!("data dir {} is not writable", data_dir.display()))?;
        Ok(DataDirLock { _file: file, path })
    }

    /// Path of the lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Read this node's id from the data dir, creating one on first start.
fn load_or_create_node_id(data_dir: &Path) -> Result<String> {
    let path = data_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let id = s.trim().to_string();
            if id.len() != 25
                || !id
                    .chars()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
            {
                bail!(
                    "{}: corrupted node id {:?} (expected 25 lowercase letters/digits)",
                    path.display(),
                    id
                );
            }
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = new_node_id();
            write_atomically(&path, id.as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// A fresh 25-character base36 id, like Docker's node ids.
pub fn new_node_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rngs::OsRng;
    (0..25)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Write a file so that a crash leaves either the old or the new content.
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// Bind the API socket, replacing a stale socket file but never a live one.
async fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
    }
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
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set permissions of {}", path.display()))?;
    Ok(listener)
}

/// State shared by every API connection.
#[derive(Debug)]
pub struct Daemon {
    config: Config,
    /// Local id while not in a swarm; the cluster's id for this node once
    /// joined.
    node_id: std::sync::Mutex<String>,
    /// The active membership, if any.
    swarm: tokio::sync::RwLock<Option<Arc<Swarm>>>,
    /// Serialises init/join/leave.
    membership_op: tokio::sync::Mutex<()>,
    /// Given to the membership so it can ask to be restarted from disk.
    restart: crate::swarm::RestartTx,
}

impl Daemon {
    /// Answer one request.
    pub async fn handle(&self, req: Request) -> Result<Response, ApiError> {
        match req {
            Request::Version => Ok(Response::Version(VersionInfo::current())),
            Request::Info => Ok(Response::Info(Box::new(self.info().await))),
            Request::SwarmInit(args) => {
                let _op = self.membership_op.lock().await;
                self.check_inactive().await?;
                let (swarm, msg) = Swarm::init(&self.config, self.restart.clone(), args).await?;
                self.set_swarm(swarm).await;
                Ok(Response::Message(msg))
            }
            Request::SwarmJoin(args) => {
                let _op = self.membership_op.lock().await;
                self.check_inactive().await?;
                let (swarm, msg) = Swarm::join(&self.config, self.restart.clone(), args).await?;
                self.set_swarm(swarm).await;
                Ok(Response::Message(msg))
            }
            Request::SwarmLeave { force } => {
                let _op = self.membership_op.lock().await;
                let swarm = self.swarm().await?;
                swarm.leave(force).await?;
                swarm
                    .executor
                    .stop_all(&swarm.overlay, swarm.gossip().as_ref())
                    .await;
                drop(swarm);
                let taken = self.swarm.write().await.take();
                if let Some(s) = taken {
                    s.shutdown(true).await;
                }
                crate::membership_file::wipe(&self.config.data_dir)
                    .map_err(|e| ApiError::internal(format!("{e:#}")))?;
                let id = new_node_id();
                write_atomically(&self.config.data_dir.join(NODE_ID_FILE), id.as_bytes())
                    .map_err(|e| ApiError::internal(format!("{e:#}")))?;
                self.set_node_id(id);
                Ok(Response::Message("Node left the swarm.".into()))
            }
            Request::JoinToken { role, rotate } => {
                let (token, addr) = self.swarm().await?.join_token(role, rotate).await?;
                let mut msg = String::new();
                if rotate {
                    msg.push_str(&format!("Successfully rotated {role} join token.\n\n"));
                }
                msg.push_str(&format!(
                    "To add a {role} to this swarm, run the following command:\n\n    shoal swarm join --token {token} {addr}\n"
                ));
                Ok(Response::Token {
                    token,
                    message: msg,
                })
            }
            Request::CaRotate => Ok(Response::Message(self.swarm().await?.ca_rotate().await?)),
            Request::RotateKeys => Ok(Response::Message(self.swarm().await?.rotate_keys().await?)),
            Request::NetworkCreate(spec) => Ok(Response::Message(
                self.swarm().await?.network_create(spec).await?,
            )),
            Request::Run {
                network,
                name,
                ip,
                argv,
            } => Ok(Response::Workloads(vec![
                self.swarm().await?.run(&network, name, ip, argv).await?,
            ])),
            Request::Ps => Ok(Response::Workloads(self.swarm().await?.overlay.list())),
            Request::Stop { workload } => {
                Ok(Response::Message(self.swarm().await?.stop(&workload)?))
            }
            Request::ServiceCreate(spec) => Ok(Response::Message(
                self.swarm().await?.service_create(spec).await?,
            )),
            Request::ServiceUpdate { service, update } => Ok(Response::Message(
                self.swarm().await?.service_update(&service, update).await?,
            )),
            Request::ServiceRemove { services } => {
                let swarm = self.swarm().await?;
                let mut out = Vec::new();
                for s in services {
                    out.push(swarm.service_remove(&s).await?);
                }
                Ok(Response::Message(out.join("\n")))
            }
            Request::ServiceList { services } => Ok(Response::Services(
                self.swarm().await?.services(&services).await?,
            )),
            Request::ServicePs { services } => Ok(Response::Tasks(
                self.swarm().await?.service_tasks(&services).await?,
            )),
            Request::Events { after, since_ms } => {
                let swarm = self.swarm().await?;
                let log = swarm.events()?;
                let deadline = tokio::time::Instant::now() + crate::events::POLL_WAIT;
                loop {
                    let notified = log.notify.notified();
                    let events = log.after(after, since_ms);
                    let last_seq = log.last_seq();
                    if !events.is_empty() || tokio::time::Instant::now() >= deadline {
                        return Ok(Response::Events { events, last_seq });
                    }
                    if after.is_none() {
                        // First poll: only the backlog; follow from here.
                        return Ok(Response::Events { events, last_seq });
                    }
                    let _ = tokio::time::timeout_at(deadline, notified).await;
                }
            }
            Request::NetworkList => {
                Ok(Response::Networks(self.swarm().await?.networks(&[]).await?))
            }
            Request::NetworkInspect { networks, verbose } => {
                let swarm = self.swarm().await?;
                let mut docs = swarm.networks(&networks).await?;
                if verbose {
                    swarm.add_node_views(&mut docs).await?;
                }
                Ok(Response::Networks(docs))
            }
            Request::NetworkRemove { networks } => {
                let swarm = self.swarm().await?;
                let mut out = Vec::new();
                for n in networks {
                    out.push(swarm.network_remove(&n).await?);
                }
                Ok(Response::Message(out.join("\n")))
            }
            Request::GossipMembers => Ok(Response::Members(self.gossip().await?.members())),
            Request::GossipTables { table } => {
                let g = self.gossip().await?;
                let tables = match table {
                    Some(t) => vec![t],
                    None => g.tables(),
                };
                let mut out = Vec::new();
                for t in tables {
                    for e in g.entries(&t) {
                        out.push(crate::api::GossipEntry {
                            value: display_value(&e.table, &e.value),
                            table: e.table,
                            key: e.key,
                            owner: e.owner,
                            version: e.version,
                        });
                    }
                }
                Ok(Response::Entries(out))
            }
            Request::GossipPut { table, key, value } => {
                self.gossip()
                    .await?
                    .try_put(&table, &key, value.into_bytes())
                    .map_err(|e| ApiError::invalid(e.to_string()))?;
                Ok(Response::Message(format!("{table}/{key}")))
            }
            Request::GossipDelete { table, key } => {
                self.gossip().await?.delete(&table, &key);
                Ok(Response::Message(format!("{table}/{key}")))
            }
            Request::GossipMetrics => Ok(Response::Metrics(
                serde_json::to_value(self.gossip().await?.metrics())
                    .map_err(|e| ApiError::internal(e.to_string()))?,
            )),
            Request::NodeList => Ok(Response::Nodes(self.swarm().await?.nodes(None).await?)),
            Request::NodeInspect { node } => Ok(Response::Nodes(
                self.swarm().await?.nodes(Some(node)).await?,
            )),
            Request::NodeSetRole { nodes, role } => {
                let swarm = self.swarm().await?;
                let mut out = Vec::new();
                for n in nodes {
                    out.push(swarm.node_set_role(&n, role).await?);
                }
                Ok(Response::Message(out.join("\n")))
            }
            Request::NodeUpdate { node, availability } => Ok(Response::Message(
                self.swarm().await?.node_update(&node, availability).await?,
            )),
            Request::NodeRemove { nodes, force } => {
                let swarm = self.swarm().await?;
                let mut out = Vec::new();
                for n in nodes {
                    out.push(swarm.node_remove(&n, force).await?);
                }
                Ok(Response::Message(out.join("\n")))
            }
        }
    }

    /// Stop the membership and start it again from what is on disk (after
    /// a promotion or demotion).
    async fn restart_swarm(&self) -> Result<()> {
        let _op = self.membership_op.lock().await;
        let taken = self.swarm.write().await.take();
        if let Some(s) = taken {
            s.shutdown(false).await;
        }
        if let Some((sf, identity)) = crate::membership_file::load(&self.config.data_dir)? {
            let swarm = Swarm::resume(&self.config, self.restart.clone(), sf, identity).await?;
            *self.swarm.write().await = Some(swarm);
        }
        Ok(())
    }

    async fn gossip(&self) -> Result<shoal_membership::Gossip, ApiError> {
        self.swarm().await?.gossip().ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unavailable,
                "gossip is not running yet on this node (it starts once the node's session delivers the key ring)",
            )
        })
    }

    async fn swarm(&self) -> Result<Arc<Swarm>, ApiError> {
        self.swarm.read().await.clone().ok_or_else(|| {
            ApiError::invalid(
                "This node is not part of a swarm: run `shoal swarm init` or `shoal swarm join` first",
            )
        })
    }

    async fn check_inactive(&self) -> Result<(), ApiError> {
        if self.swarm.read().await.is_some() {
            return Err(ApiError::invalid(
                "This node is already part of a swarm. Use \"shoal swarm leave\" to leave this swarm and join another one.",
            ));
        }
        Ok(())
    }

    async fn set_swarm(&self, swarm: Arc<Swarm>) {
        self.set_node_id(swarm.node_id().to_string());
        *self.swarm.write().await = Some(swarm);
    }

    fn set_node_id(&self, id: String) {
        match self.node_id.lock() {
            Ok(mut g) => *g = id,
            Err(p) => *p.into_inner() = id,
        }
    }

    async fn info(&self) -> NodeInfo {
        let hostname = self.config.hostname.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let swarm = match self.swarm.read().await.as_ref() {
            Some(s) => s.info(),
            None => SwarmInfo {
                state: SwarmState::Inactive,
                ..Default::default()
            },
        };
        let node_id = match self.node_id.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        NodeInfo {
            node_id,
            hostname,
            addresses: local_ipv4_addrs(),
            data_dir: self.config.data_dir.display().to_string(),
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
            swarm,
        }
    }
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
    let swarm = match crate::membership_file::load(&config.data_dir)? {
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
    // Under systemd (Type=notify): the API socket is up, we are ready.
    if let Err(e) = crate::notify::ready() {
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
    let _ = crate::notify::stopping();
    if let Err(e) = std::fs::remove_file(&socket) {
        warn!("cannot remove socket {}: {e}", socket.display());
    }
    let swarm = daemon.swarm.write().await.take();
    if let Some(s) = swarm {
        s.shutdown(false).await;
    }
    drop(lock);
    Ok(())
}

/// A gossip value for people: endpoint records decoded, UTF-8 as text,
/// anything else as hex.
fn display_value(table: &str, value: &[u8]) -> String {
    if table.starts_with("ep/") {
        if let Ok(r) = shoal_membership::EndpointRecord::decode(value) {
            return format!("{:?}", r);
        }
    }
    match std::str::from_utf8(value) {
        Ok(s) => s.to_string(),
        Err(_) => value.iter().map(|b| format!("{b:02x}")).collect(),
    }
}
