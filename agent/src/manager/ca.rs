//! The CA server: joins (a join secret and a CSR in, a certificate out),
//! certificate renewals, and the root CA rotation.

use shoal_api::ApiError;
use shoal_model::state::{Availability, CaState, Cluster, Command, Node, NodeStatus};
use shoal_model::{now_ms, NodeId};
use shoal_tls::{ClusterCa, JoinSecret, Role, DEFAULT_CERT_VALIDITY};
use tracing::{info, warn};

use crate::addr;

use super::{managers_of, new_raft_id, Manager};
use crate::proto::rpc::{JoinRequest, JoinResponse, NodeResponse};

/// A node presents a join secret and a CSR: check the secret, record the
/// node, sign its certificate (and add a manager to the Raft group).
pub async fn handle_join(m: &Manager, req: JoinRequest) -> Result<JoinResponse, String> {
    let store = m.store();
    // A wrong secret is refused from the local copy, before anything costs
    // Raft a round trip (join spam must not use up read or proposal slots).
    let local = store
        .read_local(|s| s.cluster.clone())
        .await
        .map_err(|e| e.message)?
        .ok_or("the swarm is not initialized")?;
    role_for(&local, &req.secret)?;
    // Then from a fresh read: the secret may have been rotated meanwhile.
    let cluster = store
        .read(|s| s.cluster.clone())
        .await
        .map_err(|e| e.message)?
        .ok_or("the swarm is not initialized")?;
    let role = role_for(&cluster, &req.secret)?;
    addr::check_advertisable("advertise address", req.addr.ip())?;
    let ca = ClusterCa::from_pem(&cluster.ca.cert_pem, &cluster.ca.key_pem)
        .map_err(|e| e.to_string())?;
    let node_id = NodeId::generate();
    let cert = ca
        .sign_csr(&req.csr_der, &node_id, role, DEFAULT_CERT_VALIDITY)
        .map_err(|e| e.to_string())?;
    let raft_id = (role == Role::Manager).then(new_raft_id);
    let now = now_ms();
    let node = Node {
        id: node_id.clone(),
        hostname: req.hostname.chars().take(64).collect(),
        role,
        availability: Availability::Active,
        status: NodeStatus::Ready,
        addr: req.addr,
        data_path_addr: req.data_path_addr,
        raft_id,
        created_at: now,
        updated_at: now,
        version: 0,
    };
    store
        .propose(Command::AddNode { node })
        .await
        .map_err(|e| e.message)?;
    if let Some(rid) = raft_id {
        if let Err(e) = store.add_voter(rid, req.addr).await {
            let _ = store
                .propose(Command::RemoveNode {
                    id: node_id.clone(),
                })
                .await;
            return Err(format!("cannot add the new manager to the raft group: {e}"));
        }
    }
    let managers = store.read_local(managers_of).await.map_err(|e| e.message)?;
    info!(node = %node_id, %role, addr = %req.addr, "node joined");
    Ok(JoinResponse {
        node_id,
        role,
        cert_der: cert.as_ref().to_vec(),
        roots_pem: cluster.ca.trusted_roots(),
        cluster_id: cluster.id,
        raft_id,
        managers,
    })
}

/// `swarm ca --rotate`: a new root CA; the old one stays trusted until
/// every node has renewed.
pub async fn rotate(m: &Manager) -> Result<String, ApiError> {
    let cluster = m
        .store()
        .read(|s| s.cluster.clone())
        .await?
        .ok_or_else(|| ApiError::internal("the store holds no cluster"))?;
    let new_ca = ClusterCa::generate(&format!("{}-{}", cluster.id, now_ms()))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut previous = vec![cluster.ca.cert_pem.clone()];
    previous.extend(cluster.ca.previous_roots.iter().cloned());
    previous.truncate(2);
    m.store()
        .propose(Command::SetCa {
            ca: CaState {
                cert_pem: new_ca.cert_pem(),
                key_pem: new_ca.key_pem(),
                previous_roots: previous,
            },
        })
        .await?;
    Ok(format!(
        "Root CA rotated; new CA digest {}. Nodes renew their certificates on their next heartbeat.",
        new_ca.digest()
    ))
}

/// On the leader: once every node that is not down reports a
/// certificate from the current root, stop trusting the old roots.
pub async fn finish_rotation(m: &Manager) {
    let Ok(Some((ca, nodes))) = m
        .store()
        .read_local(|st| {
            st.cluster
                .as_ref()
                .map(|c| (c.ca.clone(), st.nodes.values().cloned().collect::<Vec<_>>()))
        })
        .await
    else {
        return;
    };
    if ca.previous_roots.is_empty() {
        return;
    }
    let Some(current) = shoal_tls::certs_from_pem(&ca.cert_pem)
        .ok()
        .and_then(|v| v.into_iter().next())
    else {
        return;
    };
    let digest = shoal_tls::CaDigest::of(&current).to_string();
    let done = nodes
        .iter()
        .filter(|n| n.status != NodeStatus::Down)
        .all(|n| {
            m.liveness
                .report(&n.id)
                .is_some_and(|r| r.ca_digest == digest)
        });
    if !done {
        return;
    }
    let finished = CaState {
        previous_roots: Vec::new(),
        ..ca
    };
    match m.store().propose(Command::SetCa { ca: finished }).await {
        Ok(()) => {
            info!("root CA rotation complete: every node holds a certificate from the new root")
        }
        Err(e) => warn!("cannot complete the CA rotation: {e}"),
    }
}

/// The role a join secret grants, or why none.
fn role_for(cluster: &Cluster, secret: &str) -> Result<Role, String> {
    if secret_matches(&cluster.manager_secret, secret) {
        Ok(Role::Manager)
    } else if secret_matches(&cluster.worker_secret, secret) {
        Ok(Role::Worker)
    } else {
        Err(
            "invalid join token: the secret matches neither this swarm's worker nor manager token"
                .into(),
        )
    }
}

fn secret_matches(stored: &str, presented: &str) -> bool {
    stored
        .parse::<JoinSecret>()
        .map(|s| s.matches(presented))
        .unwrap_or(false)
}

/// A member asks for a new certificate for its key (renewal, CA rotation,
/// role change): signed for the role the store records.
pub async fn renew(m: &Manager, peer: &NodeId, csr_der: &[u8]) -> Result<NodeResponse, ApiError> {
    let p = peer.clone();
    let (cluster, node) = m
        .store()
        .read_local(move |s| (s.cluster.clone(), s.nodes.get(&p).cloned()))
        .await?;
    let cluster = cluster.ok_or_else(|| ApiError::invalid("the swarm is not initialized"))?;
    let node =
        node.ok_or_else(|| ApiError::invalid(format!("node {peer} is not part of this swarm")))?;
    let ca = ClusterCa::from_pem(&cluster.ca.cert_pem, &cluster.ca.key_pem)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let cert = ca
        .sign_csr(csr_der, peer, node.role, DEFAULT_CERT_VALIDITY)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(NodeResponse::Cert {
        cert_der: cert.as_ref().to_vec(),
        roots_pem: cluster.ca.trusted_roots(),
    })
}
