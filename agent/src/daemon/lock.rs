//! The daemon's hold on its data dir: an exclusive lock (a second daemon
//! on the same dir is refused with the holder's pid) and the node id kept
//! there before the node joins a swarm.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tracing::warn;

use crate::swarm::file::write_atomically;

/// Name of the lock file inside the data dir.
const LOCK_FILE: &str = "shoal.lock";
/// Name of the file holding this node's id.
pub const NODE_ID_FILE: &str = "node-id";

/// An exclusive hold on a data dir; released when dropped (or when the
/// process dies, since it is an advisory `flock`).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Create the data dir if needed (owner-only, see [`private_data_dir`])
    /// and take its lock, or say who holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock> {
        private_data_dir(data_dir)?;
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

/// Make sure the data dir exists and only its owner can enter it (mode
/// 0700: it holds the node key and, on managers, the Raft log with the CA
/// and gossip keys). A new one is created 0700 (its missing parents with
/// the usual mode); an existing one open to group or others is tightened,
/// with a warning.
pub fn private_data_dir(data_dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("data dir {} cannot be created", data_dir.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(data_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("data dir {} cannot be created", data_dir.display()))
        }
    }
    let meta = std::fs::metadata(data_dir)
        .with_context(|| format!("data dir {} cannot be read", data_dir.display()))?;
    if !meta.is_dir() {
        bail!("data dir {} is not a directory", data_dir.display());
    }
    // The umask may have taken bits off the new dir, never added any; an
    // older one may be open.
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)).with_context(
            || {
                format!(
                    "data dir {} is open to others (mode {mode:04o}) and cannot be restricted to 0700",
                    data_dir.display()
                )
            },
        )?;
        warn!(
            data_dir = %data_dir.display(),
            "data dir was open to others (mode {mode:04o}): restricted to 0700"
        );
    }
    Ok(())
}

/// Read this node's id from the data dir, creating one on first start.
pub fn load_or_create_node_id(data_dir: &Path) -> Result<String> {
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
