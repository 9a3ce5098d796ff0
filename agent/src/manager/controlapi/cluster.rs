//! Control API for the cluster object: join tokens (show, rotate), root
//! CA rotation, gossip key rotation.

use shoal_api::ApiError;
use shoal_model::state::Command;
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
    let ca_der = shoal_tls::certs_from_pem(&cluster.ca.cert_pem)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let digest = shoal_tls::CaDigest::of(ca_der.first().map(|c| c.as_ref()).unwrap_or(&[]));
    let secret = match role {
        Role::Worker => cluster.worker_secret,
        Role::Manager => cluster.manager_secret,
    };
    let token = JoinToken { digest, secret }.to_string();
    Ok((token, m.addr.to_string()))
}

/// `swarm ca --rotate`.
pub async fn ca_rotate(m: &Manager) -> Result<String, ApiError> {
    ca::rotate(m).await
}

/// `swarm rotate-keys`.
pub async fn rotate_keys(m: &Manager) -> Result<String, ApiError> {
    keymanager::rotate_now(m).await
}
