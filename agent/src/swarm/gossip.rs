//! The agent's use of the membership crate: every swarm member runs SWIM
//! gossip on `<advertise ip>:7946` once it holds the cluster key ring (from
//! its session) and its own signing key is registered, seeded with the
//! managers' addresses, and stops on leave.
//!
//! Every entry this node writes is signed with its gossip signing key
//! (Ed25519, `<data-dir>/swarm/gossip-sign.key`, mode 0600, made at first
//! start); the public half is registered in the store over the node's
//! mutual-TLS session, which binds it to the node's certificate, and every
//! node learns all of them from its assignments. So holding the cluster's
//! gossip key lets a member read and send gossip, but write only its own
//! entries.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use shoal_membership::{Ed25519Auth, EntryAuth, Gossip, GossipConfig, KeyRing, MemberInfo};
use shoal_model::state::GossipKey;

use crate::config::Config;
use crate::swarm::file;

/// This node's gossip signing key: read from the data dir, or made and
/// kept there (owner-only) on first use.
pub fn signing_key(data_dir: &Path) -> anyhow::Result<Ed25519Auth> {
    let path = file::swarm_dir(data_dir).join("gossip-sign.key");
    match std::fs::read(&path) {
        Ok(doc) => Ed25519Auth::from_pkcs8(&doc)
            .with_context(|| format!("{}: not a usable gossip signing key", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let doc = Ed25519Auth::generate_pkcs8()?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            file::write_atomically_mode(&path, &doc, file::SECRET_MODE)?;
            Ok(Ed25519Auth::from_pkcs8(&doc)?)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The key ring the gossip layer wants, newest first.
pub fn key_ring(keys: &[GossipKey]) -> Option<KeyRing> {
    if keys.is_empty() {
        return None;
    }
    KeyRing::new(keys.iter().map(|k| (k.id, k.key)).collect()).ok()
}

/// This node's gossip epochs, one per start (replay protection), in its
/// data dir.
pub const GOSSIP_EPOCH_FILE: &str = "gossip-epoch";

/// Start gossip for this node (`sf`: its id, addresses and managers).
pub async fn start(
    config: &Config,
    sf: &file::SwarmFile,
    keys: &[GossipKey],
    generation: Option<u64>,
    auth: Arc<Ed25519Auth>,
) -> anyhow::Result<Gossip> {
    let advertise = sf.addr.ip();
    let bind = SocketAddr::new(advertise, config.gossip_port);
    let mut cfg = match config.gossip_profile.as_str() {
        "fast" => GossipConfig::fast(bind),
        _ => GossipConfig::lan(bind),
    };
    cfg.generation = generation;
    cfg.epoch = shoal_replay::next_epoch(&config.data_dir, GOSSIP_EPOCH_FILE)
        .map_err(|e| anyhow::anyhow!("gossip replay protection: {e}"))?;
    let ring = key_ring(keys).ok_or_else(|| anyhow::anyhow!("no gossip key yet"))?;
    let seeds: Vec<SocketAddr> = sf
        .managers
        .iter()
        .map(|(_, m)| SocketAddr::new(m.ip(), config.gossip_port))
        .filter(|s| *s != bind)
        .collect();
    let me = MemberInfo {
        node_id: sf.node_id.to_string(),
        gossip_addr: bind,
        advertise_addr: advertise,
        data_path_addr: sf.data_path_addr,
    };
    let auth: Arc<dyn EntryAuth> = auth;
    Ok(Gossip::start_authenticated(cfg, me, ring, seeds, Some(auth)).await?)
}

/// What a daemon restart needs to rejoin gossip at once as the same member:
/// its generation and the key rings, kept in the run dir (mode 0600; gone
/// after a reboot, when a new life is right anyway).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Resume {
    /// Node id it belongs to.
    pub node_id: String,
    /// Gossip generation of this life.
    pub generation: u64,
    /// The key ring as last assigned.
    pub keys: Vec<GossipKey>,
    /// The members' signing keys as last assigned (node id -> key).
    #[serde(default)]
    pub peer_keys: BTreeMap<String, Vec<u8>>,
    /// The data-plane key ring as last assigned: encrypted overlays come
    /// back before the session does.
    #[serde(default)]
    pub dataplane_keys: Vec<GossipKey>,
}

impl std::fmt::Debug for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume")
            .field("node_id", &self.node_id)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

fn resume_path(run_dir: &std::path::Path) -> std::path::PathBuf {
    run_dir.join("gossip.json")
}

impl Resume {
    /// Read it back; `None` if absent, unreadable or another node's.
    pub fn load(run_dir: &std::path::Path, node_id: &str) -> Option<Resume> {
        let r: Resume = serde_json::from_slice(&std::fs::read(resume_path(run_dir)).ok()?).ok()?;
        (r.node_id == node_id).then_some(r)
    }

    /// Write it, owner-only from the start (it holds the gossip keys).
    pub fn save(&self, run_dir: &std::path::Path) -> anyhow::Result<()> {
        use anyhow::Context;
        let path = resume_path(run_dir);
        let json = serde_json::to_vec(self)
            .with_context(|| format!("cannot encode {}", path.display()))?;
        crate::swarm::file::write_atomically_mode(&path, &json, crate::swarm::file::SECRET_MODE)
    }

    /// Forget it (`swarm leave`).
    pub fn remove(run_dir: &std::path::Path) {
        let _ = std::fs::remove_file(resume_path(run_dir));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_resume_file_is_owner_only_even_over_a_stale_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = resume_path(dir.path()).with_extension("tmp");
        std::fs::write(&tmp, "stale").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        let r = Resume {
            node_id: "n1".into(),
            generation: 7,
            keys: vec![GossipKey {
                id: 1,
                lamport: 1,
                key: [9; 32],
            }],
            peer_keys: BTreeMap::new(),
            dataplane_keys: vec![GossipKey {
                id: 2,
                lamport: 1,
                key: [8; 32],
            }],
        };
        r.save(dir.path()).unwrap();
        let meta = std::fs::metadata(resume_path(dir.path())).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        let back = Resume::load(dir.path(), "n1").unwrap();
        assert_eq!((back.generation, &back.keys), (7, &r.keys));
        assert_eq!(back.dataplane_keys, r.dataplane_keys);
        assert!(Resume::load(dir.path(), "n2").is_none());
    }
}
