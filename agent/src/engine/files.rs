//! Engine API routes of configs (`/configs`) and secrets (`/secrets`):
//! create, list, inspect, label update, delete.

use base64::Engine as _;
use hyper::StatusCode;
use serde_json::json;
use shoal_api::engine::convert::file_to_docker;
use shoal_api::engine::gojson::{self, any_match, labels_match};
use shoal_api::engine::types as d;
use shoal_api::{Request, Response};
use shoal_model::configs::{FileKind, StoredFile};

use super::system::{require_manager, unexpected};
use super::{ask, empty, json as reply, ok, Answer, Call, Failure};
use crate::daemon::Daemon;

/// The kind a path's first segment (`configs` or `secrets`) names.
pub fn kind_of(segment: &str) -> FileKind {
    match segment {
        "secrets" => FileKind::Secret,
        _ => FileKind::Config,
    }
}

async fn stored(d: &Daemon, kind: FileKind, keys: Vec<String>) -> Result<Vec<StoredFile>, Failure> {
    match ask(d, Request::FileList { kind, keys }).await? {
        Response::Files(f) => Ok(f),
        other => Err(unexpected(&other)),
    }
}

fn decode_data(spec: &d::FileSpec) -> Result<Option<Vec<u8>>, Failure> {
    spec.data
        .as_deref()
        .map(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| Failure::bad(format!("Data is not base64: {e}")))
        })
        .transpose()
}

fn check_spec(kind: FileKind, spec: &d::FileSpec) -> Result<(), Failure> {
    if spec.driver.is_some() {
        return Err(Failure::bad(format!(
            "{kind} drivers are not supported by Shoal"
        )));
    }
    if spec.templating.is_some() {
        return Err(Failure::bad(format!(
            "{kind} templating is not supported by Shoal"
        )));
    }
    Ok(())
}

/// `GET /configs|secrets[?filters=]`.
pub async fn list(d: &Daemon, c: &Call, kind: FileKind) -> Answer {
    require_manager(d).await?;
    let f = c.filters()?;
    gojson::check_filters(&f, &["id", "name", "names", "label"]).map_err(Failure::bad)?;
    let out: Vec<d::FileObject> = stored(d, kind, Vec::new())
        .await?
        .iter()
        .filter(|x| {
            any_match(f.get("id"), |v| x.id.starts_with(v))
                && any_match(f.get("name"), |v| x.name.starts_with(v))
                && any_match(f.get("names"), |v| x.name == v)
                && labels_match(&x.labels, f.get("label"))
        })
        .map(|x| file_to_docker(kind, x))
        .collect();
    ok(&out)
}

/// `GET /configs|secrets/{id}`.
pub async fn inspect(d: &Daemon, kind: FileKind, id: &str) -> Answer {
    require_manager(d).await?;
    let f = stored(d, kind, vec![id.into()]).await?;
    match f.first() {
        Some(x) => ok(&file_to_docker(kind, x)),
        None => Err(Failure::not_found(format!("{kind} {id} not found"))),
    }
}

/// `POST /configs|secrets/create` (201 `{ID}`).
pub async fn create(d: &Daemon, c: &Call, kind: FileKind) -> Answer {
    require_manager(d).await?;
    let spec: d::FileSpec = c.decode()?;
    check_spec(kind, &spec)?;
    let data = decode_data(&spec)?.unwrap_or_default();
    let req = Request::FileCreate {
        kind,
        name: spec.name,
        labels: spec.labels,
        data,
    };
    match ask(d, req).await? {
        Response::Created { id, .. } => reply(StatusCode::CREATED, &json!({"ID": id})),
        other => Err(unexpected(&other)),
    }
}

/// `POST /configs|secrets/{id}/update?version=N`: labels only.
pub async fn update(d: &Daemon, c: &Call, kind: FileKind, id: &str) -> Answer {
    require_manager(d).await?;
    let spec: d::FileSpec = c.decode()?;
    check_spec(kind, &spec)?;
    let req = Request::FileUpdate {
        kind,
        key: id.into(),
        version: Some(c.version()?),
        labels: spec.labels.clone(),
        data: decode_data(&spec)?,
    };
    ask(d, req).await?;
    empty(StatusCode::OK)
}

/// `DELETE /configs|secrets/{id}` (204).
pub async fn remove(d: &Daemon, kind: FileKind, id: &str) -> Answer {
    require_manager(d).await?;
    ask(
        d,
        Request::FileRemove {
            kind,
            keys: vec![id.into()],
        },
    )
    .await?;
    empty(StatusCode::NO_CONTENT)
}
