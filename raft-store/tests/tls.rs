//! TlsTransport over real mutual TLS on loopback: three managers, each with
//! a listener that accepts TLS and hands the stream to `serve_peer`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use shoal_raft_store::{RaftError, RaftNode, TlsTransport, MANAGER_SERVER_NAME};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

const ALPN: &[u8] = b"shoal-raft/1";

struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Pki {
            ca: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut r = RootCertStore::empty();
        r.add(self.ca.der().clone()).unwrap();
        Arc::new(r)
    }

    /// A manager certificate: SAN DNS `shoal-manager`.
    fn manager(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![MANAGER_SERVER_NAME.to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    fn server(&self) -> Arc<ServerConfig> {
        let (chain, key) = self.manager();
        let v = WebPkiClientVerifier::builder(self.roots()).build().unwrap();
        let mut c = ServerConfig::builder()
            .with_client_cert_verifier(v)
            .with_single_cert(chain, key)
            .unwrap();
        c.alpn_protocols = vec![ALPN.to_vec()];
        Arc::new(c)
    }

    fn client(&self) -> Arc<ClientConfig> {
        let (chain, key) = self.manager();
        let mut c = ClientConfig::builder()
            .with_root_certificates(self.roots())
            .with_client_auth_cert(chain, key)
            .unwrap();
        c.alpn_protocols = vec![ALPN.to_vec()];
        Arc::new(c)
    }
}

type Slot = Arc<Mutex<Option<RaftNode<Kv>>>>;

/// Accepts TLS on an ephemeral port and serves raft streams to whatever
/// node is in `slot`.
async fn listen(server: Arc<ServerConfig>) -> (std::net::SocketAddr, Slot) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let slot: Slot = Arc::new(Mutex::new(None));
    let s = slot.clone();
    let acceptor = TlsAcceptor::from(server);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let s = s.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN));
                let node = s.lock().unwrap().clone();
                if let Some(n) = node {
                    let _ = n.serve_peer(tls).await;
                }
            });
        }
    });
    (addr, slot)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_replicate_over_mutual_tls() {
    init_log();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = Pki::new();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut addrs = Vec::new();
    let mut slots = Vec::new();
    let mut cfg_txs = Vec::new();
    let mut transports = Vec::new();
    for _ in 0..3 {
        let (a, s) = listen(pki.server()).await;
        addrs.push(a);
        slots.push(s);
        let (tx, rx) = watch::channel(pki.client());
        cfg_txs.push(tx);
        transports.push(TlsTransport::new(rx));
    }
    let mut nodes: Vec<RaftNode<Kv>> = Vec::new();
    let n1 = RaftNode::bootstrap(
        test_config(1, dirs[0].path()),
        addrs[0],
        Kv::default(),
        transports[0].clone(),
    )
    .await
    .unwrap();
    *slots[0].lock().unwrap() = Some(n1.clone());
    nodes.push(n1);
    wait_for("node 1 leads", Duration::from_secs(5), || {
        nodes[0].status().is_leader
    })
    .await;
    for i in 1..3usize {
        let id = i as u64 + 1;
        nodes[0].add_voter(id, addrs[i]).await.unwrap();
        let n = RaftNode::join(
            test_config(id, dirs[i].path()),
            Kv::default(),
            transports[i].clone(),
        )
        .await
        .unwrap();
        *slots[i].lock().unwrap() = Some(n.clone());
        nodes.push(n);
    }
    // Writes from every manager (followers forward over TLS).
    for (i, n) in nodes.iter().enumerate() {
        for j in 0..10 {
            n.propose(put(format!("n{i}-{j}"), "v")).await.unwrap();
        }
    }
    wait_for("replication over TLS", Duration::from_secs(10), || {
        let s: Vec<_> = nodes.iter().map(|n| n.status()).collect();
        s.iter()
            .all(|x| x.applied == s[0].applied && x.voters.len() == 3)
    })
    .await;
    for n in &nodes {
        assert_eq!(n.read(|kv| kv.map.len()).await.unwrap(), 30);
        let st = n.status();
        assert!(st.voters.iter().all(|v| v.reachable), "{st:?}");
        assert_eq!(
            st.voters.iter().map(|v| v.addr).collect::<Vec<_>>(),
            addrs.iter().map(|a| Some(*a)).collect::<Vec<_>>()
        );
    }
    // Renewed client certificates are picked up (next connection).
    for tx in &cfg_txs {
        tx.send(pki.client()).unwrap();
    }
    nodes[2].propose(put("after-renewal", "v")).await.unwrap();
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_peer_rejects_hostile_frames() {
    let dir = tempfile::tempdir().unwrap();
    let router = shoal_raft_store::mem::MemRouter::new();
    let n = RaftNode::join(
        test_config(5, dir.path()),
        Kv::default(),
        router.endpoint(5),
    )
    .await
    .unwrap();
    for junk in [
        vec![0xff, 0xff, 0xff, 0xff, 0, 0], // 4 GiB frame announced
        vec![0, 0, 0, 3, 1, 2, 3],          // bad version / truncated header
        vec![0, 0, 0, 10, 1, 0, 0],         // cut mid-frame
    ] {
        let (mut a, b) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut a, &junk)
            .await
            .unwrap();
        drop(a);
        let err = n.serve_peer(b).await.unwrap_err();
        assert!(matches!(err, RaftError::Frame(_)), "{err:?}");
    }
    // A clean, empty stream is fine.
    let (a, b) = tokio::io::duplex(64);
    drop(a);
    n.serve_peer(b).await.unwrap();
    n.shutdown().await.unwrap();
}
