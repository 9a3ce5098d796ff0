//! The HTTP side of `/metrics`, deliberately tiny (no HTTP crate): one
//! request per connection, the request head capped in size and time,
//! connections served concurrently up to a bound, every failure answered
//! with a status line and never a panic.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{
    render, render_openmetrics, Metrics, SnapshotFn, CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT,
};

/// Limits of the HTTP server; [`ServeConfig::default`] is what [`serve`]
/// uses.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Largest request head (request line + headers) accepted.
    pub max_head_bytes: usize,
    /// Time a client has to send its whole request head.
    pub read_timeout: Duration,
    /// Time a client has to take the response.
    pub write_timeout: Duration,
    /// Bound on how long the snapshot closure may take.
    pub snapshot_timeout: Duration,
    /// Connections served at once; more are answered 503 at once.
    pub max_connections: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_head_bytes: 8 * 1024,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            snapshot_timeout: Duration::from_secs(5),
            max_connections: 32,
        }
    }
}

/// Serves `GET /metrics` on `listener` until the returned task is aborted.
/// Must be called inside a tokio runtime.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>, snapshot: SnapshotFn) -> JoinHandle<()> {
    serve_with(listener, metrics, snapshot, ServeConfig::default())
}

/// [`serve`] with explicit limits (tests shrink the timeouts).
pub fn serve_with(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    snapshot: SnapshotFn,
    cfg: ServeConfig,
) -> JoinHandle<()> {
    let cfg = Arc::new(cfg);
    let slots = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off
                    // instead of spinning.
                    warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (metrics, snapshot, cfg) = (metrics.clone(), snapshot.clone(), cfg.clone());
            match slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(async move {
                        handle(stream, &metrics, &snapshot, &cfg).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    tokio::spawn(async move {
                        debug!(%peer, "metrics: too many connections");
                        let resp =
                            response(503, "Service Unavailable", "text/plain", b"busy\n", true);
                        respond(stream, &resp, &cfg).await;
                    });
                }
            }
        }
    })
}

/// What a parsed request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Parsed {
    /// `GET|HEAD /metrics`; `head` means no body; `openmetrics` from Accept.
    Metrics { head: bool, openmetrics: bool },
    /// An error status and its reason phrase.
    Status(u16, &'static str),
}

/// Parses a request head (everything before the blank line). Never panics.
pub(super) fn parse_head(head: &[u8]) -> Parsed {
    let Ok(text) = std::str::from_utf8(head) else {
        return Parsed::Status(400, "Bad Request");
    };
    let mut lines = text.split("\r\n").flat_map(|l| l.split('\n'));
    let Some(request_line) = lines.next() else {
        return Parsed::Status(400, "Bad Request");
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parsed::Status(400, "Bad Request");
    };
    if !version.starts_with("HTTP/1.") || version.len() != 8 {
        return Parsed::Status(400, "Bad Request");
    }
    let mut openmetrics = false;
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Parsed::Status(400, "Bad Request");
        };
        if name.is_empty() || name.contains(|c: char| c.is_whitespace()) {
            return Parsed::Status(400, "Bad Request");
        }
        if name.eq_ignore_ascii_case("accept")
            && value
                .to_ascii_lowercase()
                .contains("application/openmetrics-text")
        {
            openmetrics = true;
        }
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    if !path.starts_with('/') && target != "*" {
        return Parsed::Status(400, "Bad Request");
    }
    if path != "/metrics" {
        return Parsed::Status(404, "Not Found");
    }
    match method {
        "GET" => Parsed::Metrics {
            head: false,
            openmetrics,
        },
        "HEAD" => Parsed::Metrics {
            head: true,
            openmetrics,
        },
        _ => Parsed::Status(405, "Method Not Allowed"),
    }
}

/// Reads up to the end of the request head; `Err(status)` when it is too
/// large, the client closed early or the socket failed.
pub(super) async fn read_head(
    stream: &mut TcpStream,
    max: usize,
) -> Result<Vec<u8>, (u16, &'static str)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| (400, "Bad Request"))?;
        if n == 0 {
            return Err((400, "Bad Request"));
        }
        let scan_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if let Some(end) = find_head_end(buf.get(scan_from..).unwrap_or_default()) {
            buf.truncate(scan_from + end);
            return Ok(buf);
        }
        if buf.len() > max {
            return Err((431, "Request Header Fields Too Large"));
        }
    }
}

/// Offset of the blank line ending a head (`\r\n\r\n` or a bare `\n\n`).
pub(super) fn find_head_end(b: &[u8]) -> Option<usize> {
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = b.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(l)) => Some(a.min(l)),
        (a, l) => a.or(l),
    }
}

pub(super) fn response(
    code: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
    with_body: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if code == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if with_body {
        out.extend_from_slice(body);
    }
    out
}

pub(super) async fn respond(mut stream: TcpStream, resp: &[u8], cfg: &ServeConfig) {
    let write = async {
        stream.write_all(resp).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(cfg.write_timeout, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!("metrics: write failed: {e}"),
        Err(_) => debug!("metrics: client did not take the response in time"),
    }
}

pub(super) async fn handle(
    mut stream: TcpStream,
    metrics: &Metrics,
    snapshot: &SnapshotFn,
    cfg: &ServeConfig,
) {
    let head =
        tokio::time::timeout(cfg.read_timeout, read_head(&mut stream, cfg.max_head_bytes)).await;
    let parsed = match head {
        Ok(Ok(h)) => parse_head(&h),
        Ok(Err((code, reason))) => Parsed::Status(code, reason),
        Err(_) => Parsed::Status(408, "Request Timeout"),
    };
    let resp = match parsed {
        Parsed::Metrics { head, openmetrics } => {
            match tokio::time::timeout(cfg.snapshot_timeout, snapshot()).await {
                Ok(snap) => {
                    let (body, ct) = if openmetrics {
                        (render_openmetrics(metrics, &snap), CONTENT_TYPE_OPENMETRICS)
                    } else {
                        (render(metrics, &snap), CONTENT_TYPE_TEXT)
                    };
                    response(200, "OK", ct, body.as_bytes(), !head)
                }
                Err(_) => {
                    warn!("metrics: snapshot took over {:?}", cfg.snapshot_timeout);
                    response(
                        503,
                        "Service Unavailable",
                        "text/plain",
                        b"snapshot timed out\n",
                        !head,
                    )
                }
            }
        }
        Parsed::Status(code, reason) => {
            let body = format!("{code} {reason}\n");
            response(code, reason, "text/plain", body.as_bytes(), true)
        }
    };
    respond(stream, &resp, cfg).await;
}
