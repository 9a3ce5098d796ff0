//! PEM documents from disk and from the replicated state: `certs_from_pem`,
//! `NodeKey::from_pem`, `ClusterCa::from_pem` (cert, key) and
//! `NodeIdentity::from_pem` (cert, key, roots); the parts of one input are
//! split at `shoal_fuzz::SEP`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_tls::{ClusterCa, NodeIdentity, NodeKey};

fuzz_target!(init: shoal_fuzz::seed_hook("tls_pem"), |data: &[u8]| {
    let parts: Vec<String> = shoal_fuzz::split(data)
        .into_iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let first = parts.first().map(String::as_str).unwrap_or_default();
    if let Ok(certs) = shoal_tls::certs_from_pem(first) {
        for c in certs.iter().take(8) {
            let _ = shoal_tls::cert_info(c);
        }
    }
    let _ = NodeKey::from_pem(first);
    if let [cert, key, rest @ ..] = parts.as_slice() {
        let _ = ClusterCa::from_pem(cert, key);
        if let [roots, ..] = rest {
            let _ = NodeIdentity::from_pem(cert, key, roots);
        }
    }
});
