//! Certificates and roles of this node: renewal (expiry, root CA
//! rotation), trusted roots, promotion (a manager certificate, then the
//! Raft group) and demotion (step down, restart as a worker). A manager
//! follows the store directly ([`follow_store`]); a worker learns the
//! same from its assignments.

use std::net::SocketAddr;
use std::sync::Weak;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Result};
use shoal_model::state::Cluster;
use shoal_tls::{ClusterCa, NodeIdentity, NodeKey, Role, DEFAULT_CERT_VALIDITY};
use tracing::{debug, info, warn};

use super::{file, heartbeat_every, Swarm};
use crate::manager::managers_of;
use crate::proto::rpc::{self, NodeRequest, NodeResponse, NodeRpc};

impl Swarm {
    /// Persist a new manager list if it changed.
    pub(super) fn update_managers(&self, managers: Vec<(u64, SocketAddr)>) {
        if managers.is_empty() {
            return;
        }
        let changed = match self.file.lock() {
            Ok(mut f) if f.managers != managers => {
                f.managers = managers;
                Some(f.clone())
            }
            _ => None,
        };
        if let Some(f) = changed {
            if let Err(e) = file::save_file(&self.config.data_dir, &f) {
                warn!("cannot persist manager list: {e:#}");
            }
        }
    }

    pub(super) fn identity(&self) -> NodeIdentity {
        match self.identity.read() {
            Ok(i) => i.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Whether our certificate must be replaced: role changed, CA rotated,
    /// or close to expiry.
    pub(super) fn needs_new_cert(&self, role: Role, roots_pem: &[String]) -> bool {
        let id = self.identity();
        let current_root = roots_pem
            .first()
            .and_then(|p| shoal_tls::certs_from_pem(p).ok())
            .and_then(|v| v.into_iter().next());
        let rotated =
            current_root.is_some_and(|r| id.roots.first() != Some(&r) || !issued_by(&id.cert, &r));
        id.info.role != role || rotated || shoal_tls::needs_renewal(&id.info, SystemTime::now())
    }

    /// Trust exactly the roots the cluster lists (after a CA rotation ends
    /// the old root is dropped), keeping the current certificate.
    pub(super) fn refresh_roots(&self, roots_pem: &[String]) {
        let Ok(roots) = roots_from_pem(roots_pem) else {
            return;
        };
        let id = self.identity();
        if roots.is_empty() || roots == id.roots {
            return;
        }
        match NodeIdentity::new(id.cert.clone(), id.key.clone(), roots) {
            Ok(new) => {
                if let Err(e) = self.install_identity(new) {
                    warn!("cannot install the new trusted roots: {e:#}");
                }
            }
            // The certificate does not chain to the new roots yet: the
            // renewal that follows fixes that.
            Err(e) => debug!("trusted roots not updated yet: {e}"),
        }
    }

    /// Install a new certificate (and roots): persist, then swap the TLS
    /// configurations used by new connections.
    pub(super) fn install_identity(&self, id: NodeIdentity) -> Result<()> {
        file::save_identity(&self.config.data_dir, &id)?;
        let raft_client = id.client_config(&[rpc::ALPN_RAFT])?;
        let node_client = id.client_config(&[rpc::ALPN_NODE])?;
        if let Some(m) = &self.manager {
            m.set_identity(&id)?;
        }
        self.remote.set_tls(node_client);
        self.raft_client.send_replace(raft_client);
        info!(role = %id.info.role, "installed a new node certificate");
        if let Ok(mut i) = self.identity.write() {
            *i = id;
        }
        Ok(())
    }

    /// A manager signs its own new certificate with the CA in the store.
    pub(super) fn renew_locally(&self, cluster: &Cluster, role: Role) -> Result<()> {
        let ca = ClusterCa::from_pem(&cluster.ca.cert_pem, &cluster.ca.key_pem)?;
        let key = NodeKey::generate()?;
        let cert = ca.sign_csr(
            &key.csr_der()?,
            &self.node_id(),
            role,
            DEFAULT_CERT_VALIDITY,
        )?;
        let roots = roots_from_pem(&cluster.ca.trusted_roots())?;
        self.install_identity(NodeIdentity::new(cert, key, roots)?)
    }

    /// A worker asks a manager for a new certificate.
    pub(super) async fn renew_remotely(&self) -> Result<()> {
        let key = NodeKey::generate()?;
        let resp = self
            .remote
            .call(NodeRequest::Renew {
                csr_der: key.csr_der()?,
            })
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let NodeResponse::Cert {
            cert_der,
            roots_pem,
        } = resp
        else {
            bail!("unexpected answer to a renewal");
        };
        let id = NodeIdentity::new(cert_der.into(), key, roots_from_pem(&roots_pem)?)?;
        self.install_identity(id)
    }

    /// Become a manager (promotion) or a worker (demotion) by restarting
    /// the membership from disk with the new role.
    pub(super) fn change_role(
        &self,
        role: Role,
        raft_id: Option<u64>,
        managers: Option<Vec<(u64, SocketAddr)>>,
    ) -> Result<()> {
        let f = match self.file.lock() {
            Ok(mut f) => {
                f.role = role;
                f.raft_id = raft_id;
                if let Some(m) = managers {
                    f.managers = m;
                }
                f.raft_join_pending = role == Role::Manager;
                f.clone()
            }
            Err(_) => bail!("membership state lock poisoned"),
        };
        if role == Role::Worker {
            // The Raft log of a demoted manager is stale the moment it
            // leaves the group; a later promotion starts from the leader.
            let dir = file::swarm_dir(&self.config.data_dir).join("raft");
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!("cannot remove {}: {e}", dir.display());
                }
            }
        }
        file::save_file(&self.config.data_dir, &f)?;
        info!(%role, "role changed: restarting the swarm membership");
        let _ = self.restart.send(());
        Ok(())
    }
}

fn roots_from_pem(pems: &[String]) -> Result<Vec<shoal_tls::CertificateDer<'static>>> {
    let mut out = Vec::new();
    for p in pems {
        out.extend(shoal_tls::certs_from_pem(p)?);
    }
    Ok(out)
}

/// Whether `cert` was issued by `root` (issuer name equals root subject;
/// every root CA of a cluster gets a distinct name, see `ca_rotate`).
pub(super) fn issued_by(cert: &[u8], root: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    let (Ok((_, c)), Ok((_, r))) = (
        x509_parser::certificate::X509Certificate::from_der(cert),
        x509_parser::certificate::X509Certificate::from_der(root),
    ) else {
        return false;
    };
    c.issuer().as_raw() == r.subject().as_raw()
}

/// A manager keeps its persisted manager list in step with the store,
/// renews its own certificate, and steps down when demoted.
pub async fn follow_store(swarm: Weak<Swarm>) {
    let Some(mut rx) = swarm
        .upgrade()
        .and_then(|s| s.manager.as_ref().map(|m| m.store().subscribe()))
    else {
        return;
    };
    let mut last_check = tokio::time::Instant::now() - Duration::from_secs(3600);
    loop {
        let every = match swarm.upgrade() {
            Some(s) => heartbeat_every(&s.config),
            None => return,
        };
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(every) => {}
        }
        let Some(s) = swarm.upgrade() else { return };
        let Some(m) = s.manager.as_ref() else { return };
        let me = s.node_id();
        let Ok((managers, mine, cluster)) = m
            .store()
            .read_local(move |st| {
                (
                    managers_of(st),
                    st.nodes.get(&me).cloned(),
                    st.cluster.clone(),
                )
            })
            .await
        else {
            continue;
        };
        s.update_managers(managers);
        let (Some(mine), Some(cluster)) = (mine, cluster) else {
            continue;
        };
        if mine.role == Role::Worker {
            if let Err(e) = s
                .renew_locally(&cluster, Role::Worker)
                .and_then(|_| s.change_role(Role::Worker, None, None))
            {
                warn!("cannot step down after demotion: {e:#}");
            }
            return;
        }
        s.refresh_roots(&cluster.ca.trusted_roots());
        if last_check.elapsed() >= every
            && s.needs_new_cert(Role::Manager, &cluster.ca.trusted_roots())
        {
            last_check = tokio::time::Instant::now();
            if let Err(e) = s.renew_locally(&cluster, Role::Manager) {
                warn!("certificate renewal failed: {e:#}");
            }
        }
        drop(s);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
