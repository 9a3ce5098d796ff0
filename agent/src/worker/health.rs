//! Container health checks (every node), as docker runs them: the task's
//! probe (its `--health-*` settings over the image's `HEALTHCHECK`) runs
//! inside its container every interval through containerd exec; a probe
//! that exits 0 makes it healthy, `retries` failures in a row (a non-zero
//! exit, a probe that cannot start, or one that outlives its timeout)
//! make it unhealthy. Failures during the start period do not count.
//!
//! Data flow: executor `start` (or adoption after a restart) ->
//! [`Monitor::spawn`] -> probes -> [`Monitor::status`], read by the
//! executor loop (kicked on every change): a task is reported `running`
//! only once healthy and fails ("unhealthy container") when it turns
//! unhealthy, which takes it out of DNS and the VIPs and lets the leader
//! replace it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_model::health::Resolved;
use shoal_runtime::{ExecIo, Runtime};
use tracing::{info, warn};

/// Most of a probe's output kept (docker keeps 4 KiB).
const MAX_OUTPUT: usize = 4096;

/// Where a task's health is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// No probe has passed yet.
    Starting,
    /// The last probe passed.
    Healthy,
    /// `retries` probes in a row failed: the task fails.
    Unhealthy,
}

#[derive(Debug)]
struct Shared {
    status: Status,
    streak: u64,
    /// What the last failed probe said.
    last_failure: String,
}

/// The probes of one task; they stop when it is dropped.
#[derive(Debug)]
pub struct Monitor {
    shared: Arc<Mutex<Shared>>,
    probes: tokio::task::JoinHandle<()>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.probes.abort();
    }
}

impl Monitor {
    /// Starts probing container `id` in the background. `status`: where
    /// it starts (`Healthy` for a task adopted as running, so a restart
    /// does not take it out of load balancing). `out`: the file a probe's
    /// output goes to. `kick` wakes the executor on every change.
    pub fn spawn(
        rt: Arc<Runtime>,
        id: String,
        check: Resolved,
        status: Status,
        out: PathBuf,
        kick: Arc<tokio::sync::Notify>,
    ) -> Monitor {
        let shared = Arc::new(Mutex::new(Shared {
            status,
            streak: 0,
            last_failure: String::new(),
        }));
        let s = shared.clone();
        let probes = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let grace = Duration::from_millis(check.start_period_ms);
            let mut ticks = tokio::time::interval_at(
                started + Duration::from_millis(check.interval_ms),
                Duration::from_millis(check.interval_ms),
            );
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let result = probe(&rt, &id, &check, &out).await;
                let in_grace = started.elapsed() < grace;
                let Ok(mut sh) = s.lock() else { return };
                let before = sh.status;
                match result {
                    Ok(()) => {
                        sh.streak = 0;
                        sh.status = Status::Healthy;
                    }
                    // docker: failures in the start period do not count
                    // while no probe has passed.
                    Err(_) if in_grace && sh.status == Status::Starting => {}
                    Err(why) => {
                        sh.streak += 1;
                        info!(task = %id, streak = sh.streak, "health check failed: {why}");
                        sh.last_failure = why;
                        if sh.streak >= check.retries.max(1) {
                            sh.status = Status::Unhealthy;
                        }
                    }
                }
                let now = sh.status;
                drop(sh);
                if now != before {
                    info!(task = %id, "health: {before:?} -> {now:?}");
                    kick.notify_one();
                }
                if now == Status::Unhealthy {
                    return; // the task fails: nothing more to probe
                }
            }
        });
        Monitor { shared, probes }
    }

    /// Where the task's health is.
    pub fn status(&self) -> Status {
        self.shared.lock().map_or(Status::Unhealthy, |s| s.status)
    }

    /// What the last failed probe said (for the task's error).
    pub fn last_failure(&self) -> String {
        self.shared
            .lock()
            .map(|s| s.last_failure.clone())
            .unwrap_or_default()
    }
}

/// One probe: `Ok` when it exited 0, else why not (its exit code and the
/// start of its output, or why it could not run or finish in time).
async fn probe(rt: &Runtime, id: &str, check: &Resolved, out: &PathBuf) -> Result<(), String> {
    std::fs::write(out, b"").map_err(|e| format!("{}: {e}", out.display()))?;
    let uri = shoal_runtime::file_uri(out);
    let io = ExecIo {
        stdout: uri.clone(),
        stderr: uri,
        ..Default::default()
    };
    let exec = rt
        .exec_start(id, &check.argv, &io)
        .await
        .map_err(|e| e.to_string())?;
    let timeout = Duration::from_millis(check.timeout_ms);
    let code = match tokio::time::timeout(timeout, rt.exec_wait(id, &exec)).await {
        Ok(r) => r.map_err(|e| e.to_string())?,
        Err(_) => {
            rt.exec_kill(id, &exec).await;
            if let Err(e) = rt.exec_wait(id, &exec).await {
                warn!(task = %id, "reaping a timed-out health probe: {e}");
            }
            let t = check.timeout_ms;
            return Err(match t % 1000 {
                0 => format!("Health check exceeded timeout ({}s)", t / 1000),
                _ => format!("Health check exceeded timeout ({t}ms)"),
            });
        }
    };
    if code == 0 {
        return Ok(());
    }
    let text = std::fs::read(out).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[..text.len().min(MAX_OUTPUT)]);
    let text = text.trim();
    Err(match text.is_empty() {
        true => format!("exit {code}"),
        false => format!("exit {code}: {text}"),
    })
}

/// The check a container task runs: its service's settings over its
/// image's `HEALTHCHECK`; `None`: no check.
pub fn resolve(
    settings: &shoal_model::service::ContainerSpec,
    image: &shoal_runtime::ImageInfo,
) -> Option<Resolved> {
    let ms = |ns: i64| (ns.max(0) / 1_000_000) as u64;
    let from_image = image
        .config
        .healthcheck
        .as_ref()
        .map(|h| shoal_model::health::HealthConfig {
            test: h.test.clone(),
            interval_ms: ms(h.interval),
            timeout_ms: ms(h.timeout),
            retries: h.retries.max(0) as u64,
            start_period_ms: ms(h.start_period),
        });
    shoal_model::health::HealthConfig::merged(settings.healthcheck.as_ref(), from_image.as_ref())
}
