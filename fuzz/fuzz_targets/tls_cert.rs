//! Certificates (DER) presented by peers: `shoal_tls::peer_info` (leaf of
//! the chain) and `cert_info`, then `needs_renewal` on what they return.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_tls::CertificateDer;

fuzz_target!(init: shoal_fuzz::seed_hook("tls_cert"), |data: &[u8]| {
    let chain = [CertificateDer::from(data.to_vec())];
    if let Ok(info) = shoal_tls::peer_info(Some(&chain)) {
        let _ = shoal_tls::needs_renewal(&info, std::time::SystemTime::now());
    }
    let _ = shoal_tls::cert_info(data);
});
