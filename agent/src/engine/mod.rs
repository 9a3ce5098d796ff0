//! The Docker Engine API (its swarm subset) on a second unix socket, so the
//! `docker` CLI, docker-py and the tools built on them drive Shoal.
//!
//! HTTP/1.1 with hyper. Each request is routed by method and path (a
//! `/v1.NN` prefix negotiates the version, as moby does), decoded as Go
//! would ([`shoal_api::engine::gojson`]), turned into local API
//! [`Request`]s answered by the same [`Daemon::handle`] the `shoal` CLI
//! uses, and answered with Docker's JSON ([`shoal_api::engine::types`]).
//! Nothing here decides anything the control API does not: this module
//! only translates (check-layers.sh keeps it off the manager and worker).

mod files;
mod objects;
mod services;
mod system;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, StatusCode};
use serde::Serialize;
use shoal_api::engine::{gojson, API_VERSION, MIN_API_VERSION};
use shoal_api::{ApiError, ErrorCode, Request, Response};
use tokio::net::UnixListener;
use tracing::{debug, warn};

use crate::daemon::Daemon;

/// A reply body: whole, or streamed (`/events`, logs).
pub type Body = BoxBody<Bytes, std::io::Error>;

/// Largest request body read (a service spec is a few KB).
const MAX_BODY: usize = 4 << 20;

/// Serve the Engine API on `listener` until the process ends.
pub fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!("engine api socket accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let d = daemon.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let d = d.clone();
                    async move { Ok::<_, Infallible>(answer(&d, req).await) }
                });
                // Title case, as moby's Go server writes header names.
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .title_case_headers(true)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await
                {
                    debug!("engine api connection: {e}");
                }
            });
        }
    });
}

/// Why a request failed: an HTTP status and Docker's `{"message": …}`.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }

    /// 400.
    pub fn bad(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::NOT_FOUND, message)
    }

    /// 501: a part of the Engine API Shoal does not serve.
    pub fn unsupported(what: impl std::fmt::Display) -> Self {
        Failure::new(
            StatusCode::NOT_IMPLEMENTED,
            format!("{what} is not supported by Shoal (it serves the swarm part of the Docker Engine API)"),
        )
    }

    /// 503.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        let status = match e.code {
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::BadRequest | ErrorCode::Invalid | ErrorCode::UnsupportedVersion => {
                StatusCode::BAD_REQUEST
            }
        };
        Failure::new(status, e.message)
    }
}

/// One request, decoded enough to route it.
#[derive(Debug)]
pub struct Call {
    /// The method.
    pub method: Method,
    /// Path segments after the version, percent-decoded.
    pub path: Vec<String>,
    /// Query parameters (last one wins).
    pub query: BTreeMap<String, String>,
    /// The body.
    pub body: Bytes,
}

impl Call {
    /// A query parameter as moby's `BoolValue` reads it.
    pub fn flag(&self, key: &str) -> bool {
        self.query.get(key).is_some_and(|v| gojson::bool_value(v))
    }

    /// `filters`.
    pub fn filters(&self) -> Result<gojson::Filters, Failure> {
        gojson::parse_filters(self.query.get("filters").map_or("", String::as_str))
            .map_err(Failure::bad)
    }

    /// The body as JSON, keys and nulls as Go reads them.
    pub fn json(&self) -> Result<serde_json::Value, Failure> {
        if self.body.is_empty() {
            return Ok(serde_json::Value::Object(Default::default()));
        }
        let mut v: serde_json::Value = serde_json::from_slice(&self.body)
            .map_err(|e| Failure::bad(format!("invalid JSON body: {e}")))?;
        gojson::normalize(&mut v);
        Ok(v)
    }

    /// The body decoded as `T` (after [`Call::json`]).
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, Failure> {
        serde_json::from_value(self.json()?).map_err(|e| Failure::bad(format!("invalid body: {e}")))
    }

    /// `?version=N` of an update (required, as moby requires it).
    pub fn version(&self) -> Result<u64, Failure> {
        let v = self.query.get("version").map_or("", String::as_str);
        v.parse().map_err(|_| {
            Failure::bad(format!(
                "invalid version {v:?}: expected the object's Version.Index"
            ))
        })
    }
}

/// What a route answers.
pub type Answer = Result<hyper::Response<Body>, Failure>;

/// `status` with a JSON body.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Answer {
    let body = serde_json::to_vec(value)
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(with_type(status, Bytes::from(body), "application/json"))
}

/// 200 with a JSON body.
pub fn ok<T: Serialize>(value: &T) -> Answer {
    json(StatusCode::OK, value)
}

/// `status` with no body.
pub fn empty(status: StatusCode) -> Answer {
    Ok(with_type(status, Bytes::new(), "text/plain; charset=utf-8"))
}

fn with_type(status: StatusCode, body: Bytes, content_type: &'static str) -> hyper::Response<Body> {
    let mut r = hyper::Response::new(Full::new(body).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A streamed reply (`/events`, logs).
pub fn stream(body: Body, content_type: &'static str) -> Answer {
    let mut r = hyper::Response::new(body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(r)
}

/// Ask the daemon, as the `shoal` CLI would.
pub async fn ask(d: &Daemon, req: Request) -> Result<Response, Failure> {
    d.handle(req).await.map_err(Failure::from)
}

async fn answer(d: &Arc<Daemon>, req: hyper::Request<Incoming>) -> hyper::Response<Body> {
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let mut reply = match decode(req).await {
        Ok(call) => match route(d, &call).await {
            Ok(r) => r,
            Err(f) => failure(f),
        },
        Err(f) => failure(f),
    };
    debug!(%method, %uri, status = %reply.status(), "engine api");
    let h = reply.headers_mut();
    h.insert("Api-Version", HeaderValue::from_static(API_VERSION));
    h.insert("Ostype", HeaderValue::from_static("linux"));
    h.insert("Docker-Experimental", HeaderValue::from_static("false"));
    h.insert(
        "Server",
        HeaderValue::from_static(concat!(
            "Docker/shoal-",
            env!("CARGO_PKG_VERSION"),
            " (linux)"
        )),
    );
    reply
}

fn failure(f: Failure) -> hyper::Response<Body> {
    #[derive(Serialize)]
    struct Message<'a> {
        message: &'a str,
    }
    let body = serde_json::to_vec(&Message {
        message: &f.message,
    })
    .unwrap_or_default();
    with_type(f.status, Bytes::from(body), "application/json")
}

/// Method, path (version stripped and checked), query and body.
async fn decode(req: hyper::Request<Incoming>) -> Result<Call, Failure> {
    let (parts, body) = req.into_parts();
    let mut segments: Vec<String> = parts
        .uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect::<Result<_, _>>()?;
    if let Some(v) = segments.first().and_then(|s| s.strip_prefix('v')) {
        if v.contains('.') && v.chars().all(|c| c.is_ascii_digit() || c == '.') {
            check_version(v)?;
            segments.remove(0);
        }
    }
    let mut query = BTreeMap::new();
    for pair in parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        query.insert(percent_decode(k)?, percent_decode(&v.replace('+', " "))?);
    }
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| Failure::bad(format!("cannot read the request body: {e}")))?
        .to_bytes();
    Ok(Call {
        method: parts.method,
        path: segments,
        query,
        body,
    })
}

/// Versions as moby compares them: `1.24` <= v <= [`API_VERSION`].
fn check_version(v: &str) -> Result<(), Failure> {
    let parse = |s: &str| -> Option<(u32, u32)> {
        let (a, b) = s.split_once('.')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    let (Some(asked), Some(min), Some(max)) =
        (parse(v), parse(MIN_API_VERSION), parse(API_VERSION))
    else {
        return Err(Failure::bad(format!("invalid API version {v:?}")));
    };
    if asked < min {
        return Err(Failure::bad(format!(
            "client version {v} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
        )));
    }
    if asked > max {
        return Err(Failure::bad(format!(
            "client version {v} is too new. Maximum supported API version is {API_VERSION}"
        )));
    }
    Ok(())
}

fn percent_decode(s: &str) -> Result<String, Failure> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Failure::bad(format!("invalid escape in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Failure::bad(format!("{s:?} is not UTF-8 once decoded")))
}

/// Resources of the Engine API Shoal does not serve (answered 501 rather
/// than 404, so a client knows the route exists in Docker).
const UNSUPPORTED: &[&str] = &[
    "containers",
    "images",
    "volumes",
    "build",
    "exec",
    "plugins",
    "session",
    "system",
    "auth",
    "commit",
    "grpc",
    "secrets",
    "configs",
];

async fn route(d: &Arc<Daemon>, c: &Call) -> Answer {
    let p: Vec<&str> = c.path.iter().map(String::as_str).collect();
    let m = &c.method;
    match (m, p.as_slice()) {
        (&Method::GET | &Method::HEAD, ["_ping"]) => system::ping(d, m == Method::HEAD).await,
        (&Method::GET, ["version"]) => system::version(),
        (&Method::GET, ["info"]) => system::info(d).await,
        (&Method::GET, ["events"]) => system::events(d, c).await,
        (&Method::GET, ["swarm"]) => system::swarm_inspect(d).await,
        (&Method::POST, ["swarm", "init"]) => system::swarm_init(d, c).await,
        (&Method::POST, ["swarm", "join"]) => system::swarm_join(d, c).await,
        (&Method::POST, ["swarm", "leave"]) => system::swarm_leave(d, c).await,
        (&Method::POST, ["swarm", "update"]) => system::swarm_update(d, c).await,
        (&Method::GET, ["swarm", "unlockkey"]) | (&Method::POST, ["swarm", "unlock"]) => {
            Err(Failure::unsupported("autolock (swarm unlock-key)"))
        }
        (&Method::GET, ["nodes"]) => objects::node_list(d, c).await,
        (&Method::GET, ["nodes", id]) => objects::node_inspect(d, id).await,
        (&Method::POST, ["nodes", id, "update"]) => objects::node_update(d, c, id).await,
        (&Method::DELETE, ["nodes", id]) => objects::node_remove(d, c, id).await,
        (&Method::GET, ["networks"]) => objects::network_list(d, c).await,
        (&Method::GET, ["networks", id]) => objects::network_inspect(d, c, id).await,
        (&Method::POST, ["networks", "create"]) => objects::network_create(d, c).await,
        (&Method::DELETE, ["networks", id]) => objects::network_remove(d, id).await,
        (_, ["networks", _, "connect" | "disconnect"]) | (_, ["networks", "prune"]) => {
            Err(Failure::unsupported(format!("/{}", p.join("/"))))
        }
        (&Method::GET, ["services"]) => services::list(d, c).await,
        (&Method::GET, ["services", id]) => services::inspect(d, id).await,
        (&Method::POST, ["services", "create"]) => services::create(d, c).await,
        (&Method::POST, ["services", id, "update"]) => services::update(d, c, id).await,
        (&Method::DELETE, ["services", id]) => services::remove(d, id).await,
        (&Method::GET, ["services", id, "logs"]) => services::logs(d, c, id).await,
        (&Method::GET, ["tasks"]) => services::task_list(d, c).await,
        (&Method::GET, ["tasks", id]) => services::task_inspect(d, id).await,
        (_, [kind @ ("configs" | "secrets"), rest @ ..]) => {
            let k = files::kind_of(kind);
            match (m, rest) {
                (&Method::GET, []) => files::list(d, c, k).await,
                (&Method::POST, ["create"]) => files::create(d, c, k).await,
                (&Method::GET, [id]) => files::inspect(d, k, id).await,
                (&Method::POST, [id, "update"]) => files::update(d, c, k, id).await,
                (&Method::DELETE, [id]) => files::remove(d, k, id).await,
                _ => Err(Failure::not_found("page not found")),
            }
        }
        (&Method::GET, ["distribution", rest @ .., "json"]) if !rest.is_empty() => {
            objects::distribution(d, &rest.join("/")).await
        }
        (_, [first, ..]) if UNSUPPORTED.contains(first) => {
            Err(Failure::unsupported(format!("/{}", p.join("/"))))
        }
        _ => Err(Failure::not_found("page not found")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_as_moby_checks_them() {
        assert!(check_version("1.24").is_ok());
        assert!(check_version(API_VERSION).is_ok());
        assert!(check_version("1.12")
            .unwrap_err()
            .message
            .contains("too old"));
        assert!(check_version("1.50")
            .unwrap_err()
            .message
            .contains("too new"));
        assert!(check_version("1.x").is_err());
    }

    #[test]
    fn paths_are_percent_decoded() {
        assert_eq!(percent_decode("test%2001").unwrap(), "test 01");
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%ff").is_err());
    }
}
