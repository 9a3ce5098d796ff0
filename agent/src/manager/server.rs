//! TCP 2377 on a manager: one listener, three protocols chosen by TLS
//! ALPN — Raft between managers (manager certificates only), joins (no
//! client certificate yet), and node calls (mutual TLS).

use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use shoal_api as api;
use shoal_tls::{NodeId, Role};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::{ca, dispatcher, Manager};
use crate::proto::rpc::{self, JoinRequest, NodeRequest};

/// How long a TLS handshake on 2377 may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accept 2377 connections until the manager goes away.
pub async fn serve(listener: TcpListener, manager: Weak<Manager>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("2377 accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(m) = manager.upgrade() else { return };
        tokio::spawn(async move {
            if let Err(e) = serve_conn(m, tcp).await {
                debug!(%peer, "2377 connection: {e:#}");
            }
        });
    }
}

async fn serve_conn(m: Arc<Manager>, tcp: TcpStream) -> Result<()> {
    let peer_addr = tcp.peer_addr().ok();
    let cfg = m.server_tls();
    let mut stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(cfg).accept(tcp))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake failed")?;
    let (_, conn) = stream.get_ref();
    let alpn = conn.alpn_protocol().map(|a| a.to_vec());
    let peer = shoal_tls::peer_info(conn.peer_certificates());
    match alpn.as_deref() {
        Some(rpc::ALPN_RAFT) => {
            let info = peer.context("raft connection without a client certificate")?;
            if info.role != Role::Manager {
                warn!(
                    peer = ?peer_addr,
                    node = %info.node_id,
                    "rejected raft connection: the peer's certificate is a {} certificate, only managers speak raft",
                    info.role
                );
                bail!("raft from a non-manager certificate");
            }
            m.store()
                .serve_peer(stream)
                .await
                .map_err(|e| anyhow!("{e}"))
        }
        Some(rpc::ALPN_JOIN) => {
            let req: JoinRequest = api::read_frame(&mut stream).await?;
            let resp = ca::handle_join(&m, req).await;
            if let Err(e) = &resp {
                info!(peer = ?peer_addr, "join refused: {e}");
            }
            api::write_frame(&mut stream, &resp).await?;
            Ok(())
        }
        Some(rpc::ALPN_NODE) => {
            let info = peer.context("node call without a client certificate")?;
            serve_node_calls(&m, &info.node_id, &mut stream).await
        }
        other => bail!("unknown ALPN {other:?}"),
    }
}

async fn serve_node_calls<S: AsyncRead + AsyncWrite + Unpin>(
    m: &Manager,
    peer: &NodeId,
    stream: &mut S,
) -> Result<()> {
    loop {
        let req: NodeRequest = match api::read_frame(stream).await {
            Ok(r) => r,
            Err(api::FrameError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        // The wire carries the message only, as it always has.
        let resp = dispatcher::rpc::handle(m, peer, req)
            .await
            .map_err(|e| e.message);
        api::write_frame(stream, &resp).await?;
    }
}
