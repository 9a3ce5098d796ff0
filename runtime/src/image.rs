//! Images: references as docker names them, pulls from an OCI
//! distribution registry into containerd (content store, snapshots, image
//! record), and reading an image's config back for a container.
//!
//! A pull holds a containerd lease, so nothing it wrote is collected before
//! the image record and the garbage-collection labels refer to it: the
//! manifest names its config and layers, the config names the unpacked
//! top snapshot (its chain id), each layer its uncompressed digest.

use std::collections::HashMap;

use bytes::Bytes;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, DeleteImageRequest, GetImageRequest, Image, InfoRequest,
    ListImagesRequest, ReadContentRequest, UpdateImageRequest, WriteAction, WriteContentRequest,
};
use containerd_client::types::Descriptor;
use futures::stream::BoxStream;
use futures::StreamExt;
use oci_client::Reference;

use crate::registry::{chain_ids, parse_reference, pull_reason, Config, Desc, Manifest, ACCEPT};
use crate::{cd_err, req, Result, Runtime, RuntimeError, SNAPSHOTTER};

/// Largest manifest or config read into memory.
const MAX_DOCUMENT: usize = 4 << 20;
/// Bytes per content write message (gRPC's default limit is 4 MiB).
const CHUNK: usize = 1 << 20;

/// What an image says about running it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageConfig {
    /// `ENTRYPOINT`.
    pub entrypoint: Vec<String>,
    /// `CMD`.
    pub cmd: Vec<String>,
    /// `ENV` (`K=V`).
    pub env: Vec<String>,
    /// `WORKDIR` (empty: `/`).
    pub working_dir: String,
    /// `USER` (empty: root).
    pub user: String,
    /// `HEALTHCHECK`.
    #[serde(default)]
    pub healthcheck: Option<ImageHealth>,
}

/// An image's `HEALTHCHECK`, as docker writes it in the config (durations
/// in nanoseconds; zero or less: the default).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ImageHealth {
    /// `["CMD", …]`, `["CMD-SHELL", cmd]` or `["NONE"]`.
    pub test: Vec<String>,
    /// Between probes.
    pub interval: i64,
    /// Longest probe.
    pub timeout: i64,
    /// Grace after start.
    pub start_period: i64,
    /// Failures in a row that make it unhealthy.
    pub retries: i64,
}

/// An image in containerd.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageInfo {
    /// Its name in containerd: the normalized reference
    /// (`docker.io/library/busybox:latest`, `host:5000/app@sha256:…`).
    pub name: String,
    /// Digest of the manifest (or index) the name points at.
    pub digest: String,
    /// Docker's IMAGE ID: the config's digest.
    pub id: String,
    /// Compressed size of its layers, in bytes.
    pub size: u64,
    /// `created` of its config (RFC 3339), if any.
    pub created: Option<String>,
    /// How to run it.
    pub config: ImageConfig,
    /// Chain id of its top layer: the parent of a container's snapshot.
    pub chain_id: String,
}

fn descriptor(media_type: &str, digest: &str, size: i64) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: digest.into(),
        size,
        ..Default::default()
    }
}

/// An image's documents, fetched: what [`Runtime::store`] writes.
pub(crate) struct Fetched {
    /// What the name points at: a manifest, or an index of them.
    pub(crate) top: Bytes,
    pub(crate) top_digest: String,
    /// The linux/amd64 manifest (the same as `top` without an index).
    pub(crate) manifest: Bytes,
    pub(crate) manifest_digest: String,
    pub(crate) parsed: Manifest,
    /// The config blob the manifest names.
    pub(crate) config: Vec<u8>,
}

/// Where a stored image's layers come from.
pub(crate) enum Layers<'a> {
    /// Its registry.
    Registry {
        client: &'a oci_client::Client,
        reference: &'a Reference,
    },
    /// Files of an unpacked archive, by digest.
    Files(&'a HashMap<String, std::path::PathBuf>),
}

impl Layers<'_> {
    async fn open(
        &self,
        image: &str,
        l: &Desc,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>> {
        match self {
            Layers::Registry { client, reference } => Ok(client
                .pull_blob_stream(reference, l.digest.as_str())
                .await
                .map_err(|e| RuntimeError::Pull {
                    image: image.into(),
                    reason: pull_reason(&e),
                })?
                .stream
                .boxed()),
            Layers::Files(files) => {
                let bad = |reason: String| RuntimeError::BadImage {
                    image: image.into(),
                    reason,
                };
                let path = files
                    .get(&l.digest)
                    .ok_or_else(|| bad(format!("no file for layer {}", l.digest)))?;
                let f = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| bad(format!("layer {}: {e}", l.digest)))?;
                Ok(tokio_util::io::ReaderStream::new(f).boxed())
            }
        }
    }
}

fn config_of<'m>(image: &str, m: &'m Manifest) -> Result<&'m Desc> {
    m.config.as_ref().ok_or_else(|| RuntimeError::BadImage {
        image: image.into(),
        reason: "manifest has no config".into(),
    })
}

fn not_found(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::NotFound
}

impl Runtime {
    /// Pulls an image (nothing is fetched twice: blobs and layers already
    /// in containerd are kept) and records it under its normalized name.
    pub async fn pull(&self, reference: &str) -> Result<ImageInfo> {
        let r = parse_reference(reference)?;
        let name = r.whole();
        let _one = self.pull_lock.lock().await;
        let lease = self.lease().await?;
        let result = self.pull_leased(&r, &name, &lease).await;
        self.unlease(lease).await;
        result?;
        self.image(&name).await
    }

    /// A fresh containerd lease (expiring in an hour, should the daemon
    /// die first): nothing made under it is collected before a record (an
    /// image, a container) refers to it. [`Runtime::unlease`] ends it.
    pub(crate) async fn lease(&self) -> Result<String> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let lease = format!("shoal-{}-{n}", std::process::id());
        let expire = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        let expire = expire
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        self.unlease(lease.clone()).await;
        LeasesClient::new(self.channel.clone())
            .create(req(
                containerd_client::services::v1::CreateRequest {
                    id: lease.clone(),
                    labels: HashMap::from([("containerd.io/gc.expire".into(), expire)]),
                },
                None,
            ))
            .await
            .map_err(cd_err("create lease"))?;
        Ok(lease)
    }

    pub(crate) async fn unlease(&self, lease: String) {
        let _ = LeasesClient::new(self.channel.clone())
            .delete(req(
                containerd_client::services::v1::DeleteRequest {
                    id: lease,
                    sync: false,
                },
                None,
            ))
            .await;
    }

    async fn pull_leased(&self, r: &Reference, name: &str, lease: &str) -> Result<()> {
        let client = self.registries.client(r.registry());
        let auth = self.registries.auth(r.registry());
        let pull_err = |e: oci_client::errors::OciDistributionError| RuntimeError::Pull {
            image: name.into(),
            reason: pull_reason(&e),
        };
        let (top, top_digest) = client
            .pull_manifest_raw(r, &auth, ACCEPT)
            .await
            .map_err(pull_err)?;
        if let Some(want) = r.digest() {
            if want != top_digest {
                return Err(RuntimeError::Pull {
                    image: name.into(),
                    reason: format!("manifest digest {top_digest} does not match {want}"),
                });
            }
        }
        let top_m = Manifest::parse(name, &top)?;
        let (manifest_bytes, manifest_digest, manifest) = if top_m.is_index() {
            let entry = top_m.platform_entry(name)?;
            let child = r.clone_with_digest(entry.digest.clone());
            let (b, d) = client
                .pull_manifest_raw(&child, &auth, ACCEPT)
                .await
                .map_err(pull_err)?;
            let m = Manifest::parse(name, &b)?;
            (b, d, m)
        } else {
            (top.clone(), top_digest.clone(), top_m)
        };
        let config_desc = config_of(name, &manifest)?;
        let mut config = Vec::new();
        client
            .pull_blob(r, config_desc.digest.as_str(), &mut config)
            .await
            .map_err(pull_err)?;
        let fetched = Fetched {
            top,
            top_digest,
            manifest: manifest_bytes,
            manifest_digest,
            parsed: manifest,
            config,
        };
        let layers = Layers::Registry {
            client: &client,
            reference: r,
        };
        self.store(lease, name, fetched, layers).await
    }

    /// Writes an image into containerd under `lease`: its layers (from
    /// `layer`, unless containerd has them), config, manifest and index
    /// with the garbage-collection labels, the unpacked snapshots, and
    /// the image record `name`.
    pub(crate) async fn store(
        &self,
        lease: &str,
        name: &str,
        f: Fetched,
        layers: Layers<'_>,
    ) -> Result<()> {
        let manifest = &f.parsed;
        let config_desc = config_of(name, manifest)?;
        let config: Config =
            serde_json::from_slice(&f.config).map_err(|e| RuntimeError::BadImage {
                image: name.into(),
                reason: format!("config: {e}"),
            })?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(RuntimeError::BadImage {
                image: name.into(),
                reason: format!(
                    "{} layers but {} diff ids in the config",
                    manifest.layers.len(),
                    diff_ids.len()
                ),
            });
        }
        let chains = chain_ids(diff_ids);

        // Blobs, leaves first: what refers to a blob is written after it.
        for (l, diff_id) in manifest.layers.iter().zip(diff_ids) {
            if self.has_content(&l.digest).await? {
                continue;
            }
            let stream = layers.open(name, l).await?;
            let labels = HashMap::from([("containerd.io/uncompressed".into(), diff_id.clone())]);
            self.write_content(lease, &l.digest, l.size, labels, stream)
                .await?;
        }
        let mut labels = HashMap::new();
        if let Some(top_chain) = chains.last() {
            labels.insert(
                format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
                top_chain.clone(),
            );
        }
        self.write_bytes(lease, &config_desc.digest, f.config.into(), labels)
            .await?;
        let mut labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_string(),
            config_desc.digest.clone(),
        )]);
        for (i, l) in manifest.layers.iter().enumerate() {
            labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest.clone(),
            );
        }
        self.write_bytes(lease, &f.manifest_digest, f.manifest.clone(), labels)
            .await?;
        if f.top_digest != f.manifest_digest {
            let labels = HashMap::from([(
                "containerd.io/gc.ref.content.m.0".to_string(),
                f.manifest_digest.clone(),
            )]);
            self.write_bytes(lease, &f.top_digest, f.top.clone(), labels)
                .await?;
        }

        // Layers unpacked into snapshots named by chain id.
        for (i, l) in manifest.layers.iter().enumerate() {
            let parent = if i == 0 { "" } else { chains[i - 1].as_str() };
            self.unpack(lease, name, l, &diff_ids[i], &chains[i], parent)
                .await?;
        }

        // The image record.
        let top_media = Manifest::parse(name, &f.top)?.media_type;
        let image = Image {
            name: name.into(),
            target: Some(descriptor(&top_media, &f.top_digest, f.top.len() as i64)),
            ..Default::default()
        };
        let mut images = ImagesClient::new(self.channel.clone());
        match images
            .create(req(
                CreateImageRequest {
                    image: Some(image.clone()),
                    ..Default::default()
                },
                Some(lease),
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => images
                .update(req(
                    UpdateImageRequest {
                        image: Some(image),
                        ..Default::default()
                    },
                    Some(lease),
                ))
                .await
                .map(|_| ())
                .map_err(cd_err("update image")),
            Err(s) => Err(cd_err("create image")(s)),
        }
    }

    async fn unpack(
        &self,
        lease: &str,
        image: &str,
        layer: &Desc,
        diff_id: &str,
        chain: &str,
        parent: &str,
    ) -> Result<()> {
        let mut snaps = SnapshotsClient::new(self.channel.clone());
        let stat = snaps
            .stat(req(
                StatSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: chain.into(),
                },
                Some(lease),
            ))
            .await;
        match stat {
            Ok(_) => return Ok(()),
            Err(s) if not_found(&s) => {}
            Err(s) => return Err(cd_err("stat snapshot")(s)),
        }
        let key = format!("shoal-extract-{}-{chain}", std::process::id());
        let _ = snaps
            .remove(req(
                RemoveSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.clone(),
                },
                Some(lease),
            ))
            .await;
        let mounts = snaps
            .prepare(req(
                PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.clone(),
                    parent: parent.into(),
                    labels: HashMap::new(),
                },
                Some(lease),
            ))
            .await
            .map_err(cd_err("prepare snapshot"))?
            .into_inner()
            .mounts;
        let applied = DiffClient::new(self.channel.clone())
            .apply(req(
                ApplyRequest {
                    diff: Some(descriptor(&layer.media_type, &layer.digest, layer.size)),
                    mounts,
                    ..Default::default()
                },
                Some(lease),
            ))
            .await;
        let result = match applied {
            Ok(a) => {
                let got = a.into_inner().applied.map(|d| d.digest).unwrap_or_default();
                if got == diff_id {
                    snaps
                        .commit(req(
                            CommitSnapshotRequest {
                                snapshotter: SNAPSHOTTER.into(),
                                name: chain.into(),
                                key: key.clone(),
                                labels: HashMap::new(),
                            },
                            Some(lease),
                        ))
                        .await
                        .map(|_| ())
                        .map_err(cd_err("commit snapshot"))
                } else {
                    Err(RuntimeError::BadImage {
                        image: image.into(),
                        reason: format!(
                            "layer {} unpacks to {got}, the config says {diff_id}",
                            layer.digest
                        ),
                    })
                }
            }
            Err(s) => Err(cd_err(format!("apply layer {}", layer.digest))(s)),
        };
        if result.is_err() {
            let _ = snaps
                .remove(req(
                    RemoveSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key,
                    },
                    Some(lease),
                ))
                .await;
        }
        result
    }

    async fn has_content(&self, digest: &str) -> Result<bool> {
        match ContentClient::new(self.channel.clone())
            .info(req(
                InfoRequest {
                    digest: digest.into(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if not_found(&s) => Ok(false),
            Err(s) => Err(cd_err("content info")(s)),
        }
    }

    async fn write_bytes(
        &self,
        lease: &str,
        digest: &str,
        data: Bytes,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        if self.has_content(digest).await? {
            return Ok(());
        }
        let size = data.len() as i64;
        let chunks: Vec<std::io::Result<Bytes>> = (0..data.len())
            .step_by(CHUNK)
            .map(|i| Ok(data.slice(i..(i + CHUNK).min(data.len()))))
            .collect();
        self.write_content(
            lease,
            digest,
            size,
            labels,
            futures::stream::iter(chunks).boxed(),
        )
        .await
    }

    /// Streams a blob into the content store; containerd checks its size
    /// and digest at commit.
    async fn write_content(
        &self,
        lease: &str,
        digest: &str,
        size: i64,
        labels: HashMap<String, String>,
        mut source: BoxStream<'static, std::io::Result<Bytes>>,
    ) -> Result<()> {
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
        let reference = format!("shoal-{digest}");
        let expected = digest.to_string();
        let feeder = tokio::spawn(async move {
            let mut offset = 0i64;
            while let Some(chunk) = source.next().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                let n = chunk.len() as i64;
                let msg = WriteContentRequest {
                    action: WriteAction::Write as i32,
                    r#ref: reference.clone(),
                    total: size,
                    expected: expected.clone(),
                    offset,
                    data: chunk.to_vec(),
                    labels: HashMap::new(),
                };
                offset += n;
                if tx.send(msg).await.is_err() {
                    return Err("containerd closed the write".to_string());
                }
            }
            let commit = WriteContentRequest {
                action: WriteAction::Commit as i32,
                r#ref: reference,
                total: size,
                expected,
                offset,
                data: Vec::new(),
                labels,
            };
            tx.send(commit)
                .await
                .map_err(|_| "containerd closed the write".to_string())
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut content = ContentClient::new(self.channel.clone());
        let answer = content.write(req(stream, Some(lease))).await;
        let mut committed = false;
        let mut failure = None;
        match answer {
            Ok(resp) => {
                let mut resp = resp.into_inner();
                loop {
                    match resp.message().await {
                        Ok(Some(m)) => {
                            if m.action == WriteAction::Commit as i32 {
                                committed = true;
                            }
                        }
                        Ok(None) => break,
                        Err(s) if s.code() == tonic::Code::AlreadyExists => {
                            committed = true;
                            break;
                        }
                        Err(s) => {
                            failure = Some(s.message().to_string());
                            break;
                        }
                    }
                }
            }
            Err(s) if s.code() == tonic::Code::AlreadyExists => committed = true,
            Err(s) => failure = Some(s.message().to_string()),
        }
        let fed = feeder.await.unwrap_or_else(|e| Err(e.to_string()));
        match (committed, failure, fed) {
            (true, _, _) => Ok(()),
            (false, _, Err(e)) => Err(RuntimeError::Pull {
                image: digest.into(),
                reason: e,
            }),
            (false, Some(f), _) => {
                Err(cd_err(format!("write {digest}"))(tonic::Status::unknown(f)))
            }
            (false, None, Ok(())) => Err(RuntimeError::Containerd {
                what: format!("write {digest}"),
                status: "ended without a commit".into(),
            }),
        }
    }

    async fn read_content(&self, digest: &str) -> Result<Vec<u8>> {
        let mut stream = ContentClient::new(self.channel.clone())
            .read(req(
                ReadContentRequest {
                    digest: digest.into(),
                    offset: 0,
                    size: 0,
                },
                None,
            ))
            .await
            .map_err(cd_err(format!("read {digest}")))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(m) = stream
            .message()
            .await
            .map_err(cd_err(format!("read {digest}")))?
        {
            out.extend_from_slice(&m.data);
            if out.len() > MAX_DOCUMENT {
                return Err(RuntimeError::BadImage {
                    image: digest.into(),
                    reason: format!("document larger than {MAX_DOCUMENT} bytes"),
                });
            }
        }
        Ok(out)
    }

    /// An image by name (or any reference that normalizes to it).
    pub async fn image(&self, reference: &str) -> Result<ImageInfo> {
        let name = parse_reference(reference)?.whole();
        let got = ImagesClient::new(self.channel.clone())
            .get(req(GetImageRequest { name: name.clone() }, None))
            .await;
        let image = match got {
            Ok(g) => g.into_inner().image,
            Err(s) if not_found(&s) => None,
            Err(s) => return Err(cd_err("get image")(s)),
        }
        .ok_or_else(|| RuntimeError::NoSuchImage(reference.into()))?;
        self.describe(image).await
    }

    async fn describe(&self, image: Image) -> Result<ImageInfo> {
        let name = image.name.clone();
        let target = image.target.ok_or_else(|| RuntimeError::BadImage {
            image: name.clone(),
            reason: "image record has no target".into(),
        })?;
        let mut m = Manifest::parse(&name, &self.read_content(&target.digest).await?)?;
        if m.is_index() {
            let d = m.platform_entry(&name)?.digest.clone();
            m = Manifest::parse(&name, &self.read_content(&d).await?)?;
        }
        let config_digest =
            m.config
                .as_ref()
                .map(|c| c.digest.clone())
                .ok_or_else(|| RuntimeError::BadImage {
                    image: name.clone(),
                    reason: "manifest has no config".into(),
                })?;
        let config: Config = serde_json::from_slice(&self.read_content(&config_digest).await?)
            .map_err(|e| RuntimeError::BadImage {
                image: name.clone(),
                reason: format!("config: {e}"),
            })?;
        let run = config.config.unwrap_or_default();
        Ok(ImageInfo {
            name,
            digest: target.digest,
            id: config_digest,
            size: m.layers.iter().map(|l| l.size.max(0) as u64).sum(),
            created: config.created,
            chain_id: chain_ids(&config.rootfs.diff_ids).pop().unwrap_or_default(),
            config: ImageConfig {
                entrypoint: run.entrypoint.unwrap_or_default(),
                cmd: run.cmd.unwrap_or_default(),
                env: run.env.unwrap_or_default(),
                working_dir: run.working_dir.unwrap_or_default(),
                user: run.user.unwrap_or_default(),
                healthcheck: run.healthcheck,
            },
        })
    }

    /// Every image in Shoal's namespace.
    pub async fn images(&self) -> Result<Vec<ImageInfo>> {
        let list = ImagesClient::new(self.channel.clone())
            .list(req(ListImagesRequest { filters: vec![] }, None))
            .await
            .map_err(cd_err("list images"))?
            .into_inner()
            .images;
        let mut out = Vec::new();
        for i in list {
            out.push(self.describe(i).await?);
        }
        Ok(out)
    }

    /// Removes an image record (containerd collects what only it used).
    pub async fn remove_image(&self, reference: &str) -> Result<()> {
        let name = parse_reference(reference)?.whole();
        match ImagesClient::new(self.channel.clone())
            .delete(req(
                DeleteImageRequest {
                    name,
                    sync: true,
                    ..Default::default()
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if not_found(&s) => Err(RuntimeError::NoSuchImage(reference.into())),
            Err(s) => Err(cd_err("remove image")(s)),
        }
    }
}
