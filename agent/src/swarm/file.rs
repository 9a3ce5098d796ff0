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
    let key_path = file(data_dir, "node.key");
    write_atomically(&key_path, id.key.to_pem().as_bytes())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", key_path.display()))?;
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

/// Write a file so that a crash leaves either the old or the new content.
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
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
