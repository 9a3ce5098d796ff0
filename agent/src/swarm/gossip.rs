//! The agent's use of the membership crate: every swarm member runs SWIM
//! gossip on `<advertise ip>:7946` once it holds the cluster key ring (from
//! its session), seeded with the managers' addresses, and stops on leave.

use std::net::{IpAddr, SocketAddr};

use shoal_membership::{Gossip, GossipConfig, KeyRing, MemberInfo};
use shoal_model::state::GossipKey;

use crate::config::Config;

/// The key ring the gossip layer wants, newest first.
pub fn key_ring(keys: &[GossipKey]) -> Option<KeyRing> {
    if keys.is_empty() {
        return None;
    }
    KeyRing::new(keys.iter().map(|k| (k.id, k.key)).collect()).ok()
}

/// Start gossip for this node.
pub async fn start(
    config: &Config,
    node_id: &str,
    advertise: IpAddr,
    data_path: IpAddr,
    managers: &[SocketAddr],
    keys: &[GossipKey],
    generation: Option<u64>,
) -> anyhow::Result<Gossip> {
    let bind = SocketAddr::new(advertise, config.gossip_port);
    let mut cfg = match config.gossip_profile.as_str() {
        "fast" => GossipConfig::fast(bind),
        _ => GossipConfig::lan(bind),
    };
    cfg.generation = generation;
    let ring = key_ring(keys).ok_or_else(|| anyhow::anyhow!("no gossip key yet"))?;
    let seeds: Vec<SocketAddr> = managers
        .iter()
        .map(|m| SocketAddr::new(m.ip(), config.gossip_port))
        .filter(|s| *s != bind)
        .collect();
    let me = MemberInfo {
        node_id: node_id.to_string(),
        gossip_addr: bind,
        advertise_addr: advertise,
        data_path_addr: data_path,
    };
    Ok(Gossip::start(cfg, me, ring, seeds).await?)
}

/// What a daemon restart needs to rejoin gossip at once as the same member:
/// its generation and the key ring, kept in the run dir (mode 0600; gone
/// after a reboot, when a new life is right anyway).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Resume {
    /// Node id it belongs to.
    pub node_id: String,
    /// Gossip generation of this life.
    pub generation: u64,
    /// The key ring as last assigned.
    pub keys: Vec<GossipKey>,
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

    /// Write it (owner-only).
    pub fn save(&self, run_dir: &std::path::Path) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = resume_path(run_dir);
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(self)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Forget it (`swarm leave`).
    pub fn remove(run_dir: &std::path::Path) {
        let _ = std::fs::remove_file(resume_path(run_dir));
    }
}
