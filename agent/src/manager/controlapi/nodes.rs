//! Control API for nodes: `node ls / inspect / update / promote / demote
//! / rm`, and the checks they share (name resolution, quorum after a
//! manager goes).

use std::collections::BTreeMap;

use shoal_api::{ApiError, ErrorCode, NodeRow};
use shoal_model::state::{Availability, Command, Node, NodeStatus, NodeUpdate};
use shoal_model::{now_ms, NodeId, Role};
use shoal_raft_store::RaftStatus;

use crate::manager::store::raft_err;
use crate::manager::Manager;

/// `node ls`, or `node inspect` of the nodes matching `filter`.
pub async fn list(m: &Manager, filter: Option<String>) -> Result<Vec<NodeRow>, ApiError> {
    let status = m.store().status();
    let me = m.node_id().clone();
    let state_nodes = m
        .store()
        .read(|s| {
            s.nodes
                .values()
                .map(|n| (n.clone(), s.node_resources.get(&n.id).copied()))
                .collect::<Vec<_>>()
        })
        .await?;
    let labels = m.store().read(|s| s.node_labels.clone()).await?;
    let (state_nodes, resources): (Vec<_>, Vec<_>) = state_nodes.into_iter().unzip();
    let resources: std::collections::BTreeMap<NodeId, shoal_model::state::NodeResources> =
        state_nodes
            .iter()
            .zip(resources)
            .filter_map(|(n, r)| r.map(|r| (n.id.clone(), r)))
            .collect();
    let gossip_view = m.gossip.get().map(|g| g.members()).unwrap_or_default();
    let nodes = match filter {
        None => state_nodes,
        Some(f) => vec![resolve_node(&state_nodes, &f, &me)?.clone()],
    };
    Ok(nodes
        .into_iter()
        .map(|n| {
            let manager_status = match n.raft_id {
                None => String::new(),
                Some(rid) if status.leader == Some(rid) => "Leader".into(),
                Some(rid) if rid == status.id => "Reachable".into(),
                Some(rid) => {
                    if status.voters.iter().any(|v| v.id == rid && v.reachable) {
                        "Reachable".into()
                    } else {
                        "Unreachable".into()
                    }
                }
            };
            let gossip = gossip_view
                .iter()
                .find(|m| m.info.node_id == n.id.as_str())
                .map(|m| format!("{:?}", m.state).to_lowercase())
                .unwrap_or_default();
            NodeRow {
                resources: resources.get(&n.id).copied(),
                labels: labels.get(&n.id).cloned().unwrap_or_default(),
                gossip,
                is_self: n.id == me,
                node: n,
                manager_status,
            }
        })
        .collect())
}

/// Change a node's record (stamped with the time now).
pub async fn update_node(m: &Manager, id: &NodeId, update: NodeUpdate) -> Result<(), ApiError> {
    m.store()
        .propose(Command::UpdateNode {
            id: id.clone(),
            update,
            at: now_ms(),
        })
        .await
}

/// `node update --availability --label-add --label-rm`.
pub async fn update(
    m: &Manager,
    node: &str,
    availability: Option<Availability>,
    label_add: BTreeMap<String, String>,
    label_rm: &[String],
) -> Result<String, ApiError> {
    let (nodes, all_labels) = m
        .store()
        .read_local(|s| {
            (
                s.nodes.values().cloned().collect::<Vec<_>>(),
                s.node_labels.clone(),
            )
        })
        .await?;
    let id = resolve_node(&nodes, node, m.node_id())?.id.clone();
    if availability.is_some() {
        update_node(
            m,
            &id,
            NodeUpdate {
                availability,
                ..Default::default()
            },
        )
        .await?;
    }
    if !label_add.is_empty() || !label_rm.is_empty() {
        let mut labels = all_labels.get(&id).cloned().unwrap_or_default();
        for k in label_rm {
            if labels.remove(k).is_none() {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("key {k} doesn't exist in node's labels"),
                ));
            }
        }
        labels.extend(label_add);
        shoal_model::service::check_labels(&labels)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        m.store()
            .propose(Command::SetNodeLabels {
                id: id.clone(),
                labels,
            })
            .await?;
    }
    Ok(id.to_string())
}

/// `node rm`.
pub async fn remove(m: &Manager, node: &str, force: bool) -> Result<String, ApiError> {
    let nodes = m
        .store()
        .read(|s| s.nodes.values().cloned().collect::<Vec<_>>())
        .await?;
    let n = resolve_node(&nodes, node, m.node_id())?.clone();
    if n.role == Role::Manager {
        return Err(ApiError::invalid(format!(
            "node {} is a cluster manager and is a member of the raft cluster. It must be \
             demoted to worker before removal",
            n.id
        )));
    }
    if n.status != NodeStatus::Down && !force {
        return Err(ApiError::invalid(format!(
            "node {} is not down and can't be removed; use --force to remove it anyway",
            n.id
        )));
    }
    m.store()
        .propose(Command::RemoveNode { id: n.id.clone() })
        .await?;
    Ok(n.id.to_string())
}

/// `node promote` / `node demote` of one node. Promotion adds the node
/// as a Raft voter; the node picks up its new role on its next
/// heartbeat.
pub async fn set_role(m: &Manager, node: &str, role: Role) -> Result<String, ApiError> {
    let store = m.store();
    let (nodes, status) = (
        store
            .read(|s| s.nodes.values().cloned().collect::<Vec<_>>())
            .await?,
        store.status(),
    );
    let n = resolve_node(&nodes, node, m.node_id())?.clone();
    if n.role == role {
        return Ok(format!("Node {} is already a {role}.", n.id));
    }
    match role {
        Role::Manager => {
            // Only the desired role here: the node itself asks to join
            // the Raft group (JoinRaft) once it holds a manager
            // certificate, so the group never counts a voter that is
            // not running yet.
            update_node(
                m,
                &n.id,
                NodeUpdate {
                    role: Some(Role::Manager),
                    ..Default::default()
                },
            )
            .await?;
            Ok(format!("Node {} promoted to a manager in the swarm.", n.id))
        }
        Role::Worker => {
            let voters = status.voters.len();
            let reachable = status.voters.iter().filter(|v| v.reachable).count();
            if voters <= 1 {
                return Err(ApiError::invalid(format!(
                    "node {} is the last manager of the swarm and cannot be demoted",
                    n.id
                )));
            }
            check_quorum_after_removal(voters, reachable, n.raft_id, &status)?;
            // The role change first, while the node still receives the
            // log: seeing it, the node steps down by itself.
            update_node(
                m,
                &n.id,
                NodeUpdate {
                    role: Some(Role::Worker),
                    ..Default::default()
                },
            )
            .await?;
            if let Some(rid) = n.raft_id {
                store.remove_voter(rid).await.map_err(raft_err)?;
            }
            update_node(
                m,
                &n.id,
                NodeUpdate {
                    raft_id: Some(None),
                    ..Default::default()
                },
            )
            .await?;
            Ok(format!("Manager {} demoted in the swarm.", n.id))
        }
    }
}

/// Refuse an operation that removes voter `removing` when the remaining
/// voters could not form a quorum.
pub fn check_quorum_after_removal(
    voters: usize,
    reachable: usize,
    removing: Option<u64>,
    status: &RaftStatus,
) -> Result<(), ApiError> {
    let removing_reachable = removing
        .map(|r| r == status.id || status.voters.iter().any(|v| v.id == r && v.reachable))
        .unwrap_or(false);
    let remaining = voters - 1;
    let remaining_reachable = reachable - usize::from(removing_reachable);
    if remaining_reachable < remaining / 2 + 1 {
        return Err(ApiError::invalid(format!(
            "Removing this node leaves {remaining_reachable} managers out of {remaining}. Without a \
             Raft quorum your swarm will be inaccessible. The only way to restore a swarm that has \
             lost consensus is to reinitialize it with `--force-new-cluster`. Use `--force` to \
             suppress this message."
        )));
    }
    Ok(())
}

/// Find a node by exact id, unique id prefix, host name, or `self`.
pub fn resolve_node<'a>(nodes: &'a [Node], key: &str, me: &NodeId) -> Result<&'a Node, ApiError> {
    let key = if key == "self" { me.as_str() } else { key };
    if let Some(n) = nodes.iter().find(|n| n.id.as_str() == key) {
        return Ok(n);
    }
    let by_prefix: Vec<_> = nodes
        .iter()
        .filter(|n| n.id.as_str().starts_with(key))
        .collect();
    let by_name: Vec<_> = nodes.iter().filter(|n| n.hostname == key).collect();
    match (by_prefix.as_slice(), by_name.as_slice()) {
        ([n], _) if !key.is_empty() => Ok(n),
        ([], [n]) => Ok(n),
        ([], []) => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("node {key} not found"),
        )),
        _ => Err(ApiError::invalid(format!(
            "node {key} is ambiguous: more than one node matches"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::testkit::node;
    use shoal_raft_store::VoterStatus;

    fn named(id: &str, host: &str) -> Node {
        Node {
            id: id.parse().unwrap(),
            hostname: host.into(),
            ..node()
        }
    }

    fn nodes() -> Vec<Node> {
        vec![
            named("abc11111111111111111111aa", "h1"),
            named("abc22222222222222222222bb", "h2"),
            named("xyz33333333333333333333cc", "abc11"),
        ]
    }

    #[test]
    fn nodes_resolve_by_id_prefix_name_and_self() {
        let ns = nodes();
        let me: NodeId = "abc22222222222222222222bb".parse().unwrap();
        let host = |k: &str| resolve_node(&ns, k, &me).map(|n| n.hostname.clone());
        assert_eq!(host("abc11111111111111111111aa").unwrap(), "h1");
        assert_eq!(host("xyz").unwrap(), "abc11");
        assert_eq!(host("h2").unwrap(), "h2");
        assert_eq!(host("self").unwrap(), "h2");
        // A unique id prefix wins over a host name that equals it.
        assert_eq!(host("abc11").unwrap(), "h1");
    }

    #[test]
    fn ambiguous_and_unknown_nodes_are_errors() {
        let ns = nodes();
        let me = ns[0].id.clone();
        let e = resolve_node(&ns, "abc", &me).unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid);
        assert!(e.message.contains("ambiguous"), "{e}");
        let e = resolve_node(&ns, "nope", &me).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert_eq!(e.message, "node nope not found");
        assert_eq!(
            resolve_node(&ns, "", &me).unwrap_err().code,
            ErrorCode::Invalid
        );
    }

    fn status(me: u64, voters: &[(u64, bool)]) -> RaftStatus {
        RaftStatus {
            id: me,
            voters: voters
                .iter()
                .map(|&(id, reachable)| VoterStatus {
                    id,
                    addr: None,
                    reachable,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn check(me: u64, voters: &[(u64, bool)], removing: u64) -> Result<(), ApiError> {
        let st = status(me, voters);
        let reachable = voters.iter().filter(|v| v.1).count();
        check_quorum_after_removal(voters.len(), reachable, Some(removing), &st)
    }

    #[test]
    fn removing_a_manager_keeps_quorum_when_the_rest_can_form_one() {
        // 3 healthy managers: any one may go (2 of 2 remain).
        assert!(check(1, &[(1, true), (2, true), (3, true)], 3).is_ok());
        // 3 managers, one already unreachable: removing that one is fine.
        assert!(check(1, &[(1, true), (2, true), (3, false)], 3).is_ok());
        // 5 managers, 2 down: removing a healthy one leaves 2 of 4.
        let five = [(1, true), (2, true), (3, true), (4, false), (5, false)];
        let e = check(1, &five, 2).unwrap_err();
        assert!(e.message.contains("leaves 2 managers out of 4"), "{e}");
        // ... but removing a down one leaves 3 of 4.
        assert!(check(1, &five, 4).is_ok());
    }

    #[test]
    fn removing_a_reachable_manager_of_a_degraded_pair_is_refused() {
        let e = check(1, &[(1, true), (2, true), (3, false)], 2).unwrap_err();
        assert!(e.message.contains("leaves 1 managers out of 2"), "{e}");
        // Removing this node itself counts it as reachable.
        let e = check(1, &[(1, true), (2, true), (3, false)], 1).unwrap_err();
        assert!(e.message.contains("leaves 1 managers out of 2"), "{e}");
    }
}
