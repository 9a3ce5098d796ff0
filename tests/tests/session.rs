//! The node session over QUIC (UDP 2377) end to end: heartbeats and Down /
//! Ready, fail-over to another manager, key rotation reaching every node,
//! and who cannot open a session. Needs root and the built `shoal` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_lab::Lab;
use shoal_tests::{cli, in_netns, info, wait_until};

/// Heartbeat 500 ms: a node is Down after 3 missed beats (1.5 s).
const FAST: &str = "heartbeat_ms = 500\n";

fn lab(nodes: usize) -> Lab {
    Lab::builder()
        .nodes(nodes)
        .daemon_config(FAST)
        .start()
        .unwrap()
}

/// hostname -> status, as manager `host` sees it.
fn statuses(lab: &Lab, host: usize) -> BTreeMap<String, String> {
    let out = cli(lab, host, &["--format", "json", "node", "ls"]).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["hostname"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn key_ids(v: &Value) -> Vec<u64> {
    v["swarm"]["keys"]
        .as_array()
        .map(|a| a.iter().map(|k| k["id"].as_u64().unwrap()).collect())
        .unwrap_or_default()
}

#[test]
fn killed_worker_goes_down_and_comes_back_ready() {
    let lab = lab(3);
    lab.init_swarm(1).unwrap();
    wait_until("all ready", Duration::from_secs(10), || {
        statuses(&lab, 1)
            .values()
            .all(|s| s == "ready")
            .then_some(())
    });
    let id = info(&lab, 3)["node_id"].as_str().unwrap().to_string();
    lab.kill(3).unwrap();
    let (_, took) = wait_until("h3 down", Duration::from_secs(10), || {
        (statuses(&lab, 1)["h3"] == "down").then_some(())
    });
    // 3 heartbeats (1.5 s) + the leader's check interval (0.25 s) + slack
    // for a loaded 2-core CI machine running other labs in parallel.
    eprintln!("h3 marked down {took:?} after the kill");
    assert!(
        took < Duration::from_secs(6),
        "h3 marked down after {took:?}"
    );
    assert_eq!(
        statuses(&lab, 1)["h2"],
        "ready",
        "a live worker was marked down"
    );
    lab.restart(3).unwrap();
    wait_until("h3 ready again", Duration::from_secs(10), || {
        (statuses(&lab, 1)["h3"] == "ready").then_some(())
    });
    assert_eq!(info(&lab, 3)["node_id"].as_str().unwrap(), id);
    // A worker sees the manager its session is on.
    assert_eq!(info(&lab, 2)["swarm"]["session_manager"], "10.77.0.1:2377");
}

#[test]
fn session_fails_over_when_its_manager_dies() {
    let lab = lab(4);
    lab.init_swarm(3).unwrap();
    let (on, _) = wait_until("h4 session", Duration::from_secs(10), || {
        info(&lab, 4)["swarm"]["session_manager"]
            .as_str()
            .map(str::to_string)
    });
    let host: usize = on
        .trim_start_matches("10.77.0.")
        .trim_end_matches(":2377")
        .parse()
        .unwrap();
    lab.kill(host).unwrap();
    let (now_on, took) = wait_until("h4 to reconnect elsewhere", Duration::from_secs(10), || {
        info(&lab, 4)["swarm"]["session_manager"]
            .as_str()
            .filter(|m| *m != on)
            .map(str::to_string)
    });
    assert!(took < Duration::from_secs(6), "reconnected after {took:?}");
    eprintln!("h4 session moved from {on} to {now_on} in {took:?}");
    // It keeps receiving assignments: a new key reaches it.
    let survivor = (1..=3).find(|h| *h != host).unwrap();
    let before = key_ids(&info(&lab, 4));
    cli(&lab, survivor, &["swarm", "rotate-keys"]).unwrap();
    wait_until("the new key on h4", Duration::from_secs(5), || {
        let now = key_ids(&info(&lab, 4));
        (now.first() != before.first() && !now.is_empty()).then_some(())
    });
}

#[test]
fn key_rotation_reaches_every_node() {
    let lab = lab(4);
    lab.form_swarm_with(4, 2, &["--key-rotation-interval", "2s"])
        .unwrap();
    let mut seen_lamport = 0;
    for _ in 0..3 {
        // Wait for the next rotation on the leader's store...
        let (ring, _) = wait_until("a rotation", Duration::from_secs(6), || {
            let v = info(&lab, 1);
            let l = v["swarm"]["keys"][0]["lamport"].as_u64()?;
            (l > seen_lamport && key_ids(&v).len() == 3).then(|| (l, key_ids(&v)))
        });
        seen_lamport = ring.0;
        // ...then every node holds the same 3 newest keys within one
        // heartbeat (500 ms) plus slack.
        let (_, took) = wait_until("the same ring everywhere", Duration::from_secs(3), || {
            (1..=4)
                .all(|h| {
                    let ids = key_ids(&info(&lab, h));
                    ids == ring.1 || ids.first().is_some_and(|f| !ring.1.contains(f))
                })
                .then_some(())
        });
        assert!(
            took < Duration::from_millis(1500),
            "ring spread took {took:?}"
        );
    }
    // Keys never show up in logs or inspect output.
    let inspect = cli(&lab, 1, &["node", "inspect", "self"]).unwrap();
    assert!(!inspect.contains("key\""), "{inspect}");
    let log = std::fs::read_to_string(lab.host(1).unwrap().log).unwrap();
    assert!(!log.contains("key: ["), "key material in the log");
}

/// Try to open a session and read the first message.
async fn try_session(
    client: rustls::ClientConfig,
    addr: std::net::SocketAddr,
) -> Result<(), String> {
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(|e| e.to_string())?;
    let mut ep =
        quinn::Endpoint::client("0.0.0.0:0".parse().unwrap()).map_err(|e| e.to_string())?;
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = tokio::time::timeout(
        Duration::from_secs(3),
        ep.connect(addr, "shoal-manager").unwrap(),
    )
    .await
    .map_err(|_| "timeout".to_string())?
    .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&[0, 0, 0, 2, b'{', b'}'])
        .await
        .map_err(|e| e.to_string())?;
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(3), recv.read(&mut b)).await {
        Ok(Ok(Some(_))) => Ok(()),
        Ok(Ok(None)) => Err("closed".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

#[test]
fn strangers_cannot_open_sessions_and_garbage_does_not_hurt() {
    shoal_tls::install_crypto_provider();
    let lab = lab(3);
    lab.init_swarm(1).unwrap();
    let h1 = lab.host(1).unwrap();
    let addr: std::net::SocketAddr = format!("{}:2377", h1.addr).parse().unwrap();
    let roots_pem = std::fs::read_to_string(h1.data_dir.join("swarm/roots.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in shoal_tls::certs_from_pem(&roots_pem).unwrap() {
        roots.add(c).unwrap();
    }
    let roots = Arc::new(roots);
    let alpn = vec![b"shoal-session/1".to_vec()];

    // No certificate.
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.clone();
    assert!(
        in_netns(&h1.ns, try_session(cfg, addr)).is_err(),
        "a session without a certificate"
    );

    // A certificate of another cluster.
    let ca = shoal_tls::ClusterCa::generate("foreign").unwrap();
    let key = shoal_tls::NodeKey::generate().unwrap();
    let cert = ca
        .sign_csr(
            &key.csr_der().unwrap(),
            &shoal_tls::NodeId::generate(),
            shoal_tls::Role::Worker,
            shoal_tls::DEFAULT_CERT_VALIDITY,
        )
        .unwrap();
    use rustls_pki_types::pem::PemObject;
    let key_der = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.to_pem().as_bytes()).unwrap();
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert], key_der)
        .unwrap();
    cfg.alpn_protocols = alpn;
    assert!(
        in_netns(&h1.ns, try_session(cfg, addr)).is_err(),
        "a foreign certificate opened a session"
    );

    // A flood of garbage datagrams from h2 while h3's session goes on.
    let h2 = lab.host(2).unwrap();
    let flood = std::thread::spawn(move || {
        in_netns(&h2.ns, async move {
            use rand::RngCore;
            let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
            let mut rng = rand::rngs::OsRng;
            let deadline = Instant::now() + Duration::from_secs(4);
            let mut sent = 0u64;
            while Instant::now() < deadline {
                let mut buf = vec![0u8; 1 + (rng.next_u32() as usize % 1400)];
                rng.fill_bytes(&mut buf);
                // Some look like QUIC long headers (initial packets).
                if sent.is_multiple_of(2) {
                    buf[0] = 0xc0 | (buf[0] & 0x0f);
                }
                let _ = sock.send_to(&buf, addr).await;
                sent += 1;
                if sent.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
            sent
        })
    });
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        assert_eq!(
            statuses(&lab, 1)["h3"],
            "ready",
            "h3 marked down during the flood"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let sent = flood.join().unwrap();
    eprintln!("sent {sent} garbage datagrams");
    assert!(sent > 1000);
    assert_eq!(info(&lab, 3)["swarm"]["session_manager"], "10.77.0.1:2377");
    assert_eq!(statuses(&lab, 1)["h3"], "ready");
}
