//! Finding the programs the lab runs: `ip`, `nft`, and the `shoal` binary.

use std::env;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::LabError;

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `name` in PATH, then in /usr/sbin and /sbin (often not in a user's PATH).
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

pub(crate) fn ip() -> Result<PathBuf, LabError> {
    find_program("ip").ok_or(LabError::IpMissing)
}

pub(crate) fn nft() -> Result<PathBuf, LabError> {
    find_program("nft").ok_or(LabError::NftMissing)
}

/// The `shoal` binary: `$SHOAL_BIN`, else `shoal` next to the current
/// executable (`target/debug/shoal-lab`), else in the parent of its
/// directory (tests run from `target/debug/deps/`).
pub fn find_shoal_bin() -> Result<PathBuf, LabError> {
    if let Some(p) = env::var_os("SHOAL_BIN") {
        let p = PathBuf::from(p);
        return if is_executable(&p) {
            Ok(p.canonicalize().unwrap_or(p))
        } else {
            Err(LabError::ShoalMissing {
                looked: format!("SHOAL_BIN={} (not an executable file)", p.display()),
            })
        };
    }
    let mut looked = vec!["$SHOAL_BIN (unset)".to_string()];
    if let Ok(exe) = env::current_exe() {
        let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut candidates = vec![dir.join("shoal")];
        if let Some(up) = dir.parent() {
            candidates.push(up.join("shoal"));
        }
        for c in candidates {
            if is_executable(&c) {
                return Ok(c.canonicalize().unwrap_or(c));
            }
            looked.push(c.display().to_string());
        }
    }
    Err(LabError::ShoalMissing {
        looked: looked.join(", "),
    })
}
