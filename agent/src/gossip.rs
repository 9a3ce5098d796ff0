//! The agent's use of the membership crate: every swarm member runs SWIM
//! gossip on `<advertise ip>:7946` once it holds the cluster key ring (from
//! its session), seeded with the managers' addresses, and stops on leave.

use std::net::{IpAddr, SocketAddr};

use shoal_membership::{Gossip, GossipConfig, KeyRing, MemberInfo};
use shoal_raft_store::state::GossipKey;

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
) -> anyhow::Result<Gossip> {
    let bind = SocketAddr::new(advertise, config.gossip_port);
    let cfg = match config.gossip_profile.as_str() {
        "fast" => GossipConfig::fast(bind),
        _ => GossipConfig::lan(bind),
    };
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
