//! Control API for the cluster object: join tokens (show, rotate), root
//! CA rotation, gossip key rotation.

use shoal_api::{ApiError, SwarmDoc};
use shoal_model::state::{Cluster, Command};
use shoal_tls::{JoinSecret, JoinToken, Role};

use crate::manager::{ca, keymanager, Manager};

/// `swarm join-token worker|manager [--rotate]`.
pub async fn join_token(
    m: &Manager,
    role: Role,
    rotate: bool,
) -> Result<(String, String), ApiError> {
    if rotate {
        m.store()
            .propose(Command::SetJoinSecret {
                role,
                secret: JoinSecret::generate().as_str().to_string(),
            })
            .await?;
    }
    let cluster = m
        .store()
        .read(|s| s.cluster.clone())
        .await?
        .ok_or_else(|| ApiError::internal("the store holds no cluster"))?;
    Ok((token(&cluster, role)?, m.addr.to_string()))
}

/// The join token of `role`: the root CA's digest and the role's secret.
fn token(cluster: &Cluster, role: Role) -> Result<String, ApiError> {
    let ca_der = shoal_tls::certs_from_pem(&cluster.ca.cert_pem)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let digest = shoal_tls::CaDigest::of(ca_der.first().map(|c| c.as_ref()).unwrap_or(&[]));
    let secret = match role {
        Role::Worker => cluster.worker_secret.clone(),
        Role::Manager => cluster.manager_secret.clone(),
    };
    Ok(JoinToken { digest, secret }.to_string())
}

/// The cluster object as the Engine API's `GET /swarm` shows it (one
/// read of the store).
pub async fn inspect(m: &Manager) -> Result<SwarmDoc, ApiError> {
    let (cluster, version) = m.store().read(|s| (s.cluster.clone(), s.index)).await?;
    let c = cluster.ok_or_else(|| ApiError::internal("the store holds no cluster"))?;
    Ok(SwarmDoc {
        worker_token: token(&c, Role::Worker)?,
        manager_token: token(&c, Role::Manager)?,
        id: c.id,
        created_at: c.created_at,
        version,
        default_addr_pools: c.default_addr_pools,
        default_addr_pool_mask_len: c.default_addr_pool_mask_len,
        data_path_port: c.data_path_port,
        heartbeat_period_ms: c.heartbeat_period_ms,
        root_rotation_in_progress: !c.ca.previous_roots.is_empty(),
        ca_cert_pem: c.ca.cert_pem,
    })
}

/// `swarm ca --rotate`.
pub async fn ca_rotate(m: &Manager) -> Result<String, ApiError> {
    ca::rotate(m).await
}

/// `swarm rotate-keys`.
pub async fn rotate_keys(m: &Manager) -> Result<String, ApiError> {
    keymanager::rotate_now(m).await
}
