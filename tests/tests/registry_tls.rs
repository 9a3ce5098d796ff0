//! Pulls from a registry that serves TLS with its own CA and asks for
//! credentials (docker-registry with `http.tls` and `auth.htpasswd`): no
//! CA root → the certificate is refused; the CA from `registry_certs_dir`
//! (docker's `<dir>/<host:port>/ca.crt`) but no credentials →
//! `unauthorized`; credentials from a docker `config.json` too → the pull
//! and the digest resolution work. Needs root, containerd, runc,
//! docker-registry, skopeo, busybox-static and the built binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use shoal_lab::{image, registry_addr, Lab, RegistryOptions};
use shoal_runtime::{Registries, Runtime};
use shoal_tests::{in_netns, start};

/// A CA, and a server certificate for `ip` it signed: (CA PEM, cert
/// PEM, key PEM).
fn certificates(ip: std::net::Ipv4Addr) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_ca_cert_der(ca_cert.der(), &ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::default();
    server.subject_alt_names = vec![SanType::IpAddress(ip.into())];
    let cert = server.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[test]
fn a_tls_registry_with_its_own_ca_and_credentials() {
    let lab = start(Lab::builder().nodes(1).containerd(true));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let addr = registry_addr(1);
    let (ca, cert, key) = certificates(*addr.ip());
    std::fs::write(d.join("server.crt"), cert).unwrap();
    std::fs::write(d.join("server.key"), key).unwrap();
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    std::fs::write(d.join("htpasswd"), format!("alice:{hash}\n")).unwrap();
    let reg = lab
        .start_registry_with(
            1,
            &RegistryOptions {
                tls: Some((d.join("server.crt"), d.join("server.key"))),
                htpasswd: Some(d.join("htpasswd")),
            },
        )
        .unwrap();
    let layout = image::build_echo_image(&d.join("echo")).unwrap();
    let reference = format!("{reg}/shoal/echo:1");
    image::push_as(&lab, 1, &layout, &reference, Some("alice:s3cret")).unwrap();

    // docker's layouts: certs.d/<host:port>/ca.crt, config.json auths.
    let certs = d.join("certs.d");
    std::fs::create_dir_all(certs.join(&reg)).unwrap();
    std::fs::write(certs.join(&reg).join("ca.crt"), ca).unwrap();
    let auth_file = d.join("config.json");
    std::fs::write(
        &auth_file,
        format!(r#"{{"auths": {{"{reg}": {{"auth": "YWxpY2U6czNjcmV0"}}}}}}"#),
    )
    .unwrap();

    let socket = lab.containerd_socket(1).unwrap();
    let ns = lab.host(1).unwrap().ns;
    in_netns(&ns, async move {
        let connect = |r: Registries| {
            let socket = socket.clone();
            async move { Runtime::connect(&socket, r).await.unwrap() }
        };
        let e = connect(Registries::default())
            .await
            .pull(&reference)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("UnknownIssuer") || e.contains("certificate"),
            "{e}"
        );

        let with_ca = Registries {
            certs_dir: certs.clone(),
            auth_file: d.join("none.json"),
            ..Default::default()
        };
        let e = connect(with_ca.clone())
            .await
            .pull(&reference)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.to_lowercase().contains("unauthorized"), "{e}");

        let full = Registries {
            auth_file,
            ..with_ca
        };
        let rt = connect(full.clone()).await;
        let img = rt.pull(&reference).await.unwrap();
        assert_eq!(img.config.entrypoint, vec!["/bin/echo-server".to_string()]);
        let pinned = shoal_runtime::resolve(&reference, &full).await.unwrap();
        assert!(
            pinned.starts_with(&format!("{reference}@sha256:")),
            "{pinned}"
        );
    });
}
