//! Layouts of `State` from earlier releases, read by `State::decode`:
//! bincode has no optional fields, so a field added to `State` needs the
//! old layout kept here to read older snapshots.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::network::Network;
use crate::service::{Service, Task};
use crate::state::{Cluster, GossipKey, Node, State};
use crate::NodeId;

/// `State` before `gossip_keys`.
#[derive(Deserialize)]
pub struct StateV1 {
    cluster: Option<Cluster>,
    nodes: BTreeMap<NodeId, Node>,
    index: u64,
    keys: Vec<GossipKey>,
    networks: BTreeMap<String, Network>,
    services: BTreeMap<String, Service>,
    tasks: BTreeMap<String, Task>,
}

impl From<StateV1> for State {
    fn from(v: StateV1) -> State {
        State {
            cluster: v.cluster,
            nodes: v.nodes,
            index: v.index,
            keys: v.keys,
            networks: v.networks,
            services: v.services,
            tasks: v.tasks,
            gossip_keys: BTreeMap::new(),
        }
    }
}
