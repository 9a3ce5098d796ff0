//! Identity checks and real TLS handshakes over loopback TCP with the
//! configs this crate hands out: what a manager, a worker, a joining node
//! and a node of another cluster each get.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::*;

const ALPN: &[&[u8]] = &[b"shoal/1"];
const LIMIT: Duration = Duration::from_secs(20);

fn identity(ca: &ClusterCa, role: Role, roots: Vec<CertificateDer<'static>>) -> NodeIdentity {
    let key = NodeKey::generate().unwrap();
    let cert = ca
        .sign_csr(
            &key.csr_der().unwrap(),
            &NodeId::generate(),
            role,
            DEFAULT_CERT_VALIDITY,
        )
        .unwrap();
    NodeIdentity::new(cert, key, roots).unwrap()
}

fn member(ca: &ClusterCa, role: Role) -> NodeIdentity {
    identity(ca, role, vec![ca.cert_der()])
}

type ServerOutcome = Result<Result<CertInfo, TlsError>, std::io::Error>;

/// Accepts one connection; on success reports who the client is and sends
/// one byte (the client only learns of a rejected certificate on its first
/// read under TLS 1.3).
async fn serve_once(
    config: Arc<rustls::ServerConfig>,
) -> (SocketAddr, tokio::task::JoinHandle<ServerOutcome>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await?;
        let peer = peer_info(tls.get_ref().1.peer_certificates());
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"shoal/1"[..]));
        tls.write_all(b"!").await?;
        tls.flush().await?;
        // Let the client read before the socket closes.
        let mut buf = [0u8; 1];
        let _ = tls.read(&mut buf).await;
        Ok(peer)
    });
    (addr, task)
}

/// Connects, waits for the server's byte, and reports who the server is.
async fn connect(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> Result<Result<CertInfo, TlsError>, std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(MANAGER_SERVER_NAME).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let mut buf = [0u8; 1];
    tls.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"!");
    let peer = peer_info(tls.get_ref().1.peer_certificates());
    tls.shutdown().await?;
    Ok(peer)
}

/// Runs one handshake; returns (server outcome, client outcome).
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> (ServerOutcome, ServerOutcome) {
    let (addr, task) = serve_once(server).await;
    let client = tokio::time::timeout(LIMIT, connect(client, addr))
        .await
        .expect("client timed out");
    let server = tokio::time::timeout(LIMIT, task)
        .await
        .expect("server timed out")
        .unwrap();
    (server, client)
}

fn anonymous_client(roots: &[CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"shoal/1".to_vec()];
    Arc::new(config)
}

#[tokio::test]
async fn mtls_same_cluster_both_sides_see_roles() {
    let ca = ClusterCa::generate("c1").unwrap();
    let manager = member(&ca, Role::Manager);
    let worker = member(&ca, Role::Worker);
    let (server, client) = handshake(
        manager.server_config_mtls(ALPN).unwrap(),
        worker.client_config(ALPN).unwrap(),
    )
    .await;
    let seen_by_server = server.unwrap().unwrap();
    assert_eq!(seen_by_server.role, Role::Worker);
    assert_eq!(seen_by_server.node_id, worker.info.node_id);
    let seen_by_client = client.unwrap().unwrap();
    assert_eq!(seen_by_client.role, Role::Manager);
    assert_eq!(seen_by_client.node_id, manager.info.node_id);
}

#[tokio::test]
async fn expired_client_certificate_of_this_cluster_is_rejected() {
    let ca = ClusterCa::generate("c1").unwrap();
    let manager = member(&ca, Role::Manager);
    // Issued 100 days ago for 90 days: expired 10 days ago.
    let key = NodeKey::generate().unwrap();
    let issued = SystemTime::now() - Duration::from_secs(100 * 24 * 3600);
    let cert = ca
        .sign_csr_at(
            &key.csr_der().unwrap(),
            &NodeId::generate(),
            Role::Manager,
            DEFAULT_CERT_VALIDITY,
            issued,
        )
        .unwrap();
    // NodeIdentity refuses to be built from it; a hand-made client config
    // presents it anyway.
    assert!(matches!(
        NodeIdentity::new(cert.clone(), key.clone(), vec![ca.cert_der()]),
        Err(TlsError::Expired { .. })
    ));
    let mut store = rustls::RootCertStore::empty();
    store.add(ca.cert_der()).unwrap();
    let key_der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::PrivateKeyDer::from_pem_slice(key.to_pem().as_bytes()).unwrap()
    };
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(store)
    .with_client_auth_cert(vec![cert, ca.cert_der()], key_der)
    .unwrap();
    client.alpn_protocols = vec![b"shoal/1".to_vec()];
    let client = Arc::new(client);
    for server in [
        manager.server_config_mtls(ALPN).unwrap(),
        manager.server_config(ALPN).unwrap(),
    ] {
        let (server, client) = handshake(server, client.clone()).await;
        let err = server.unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        assert!(client.is_err());
    }
}

#[tokio::test]
async fn mtls_rejects_client_of_another_cluster() {
    let ca = ClusterCa::generate("c1").unwrap();
    let other = ClusterCa::generate("c2").unwrap();
    let manager = member(&ca, Role::Manager);
    // The intruder trusts our CA (so it accepts the server) but has a
    // certificate from its own CA.
    let intruder = identity(&other, Role::Manager, vec![other.cert_der(), ca.cert_der()]);
    let (server, client) = handshake(
        manager.server_config_mtls(ALPN).unwrap(),
        intruder.client_config(ALPN).unwrap(),
    )
    .await;
    let server_err = server.unwrap_err();
    assert!(
        server_err.to_string().contains("UnknownIssuer"),
        "{server_err}"
    );
    assert!(
        client.is_err(),
        "client must fail at the latest on its first read"
    );
}

#[tokio::test]
async fn anonymous_client_rejected_by_mtls_accepted_by_optional_auth() {
    let ca = ClusterCa::generate("c1").unwrap();
    let manager = member(&ca, Role::Manager);
    let anon = anonymous_client(&[ca.cert_der()]);

    let (server, client) = handshake(manager.server_config_mtls(ALPN).unwrap(), anon.clone()).await;
    assert!(server.is_err());
    assert!(client.is_err());

    let (server, client) = handshake(manager.server_config(ALPN).unwrap(), anon).await;
    assert!(matches!(server.unwrap(), Err(TlsError::NoPeerCertificate)));
    assert_eq!(client.unwrap().unwrap().role, Role::Manager);

    // A member presenting its certificate is still identified there.
    let worker = member(&ca, Role::Worker);
    let (server, _) = handshake(
        manager.server_config(ALPN).unwrap(),
        worker.client_config(ALPN).unwrap(),
    )
    .await;
    assert_eq!(server.unwrap().unwrap().node_id, worker.info.node_id);
}

#[tokio::test]
async fn optional_auth_still_rejects_foreign_client_certs() {
    let ca = ClusterCa::generate("c1").unwrap();
    let other = ClusterCa::generate("c2").unwrap();
    let manager = member(&ca, Role::Manager);
    let intruder = identity(&other, Role::Worker, vec![other.cert_der(), ca.cert_der()]);
    let (server, client) = handshake(
        manager.server_config(ALPN).unwrap(),
        intruder.client_config(ALPN).unwrap(),
    )
    .await;
    assert!(server.is_err());
    assert!(client.is_err());
}

#[tokio::test]
async fn pinned_join_client_checks_the_token_digest() {
    let ca = ClusterCa::generate("c1").unwrap();
    let other = ClusterCa::generate("c2").unwrap();
    let manager = member(&ca, Role::Manager);

    let (server, client) = handshake(
        manager.server_config(ALPN).unwrap(),
        pinned_client_config(&ca.digest(), ALPN).unwrap(),
    )
    .await;
    assert!(matches!(server.unwrap(), Err(TlsError::NoPeerCertificate)));
    let seen = client.unwrap().unwrap();
    assert_eq!(seen.role, Role::Manager);
    assert_eq!(seen.node_id, manager.info.node_id);

    // The token of another cluster.
    let (_, client) = handshake(
        manager.server_config(ALPN).unwrap(),
        pinned_client_config(&other.digest(), ALPN).unwrap(),
    )
    .await;
    let err = client.unwrap_err();
    assert!(is_digest_mismatch(&err), "{err:?}");
    assert!(
        err.to_string().contains(
            "the manager's CA does not match the join token (digest mismatch): \
             the token belongs to another cluster"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn pinned_join_client_rejects_a_worker_posing_as_manager() {
    // Right CA, but the server's certificate is a worker's: it lacks the
    // shoal-manager name, so the join must not go there.
    let ca = ClusterCa::generate("c1").unwrap();
    let worker = member(&ca, Role::Worker);
    let (_, client) = handshake(
        worker.server_config(ALPN).unwrap(),
        pinned_client_config(&ca.digest(), ALPN).unwrap(),
    )
    .await;
    let err = client.unwrap_err();
    assert!(!is_digest_mismatch(&err));
    assert!(err.to_string().contains("not valid for name"), "{err}");

    let manager = member(&ca, Role::Manager);
    let (_, client) = handshake(
        worker.server_config_mtls(ALPN).unwrap(),
        manager.client_config(ALPN).unwrap(),
    )
    .await;
    assert!(client.is_err());
}

#[tokio::test]
async fn rotation_old_and_new_roots_accept_both() {
    let old = ClusterCa::generate("c1").unwrap();
    let new = ClusterCa::generate("c1").unwrap();
    let roots = vec![old.cert_der(), new.cert_der()];
    let a = identity(&old, Role::Manager, roots.clone());
    let b = identity(&new, Role::Manager, roots.clone());

    for (server, client) in [(&a, &b), (&b, &a)] {
        let (s, c) = handshake(
            server.server_config_mtls(ALPN).unwrap(),
            client.client_config(ALPN).unwrap(),
        )
        .await;
        assert_eq!(s.unwrap().unwrap().node_id, client.info.node_id);
        assert_eq!(c.unwrap().unwrap().node_id, server.info.node_id);
    }

    // A joining node holding a token for the new CA finds it in the chain of
    // a manager already on the new CA, and not in that of one still on the old.
    let (_, c) = handshake(
        b.server_config(ALPN).unwrap(),
        pinned_client_config(&new.digest(), ALPN).unwrap(),
    )
    .await;
    assert!(c.unwrap().is_ok());
    let (_, c) = handshake(
        a.server_config(ALPN).unwrap(),
        pinned_client_config(&new.digest(), ALPN).unwrap(),
    )
    .await;
    assert!(is_digest_mismatch(&c.unwrap_err()));

    // Once a node drops the old root, peers still on the old CA are refused.
    let only_new = identity(&new, Role::Manager, vec![new.cert_der()]);
    let (s, _) = handshake(
        only_new.server_config_mtls(ALPN).unwrap(),
        a.client_config(ALPN).unwrap(),
    )
    .await;
    assert!(s.is_err());
}

#[test]
fn identity_checks() {
    let ca = ClusterCa::generate("c1").unwrap();
    let other = ClusterCa::generate("c2").unwrap();
    let key = NodeKey::generate().unwrap();
    let node = NodeId::generate();
    let cert = ca
        .sign_csr(
            &key.csr_der().unwrap(),
            &node,
            Role::Worker,
            DEFAULT_CERT_VALIDITY,
        )
        .unwrap();

    let ok = NodeIdentity::new(cert.clone(), key.clone(), vec![ca.cert_der()]).unwrap();
    assert_eq!(ok.info.node_id, node);
    assert!(!format!("{ok:?}").contains("PRIVATE"));

    let wrong_key = NodeKey::generate().unwrap();
    assert!(matches!(
        NodeIdentity::new(cert.clone(), wrong_key, vec![ca.cert_der()]),
        Err(TlsError::KeyMismatch { .. })
    ));
    assert!(matches!(
        NodeIdentity::new(cert.clone(), key.clone(), vec![other.cert_der()]),
        Err(TlsError::NotSignedByRoots { .. })
    ));
    assert!(matches!(
        NodeIdentity::new(cert.clone(), key.clone(), vec![]),
        Err(TlsError::NoRoots)
    ));
    // Roots in any order; the issuing one is found.
    assert!(NodeIdentity::new(
        cert.clone(),
        key.clone(),
        vec![other.cert_der(), ca.cert_der()]
    )
    .is_ok());

    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let old_cert = ca
        .sign_csr_at(
            &key.csr_der().unwrap(),
            &node,
            Role::Worker,
            day,
            now - 3 * day,
        )
        .unwrap();
    let err = NodeIdentity::new(old_cert, key.clone(), vec![ca.cert_der()]).unwrap_err();
    assert!(matches!(err, TlsError::Expired { .. }), "{err}");
    assert!(err.to_string().contains("rejoin"), "{err}");
    let future_cert = ca
        .sign_csr_at(
            &key.csr_der().unwrap(),
            &node,
            Role::Worker,
            day,
            now + 3 * day,
        )
        .unwrap();
    assert!(matches!(
        NodeIdentity::new(future_cert, key.clone(), vec![ca.cert_der()]),
        Err(TlsError::NotYetValid { .. })
    ));

    // PEM round trip of a whole identity.
    let roots_pem = format!("{}{}", other.cert_pem(), ca.cert_pem());
    let back = NodeIdentity::from_pem(&cert_to_pem(&cert), &key.to_pem(), &roots_pem).unwrap();
    assert_eq!(back.info, ok.info);
    assert_eq!(back.roots.len(), 2);
}

#[test]
fn foreign_and_partial_certificates_are_not_shoal_certs() {
    let foreign = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    assert!(matches!(
        cert_info(foreign.cert.der()),
        Err(TlsError::NotShoalCert { .. })
    ));

    // A node id but no role.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, NodeId::generate().as_str());
    let cert = params.self_signed(&key).unwrap();
    let err = cert_info(cert.der()).unwrap_err();
    assert!(err.to_string().contains("role"), "{err}");

    // The CA certificate itself is not a node certificate.
    let ca = ClusterCa::generate("c1").unwrap();
    assert!(matches!(
        cert_info(&ca.cert_der()),
        Err(TlsError::NotShoalCert { .. })
    ));

    // Trailing bytes after a good certificate.
    let key = NodeKey::generate().unwrap();
    let good = ca
        .sign_csr(
            &key.csr_der().unwrap(),
            &NodeId::generate(),
            Role::Worker,
            DEFAULT_CERT_VALIDITY,
        )
        .unwrap();
    let mut trailing = good.to_vec();
    trailing.push(0);
    assert!(matches!(
        cert_info(&trailing),
        Err(TlsError::CertParse { .. })
    ));
    // Truncations and bit flips never panic.
    for cut in 0..good.len() {
        let _ = cert_info(&good[..cut]);
    }
    for i in 0..good.len() {
        let mut m = good.to_vec();
        m[i] ^= 0x5a;
        let _ = cert_info(&m);
    }
    assert!(matches!(peer_info(None), Err(TlsError::NoPeerCertificate)));
    assert!(matches!(
        peer_info(Some(&[])),
        Err(TlsError::NoPeerCertificate)
    ));
}

#[test]
fn renewal_over_a_real_certificate_lifetime() {
    let ca = ClusterCa::generate("c1").unwrap();
    let key = NodeKey::generate().unwrap();
    let now = SystemTime::now();
    let cert = ca
        .sign_csr_at(
            &key.csr_der().unwrap(),
            &NodeId::generate(),
            Role::Manager,
            DEFAULT_CERT_VALIDITY,
            now,
        )
        .unwrap();
    let info = cert_info(&cert).unwrap();
    let day = Duration::from_secs(86_400);
    assert!(!needs_renewal(&info, now));
    assert!(!needs_renewal(&info, now + 45 * day));
    assert!(needs_renewal(&info, now + 61 * day));
    assert!(needs_renewal(&info, now + 120 * day));
}

#[test]
fn crypto_provider_install_is_idempotent() {
    install_crypto_provider();
    install_crypto_provider();
    assert!(rustls::crypto::CryptoProvider::get_default().is_some());
}
