//! The per-start epoch of a sender: read from a file in the node's data
//! dir, incremented and written back (fsynced, with the directory) before
//! the first message of a start is sealed, so no two starts of a node ever
//! share an epoch and counters can restart at zero (the data path puts it
//! in its nonces; gossip in every sealed message).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why no epoch could be taken.
#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    /// Reading, writing or syncing the file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The file does not hold a number: refusing to guess, since reusing
    /// an epoch would repeat nonces.
    #[error(
        "{path} is corrupt ({content:?} is not an epoch number); refusing to guess (write a \
         number larger than any epoch used before)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What it holds (cut to 32 bytes).
        content: String,
    },
    /// All 2^32 epochs are used.
    #[error("{0} has reached the last epoch")]
    Exhausted(PathBuf),
}

/// Take the next epoch from `<dir>/<file>` (1 when absent).
pub fn next_epoch(dir: &Path, file: &str) -> Result<u32, EpochError> {
    let path = dir.join(file);
    let io = |op, source| EpochError::Io {
        op,
        path: path.clone(),
        source,
    };
    let last = match fs::read_to_string(&path) {
        Ok(s) => s.trim().parse::<u32>().map_err(|_| EpochError::Corrupt {
            path: path.clone(),
            content: s.chars().take(32).collect(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io("read", e)),
    };
    let next = last
        .checked_add(1)
        .ok_or_else(|| EpochError::Exhausted(path.clone()))?;
    let tmp = dir.join(format!("{file}.tmp"));
    let mut f = fs::File::create(&tmp).map_err(|e| io("create", e))?;
    f.write_all(format!("{next}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| io("write", e))?;
    fs::rename(&tmp, &path).map_err(|e| io("rename", e))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync directory of", e))?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH_FILE: &str = "test-epoch";

    fn next_epoch(dir: &Path) -> Result<u32, EpochError> {
        super::next_epoch(dir, EPOCH_FILE)
    }

    #[test]
    fn epochs_increase_across_starts() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(next_epoch(d.path()).unwrap(), 1);
        assert_eq!(next_epoch(d.path()).unwrap(), 2);
        assert_eq!(next_epoch(d.path()).unwrap(), 3);
        let s = fs::read_to_string(d.path().join(EPOCH_FILE)).unwrap();
        assert_eq!(s, "3\n");
    }

    #[test]
    fn a_corrupt_or_exhausted_file_is_refused_not_reset() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(EPOCH_FILE), "garbage").unwrap();
        let e = next_epoch(d.path()).unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("garbage"), "{e}");
        fs::write(d.path().join(EPOCH_FILE), u32::MAX.to_string()).unwrap();
        assert!(matches!(
            next_epoch(d.path()),
            Err(EpochError::Exhausted(_))
        ));
    }
}
