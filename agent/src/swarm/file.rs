//! What a node keeps on disk about its swarm membership, under
//! `<data-dir>/swarm/`: `swarm.json` (cluster, role, addresses, managers),
//! `node.key` (never leaves the node), `node.crt` and `roots.pem`. The Raft
//! log of a manager lives beside them in `raft/`.

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use shoal_tls::{NodeId, NodeIdentity, Role};

/// Persisted membership facts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SwarmFile {
    /// Cluster id.
    pub cluster_id: String,
    /// This node's id in the cluster.
    pub node_id: NodeId,
    /// Role of the current certificate.
    pub role: Role,
    /// Raft id while a manager.
    pub raft_id: Option<u64>,
    /// Control address others use (advertise address + port).
    pub addr: SocketAddr,
    /// Address the 2377 listener binds (managers).
    pub listen_addr: SocketAddr,
    /// VXLAN address.
    pub data_path_addr: IpAddr,
    /// Known managers (raft id, control address).
    pub managers: Vec<(u64, SocketAddr)>,
    /// Promoted but not yet started as a Raft member: start with an empty
    /// log and learn it from the leader.
    #[serde(default)]
    pub raft_join_pending: bool,
}

/// The directory of swarm state inside the data dir.
pub fn swarm_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("swarm")
}

fn file(data_dir: &Path, name: &str) -> PathBuf {
    swarm_dir(data_dir).join(name)
}

/// Save membership and identity (each file atomically; swarm.json last, so
/// a crash in between leaves no swarm.json pointing at missing files).
pub fn save(data_dir: &Path, sf: &SwarmFile, id: &NodeIdentity) -> Result<()> {
    let dir = swarm_dir(data_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    save_identity(data_dir, id)?;
    save_file(data_dir, sf)
}

/// Save only swarm.json.
pub fn save_file(data_dir: &Path, sf: &SwarmFile) -> Result<()> {
    let json = serde_json::to_vec_pretty(sf).context("cannot encode swarm.json")?;
    write_atomically(&file(data_dir, "swarm.json"), &json)
}

/// Save only the certificate, key and roots.
pub fn save_identity(data_dir: &Path, id: &NodeIdentity) -> Result<()> {
    write_atomically_mode(
        &file(data_dir, "node.key"),
        id.key.to_pem().as_bytes(),
        SECRET_MODE,
    )?;
    write_atomically(
        &file(data_dir, "node.crt"),
        shoal_tls::cert_to_pem(&id.cert).as_bytes(),
    )?;
    let roots: String = id.roots.iter().map(shoal_tls::cert_to_pem).collect();
    write_atomically(&file(data_dir, "roots.pem"), roots.as_bytes())
}

/// Load membership, if this node is in a swarm. Any missing or damaged
/// piece is an error naming the file: a node that was in a swarm never
/// silently starts as a fresh one.
pub fn load(data_dir: &Path) -> Result<Option<(SwarmFile, NodeIdentity)>> {
    let path = file(data_dir, "swarm.json");
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let sf: SwarmFile = serde_json::from_slice(&text)
        .with_context(|| format!("{}: corrupted swarm state", path.display()))?;
    let read = |name: &str| -> Result<String> {
        let p = file(data_dir, name);
        std::fs::read_to_string(&p).with_context(|| {
            format!(
                "{} is missing or unreadable although {} says this node is in swarm {}",
                p.display(),
                path.display(),
                sf.cluster_id
            )
        })
    };
    let (cert, key, roots) = (read("node.crt")?, read("node.key")?, read("roots.pem")?);
    let id = NodeIdentity::from_pem(&cert, &key, &roots).with_context(|| {
        format!(
            "{}: the node certificate, key or roots are invalid",
            swarm_dir(data_dir).display()
        )
    })?;
    if id.info.node_id != sf.node_id {
        bail!(
            "{}: certificate is for node {} but swarm.json says {}",
            file(data_dir, "node.crt").display(),
            id.info.node_id,
            sf.node_id
        );
    }
    Ok(Some((sf, id)))
}

/// Forget the swarm: remove every swarm file and the Raft log.
pub fn wipe(data_dir: &Path) -> Result<()> {
    let dir = swarm_dir(data_dir);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", dir.display())),
    }
}

/// Mode of the swarm files anyone on the host may read (`swarm.json`,
/// `node.crt`, `roots.pem`, `node-id`): still inside the 0700 data dir.
pub const PUBLIC_MODE: u32 = 0o644;
/// Mode of key files (`node.key`, the gossip resume file).
pub const SECRET_MODE: u32 = 0o600;

/// Write a file with [`PUBLIC_MODE`] so that a crash leaves either the old
/// or the new content (see [`write_atomically_mode`]).
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    write_atomically_mode(path, data, PUBLIC_MODE)
}

/// Write a file so that a crash leaves either the old or the new content,
/// with permissions `mode` from the start: the temp file is created with
/// it (never written with the umask's mode and restricted afterwards) and
/// then renamed over `path`. A temp file left by a crash is removed first,
/// since an existing file would keep its own mode.
pub fn write_atomically_mode(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_secret_is_written_with_its_mode_whatever_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        // A world-readable temp file a crash left behind, and an old key.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, "stale").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomically_mode(&path, b"secret", SECRET_MODE).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "secret");
        assert_eq!(mode(&path), 0o600);
        assert!(!tmp.exists());
    }

    #[test]
    fn a_failed_write_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/node.key");
        let e = write_atomically_mode(&path, b"x", SECRET_MODE).unwrap_err();
        assert!(format!("{e:#}").contains("missing/node.key"), "{e:#}");
    }
}
