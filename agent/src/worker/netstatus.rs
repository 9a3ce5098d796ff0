//! This node's view of each network it holds, published in the
//! `netstatus` gossip table for `network inspect --verbose` on any node:
//! its peers, what differs between desired and kernel state, and for an
//! encrypted network the data path's mode, key ids and counters.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use shoal_membership::{EndpointRecord, Gossip};
use shoal_netdriver::Driver;
use tracing::warn;

use super::overlay::{desired, Overlay};
use crate::proto::gossip::{NetStatus, STATUS_TABLE};

/// Publish this node's view of each network it holds (peers, and what
/// differs between desired and kernel state) in the `netstatus` gossip
/// table, for `network inspect --verbose` on any node.
pub async fn publish(o: &Overlay, g: &Gossip, me: &str, vtep: Ipv4Addr, port: u16) {
    let nets = o.desired_networks();
    let want = desired(&nets, vtep, port, Some(g), me);
    let diff = match o
        .with_driver(async move |d: &mut Driver| Ok(d.diff(&want).await?))
        .await
    {
        Ok(d) => d,
        Err(e) => {
            warn!("network status: {e:#}");
            return;
        }
    };
    let mut keep = std::collections::BTreeSet::new();
    for n in &nets {
        let mut peers: Vec<String> = g
            .entries(&EndpointRecord::table(&n.id))
            .iter()
            .filter(|e| e.owner != me)
            .filter_map(|e| EndpointRecord::decode(&e.value).ok())
            .map(|r| r.vtep.to_string())
            .collect();
        peers.sort();
        peers.dedup();
        let mut differences: Vec<String> = diff
            .iter()
            .filter(|(id, _)| *id == n.id)
            .flat_map(|(_, l)| l.iter().cloned())
            .collect();
        let total = differences.len();
        differences.truncate(STATUS_DIFF_LINES);
        let status = NetStatus {
            network: n.id.clone(),
            node: me.to_string(),
            vtep: vtep.to_string(),
            peers,
            in_sync: total == 0,
            differences,
            total_differences: total,
            encryption: n.encrypted.then(|| o.encrypted.status()).flatten(),
        };
        let key = format!("{me}/{}", n.id);
        keep.insert(key.clone());
        let Ok(value) = serde_json::to_vec(&status) else {
            continue;
        };
        let held = g
            .entries(STATUS_TABLE)
            .into_iter()
            .find(|e| e.key == key && e.owner == me);
        if let Some(held) = held.as_ref().filter(|e| e.value != value) {
            // Counters move with every packet: they alone refresh the
            // entry at most every STATUS_COUNTERS_EVERY.
            let stale = |v: &[u8]| {
                serde_json::from_slice::<NetStatus>(v).ok().map(|mut s| {
                    if let Some(e) = s.encryption.as_mut() {
                        e.peers.clear();
                        e.unknown_peer = 0;
                        e.broadcast_dropped = 0;
                    }
                    s
                })
            };
            let counters_only = stale(&held.value) == stale(&value);
            if counters_only && !status_due(&key) {
                continue;
            }
        }
        if held.is_none_or(|e| e.value != value) {
            g.put(STATUS_TABLE, &key, value);
        }
    }
    for e in g.entries(STATUS_TABLE) {
        if e.owner == me && !keep.contains(&e.key) {
            g.delete(STATUS_TABLE, &e.key);
        }
    }
}

/// How often changed data-path counters alone republish a network status.
const STATUS_COUNTERS_EVERY: Duration = Duration::from_secs(10);

/// Whether status `key`'s counters may be republished now (and if so,
/// the clock restarts).
fn status_due(key: &str) -> bool {
    static LAST: Mutex<BTreeMap<String, std::time::Instant>> = Mutex::new(BTreeMap::new());
    let Ok(mut last) = LAST.lock() else {
        return true;
    };
    let now = std::time::Instant::now();
    match last.get(key) {
        Some(t) if now.duration_since(*t) < STATUS_COUNTERS_EVERY => false,
        _ => {
            last.insert(key.to_string(), now);
            true
        }
    }
}

/// Differences listed per node and network (the count is always given).
const STATUS_DIFF_LINES: usize = 16;
