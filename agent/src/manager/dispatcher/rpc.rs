//! Node calls (`shoal-node/1` on TCP 2377, or in process on a manager):
//! leave, Raft join after promotion, endpoint attach/detach for `shoal
//! run`, certificate renewal. The caller is the node its certificate
//! names.

use futures::future::BoxFuture;
use shoal_api::ApiError;
use shoal_model::state::{Command, NodeStatus, NodeUpdate, State};
use shoal_model::NodeId;
use shoal_tls::Role;
use tracing::{info, warn};

use crate::manager::controlapi::networks;
use crate::manager::controlapi::nodes::update_node;
use crate::manager::{ca, managers_of, new_raft_id, Manager};
use crate::proto::rpc::{NodeRequest, NodeResponse, NodeRpc};
use crate::proto::session::ingress_endpoint_id;

/// Whether `peer` may free endpoint `id` on network `network`: only the
/// endpoints of its own standalone workloads (`shoal run`) — never a
/// service VIP, a task's endpoint (freed by the store when the task ends),
/// a routing-mesh sandbox, or another node's. `None`: no such endpoint,
/// nothing to free.
pub fn may_detach(st: &State, peer: &NodeId, network: &str, id: &str) -> Option<bool> {
    let ep = st.networks.get(network)?.endpoints.get(id)?;
    Some(
        ep.node == peer.as_str()
            && !st.tasks.contains_key(id)
            && id != ingress_endpoint_id(peer)
            && !st
                .services
                .keys()
                .any(|s| shoal_model::service::vip_endpoint_id(s) == id),
    )
}

/// A manager answers its own node calls in process.
impl NodeRpc for Manager {
    fn call(&self, req: NodeRequest) -> BoxFuture<'_, Result<NodeResponse, ApiError>> {
        Box::pin(async move { handle(self, self.node_id(), req).await })
    }
}

/// Answer one call of node `peer` (this manager itself for
/// [`NodeRpc::call`]).
pub async fn handle(
    m: &Manager,
    peer: &NodeId,
    req: NodeRequest,
) -> Result<NodeResponse, ApiError> {
    let store = m.store();
    match req {
        NodeRequest::Leave => {
            let p2 = peer.clone();
            let raft_id = store
                .read_local(move |s| s.nodes.get(&p2).and_then(|n| n.raft_id))
                .await?;
            if let Some(rid) = raft_id {
                // A manager leaves: out of the store, then out of the
                // Raft group (done here, where the outcome is seen).
                store
                    .propose(Command::RemoveNode { id: peer.clone() })
                    .await?;
                store.remove_voter(rid).await.map_err(|e| {
                    ApiError::invalid(format!("cannot remove {peer} from the raft group: {e}"))
                })?;
                return Ok(NodeResponse::Ok);
            }
            m.liveness.leave(peer);
            update_node(
                m,
                peer,
                NodeUpdate {
                    status: Some(NodeStatus::Down),
                    ..Default::default()
                },
            )
            .await?;
            Ok(NodeResponse::Ok)
        }
        NodeRequest::Attach { network, name, ip } => {
            let (network, endpoint) =
                networks::allocate_endpoint(m, &network, name, peer.to_string(), ip).await?;
            Ok(NodeResponse::Attached {
                network: Box::new(network),
                endpoint,
            })
        }
        NodeRequest::Detach { network, endpoint } => {
            let (p, n, e) = (peer.clone(), network.clone(), endpoint.clone());
            match store.read_local(move |s| may_detach(s, &p, &n, &e)).await? {
                None => return Ok(NodeResponse::Ok),
                Some(false) => {
                    warn!(node = %peer, %network, %endpoint, "refused: a node may only free its own endpoints");
                    return Err(ApiError::invalid(format!(
                        "endpoint {endpoint} on network {network} is not a standalone workload \
                         of node {peer}: a node may only free its own"
                    )));
                }
                Some(true) => {}
            }
            store
                .propose(Command::DetachEndpoint {
                    network,
                    id: endpoint,
                })
                .await?;
            Ok(NodeResponse::Ok)
        }
        NodeRequest::JoinRaft => {
            let peer2 = peer.clone();
            let node = store
                .read_local(move |s| s.nodes.get(&peer2).cloned())
                .await?
                .ok_or_else(|| {
                    ApiError::invalid(format!("node {peer} is not part of this swarm"))
                })?;
            if node.role != Role::Manager {
                return Err(ApiError::invalid(format!(
                    "node {peer} is not a manager (promote it first)"
                )));
            }
            let raft_id = match node.raft_id {
                Some(r) if store.status().voters.iter().any(|v| v.id == r) => r,
                _ => {
                    let rid = new_raft_id();
                    update_node(
                        m,
                        peer,
                        NodeUpdate {
                            raft_id: Some(Some(rid)),
                            ..Default::default()
                        },
                    )
                    .await?;
                    store.add_voter(rid, node.addr).await.map_err(|e| {
                        ApiError::invalid(format!("cannot add {peer} to the raft group: {e}"))
                    })?;
                    rid
                }
            };
            let managers = store.read_local(managers_of).await?;
            info!(node = %peer, raft_id, "promoted node joined the raft group");
            Ok(NodeResponse::Raft { raft_id, managers })
        }
        NodeRequest::Renew { csr_der } => ca::renew(m, peer, &csr_der).await,
        NodeRequest::SetGossipKey { key } => {
            store
                .propose(Command::SetGossipKey {
                    id: peer.clone(),
                    key,
                })
                .await?;
            Ok(NodeResponse::Ok)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::testkit::World;

    #[test]
    fn a_node_may_free_only_its_own_standalone_endpoints() {
        let mut w = World::new(2);
        w.create(2);
        w.settle();
        let nodes: Vec<NodeId> = w.state.nodes.keys().cloned().collect();
        let (a, b) = (nodes[0].clone(), nodes[1].clone());
        let net = w
            .state
            .networks
            .values()
            .find(|n| n.name == "app")
            .unwrap()
            .id
            .clone();
        for (id, node) in [("run-a", &a), ("run-b", &b)] {
            w.apply(Command::AttachEndpoint {
                network: net.clone(),
                id: id.into(),
                name: id.into(),
                node: node.to_string(),
                ip: None,
            });
        }
        assert_eq!(may_detach(&w.state, &a, &net, "run-a"), Some(true));
        assert_eq!(may_detach(&w.state, &a, &net, "run-b"), Some(false));
        assert_eq!(may_detach(&w.state, &b, &net, "run-b"), Some(true));
        // The service's VIP and the tasks' endpoints belong to the store.
        let vip = shoal_model::service::vip_endpoint_id("svc1");
        assert!(w.state.networks[&net].endpoints.contains_key(&vip));
        assert_eq!(may_detach(&w.state, &a, &net, &vip), Some(false));
        let task = w
            .state
            .tasks
            .values()
            .find(|t| t.node == a.as_str())
            .unwrap();
        assert_eq!(may_detach(&w.state, &a, &net, &task.id), Some(false));
        // Unknown endpoints and networks: nothing to free.
        assert_eq!(may_detach(&w.state, &a, &net, "nope"), None);
        assert_eq!(may_detach(&w.state, &a, "nonet", "run-a"), None);
    }
}
