//! What registries and image documents look like: references as docker
//! names them, the distribution client, manifests, indexes and image
//! configs (as much of them as running an image needs), and containerd's
//! chain ids. [`crate::image`] writes what these describe into containerd.

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{source_chain, Result, RuntimeError};

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const ACCEPT: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// How registries are reached, as docker's daemon reaches them.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    /// Registries (`host[:port]`) reached over plain HTTP.
    pub insecure: Vec<String>,
    /// Extra CA roots per registry, in docker's layout:
    /// `<certs_dir>/<host[:port]>/*.crt`.
    pub certs_dir: std::path::PathBuf,
    /// Credentials in docker's `config.json` format (what `docker login`
    /// writes): `{"auths": {"host[:port]": {"auth": base64(user:password)}}}`.
    pub auth_file: std::path::PathBuf,
}

impl Registries {
    /// A distribution client for `registry`: plain HTTP if it is insecure,
    /// else TLS with the system's roots and its own CA roots, if any.
    pub(crate) fn client(&self, registry: &str) -> oci_client::Client {
        // The client's TLS uses the process-wide provider: ring, as the
        // rest of Shoal (a no-op when one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.insecure.clone()),
            extra_root_certificates: self.roots(registry),
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        })
    }

    /// `*.crt` files (PEM) of `<certs_dir>/<registry>/`.
    fn roots(&self, registry: &str) -> Vec<Certificate> {
        let Ok(dir) = std::fs::read_dir(self.certs_dir.join(registry)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in dir.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "crt") {
                match std::fs::read(&p) {
                    Ok(data) => out.push(Certificate {
                        encoding: CertificateEncoding::Pem,
                        data,
                    }),
                    Err(e) => tracing::warn!(file = %p.display(), "cannot read a registry CA: {e}"),
                }
            }
        }
        out
    }

    /// The credentials `auth_file` holds for `registry` (anonymous when
    /// it has none, or there is no such file).
    pub(crate) fn auth(&self, registry: &str) -> RegistryAuth {
        let Ok(text) = std::fs::read(&self.auth_file) else {
            return RegistryAuth::Anonymous;
        };
        match auth_for(&text, registry) {
            Ok(Some((user, password))) => RegistryAuth::Basic(user, password),
            Ok(None) => RegistryAuth::Anonymous,
            Err(e) => {
                tracing::warn!(file = %self.auth_file.display(), "registry credentials: {e}");
                RegistryAuth::Anonymous
            }
        }
    }
}

/// `user:password` for `registry` in a docker `config.json`; its keys may
/// be URLs (`https://index.docker.io/v1/` is Docker Hub).
fn auth_for(text: &[u8], registry: &str) -> std::result::Result<Option<(String, String)>, String> {
    use base64::Engine;
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        auths: std::collections::BTreeMap<String, Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        #[serde(default)]
        auth: String,
        #[serde(default)]
        username: String,
        #[serde(default)]
        password: String,
    }
    let f: File = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    let host = |k: &str| {
        let k = k
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let k = k.split('/').next().unwrap_or(k);
        match k {
            "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
            other => other.to_string(),
        }
    };
    let Some(e) = f
        .auths
        .iter()
        .find(|(k, _)| host(k) == registry)
        .map(|(_, e)| e)
    else {
        return Ok(None);
    };
    if !e.username.is_empty() {
        return Ok(Some((e.username.clone(), e.password.clone())));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(e.auth.trim())
        .map_err(|err| format!("{registry}: auth is not base64: {err}"))?;
    let text = String::from_utf8(raw).map_err(|_| format!("{registry}: auth is not UTF-8"))?;
    let (u, p) = text
        .split_once(':')
        .ok_or_else(|| format!("{registry}: auth is not user:password"))?;
    Ok(Some((u.to_string(), p.to_string())))
}

/// Why a registry call failed, in the words docker uses: a 401 is the
/// registry's `unauthorized: authentication required` (the client's own
/// text names only the URL).
pub(crate) fn pull_reason(e: &oci_client::errors::OciDistributionError) -> String {
    match e {
        oci_client::errors::OciDistributionError::UnauthorizedError { url } => {
            format!("unauthorized: authentication required ({url})")
        }
        other => source_chain(other),
    }
}

/// The digest a reference names in its registry now (docker pins a
/// service's tag to it at create): `name@sha256:…`. Needs no containerd.
pub async fn resolve(reference: &str, registries: &Registries) -> Result<String> {
    let r = parse_reference(reference)?;
    if r.digest().is_some() {
        return Ok(r.whole());
    }
    let digest = registries
        .client(r.registry())
        .fetch_manifest_digest(&r, &registries.auth(r.registry()))
        .await
        .map_err(|e| RuntimeError::Pull {
            image: r.whole(),
            reason: pull_reason(&e),
        })?;
    Ok(format!("{}@{digest}", r.whole()))
}

/// A reference as docker reads it: `busybox` is
/// `docker.io/library/busybox:latest`; `host:5000/app@sha256:…` keeps its
/// digest.
pub fn parse_reference(s: &str) -> Result<Reference> {
    crate::reference::parse(s).map_err(|e| RuntimeError::Reference(format!("{s:?}: {e}")))
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Desc {
    #[serde(default)]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    pub(crate) size: i64,
    #[serde(default)]
    pub(crate) platform: Option<Platform>,
    #[serde(default)]
    pub(crate) annotations: std::collections::HashMap<String, String>,
}

#[derive(Deserialize, Debug)]
pub(crate) struct Platform {
    #[serde(default)]
    pub(crate) architecture: String,
    #[serde(default)]
    pub(crate) os: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    #[serde(default)]
    pub(crate) media_type: String,
    #[serde(default)]
    pub(crate) config: Option<Desc>,
    #[serde(default)]
    pub(crate) layers: Vec<Desc>,
    #[serde(default)]
    pub(crate) manifests: Vec<Desc>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct RunConfig {
    pub(crate) entrypoint: Option<Vec<String>>,
    pub(crate) cmd: Option<Vec<String>>,
    pub(crate) env: Option<Vec<String>>,
    pub(crate) working_dir: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) healthcheck: Option<crate::image::ImageHealth>,
}

#[derive(Deserialize)]
pub(crate) struct Config {
    #[serde(default)]
    pub(crate) created: Option<String>,
    #[serde(default)]
    pub(crate) config: Option<RunConfig>,
    pub(crate) rootfs: RootFs,
}

#[derive(Deserialize)]
pub(crate) struct RootFs {
    #[serde(default)]
    pub(crate) diff_ids: Vec<String>,
}

impl Manifest {
    pub(crate) fn parse(image: &str, bytes: &[u8]) -> Result<Manifest> {
        let mut m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| RuntimeError::BadImage {
                image: image.into(),
                reason: format!("manifest: {e}"),
            })?;
        if m.media_type.is_empty() {
            m.media_type = if m.manifests.is_empty() {
                OCI_MANIFEST
            } else {
                OCI_INDEX
            }
            .into();
        }
        Ok(m)
    }

    pub(crate) fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_LIST
    }

    /// The linux/amd64 entry of an index.
    pub(crate) fn platform_entry(&self, image: &str) -> Result<&Desc> {
        self.manifests
            .iter()
            .find(|d| {
                d.platform.as_ref().is_none_or(|p| {
                    p.os == "linux"
                        && p.architecture == std::env::consts::ARCH.replace("x86_64", "amd64")
                })
            })
            .ok_or_else(|| RuntimeError::BadImage {
                image: image.into(),
                reason: format!(
                    "no matching manifest for linux/{} in the manifest list entries",
                    std::env::consts::ARCH.replace("x86_64", "amd64")
                ),
            })
    }
}

/// containerd's chain ids: the first layer's diff id, then
/// `sha256(parent + " " + diff id)`.
pub(crate) fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => {
                let h = Sha256::digest(format!("{parent} {d}").as_bytes());
                format!("sha256:{}", hex(&h))
            }
        };
        out.push(next);
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_as_docker_does() {
        assert_eq!(
            parse_reference("busybox").unwrap().whole(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            parse_reference("10.77.0.1:5000/shoal/echo:1")
                .unwrap()
                .whole(),
            "10.77.0.1:5000/shoal/echo:1"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(&format!("reg:5000/app@{d}")).unwrap();
        assert_eq!(r.digest(), Some(d.as_str()));
        assert!(parse_reference("library/Busybox").is_err());
        assert!(parse_reference("").is_err());
    }

    #[test]
    fn credentials_come_from_a_docker_config_json() {
        let f = br#"{"auths": {
            "10.0.0.1:5443": {"auth": "YWxpY2U6czNjcmV0"},
            "https://index.docker.io/v1/": {"username": "bob", "password": "pw"},
            "bad:1": {"auth": "%%%"}}}"#;
        let s = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
        assert_eq!(auth_for(f, "10.0.0.1:5443").unwrap(), s("alice", "s3cret"));
        assert_eq!(auth_for(f, "docker.io").unwrap(), s("bob", "pw"));
        assert_eq!(auth_for(f, "other:5000").unwrap(), None);
        assert!(auth_for(f, "bad:1").unwrap_err().contains("not base64"));
        assert!(auth_for(b"{", "x").is_err());
    }

    #[test]
    fn chain_ids_follow_containerd() {
        let a = format!("sha256:{}", "1".repeat(64));
        let b = format!("sha256:{}", "2".repeat(64));
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        let want = Sha256::digest(format!("{a} {b}").as_bytes());
        assert_eq!(c[1], format!("sha256:{}", hex(&want)));
    }

    #[test]
    fn an_index_picks_linux_amd64() {
        let idx = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:arm","size":1,"platform":{"architecture":"arm64","os":"linux"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:amd","size":1,"platform":{"architecture":"amd64","os":"linux"}}]}"#;
        let m = Manifest::parse("x", idx).unwrap();
        assert!(m.is_index());
        assert_eq!(m.platform_entry("x").unwrap().digest, "sha256:amd");
        let arm_only = br#"{"manifests":[{"digest":"sha256:arm","size":1,"platform":{"architecture":"arm64","os":"linux"}}]}"#;
        let e = Manifest::parse("x", arm_only)
            .unwrap()
            .platform_entry("x")
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("no matching manifest for linux/amd64"),
            "{e}"
        );
    }
}
