//! The key manager (leader only): a new gossip key and a new data-plane
//! key (encrypted overlays) every `key_rotation_ms`, and one at once for a
//! ring that is empty; the store keeps the newest three of each ring and
//! sessions deliver them. It also finishes a
//! root CA rotation once every live node holds a new certificate.

use std::sync::Weak;
use std::time::{Duration, Instant};

use shoal_api::ApiError;
use shoal_model::state::{Command, GossipKey};
use tracing::{info, warn};

use super::{ca, Manager};

/// How often the leader checks.
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// Whether a key is due: at once on an empty ring, else a full interval
/// after this node became leader or last rotated (a new leader waits a
/// full interval, so a leader change never rotates early).
pub fn rotation_due(ring_empty: bool, since: Instant, now: Instant, interval_ms: u64) -> bool {
    ring_empty
        || now.saturating_duration_since(since) >= Duration::from_millis(interval_ms.max(100))
}

/// A fresh random key (its Lamport time is assigned in apply).
pub fn new_gossip_key() -> GossipKey {
    use rand::RngCore;
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    GossipKey {
        id: rand::rngs::OsRng.next_u32(),
        lamport: 0,
        key,
    }
}

/// `swarm rotate-keys`: a new key in both rings now.
pub async fn rotate_now(m: &Manager) -> Result<String, ApiError> {
    let (gossip, dataplane) = rotate(m).await?;
    Ok(format!(
        "Added gossip key {gossip} and data-plane key {dataplane}; each ring keeps the 3 newest."
    ))
}

/// How long after a node's removal the second rotation follows the first.
pub const REMOVAL_SECOND_ROTATION: Duration = Duration::from_secs(5);

/// `node rm`: shut the removed node out of gossip and of encrypted
/// overlays. It holds the three keys of each ring from before, and
/// senders use the second-newest: one rotation now, so every member
/// receives a key the removed node never gets, and a second one
/// [`REMOVAL_SECOND_ROTATION`] later, once that key reached everyone for
/// receiving, so that nothing is sealed with a key it knows any more.
pub async fn shut_out(m: &std::sync::Arc<Manager>) {
    if let Err(e) = rotate(m).await {
        warn!("key rotation after a node removal failed: {e}");
        return;
    }
    let weak = std::sync::Arc::downgrade(m);
    tokio::spawn(async move {
        tokio::time::sleep(REMOVAL_SECOND_ROTATION).await;
        let Some(m) = weak.upgrade() else { return };
        if !m.store().status().is_leader {
            return; // the next regular rotation completes it
        }
        match rotate(&m).await {
            Ok(_) => info!("second key rotation after a node removal done"),
            Err(e) => warn!("second key rotation after a node removal failed: {e}"),
        }
    });
}

/// Add a key to each ring; their ids.
async fn rotate(m: &Manager) -> Result<(u32, u32), ApiError> {
    let (key, dp) = (new_gossip_key(), new_gossip_key());
    let ids = (key.id, dp.id);
    m.store().propose(Command::AddKey { key }).await?;
    m.store()
        .propose(Command::AddDataplaneKey { key: dp })
        .await?;
    Ok(ids)
}

/// The leader's rotation loop.
pub async fn run(manager: Weak<Manager>) {
    let mut leader_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let Some(m) = manager.upgrade() else { return };
        let store = m.store();
        if !store.status().is_leader {
            leader_since = None;
            continue;
        }
        let Ok((interval, empty)) = store
            .read_local(|st| {
                (
                    st.cluster.as_ref().map(|c| c.key_rotation_ms),
                    st.keys.is_empty() || st.dataplane_keys.is_empty(),
                )
            })
            .await
        else {
            continue;
        };
        let Some(interval) = interval else { continue };
        ca::finish_rotation(&m).await;
        let since = *leader_since.get_or_insert_with(Instant::now);
        if rotation_due(empty, since, Instant::now(), interval) {
            match rotate(&m).await {
                Ok(_) => {
                    info!("gossip and data-plane keys rotated");
                    leader_since = Some(Instant::now());
                }
                Err(e) => warn!("key rotation failed: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: u64 = 3600 * 1000;

    #[test]
    fn an_empty_ring_gets_a_key_at_once() {
        let t0 = Instant::now();
        assert!(rotation_due(true, t0, t0, 12 * HOUR_MS));
    }

    #[test]
    fn a_key_is_due_one_full_interval_after_the_last() {
        let t0 = Instant::now();
        let interval = 12 * HOUR_MS;
        let just_before = t0 + Duration::from_millis(interval - 1);
        let at = t0 + Duration::from_millis(interval);
        assert!(!rotation_due(false, t0, t0, interval));
        assert!(!rotation_due(false, t0, just_before, interval));
        assert!(rotation_due(false, t0, at, interval));
    }

    #[test]
    fn tiny_intervals_are_clamped_to_100ms() {
        let t0 = Instant::now();
        assert!(!rotation_due(false, t0, t0 + Duration::from_millis(50), 1));
        assert!(rotation_due(false, t0, t0 + Duration::from_millis(100), 1));
    }

    #[test]
    fn a_clock_before_the_start_is_not_due() {
        let t0 = Instant::now() + Duration::from_secs(10);
        assert!(!rotation_due(false, t0, Instant::now(), 1000));
    }

    #[test]
    fn new_keys_differ() {
        let (a, b) = (new_gossip_key(), new_gossip_key());
        assert_ne!(a.key, b.key);
        assert_eq!(a.lamport, 0);
    }
}
