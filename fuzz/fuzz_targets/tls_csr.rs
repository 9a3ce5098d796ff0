//! Certificate signing requests from joining and renewing nodes:
//! `ClusterCa::sign_csr` with one fixed CA (CSR parse, self-signature
//! check, signing).
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_tls::{NodeId, Role, DEFAULT_CERT_VALIDITY};

fuzz_target!(init: shoal_fuzz::seed_hook("tls_csr"), |data: &[u8]| {
    let node: NodeId = match "fuzznode00000000000000000".parse() {
        Ok(n) => n,
        Err(e) => panic!("fixed node id: {e}"),
    };
    let ca = shoal_fuzz::ca();
    if let Ok(cert) = ca.sign_csr(data, &node, Role::Worker, DEFAULT_CERT_VALIDITY) {
        let _ = shoal_tls::cert_info(&cert);
    }
});
