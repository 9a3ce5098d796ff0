//! The node side of the session (QUIC, UDP 2377): one session at a time,
//! to the Raft leader (a follower redirects), failing over across the
//! known managers with capped backoff. It sends heartbeats with the
//! node's report — at once when a task changes state — and hands every
//! assignment to its owner (the swarm wiring).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use shoal_api as api;
use shoal_tls::{NodeIdentity, MANAGER_SERVER_NAME};
use tracing::{debug, info};

use crate::proto::session::{
    transport, Assignments, CallReply, FrameReader, ManagerCall, NodeReport, ToManager, ToNode,
    ALPN_SESSION,
};

/// Aborts a task when dropped (the session's call server ends with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the session loop needs from the node that owns it.
pub trait SessionOwner: Send + Sync + 'static {
    /// Control addresses of the known managers.
    fn managers(&self) -> Vec<SocketAddr>;
    /// The node's current certificate.
    fn identity(&self) -> NodeIdentity;
    /// Add what changes to the kernel's report (CA digest, task states).
    fn fill_report(&self, report: &mut NodeReport);
    /// Take in an assignment.
    fn apply(self: Arc<Self>, a: Assignments);
    /// The session client (its endpoint and connection state).
    fn client(&self) -> Arc<Client>;
    /// Heartbeat period, as last assigned.
    fn heartbeat(&self) -> &Mutex<Duration>;
    /// Notified when a task changed state: report now.
    fn report_now(&self) -> &tokio::sync::Notify;
    /// Answer a call the leader makes over the session.
    fn answer(self: Arc<Self>, call: ManagerCall)
        -> futures::future::BoxFuture<'static, CallReply>;
}

/// Answers the leader's calls: every stream the leader opens in the
/// session carries one call and its reply.
async fn serve_calls(conn: quinn::Connection, answer: Answer) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let answer = answer.clone();
        tokio::spawn(async move {
            let Ok(call) = api::read_frame::<_, ManagerCall>(&mut recv).await else {
                return;
            };
            let reply = answer(call).await;
            let _ = api::write_frame(&mut send, &reply).await;
            let _ = send.finish();
        });
    }
}

/// What one session uses of the node that owns it.
pub struct Hooks<'a> {
    /// The heartbeat report, made fresh for each beat.
    pub report: &'a (dyn Fn() -> NodeReport + Send + Sync),
    /// Heartbeat period, as last assigned.
    pub heartbeat: &'a Mutex<Duration>,
    /// Takes in an assignment.
    pub apply: &'a (dyn Fn(Assignments) + Send + Sync),
    /// Notified when a task changed state: report now.
    pub wake: &'a tokio::sync::Notify,
    /// Answers the leader's calls.
    pub answer: Answer,
}

/// How the session loop answers the leader's calls.
pub type Answer =
    Arc<dyn Fn(ManagerCall) -> futures::future::BoxFuture<'static, CallReply> + Send + Sync>;

/// Every node keeps one session with the leader (see `session`), failing
/// over across the known managers with capped backoff.
pub async fn run<O: SessionOwner>(owner: Weak<O>) {
    // The ESP probe runs a short subprocess: not on a runtime thread.
    let kernel = tokio::task::spawn_blocking(probe_kernel)
        .await
        .unwrap_or_default();
    let w = owner.clone();
    let report = move || {
        let mut r = kernel.clone();
        if let Some(o) = w.upgrade() {
            o.fill_report(&mut r);
        }
        r
    };
    let mut redirect: Option<SocketAddr> = None;
    let mut turn = 0usize;
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(o) = owner.upgrade() else { return };
        let target = match redirect.take() {
            Some(t) => t,
            None => {
                let managers = o.managers();
                if managers.is_empty() {
                    drop(o);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                turn = turn.wrapping_add(1);
                managers[turn % managers.len()]
            }
        };
        let identity = o.identity();
        let client = o.client();
        let w = owner.clone();
        let apply = move |a: Assignments| {
            if let Some(o) = w.upgrade() {
                o.apply(a);
            }
        };
        let w = owner.clone();
        let answer: Answer = Arc::new(move |call| match w.upgrade() {
            Some(o) => o.answer(call),
            None => Box::pin(async { CallReply::Error("the node is shutting down".into()) }),
        });
        let hooks = Hooks {
            report: &report,
            heartbeat: o.heartbeat(),
            apply: &apply,
            wake: o.report_now(),
            answer,
        };
        let result = client.run_once(&identity, target, hooks).await;
        drop(o);
        client.connected.lock().map(|mut c| *c = None).ok();
        match result {
            Ok(Some(to)) => {
                debug!(from = %target, %to, "session redirected to the leader");
                redirect = Some(to);
                backoff = Duration::from_millis(100);
                continue;
            }
            Ok(None) => {}
            Err(e) => debug!(manager = %target, "session: {e:#}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// The node side: one session at a time, to the leader; fails over to the
/// next manager with backoff. `apply` is called with every assignment.
pub struct Client {
    endpoint: quinn::Endpoint,
    /// Manager the session is connected to, for `info`.
    pub connected: Mutex<Option<SocketAddr>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// A client endpoint on an ephemeral UDP port.
    pub fn new() -> anyhow::Result<Client> {
        let endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))?;
        Ok(Client {
            endpoint,
            connected: Mutex::new(None),
        })
    }

    /// The manager the session is on.
    pub fn connected(&self) -> Option<SocketAddr> {
        self.connected.lock().ok().and_then(|c| *c)
    }

    fn set_connected(&self, a: Option<SocketAddr>) {
        if let Ok(mut c) = self.connected.lock() {
            *c = a;
        }
    }

    /// Run one session against `addr` until it ends. Returns a redirect
    /// target if the manager sent one.
    pub async fn run_once(
        &self,
        identity: &NodeIdentity,
        addr: SocketAddr,
        hooks: Hooks<'_>,
    ) -> anyhow::Result<Option<SocketAddr>> {
        let Hooks {
            report,
            heartbeat,
            apply,
            wake,
            answer,
        } = hooks;
        let tls = identity.client_config(&[ALPN_SESSION])?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
        cfg.transport_config(Arc::new(transport()));
        let conn = tokio::time::timeout(
            Duration::from_secs(1),
            self.endpoint.connect_with(cfg, addr, MANAGER_SERVER_NAME)?,
        )
        .await
        .map_err(|_| anyhow::anyhow!("session to {addr}: timed out"))??;
        let (mut send, recv) = conn.open_bi().await?;
        let calls = tokio::spawn(serve_calls(conn.clone(), answer));
        let _calls = AbortOnDrop(calls);
        // The stream exists for the peer only once something is sent.
        api::write_frame(&mut send, &ToManager::Heartbeat(report())).await?;
        // Frames are read on a task of their own: the timer and wake
        // branches below can win while a frame is half read.
        let mut frames = FrameReader::<ToNode>::spawn(recv);
        let mut first = true;
        let mut last: Option<Assignments> = None;
        let mut next_beat = tokio::time::Instant::now();
        loop {
            let period = heartbeat
                .lock()
                .map(|p| *p)
                .unwrap_or(Duration::from_secs(5));
            tokio::select! {
                msg = frames.recv() => {
                    match msg? {
                        ToNode::Redirect(to) => {
                            self.set_connected(None);
                            return Ok(to.filter(|t| *t != addr));
                        }
                        ToNode::Assign(a) => {
                            if first {
                                info!(manager = %addr, "node session established");
                                self.set_connected(Some(addr));
                                first = false;
                            }
                            if let Ok(mut p) = heartbeat.lock() {
                                *p = Duration::from_millis(a.heartbeat_ms.max(50));
                            }
                            last = Some((*a).clone());
                            apply(*a);
                        }
                    }
                }
                // A task changed state: report it now, not at the next beat.
                _ = wake.notified() => {
                    api::write_frame(&mut send, &ToManager::Heartbeat(report())).await?;
                }
                _ = tokio::time::sleep_until(next_beat + period) => {
                    next_beat = tokio::time::Instant::now();
                    api::write_frame(&mut send, &ToManager::Heartbeat(report())).await?;
                    // Re-apply, so a step that failed (renewal, raft join)
                    // is retried without waiting for a change.
                    if let Some(a) = &last {
                        apply(a.clone());
                    }
                }
            }
        }
    }
}

/// Whether kernel ESP with AES-GCM works here (probed once, the reason
/// logged): reported only; encrypted overlays use the userspace data
/// path either way.
fn esp_available() -> bool {
    static ESP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ESP.get_or_init(|| match shoal_netdriver::probe_esp() {
        Ok(()) => {
            tracing::info!("kernel IPsec ESP (rfc4106(gcm(aes))) is available; encrypted overlays use the userspace data path");
            true
        }
        Err(reason) => {
            tracing::info!("kernel IPsec ESP is not available ({reason}); encrypted overlays use the userspace data path");
            false
        }
    })
}

/// What this kernel can do, for the status report.
pub fn probe_kernel() -> NodeReport {
    let has = |m: &str| {
        std::fs::read_to_string("/proc/modules")
            .map(|s| s.lines().any(|l| l.starts_with(&format!("{m} "))))
            .unwrap_or(false)
            || std::path::Path::new(&format!("/sys/module/{m}")).exists()
    };
    NodeReport {
        vxlan: has("vxlan"),
        esp: esp_available(),
        ca_digest: String::new(),
        tasks: Vec::new(),
        resources: Some(node_resources()),
    }
}

/// This host's CPUs (those this process may run on) and memory
/// (`MemTotal`), as the scheduler counts reservations against them.
pub fn node_resources() -> shoal_model::state::NodeResources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<i64>().ok())
        })
        .unwrap_or(0);
    shoal_model::state::NodeResources {
        nano_cpus: cpus * 1_000_000_000,
        memory_bytes: mem_kib * 1024,
    }
}
