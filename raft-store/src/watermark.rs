//! The commit watermark: a file beside sled's own, holding a commit index
//! known durable. sled recovers a damaged file by cutting its log at the
//! damage, which would look like a shorter (even empty) raft log; a log
//! that ends before the watermark is refused instead (`SledStorage::open`).
//!
//! It is rewritten in place (8 bytes at offset 0, one sector, so never
//! torn) after every flush, once sled's fsync has made that commit
//! durable: a kill -9 (the page cache survives) loses nothing unnoticed.
//! Its own fsync runs at most every [`FSYNC_EVERY`], so after a power loss
//! it may lag by that much — never lead, since it is written after the log
//! it vouches for.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::StoreError;

/// File name, in the log's directory.
pub const FILE: &str = "shoal-commit-watermark";
/// How often the watermark itself is fsynced.
pub const FSYNC_EVERY: Duration = Duration::from_secs(1);

/// The watermark of one log directory.
#[derive(Debug)]
pub struct Watermark {
    path: PathBuf,
    value: u64,
    /// The file holds a value not yet fsynced.
    dirty: bool,
    synced_at: Instant,
}

impl Watermark {
    /// A new log's watermark (0; the file is written on the first commit).
    pub fn new(dir: &Path) -> Watermark {
        Watermark {
            path: dir.join(FILE),
            value: 0,
            dirty: false,
            synced_at: Instant::now(),
        }
    }

    /// The watermark of an existing log (0 if it has none yet).
    pub fn read(dir: &Path) -> Result<Watermark, StoreError> {
        let mut w = Watermark::new(dir);
        w.value = match std::fs::read(&w.path) {
            Ok(b) => {
                let b: [u8; 8] = b.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                    path: w.path.clone(),
                    reason: "watermark file has the wrong size".to_string(),
                })?;
                u64::from_be_bytes(b)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => {
                return Err(StoreError::File {
                    path: w.path,
                    source,
                })
            }
        };
        Ok(w)
    }

    /// The highest commit recorded.
    pub fn value(&self) -> u64 {
        self.value
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record `commit` (durable in the log already). `fsync`: make the
    /// file itself durable now; otherwise it is fsynced at most every
    /// [`FSYNC_EVERY`].
    pub fn record(&mut self, commit: u64, fsync: bool) -> Result<(), StoreError> {
        let fsync = fsync || self.synced_at.elapsed() >= FSYNC_EVERY;
        if commit <= self.value && !(fsync && self.dirty) {
            return Ok(());
        }
        let value = commit.max(self.value);
        let write = || -> std::io::Result<()> {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)?;
            f.write_all_at(&value.to_be_bytes(), 0)?;
            if fsync {
                f.sync_data()?;
            }
            Ok(())
        };
        write().map_err(|source| StoreError::File {
            path: self.path.clone(),
            source,
        })?;
        self.value = value;
        self.dirty = !fsync;
        if fsync {
            self.synced_at = Instant::now();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_commit_is_in_the_file_and_it_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Watermark::new(dir.path());
        w.record(5, false).unwrap();
        assert_eq!(Watermark::read(dir.path()).unwrap().value(), 5);
        w.record(9, false).unwrap();
        assert_eq!(Watermark::read(dir.path()).unwrap().value(), 9);
        w.record(3, true).unwrap();
        assert_eq!(Watermark::read(dir.path()).unwrap().value(), 9);
        assert_eq!(std::fs::metadata(w.path()).unwrap().len(), 8);
    }

    #[test]
    fn a_damaged_watermark_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"xyz").unwrap();
        let e = Watermark::read(dir.path()).unwrap_err();
        assert!(e.to_string().contains(FILE), "{e}");
    }
}
