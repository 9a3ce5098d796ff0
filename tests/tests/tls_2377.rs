//! Who may talk to a manager's TCP 2377: certificates from another cluster,
//! no certificate, and worker certificates are all refused for Raft, and the
//! cluster keeps working. The test's client runs on a thread that entered a
//! lab host's network namespace (setns), so it reaches the manager at its
//! lab address. Needs root and the built `shoal` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_lab::Lab;
use shoal_tests::in_netns;
use shoal_tls::{ClusterCa, NodeId, NodeIdentity, NodeKey, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const RAFT: &[u8] = b"shoal-raft/1";

/// Connect with `cfg`, send one raft frame (a vote request with a huge term,
/// which would disrupt the cluster if accepted), and report whether the
/// manager kept the connection open for a reply window.
async fn raft_attempt(cfg: Arc<rustls::ClientConfig>, addr: &str) -> Result<(), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("shoal-manager").unwrap();
    let mut tls = TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut m = shoal_raft_store::eraftpb::Message::default();
    m.set_msg_type(shoal_raft_store::eraftpb::MessageType::MsgRequestVote);
    m.from = 424242;
    m.to = 0;
    m.term = 1_000_000;
    let frame = shoal_raft_store::encode_batch(&shoal_raft_store::Batch {
        from: 424242,
        from_addr: None,
        msgs: vec![m],
    })
    .unwrap();
    tls.write_all(&frame)
        .await
        .map_err(|e| format!("write: {e}"))?;
    tls.flush().await.map_err(|e| format!("flush: {e}"))?;
    let mut buf = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(3), tls.read(&mut buf)).await {
        Ok(Ok(0)) => Err("closed by the manager".into()),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Ok(Ok(_)) => Ok(()),
        // Still open: the manager accepted the stream as a raft peer.
        Err(_) => Ok(()),
    }
}

fn key_der(key: &NodeKey) -> rustls_pki_types::PrivateKeyDer<'static> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::PrivateKeyDer::from_pem_slice(key.to_pem().as_bytes()).unwrap()
}

fn raft_term(lab: &Lab) -> u64 {
    let out = lab.shoal(1, &["--format", "json", "info"]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["swarm"]["raft"]["term"].as_u64().unwrap()
}

#[test]
fn foreign_missing_and_worker_certificates_cannot_speak_raft() {
    shoal_tls::install_crypto_provider();
    let lab = Lab::builder()
        .nodes(2)
        .daemon_config("heartbeat_ms = 500\n")
        .start()
        .unwrap();
    lab.form_swarm(1, 1).unwrap();
    let h1 = lab.host(1).unwrap();
    let h2 = lab.host(2).unwrap();
    let addr = format!("{}:2377", h1.addr);
    let term_before = raft_term(&lab);

    // The real cluster's roots, so the client trusts the manager and only
    // its own certificate is in question.
    let roots_pem = std::fs::read_to_string(h1.data_dir.join("swarm/roots.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in shoal_tls::certs_from_pem(&roots_pem).unwrap() {
        roots.add(c).unwrap();
    }
    let roots = Arc::new(roots);

    // 1. A manager certificate from another cluster's CA.
    let foreign_ca = ClusterCa::generate("foreign").unwrap();
    let key = NodeKey::generate().unwrap();
    let cert = foreign_ca
        .sign_csr(
            &key.csr_der().unwrap(),
            &NodeId::generate(),
            Role::Manager,
            shoal_tls::DEFAULT_CERT_VALIDITY,
        )
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(vec![cert], key_der(&key))
        .unwrap();
    cfg.alpn_protocols = vec![RAFT.to_vec()];
    let r = in_netns(&h1.ns, raft_attempt(Arc::new(cfg), &addr));
    assert!(r.is_err(), "a foreign certificate was accepted for raft");

    // 2. An expired certificate, otherwise valid for this cluster, cannot
    //    be made without the CA key; its expiry check is the same webpki
    //    path, covered by the tls crate's tests. No certificate at all:
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![RAFT.to_vec()];
    let r = in_netns(&h1.ns, raft_attempt(Arc::new(cfg), &addr));
    assert!(r.is_err(), "raft without a client certificate was accepted");

    // 3. A worker's genuine certificate.
    let token = lab
        .shoal(1, &["swarm", "join-token", "-q", "worker"])
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap();
    let out = lab
        .shoal(
            2,
            &["swarm", "join", "--token", token.trim(), "10.77.0.1:2377"],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sw = h2.data_dir.join("swarm");
    let worker = NodeIdentity::from_pem(
        &std::fs::read_to_string(sw.join("node.crt")).unwrap(),
        &std::fs::read_to_string(sw.join("node.key")).unwrap(),
        &std::fs::read_to_string(sw.join("roots.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(worker.info.role, Role::Worker);
    let cfg = worker.client_config(&[RAFT]).unwrap();
    let r = in_netns(&h1.ns, raft_attempt(cfg, &addr));
    assert!(r.is_err(), "a worker certificate was accepted for raft");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(&h1.log).unwrap();
        if log.contains("rejected raft connection") && log.contains("only managers speak raft") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "manager log does not say why:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The cluster was not disturbed: same term, writes work.
    assert_eq!(
        raft_term(&lab),
        term_before,
        "a rejected peer changed the raft term"
    );
    let out = lab
        .shoal(1, &["node", "update", "--availability", "drain", "h2"])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
