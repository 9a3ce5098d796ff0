//! The daemon's hold on its data dir: an exclusive lock (a second daemon
//! on the same dir is refused with the holder's pid) and the node id kept
//! there before the node joins a swarm.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

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
