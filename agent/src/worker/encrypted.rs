//! Encrypted overlays on this node: the glue between the reconciler and
//! the userspace data path (`shoal_dataplane`).
//!
//! Data flow: the session delivers the data-plane key ring
//! ([`Encrypted::set_ring`]); this node advertises its port and key ids in
//! the `dpkeys` gossip table; after every netdriver reconcile,
//! [`Encrypted::sync`] gives each encrypted network held here a TAP `dp0`
//! on its bridge (created by the engine, moved in by the netdriver) and
//! hands the engine the ring, the peers (owners of the network's gossip
//! endpoint records, with their advertisements) and the remote endpoints.
//! Fail closed: without a ring or a running engine, an attach is refused
//! with the reason and no frame of an encrypted network ever leaves.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use shoal_dataplane::{next_epoch, Engine, Inputs, Peer, Remote, RingKey, Stats};
use shoal_membership::{EndpointRecord, Gossip};
use shoal_model::network::Network;
use shoal_model::state::GossipKey;
use shoal_netdriver::Driver;
use tracing::{info, warn};

use crate::proto::gossip::{DataplaneAdvert, EncryptionStatus, DATAPLANE_TABLE, ENCRYPTION_MODE};

/// This node's encrypted data path.
pub struct Encrypted {
    me: String,
    data_dir: PathBuf,
    /// Configured port; 0: the data-path port + 1.
    port: u16,
    ring: Mutex<Vec<GossipKey>>,
    engine: Mutex<Option<Arc<Engine>>>,
    /// Why the engine could not start (the last attempt).
    failure: Mutex<Option<String>>,
    seq: AtomicU32,
}

impl std::fmt::Debug for Encrypted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encrypted").finish_non_exhaustive()
    }
}

impl Encrypted {
    /// Node `me`'s data path; the epoch lives in `data_dir`; `port` 0
    /// means data-path port + 1.
    pub fn new(me: String, data_dir: PathBuf, port: u16) -> Encrypted {
        Encrypted {
            me,
            data_dir,
            port,
            ring: Mutex::new(Vec::new()),
            engine: Mutex::new(None),
            failure: Mutex::new(None),
            seq: AtomicU32::new(0),
        }
    }

    /// The UDP port encrypted traffic is received on.
    pub fn port(&self, data_path_port: u16) -> u16 {
        if self.port != 0 {
            self.port
        } else {
            data_path_port.wrapping_add(1).max(1)
        }
    }

    /// Take in the ring from the session; whether it changed.
    pub fn set_ring(&self, keys: &[GossipKey]) -> bool {
        match self.ring.lock() {
            Ok(mut r) if *r != keys => {
                info!(keys = ?keys.iter().map(|k| k.id).collect::<Vec<_>>(), "data-plane key ring updated");
                *r = keys.to_vec();
                true
            }
            _ => false,
        }
    }

    /// The ring's ids and Lamport times, for `info` (never key material).
    pub fn key_infos(&self) -> Vec<shoal_api::KeyInfo> {
        self.ring
            .lock()
            .map(|r| {
                r.iter()
                    .map(|k| shoal_api::KeyInfo {
                        id: k.id,
                        lamport: k.lamport,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The ring as held (for the restart file).
    pub fn ring(&self) -> Vec<GossipKey> {
        self.ring.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn ring_ids(&self) -> Vec<u32> {
        self.ring().iter().map(|k| k.id).collect()
    }

    /// Whether a workload may attach to `net` here: always for a plain
    /// network; for an encrypted one only with a ring and a running data
    /// path. The error names the network and the reason (the attach is
    /// refused with it).
    pub fn check_attach(
        &self,
        net: &Network,
        vtep: Ipv4Addr,
        data_path_port: u16,
    ) -> Result<(), String> {
        if !net.encrypted {
            return Ok(());
        }
        let why = if self.ring_ids().is_empty() {
            Err(
                "this node has no data-plane key yet (the session with a manager delivers it)"
                    .to_string(),
            )
        } else {
            self.engine(vtep, data_path_port).map(|_| ())
        };
        why.map_err(|why| {
            format!(
                "network {} is encrypted (--opt encrypted) but {why}: refusing to attach \
                 rather than send plaintext",
                net.name
            )
        })
    }

    /// The running engine, started on first use.
    fn engine(&self, vtep: Ipv4Addr, data_path_port: u16) -> Result<Arc<Engine>, String> {
        let mut slot = self
            .engine
            .lock()
            .map_err(|_| "data path lock poisoned".to_string())?;
        let bind = SocketAddr::new(vtep.into(), self.port(data_path_port));
        if let Some(e) = slot.as_ref() {
            if e.local_addr() == Some(bind) {
                return Ok(e.clone());
            }
        }
        *slot = None; // the address or port changed: rebind
        let started = next_epoch(&self.data_dir)
            .map_err(|e| format!("{e}; encrypted overlays stay down on this node until then"))
            .and_then(|epoch| Engine::start(&self.me, bind, epoch).map_err(|e| e.to_string()));
        match started {
            Ok(e) => {
                info!(%bind, epoch = e.epoch(), "encrypted data path started");
                let e = Arc::new(e);
                *slot = Some(e.clone());
                if let Ok(mut f) = self.failure.lock() {
                    *f = None;
                }
                Ok(e)
            }
            Err(reason) => {
                let reason = format!("the encrypted data path cannot start: {reason}");
                if let Ok(mut f) = self.failure.lock() {
                    if f.as_deref() != Some(reason.as_str()) {
                        warn!("{reason}");
                    }
                    *f = Some(reason.clone());
                }
                Err(reason)
            }
        }
    }

    /// After a netdriver reconcile: a TAP on each encrypted network in
    /// `nets` (none on the others), and the engine's view of keys, peers
    /// and remote endpoints. Returns whether a TAP was (re)attached, so
    /// that the caller reconciles once more (MTU, link state).
    pub async fn sync(
        &self,
        driver: &mut Driver,
        nets: &[Network],
        vtep: Ipv4Addr,
        data_path_port: u16,
        gossip: Option<&Gossip>,
    ) -> bool {
        let encrypted: Vec<&Network> = nets.iter().filter(|n| n.encrypted).collect();
        let running = self.engine.lock().ok().and_then(|e| e.clone());
        if encrypted.is_empty() && running.is_none() {
            return false;
        }
        let Ok(engine) = self.engine(vtep, data_path_port) else {
            return false; // fail closed: no TAP, nothing leaves
        };
        let mut attached = false;
        let wanted: BTreeSet<u32> = encrypted.iter().map(|n| n.vni).collect();
        for vni in engine.networks() {
            if !wanted.contains(&vni) {
                engine.close_tap(vni);
            }
        }
        for n in &encrypted {
            if engine.tap_alive(n.vni) && driver.has_tap(&n.id).await {
                continue;
            }
            let seq = self.seq.fetch_add(1, Ordering::Relaxed) & 0xffff;
            let tmp = format!("shd{:06x}{seq:04x}", n.vni);
            let mtu = n.mtu.unwrap_or(1500).min(65_535) as u16;
            let opened = engine.open_tap(n.vni, &tmp, mtu).map_err(|e| e.to_string());
            let adopted = match opened {
                Ok(()) => driver
                    .adopt_tap(&n.id, &tmp)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match adopted {
                Ok(()) => attached = true,
                Err(e) => {
                    engine.close_tap(n.vni);
                    warn!(network = %n.name, "encrypted network has no data path: {e}");
                }
            }
        }
        let ring = self.ring();
        if let Some(g) = gossip {
            self.advertise(g, engine.local_addr().map_or(0, |a| a.port()), &ring);
        }
        engine.update(inputs(
            &self.me,
            &encrypted,
            &ring,
            self.port(data_path_port),
            gossip,
        ));
        attached
    }

    /// Publish this node's port and key ids (when they changed).
    fn advertise(&self, g: &Gossip, port: u16, ring: &[GossipKey]) {
        let advert = DataplaneAdvert {
            port,
            keys: ring.iter().map(|k| k.id).collect(),
        };
        let Ok(value) = serde_json::to_vec(&advert) else {
            return;
        };
        let same = g
            .entries(DATAPLANE_TABLE)
            .iter()
            .any(|e| e.key == self.me && e.owner == self.me && e.value == value);
        if !same {
            g.put(DATAPLANE_TABLE, &self.me, value);
        }
    }

    /// Mode, key ids and counters, for `network inspect --verbose` and
    /// `/metrics`; `None` while the engine is not running.
    pub fn status(&self) -> Option<EncryptionStatus> {
        let engine = self.engine.lock().ok()?.clone()?;
        let Stats {
            epoch,
            peers,
            unknown_peer,
            broadcast_dropped,
            ..
        } = engine.stats();
        Some(EncryptionStatus {
            mode: ENCRYPTION_MODE.into(),
            key_ids: self.ring_ids(),
            port: engine.local_addr().map_or(0, |a| a.port()),
            epoch,
            peers,
            unknown_peer,
            broadcast_dropped,
        })
    }
}

/// The engine's inputs: our ring, and for each encrypted network the
/// remote endpoints (gossip records not ours) with their owner; the peers
/// are those owners, at the data-path address their records carry and
/// the port (`default_port` until they advertise one) and key ids they
/// advertise (nothing is sent to a peer that
/// advertises no key we hold).
fn inputs(
    me: &str,
    nets: &[&Network],
    ring: &[GossipKey],
    default_port: u16,
    gossip: Option<&Gossip>,
) -> Inputs {
    let Some(g) = gossip else {
        return Inputs {
            ring: ring_keys(ring),
            ..Default::default()
        };
    };
    let adverts: BTreeMap<String, DataplaneAdvert> = g
        .entries(DATAPLANE_TABLE)
        .into_iter()
        .filter(|e| e.key == e.owner)
        .filter_map(|e| Some((e.owner, serde_json::from_slice(&e.value).ok()?)))
        .collect();
    let mut vteps: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
    let mut networks = Vec::new();
    for n in nets {
        let mut remotes = Vec::new();
        for e in g.entries(&EndpointRecord::table(&n.id)) {
            if e.owner == me {
                continue;
            }
            let Ok(r) = EndpointRecord::decode(&e.value) else {
                continue;
            };
            vteps.entry(e.owner.clone()).or_insert(r.vtep);
            remotes.push((
                Remote {
                    mac: r.mac,
                    ip: r.ip,
                },
                e.owner,
            ));
        }
        networks.push((n.vni, remotes));
    }
    let peers = vteps
        .into_iter()
        .map(|(node, vtep)| {
            let advert = adverts.get(&node);
            Peer {
                addr: SocketAddr::new(vtep.into(), advert.map_or(default_port, |a| a.port)),
                keys: advert.map(|a| a.keys.clone()).unwrap_or_default(),
                node,
            }
        })
        .collect();
    Inputs {
        ring: ring_keys(ring),
        peers,
        networks,
    }
}

fn ring_keys(ring: &[GossipKey]) -> Vec<RingKey> {
    ring.iter()
        .map(|k| RingKey {
            id: k.id,
            key: k.key,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attaching_fails_closed_without_a_key_and_plain_networks_pass() {
        let dir = tempfile::tempdir().unwrap();
        let enc = Encrypted::new("n1".into(), dir.path().to_owned(), 0);
        let vtep = Ipv4Addr::LOCALHOST;
        let mut nets = std::collections::BTreeMap::new();
        let spec = shoal_model::network::NetworkSpec {
            id: "net1".into(),
            name: "secret".into(),
            subnet: Some("10.0.10.0/24".parse().unwrap()),
            ..Default::default()
        };
        shoal_model::network::create(&mut nets, spec, &[], 24, 0, 1).unwrap();
        let mut net = nets.remove("net1").unwrap();
        assert_eq!(enc.check_attach(&net, vtep, 4789), Ok(()));
        net.encrypted = true;
        let e = enc.check_attach(&net, vtep, 4789).unwrap_err();
        assert!(
            e.contains("network secret is encrypted")
                && e.contains("no data-plane key")
                && e.contains("refusing to attach rather than send plaintext"),
            "{e}"
        );
        // Nothing was started: the data path waits for a key.
        assert!(enc.status().is_none());
    }

    #[test]
    fn the_netdriver_and_the_data_path_agree_on_the_overhead() {
        assert_eq!(
            shoal_netdriver::plan::ENCRYPTED_OVERHEAD,
            shoal_dataplane::UNDERLAY_OVERHEAD
        );
    }
}
