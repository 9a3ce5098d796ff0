//! The routing mesh on this node (part of the executor): with a port
//! published in ingress mode anywhere, an ingress sandbox (a namespace on
//! the ingress network and the gwbridge) that balances the published
//! ports over the tasks' ingress addresses, the host's DNAT of those
//! ports to it, and `mode=host` ports DNATed straight to the local task.

use shoal_model::service::{Protocol, PublishMode};
use shoal_netdriver::nft::{self, Backend, PortRule, Proto};

use super::{Executor, NodeCtx, INGRESS_SANDBOX};
use crate::proto::session::{Assignments, ServiceView};
use crate::worker::overlay::{Overlay, StartSpec};
use shoal_api::Workload;

impl Executor {
    pub(super) async fn mesh(
        &self,
        overlay: &Overlay,
        ctx: &NodeCtx,
        a: &Assignments,
    ) -> anyhow::Result<()> {
        let ingress_net = a.networks.values().find(|n| n.ingress);
        let published: Vec<&ServiceView> = a
            .services
            .iter()
            .filter(|s| s.ports.iter().any(|p| p.mode == PublishMode::Ingress))
            .collect();
        let mut host_rules: Vec<PortRule> = Vec::new();
        match (ingress_net, &a.ingress_endpoint, published.is_empty()) {
            (Some(net), Some(ep), false) => {
                let sbox = match sandbox(overlay) {
                    Some(w) if w.id == ep.id && w.ip_on(&net.id) == Some(ep.ip) => w,
                    other => {
                        if let Some(old) = other {
                            overlay.cleanup(&old.id, ctx.gossip.as_ref()).await;
                        }
                        let w = overlay
                            .start(
                                StartSpec {
                                    id: ep.id.clone(),
                                    name: INGRESS_SANDBOX.into(),
                                    networks: vec![(net.clone(), ep.clone())],
                                    ..Default::default()
                                },
                                &ctx.me,
                                ctx.vtep,
                                ctx.port,
                                ctx.gossip.as_ref(),
                            )
                            .await?;
                        nft::set_ip_forward(Some(&w.netns), true)?;
                        if let Ok(mut m) = self.applied.lock() {
                            m.retain(|k, _| !k.starts_with(INGRESS_SANDBOX));
                        }
                        w
                    }
                };
                let mut rules = Vec::new();
                for s in &published {
                    for p in s.ports.iter().filter(|p| p.mode == PublishMode::Ingress) {
                        rules.push(PortRule {
                            proto: proto(p.protocol),
                            port: p.published,
                            backends: s
                                .backends
                                .iter()
                                .filter(|(n, _)| *n == net.id)
                                .map(|(_, ip)| Backend {
                                    ip: *ip,
                                    port: p.target,
                                })
                                .collect(),
                        });
                        if let Some(gw) = sbox.gw_ip {
                            host_rules.push(PortRule {
                                proto: proto(p.protocol),
                                port: p.published,
                                backends: vec![Backend {
                                    ip: gw,
                                    port: p.published,
                                }],
                            });
                        }
                    }
                }
                let ifname = sbox
                    .attachments
                    .first()
                    .map(|x| x.ifname.clone())
                    .unwrap_or_else(|| "eth0".into());
                let body = nft::ingress_sandbox_table(&rules, &ifname);
                self.apply_table(
                    Some(&sbox.netns),
                    nft::INGRESS_TABLE,
                    &body,
                    INGRESS_SANDBOX,
                )
                .await;
            }
            _ => {
                if let Some(old) = sandbox(overlay) {
                    overlay.cleanup(&old.id, ctx.gossip.as_ref()).await;
                    if let Ok(mut m) = self.applied.lock() {
                        m.retain(|k, _| !k.starts_with(INGRESS_SANDBOX));
                    }
                }
            }
        }
        // Host-mode ports: straight to the task on this node.
        for w in overlay.list().into_iter().filter(|w| w.task.is_some()) {
            let Some(t) = a.tasks.iter().find(|t| t.task.id == w.id) else {
                continue;
            };
            let (Some(svc), Some(gw)) =
                (a.services.iter().find(|s| s.id == t.task.service), w.gw_ip)
            else {
                continue;
            };
            for p in svc.ports.iter().filter(|p| p.mode == PublishMode::Host) {
                host_rules.push(PortRule {
                    proto: proto(p.protocol),
                    port: p.published,
                    backends: vec![Backend {
                        ip: gw,
                        port: p.target,
                    }],
                });
            }
        }
        if host_rules.is_empty() {
            let had = self
                .applied
                .lock()
                .is_ok_and(|mut m| m.remove(&format!("host/{}", nft::PUBLISH_TABLE)).is_some());
            if had {
                nft::delete_table(None, nft::PUBLISH_TABLE).await?;
            }
        } else {
            let body = nft::host_publish_table(&host_rules);
            self.apply_table(None, nft::PUBLISH_TABLE, &body, "host")
                .await;
        }
        Ok(())
    }
}

/// This node's routing-mesh sandbox, if it runs.
fn sandbox(overlay: &Overlay) -> Option<Workload> {
    overlay
        .list()
        .into_iter()
        .find(|w| w.task.is_none() && w.name == INGRESS_SANDBOX)
}

fn proto(p: Protocol) -> Proto {
    match p {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
    }
}
