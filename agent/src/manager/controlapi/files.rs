//! Control API for configs and secrets: `config|secret create / ls /
//! inspect / rm`, and the Engine API's label update (the data never
//! changes; a secret's data never comes back out).

use std::collections::BTreeMap;

use shoal_api::{ApiError, ErrorCode};
use shoal_model::configs::{self, FileKind, StoredFile};
use shoal_model::state::Command;
use shoal_model::{now_ms, NodeId};

use crate::manager::Manager;

fn not_found(kind: FileKind, key: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("{kind} {key} not found"))
}

async fn get(m: &Manager, kind: FileKind, key: &str) -> Result<StoredFile, ApiError> {
    let k = key.to_string();
    m.store()
        .read(move |s| configs::find(s.files(kind), &k).cloned())
        .await?
        .ok_or_else(|| not_found(kind, key))
}

/// `create`: the new object's id.
pub async fn create(
    m: &Manager,
    kind: FileKind,
    name: String,
    labels: BTreeMap<String, String>,
    data: Vec<u8>,
) -> Result<String, ApiError> {
    let id = NodeId::generate().to_string();
    let at = now_ms();
    let file = StoredFile {
        id: id.clone(),
        name,
        labels,
        data,
        created_at: at,
        updated_at: at,
        version: 0,
    };
    m.store()
        .propose(Command::CreateFile { kind, file })
        .await?;
    Ok(id)
}

/// `ls` (no keys) / `inspect KEYS`; secrets without their data.
pub async fn list(
    m: &Manager,
    kind: FileKind,
    keys: &[String],
) -> Result<Vec<StoredFile>, ApiError> {
    let all = m.store().read(move |s| s.files(kind).clone()).await?;
    let mut out: Vec<StoredFile> = if keys.is_empty() {
        all.values().cloned().collect()
    } else {
        keys.iter()
            .map(|k| {
                configs::find(&all, k)
                    .cloned()
                    .ok_or_else(|| not_found(kind, k))
            })
            .collect::<Result<_, _>>()?
    };
    if kind == FileKind::Secret {
        for f in &mut out {
            f.data.clear();
        }
    }
    Ok(out)
}

/// Labels only; `data`, when given, must be what is stored.
pub async fn update(
    m: &Manager,
    kind: FileKind,
    key: &str,
    version: Option<u64>,
    labels: BTreeMap<String, String>,
    data: Option<Vec<u8>>,
) -> Result<String, ApiError> {
    let f = get(m, kind, key).await?;
    if let Some(v) = version.filter(|v| *v != f.version) {
        return Err(ApiError::invalid(format!(
            "update out of sequence: {kind} {} is at version {}, not {v}",
            f.name, f.version
        )));
    }
    // A secret's data is never read back, so clients resend none or all.
    if data.is_some_and(|d| !d.is_empty() && d != f.data) {
        return Err(ApiError::invalid(
            configs::FileError::DataChanged(kind, f.name).to_string(),
        ));
    }
    m.store()
        .propose(Command::UpdateFileLabels {
            kind,
            id: f.id.clone(),
            labels,
            at: now_ms(),
        })
        .await?;
    Ok(f.id)
}

/// `rm`: refused while a service uses it.
pub async fn remove(m: &Manager, kind: FileKind, key: &str) -> Result<String, ApiError> {
    let f = get(m, kind, key).await?;
    m.store()
        .propose(Command::RemoveFile {
            kind,
            id: f.id.clone(),
        })
        .await?;
    Ok(f.id)
}
