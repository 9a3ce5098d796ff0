//! `image import FILE`: an image from an archive instead of a registry,
//! for hosts that cannot reach one. Two formats: an OCI image layout in a
//! tar (`skopeo copy … oci-archive:FILE:NAME`, and what `docker save`
//! writes since docker 25), and the older `docker save` layout (a
//! `manifest.json` naming a config file and layer tars). The archive is
//! unpacked into a scratch directory, every document is checked against
//! its digest (containerd checks the layers as they are written), and the
//! image is stored through the same path a pull takes.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::image::{Fetched, ImageInfo, Layers};
use crate::registry::{parse_reference, Manifest, OCI_MANIFEST};
use crate::{Result, Runtime, RuntimeError};

/// Annotations that name an image in an OCI layout's index.
const CONTAINERD_NAME: &str = "io.containerd.image.name";
const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One image of a `docker save` `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SavedImage {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// An unpacked archive: the image's documents and where each layer is.
struct Unpacked {
    fetched: Fetched,
    /// The name the archive gives the image, if any.
    name: Option<String>,
    layers: HashMap<String, PathBuf>,
}

fn bad(archive: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::BadImage {
        image: archive.display().to_string(),
        reason: reason.into(),
    }
}

fn sha256_file(path: &Path) -> std::io::Result<(String, i64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0i64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((format!("sha256:{:x}", h.finalize()), size));
        }
        h.update(&buf[..n]);
        size += n as i64;
    }
}

/// `blobs/<algorithm>/<hex>` of an OCI layout (a digest with a path in it
/// is refused).
fn blob_path(dir: &Path, digest: &str) -> Option<PathBuf> {
    let (alg, hex) = digest.split_once(':')?;
    let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric());
    (ok(alg) && ok(hex)).then(|| dir.join("blobs").join(alg).join(hex))
}

/// A document of the layout, checked against its digest.
fn read_blob(archive: &Path, dir: &Path, digest: &str) -> Result<Vec<u8>> {
    let path =
        blob_path(dir, digest).ok_or_else(|| bad(archive, format!("bad digest {digest:?}")))?;
    let bytes = std::fs::read(&path).map_err(|e| bad(archive, format!("blob {digest}: {e}")))?;
    let got = format!("sha256:{:x}", Sha256::digest(&bytes));
    if got != digest {
        return Err(bad(archive, format!("blob {digest} has digest {got}")));
    }
    Ok(bytes)
}

/// A file the archive names, inside the scratch directory.
fn inside(archive: &Path, dir: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if p.components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(bad(archive, format!("path {rel:?} leaves the archive")));
    }
    Ok(dir.join(p))
}

fn unpack_oci(archive: &Path, dir: &Path) -> Result<Unpacked> {
    let index = std::fs::read(dir.join("index.json"))
        .map_err(|e| bad(archive, format!("index.json: {e}")))?;
    let index = Manifest::parse(&archive.display().to_string(), &index)?;
    let entry = index
        .manifests
        .first()
        .ok_or_else(|| bad(archive, "index.json lists no image"))?;
    let name = entry
        .annotations
        .get(CONTAINERD_NAME)
        .or_else(|| entry.annotations.get(OCI_REF_NAME))
        // A bare tag (`1`) names no repository.
        .filter(|n| n.contains('/') || n.contains(':'))
        .cloned();
    let image = archive.display().to_string();
    let top = read_blob(archive, dir, &entry.digest)?;
    let top_m = Manifest::parse(&image, &top)?;
    let (manifest_digest, manifest) = if top_m.is_index() {
        let child = top_m.platform_entry(&image)?;
        (
            child.digest.clone(),
            read_blob(archive, dir, &child.digest)?,
        )
    } else {
        (entry.digest.clone(), top.clone())
    };
    let parsed = Manifest::parse(&image, &manifest)?;
    let config_digest = parsed
        .config
        .as_ref()
        .map(|c| c.digest.clone())
        .ok_or_else(|| bad(archive, "manifest has no config"))?;
    let config = read_blob(archive, dir, &config_digest)?;
    let mut layers = HashMap::new();
    for l in &parsed.layers {
        let p = blob_path(dir, &l.digest)
            .ok_or_else(|| bad(archive, format!("bad digest {:?}", l.digest)))?;
        layers.insert(l.digest.clone(), p);
    }
    Ok(Unpacked {
        fetched: Fetched {
            top: top.into(),
            top_digest: entry.digest.clone(),
            manifest: manifest.into(),
            manifest_digest,
            parsed,
            config,
        },
        name,
        layers,
    })
}

/// The older `docker save` layout: a manifest is made for it (OCI media
/// types; each layer tar as it is, gzip or not).
fn unpack_docker(archive: &Path, dir: &Path) -> Result<Unpacked> {
    let text = std::fs::read(dir.join("manifest.json"))
        .map_err(|e| bad(archive, format!("manifest.json: {e}")))?;
    let saved: Vec<SavedImage> =
        serde_json::from_slice(&text).map_err(|e| bad(archive, format!("manifest.json: {e}")))?;
    let img = saved
        .into_iter()
        .next()
        .ok_or_else(|| bad(archive, "manifest.json lists no image"))?;
    let config = std::fs::read(inside(archive, dir, &img.config)?)
        .map_err(|e| bad(archive, format!("{}: {e}", img.config)))?;
    let config_digest = format!("sha256:{:x}", Sha256::digest(&config));
    let mut layers = HashMap::new();
    let mut descs = Vec::new();
    for rel in &img.layers {
        let p = inside(archive, dir, rel)?;
        let (digest, size) = sha256_file(&p).map_err(|e| bad(archive, format!("{rel}: {e}")))?;
        let mut magic = [0u8; 2];
        let gzip = std::fs::File::open(&p)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
            && magic == [0x1f, 0x8b];
        let media = if gzip { OCI_LAYER_GZIP } else { OCI_LAYER };
        descs.push(serde_json::json!({"mediaType": media, "digest": digest, "size": size}));
        layers.insert(digest, p);
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": descs,
    });
    let manifest = serde_json::to_vec(&manifest).map_err(|e| bad(archive, e.to_string()))?;
    let digest = format!("sha256:{:x}", Sha256::digest(&manifest));
    let parsed = Manifest::parse(&archive.display().to_string(), &manifest)?;
    let manifest = Bytes::from(manifest);
    Ok(Unpacked {
        fetched: Fetched {
            top: manifest.clone(),
            top_digest: digest.clone(),
            manifest,
            manifest_digest: digest,
            parsed,
            config,
        },
        name: img.repo_tags.into_iter().next(),
        layers,
    })
}

fn unpack(archive: &Path, dir: &Path) -> Result<Unpacked> {
    let file =
        std::fs::File::open(archive).map_err(|e| bad(archive, format!("cannot open it: {e}")))?;
    // `unpack` keeps every entry inside `dir` (no `..`, no absolute paths).
    tar::Archive::new(file)
        .unpack(dir)
        .map_err(|e| bad(archive, format!("not a tar archive: {e}")))?;
    if dir.join("index.json").is_file() {
        unpack_oci(archive, dir)
    } else if dir.join("manifest.json").is_file() {
        unpack_docker(archive, dir)
    } else {
        Err(bad(
            archive,
            "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
        ))
    }
}

impl Runtime {
    /// Imports the image in `archive` under `name`, or the name the
    /// archive gives it.
    pub async fn import(&self, archive: &Path, name: Option<&str>) -> Result<ImageInfo> {
        let scratch = tempfile::Builder::new()
            .prefix("shoal-import-")
            .tempdir()
            .map_err(|e| RuntimeError::Invalid(format!("cannot make a scratch directory: {e}")))?;
        let (a, d) = (archive.to_path_buf(), scratch.path().to_path_buf());
        let u = tokio::task::spawn_blocking(move || unpack(&a, &d))
            .await
            .map_err(|e| RuntimeError::Invalid(format!("unpacking: {e}")))??;
        let given = name.map(str::to_string).or(u.name).ok_or_else(|| {
            bad(
                archive,
                "the archive names no image: give one (shoal image import FILE NAME[:TAG])",
            )
        })?;
        let name = parse_reference(&given)?.whole();
        let _one = self.pull_lock.lock().await;
        let lease = self.lease().await?;
        let result = self
            .store(&lease, &name, u.fetched, Layers::Files(&u.layers))
            .await;
        self.unlease(lease).await;
        result?;
        drop(scratch);
        self.image(&name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_paths_stay_in_the_layout() {
        let d = Path::new("/x");
        assert_eq!(
            blob_path(d, "sha256:ab12"),
            Some(PathBuf::from("/x/blobs/sha256/ab12"))
        );
        assert_eq!(blob_path(d, "sha256:../../etc/passwd"), None);
        assert_eq!(blob_path(d, "nocolon"), None);
        assert!(inside(Path::new("a.tar"), d, "../etc/passwd").is_err());
        assert!(inside(Path::new("a.tar"), d, "/etc/passwd").is_err());
        assert!(inside(Path::new("a.tar"), d, "abc/layer.tar").is_ok());
    }

    #[test]
    fn a_docker_save_archive_gets_a_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("l1")).unwrap();
        std::fs::write(d.join("l1/layer.tar"), b"not really a tar").unwrap();
        let config = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:x"]}}"#;
        std::fs::write(d.join("c.json"), config).unwrap();
        std::fs::write(
            d.join("manifest.json"),
            r#"[{"Config":"c.json","RepoTags":["app:1"],"Layers":["l1/layer.tar"]}]"#,
        )
        .unwrap();
        let u = unpack_docker(Path::new("a.tar"), d).unwrap();
        assert_eq!(u.name.as_deref(), Some("app:1"));
        assert_eq!(u.fetched.parsed.layers.len(), 1);
        assert_eq!(u.fetched.parsed.layers[0].media_type, OCI_LAYER);
        assert_eq!(u.fetched.parsed.layers[0].size, 16);
        let c = u.fetched.parsed.config.as_ref().unwrap();
        assert_eq!(c.digest, format!("sha256:{:x}", Sha256::digest(config)));
        assert_eq!(u.fetched.config, config);
        // A layer path out of the archive is refused.
        std::fs::write(
            d.join("manifest.json"),
            r#"[{"Config":"c.json","Layers":["../../etc/shadow"]}]"#,
        )
        .unwrap();
        assert!(unpack_docker(Path::new("a.tar"), d).is_err());
    }
}
