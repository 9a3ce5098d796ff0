//! Layouts of `State` and `Command` from the releases that wrote bincode
//! (before [`crate::codec`]), read when a data dir from such a release
//! opens. bincode has no optional fields: each layout is kept as it was.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::network::Network;
use crate::service::{Service, Task};
use crate::state::{Cluster, Command, GossipKey, Node, State, STATE_DECODE_LIMIT};
use crate::NodeId;

/// Bound on what decoding one bincode command may allocate.
const COMMAND_DECODE_LIMIT: usize = 64 << 20;

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

/// The last bincode `State` (with `gossip_keys`), else [`StateV1`].
pub fn decode_state(data: &[u8]) -> Result<State, String> {
    let cfg = bincode::config::standard().with_limit::<STATE_DECODE_LIMIT>();
    match bincode::serde::decode_from_slice::<State, _>(data, cfg) {
        Ok((state, n)) if n == data.len() => Ok(state),
        first => {
            let (v1, n) = bincode::serde::decode_from_slice::<StateV1, _>(data, cfg).map_err(
                |e| match first {
                    Err(f) => format!("corrupted state snapshot: {f}"),
                    Ok(_) => format!("corrupted state snapshot: {e}"),
                },
            )?;
            if n != data.len() {
                return Err(format!(
                    "corrupted state snapshot: {} trailing bytes",
                    data.len() - n
                ));
            }
            Ok(v1.into())
        }
    }
}

/// A command as the bincode releases wrote it.
pub fn decode_command(data: &[u8]) -> Result<Command, String> {
    let cfg = bincode::config::standard().with_limit::<COMMAND_DECODE_LIMIT>();
    bincode::serde::decode_from_slice::<Command, _>(data, cfg)
        .map(|(c, _)| c)
        .map_err(|e| format!("corrupted command: {e}"))
}
