//! Configs and secrets (`docker config`, `docker secret`): named blobs in
//! the replicated store that services mount into their tasks as read-only
//! files. A secret's data is never shown back (inspect leaves it out, logs
//! print its length) and reaches only the nodes whose tasks use it; the
//! data of either cannot change after create (only the labels), and an
//! object a service uses cannot be removed.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::service::{ContainerSpec, Service};
use crate::state::{ApplyError, State};

/// Config or secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// `docker config`: mounted at `/<name>` by default.
    Config,
    /// `docker secret`: mounted at `/run/secrets/<name>` by default.
    Secret,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Config => "config",
            FileKind::Secret => "secret",
        })
    }
}

impl FileKind {
    /// Largest data swarmkit takes (1000 KB for configs, 500 KB for
    /// secrets).
    pub fn max_size(self) -> usize {
        match self {
            FileKind::Config => 1000 * 1024,
            FileKind::Secret => 500 * 1024,
        }
    }

    /// Where a relative target lands in the container.
    pub fn path(self, target: &str) -> String {
        match (self, target.starts_with('/')) {
            (_, true) => target.to_string(),
            (FileKind::Config, false) => format!("/{target}"),
            (FileKind::Secret, false) => format!("/run/secrets/{target}"),
        }
    }
}

/// A config or secret as stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// Id chosen by the proposer.
    pub id: String,
    /// Unique name (per kind).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The content.
    pub data: Vec<u8>,
    /// Unix ms.
    pub created_at: u64,
    /// Unix ms.
    pub updated_at: u64,
    /// Store index of the last write.
    pub version: u64,
}

impl fmt::Debug for StoredFile {
    // The data may be a secret: only its size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredFile")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("bytes", &self.data.len())
            .finish_non_exhaustive()
    }
}

/// A service's use of a config or secret (`--config source=…,target=…`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// Its id (resolved from the name when the service is stored).
    pub id: String,
    /// Its name.
    pub name: String,
    /// File name or absolute path in the container (default: the name).
    pub target: String,
    /// Owner (numeric; default `0`).
    pub uid: String,
    /// Group (numeric; default `0`).
    pub gid: String,
    /// Permission bits (default `0o444`).
    pub mode: u32,
}

/// Why a config or secret command was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum FileError {
    /// Docker's name rule.
    #[error("invalid name {0:?}: use 1-64 letters, digits, '-', '_' and '.', starting and ending with a letter or digit")]
    BadName(String),
    /// Names are unique.
    #[error("{0} {1} already exists")]
    NameInUse(FileKind, String),
    /// Unknown id or name.
    #[error("{0} {1} not found")]
    NotFound(FileKind, String),
    /// Over [`FileKind::max_size`].
    #[error("{0} data of {1} bytes is larger than the {2} byte limit")]
    TooLarge(FileKind, usize, usize),
    /// Secrets need content.
    #[error("secret data must not be empty")]
    Empty,
    /// Used by services.
    #[error("{0} '{1}' is in use by the following service: {2}")]
    InUse(FileKind, String, String),
    /// Only labels change.
    #[error("only updates to Labels are allowed: the data of {0} {1} cannot change")]
    DataChanged(FileKind, String),
    /// A target outside the container's file tree, or a bad owner.
    #[error("{0} {1}: {2}")]
    BadRef(FileKind, String, String),
}

fn valid_name(n: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    n.len() <= 64
        && edge(n.chars().next())
        && edge(n.chars().last())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Check a new object against those of its kind.
pub fn check_new(
    kind: FileKind,
    files: &BTreeMap<String, StoredFile>,
    f: &StoredFile,
) -> Result<(), FileError> {
    if !valid_name(&f.name) {
        return Err(FileError::BadName(f.name.clone()));
    }
    if files.values().any(|x| x.name == f.name) {
        return Err(FileError::NameInUse(kind, f.name.clone()));
    }
    if f.data.len() > kind.max_size() {
        return Err(FileError::TooLarge(kind, f.data.len(), kind.max_size()));
    }
    if kind == FileKind::Secret && f.data.is_empty() {
        return Err(FileError::Empty);
    }
    Ok(())
}

/// By id, exact name, or unique id prefix.
pub fn find<'a>(files: &'a BTreeMap<String, StoredFile>, key: &str) -> Option<&'a StoredFile> {
    if let Some(f) = files.get(key) {
        return Some(f);
    }
    if let Some(f) = files.values().find(|f| f.name == key) {
        return Some(f);
    }
    let mut m = files.values().filter(|f| f.id.starts_with(key));
    match (m.next(), m.next()) {
        (Some(f), None) => Some(f),
        _ => None,
    }
}

/// The references a container spec makes of one kind.
pub fn refs(c: &ContainerSpec, kind: FileKind) -> &[FileRef] {
    match kind {
        FileKind::Config => &c.configs,
        FileKind::Secret => &c.secrets,
    }
}

/// Resolve each reference of `c` (by id or name) to the stored object,
/// fill the defaults (target = name, uid/gid 0, mode 0444) and check the
/// targets.
pub fn resolve(
    c: &mut ContainerSpec,
    configs: &BTreeMap<String, StoredFile>,
    secrets: &BTreeMap<String, StoredFile>,
) -> Result<(), FileError> {
    for (kind, files, list) in [
        (FileKind::Config, configs, &mut c.configs),
        (FileKind::Secret, secrets, &mut c.secrets),
    ] {
        for r in list.iter_mut() {
            let key = if r.id.is_empty() { &r.name } else { &r.id };
            let f = find(files, key).ok_or_else(|| FileError::NotFound(kind, key.clone()))?;
            r.id = f.id.clone();
            r.name = f.name.clone();
            if r.target.is_empty() {
                r.target = f.name.clone();
            }
            let bad = |why: &str| FileError::BadRef(kind, f.name.clone(), why.to_string());
            if r.target.split('/').any(|p| p == "..") {
                return Err(bad("the target may not contain '..'"));
            }
            for (what, v) in [("uid", &mut r.uid), ("gid", &mut r.gid)] {
                if v.is_empty() {
                    *v = "0".into();
                }
                if v.parse::<u32>().is_err() {
                    return Err(bad(&format!("{what} {v:?} is not a number")));
                }
            }
            if r.mode == 0 {
                r.mode = 0o444;
            }
            if r.mode > 0o777 {
                return Err(bad(&format!("mode {:o} is not a permission", r.mode)));
            }
        }
    }
    Ok(())
}

/// Refuse removing `id` while a service uses it.
pub fn check_unused(
    kind: FileKind,
    f: &StoredFile,
    services: &BTreeMap<String, Service>,
) -> Result<(), FileError> {
    let users: Vec<&str> = services
        .values()
        .filter(|s| refs(&s.spec.container, kind).iter().any(|r| r.id == f.id))
        .map(|s| s.spec.name.as_str())
        .collect();
    if users.is_empty() {
        Ok(())
    } else {
        Err(FileError::InUse(kind, f.name.clone(), users.join(", ")))
    }
}

impl State {
    /// The configs or the secrets.
    pub fn files(&self, kind: FileKind) -> &BTreeMap<String, StoredFile> {
        match kind {
            FileKind::Config => &self.configs,
            FileKind::Secret => &self.secrets,
        }
    }

    fn files_mut(&mut self, kind: FileKind) -> &mut BTreeMap<String, StoredFile> {
        match kind {
            FileKind::Config => &mut self.configs,
            FileKind::Secret => &mut self.secrets,
        }
    }

    /// Apply a config or secret command (from [`State::apply_command`]).
    pub(crate) fn apply_file(&mut self, index: u64, cmd: Command) -> Result<(), ApplyError> {
        match cmd {
            Command::CreateFile { kind, mut file } => {
                let files = self.files_mut(kind);
                if files.contains_key(&file.id) {
                    return Err(FileError::NameInUse(kind, file.id).into());
                }
                check_new(kind, files, &file)?;
                file.version = index;
                files.insert(file.id.clone(), file);
            }
            Command::UpdateFileLabels {
                kind,
                id,
                labels,
                at,
            } => {
                crate::service::check_labels(&labels)?;
                let f = self
                    .files_mut(kind)
                    .get_mut(&id)
                    .ok_or_else(|| FileError::NotFound(kind, id.clone()))?;
                f.labels = labels;
                f.updated_at = at;
                f.version = index;
            }
            Command::RemoveFile { kind, id } => {
                let f = self
                    .files(kind)
                    .get(&id)
                    .ok_or_else(|| FileError::NotFound(kind, id.clone()))?;
                check_unused(kind, f, &self.services)?;
                self.files_mut(kind).remove(&id);
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(id: &str, name: &str, data: &[u8]) -> StoredFile {
        StoredFile {
            id: id.into(),
            name: name.into(),
            labels: BTreeMap::new(),
            data: data.to_vec(),
            created_at: 1,
            updated_at: 1,
            version: 1,
        }
    }

    #[test]
    fn names_sizes_and_lookup() {
        let mut files = BTreeMap::new();
        files.insert("abc123".to_string(), file("abc123", "app.conf", b"x"));
        assert!(check_new(FileKind::Config, &files, &file("z", "app.conf", b"y")).is_err());
        assert!(check_new(FileKind::Config, &files, &file("z", ".hidden", b"y")).is_err());
        assert!(check_new(FileKind::Secret, &files, &file("z", "pw", b"")).is_err());
        let big = vec![0u8; FileKind::Secret.max_size() + 1];
        assert!(check_new(FileKind::Secret, &files, &file("z", "pw", &big)).is_err());
        assert!(check_new(FileKind::Config, &files, &file("z", "other_1.conf", b"")).is_ok());
        assert_eq!(find(&files, "app.conf").unwrap().id, "abc123");
        assert_eq!(find(&files, "abc").unwrap().id, "abc123");
        assert!(find(&files, "nope").is_none());
        assert!(!format!("{:?}", file("s", "pw", b"hunter2")).contains("hunter2"));
    }

    #[test]
    fn references_resolve_with_docker_defaults() {
        let mut configs = BTreeMap::new();
        configs.insert("c1".to_string(), file("c1", "app.conf", b"x"));
        let mut secrets = BTreeMap::new();
        secrets.insert("s1".to_string(), file("s1", "pw", b"x"));
        let r = |name: &str, target: &str| FileRef {
            id: String::new(),
            name: name.into(),
            target: target.into(),
            uid: String::new(),
            gid: String::new(),
            mode: 0,
        };
        let mut c = ContainerSpec {
            configs: vec![r("app.conf", "/etc/app.conf")],
            secrets: vec![r("pw", "")],
            ..Default::default()
        };
        resolve(&mut c, &configs, &secrets).unwrap();
        assert_eq!(c.configs[0].id, "c1");
        assert_eq!(
            (c.secrets[0].target.as_str(), c.secrets[0].mode),
            ("pw", 0o444)
        );
        assert_eq!(
            FileKind::Secret.path(&c.secrets[0].target),
            "/run/secrets/pw"
        );
        assert_eq!(FileKind::Config.path("/etc/app.conf"), "/etc/app.conf");
        let mut bad = ContainerSpec {
            secrets: vec![r("nope", "")],
            ..Default::default()
        };
        assert!(resolve(&mut bad, &configs, &secrets).is_err());
        let mut bad = ContainerSpec {
            configs: vec![r("app.conf", "../x")],
            ..Default::default()
        };
        assert!(resolve(&mut bad, &configs, &secrets).is_err());
    }
}
