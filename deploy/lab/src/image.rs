//! The lab's test image, made here without reaching any registry: an OCI
//! image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) with one
//! gzip tar layer holding the host's static busybox, a few applet
//! symlinks, `/etc/passwd` and `/etc/group`, and `/bin/echo-server`, an
//! entrypoint that serves the container's host name on `GET /` (busybox
//! httpd on `$PORT`, default 80). Every byte is fixed (mtimes, owners,
//! gzip header, JSON key order), so the same busybox gives the same digest.
//!
//! [`push`] copies a layout into the lab's registry (see
//! [`Lab::start_registry`]) with `skopeo copy`, run in a lab host's network
//! namespace; from there any lab host's containerd can pull it.
//!
//! ```no_run
//! # fn main() -> Result<(), shoal_lab::LabError> {
//! let lab = shoal_lab::Lab::builder().nodes(2).containerd(true).start()?;
//! let reg = lab.start_registry(1)?; // "10.77.0.1:5000"
//! let layout = shoal_lab::image::build_echo_image(&lab.dir().join("echo-oci"))?;
//! let digest = shoal_lab::image::push(&lab, 1, &layout, &format!("{reg}/shoal/echo:1"))?;
//! # let _ = digest; Ok(()) }
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::LabError;
use crate::lab::Lab;
use crate::names::HostId;

/// Where the image's one binary comes from (Debian's `busybox-static`).
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets linked to `/bin/busybox` in the image.
pub const APPLETS: &[&str] = &[
    "sh", "httpd", "hostname", "sleep", "cat", "echo", "ls", "ip", "id", "head", "tr", "wc", "nc",
    "ps", "mount", "grep", "env", "kill", "true", "false", "dd", "mkdir", "date", "wget",
    "nslookup", "ping", "sed", "uname", "printf", "test", "[", "rm", "touch", "sort", "cut", "seq",
    "timeout", "stat", "awk",
];

/// The ref name (`org.opencontainers.image.ref.name`) of the image in a
/// layout written here: `oci:<layout>:echo`.
pub const LAYOUT_REF: &str = "echo";

/// `PATH` in the image config.
pub const IMAGE_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// OCI media types used in the layout.
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// See [`MEDIA_MANIFEST`].
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// See [`MEDIA_MANIFEST`].
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// See [`MEDIA_MANIFEST`].
pub const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// 2024-01-01T00:00:00Z: the mtime of every file in the layer and the
/// `created` time of the config.
const EPOCH: u64 = 1_704_067_200;
const CREATED: &str = "2024-01-01T00:00:00Z";

/// How long one `skopeo copy` into the lab registry may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// The entrypoint. With arguments it runs them (`ctr run … echo hi`, a
/// service's command), like a docker-entrypoint script; without, it serves
/// on `GET /` what `shoal-lab http-echo` answers in a Shoal task
/// (`SHOAL_TASK_NAME SHOAL_TASK_ID`), or the host name elsewhere, and
/// `/etc/echo-version` on `GET /version`.
const ECHO_SERVER: &str = r#"#!/bin/sh
# shoal-lab echo image: GET / answers with "task-name task-id" in a Shoal
# task (the host name elsewhere), GET /version with the image's version.
# With arguments, runs them instead.
if [ "$#" -gt 0 ]; then
  exec "$@"
fi
mkdir -p /www
if [ -n "$SHOAL_TASK_NAME" ]; then
  echo "$SHOAL_TASK_NAME $SHOAL_TASK_ID" > /www/index.html
else
  hostname > /www/index.html
fi
cat /etc/echo-version > /www/version
exec httpd -f -p "${PORT:-80}" -h /www
"#;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// Writes the echo image (version "1") as an OCI layout at `dir` (created
/// if missing) and returns `dir`. See the module docs for what is in it.
pub fn build_echo_image(dir: &Path) -> Result<PathBuf, LabError> {
    build_echo_image_version(dir, "1")
}

/// Like [`build_echo_image`], with `version` in `/etc/echo-version` (served
/// on `GET /version`): two versions are two images with different digests,
/// e.g. for a service update from `…/echo:1` to `…/echo:2`.
pub fn build_echo_image_version(dir: &Path, version: &str) -> Result<PathBuf, LabError> {
    build_echo_image_with(dir, version, None)
}

/// Like [`build_echo_image_version`], with `healthcheck` as the image's
/// `HEALTHCHECK` (docker's config form: `{"Test": ["CMD-SHELL", "…"],
/// "Interval": ns, "Retries": n}`).
pub fn build_echo_image_with(
    dir: &Path,
    version: &str,
    healthcheck: Option<Value>,
) -> Result<PathBuf, LabError> {
    let busybox = fs::read(BUSYBOX).map_err(|e| {
        LabError::io(
            format!("reading {BUSYBOX} for the test image (apt-get install busybox-static)"),
            e,
        )
    })?;
    if !is_static_elf(&busybox) {
        return Err(LabError::io(
            format!("checking {BUSYBOX} for the test image"),
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "it is not a statically linked ELF (Debian's `busybox` rather than \
                 `busybox-static`?) and the image has no libc: apt-get install busybox-static",
            ),
        ));
    }
    let tar = layer_tar(&busybox, version)
        .map_err(|e| LabError::io("writing the test image's layer".to_string(), e))?;
    write_layout(dir, &tar, healthcheck)?;
    Ok(dir.to_path_buf())
}

/// The digest (`sha256:…`) of the manifest `index.json` of a layout lists
/// first: what a registry reports for the image once it is pushed.
pub fn manifest_digest(layout: &Path) -> Result<String, LabError> {
    let path = layout.join("index.json");
    let bad = |reason: String| {
        LabError::io(
            format!("reading {}", path.display()),
            std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
        )
    };
    let text = fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
    let index: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    index["manifests"][0]["digest"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| bad("no manifests[0].digest".into()))
}

/// Copies the image of `layout` (ref [`LAYOUT_REF`]) to `dest`, a registry
/// reference without scheme such as `10.77.0.1:5000/shoal/echo:1`, with
/// `skopeo copy` over plain HTTP from `host`'s network namespace. Returns
/// the digest of the manifest as the registry stored it.
pub fn push(
    lab: &Lab,
    host: impl Into<HostId>,
    layout: &Path,
    dest: &str,
) -> Result<String, LabError> {
    push_as(lab, host, layout, dest, None)
}

/// [`push`] with credentials (`user:password`) for a registry that asks
/// for them.
pub fn push_as(
    lab: &Lab,
    host: impl Into<HostId>,
    layout: &Path,
    dest: &str,
    creds: Option<&str>,
) -> Result<String, LabError> {
    let skopeo = crate::tools::find_program("skopeo").ok_or_else(|| {
        LabError::io(
            "pushing the test image".to_string(),
            std::io::Error::other("`skopeo` not found: apt-get install skopeo"),
        )
    })?;
    let digest_file = layout.join(format!("pushed-{}.digest", std::process::id()));
    let mut cmd = lab.net_command(host, &[skopeo.as_os_str()])?;
    cmd.arg("copy")
        .arg("--quiet")
        .arg("--dest-tls-verify=false")
        .arg("--digestfile")
        .arg(&digest_file);
    if let Some(c) = creds {
        cmd.arg("--dest-creds").arg(c);
    }
    cmd.arg(format!("oci:{}:{LAYOUT_REF}", layout.display()))
        .arg(format!("docker://{dest}"));
    let res = crate::lab::run_within(&mut cmd, &format!("pushing {dest}"), PUSH_TIMEOUT);
    let digest = fs::read_to_string(&digest_file);
    let _ = fs::remove_file(&digest_file);
    res?;
    digest
        .map(|d| d.trim().to_string())
        .map_err(|e| LabError::io(format!("reading the digest skopeo wrote for {dest}"), e))
}

/// Writes the image of `layout` to the archive `file` with skopeo, as
/// `image import` reads it: `transport` is `oci-archive` (an OCI layout
/// in a tar) or `docker-archive` (`docker save`'s format); `name` is the
/// name recorded in it.
pub fn save(layout: &Path, transport: &str, file: &Path, name: &str) -> Result<(), LabError> {
    let skopeo = crate::tools::find_program("skopeo").ok_or_else(|| {
        LabError::io(
            "saving the test image".to_string(),
            std::io::Error::other("`skopeo` not found: apt-get install skopeo"),
        )
    })?;
    let mut cmd = std::process::Command::new(skopeo);
    cmd.arg("copy")
        .arg("--quiet")
        .arg(format!("oci:{}:{LAYOUT_REF}", layout.display()))
        .arg(format!("{transport}:{}:{name}", file.display()));
    crate::lab::run_within(
        &mut cmd,
        &format!("saving {}", file.display()),
        PUSH_TIMEOUT,
    )
    .map(|_| ())
}

/// Whether `elf` is an ELF executable without a program interpreter
/// (`PT_INTERP`), i.e. one that runs in an image with no libc.
fn is_static_elf(elf: &[u8]) -> bool {
    let get = |at: usize, n: usize| -> Option<u64> {
        let b = elf.get(at..at.checked_add(n)?)?;
        Some(
            b.iter()
                .rev()
                .fold(0u64, |acc, x| (acc << 8) | u64::from(*x)),
        )
    };
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(5) != Some(&1) {
        return false; // not ELF, or not little-endian
    }
    // (e_phoff, its width, e_phentsize, e_phnum) for ELF64 / ELF32.
    let (phoff, phentsize, phnum) = match elf.get(4) {
        Some(2) => (get(32, 8), get(54, 2), get(56, 2)),
        Some(1) => (get(28, 4), get(42, 2), get(44, 2)),
        _ => return false,
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return false;
    };
    const PT_INTERP: u64 = 3;
    (0..phnum).all(|i| {
        i.checked_mul(phentsize)
            .and_then(|x| x.checked_add(phoff))
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| get(at, 4))
            .is_some_and(|t| t != PT_INTERP)
    })
}

/// The layer: an uncompressed tar, every entry owned by root with a fixed
/// mtime, in a fixed order.
fn layer_tar(busybox: &[u8], version: &str) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        b.append_data(&mut h, path, std::io::empty())
    };
    let file = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]| {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        b.append_data(&mut h, path, data)
    };
    for (d, mode) in [
        ("bin/", 0o755),
        ("dev/", 0o755),
        ("etc/", 0o755),
        ("proc/", 0o555),
        ("root/", 0o700),
        ("sys/", 0o555),
        ("tmp/", 0o1777),
        ("www/", 0o777),
    ] {
        dir(&mut b, d, mode)?;
    }
    file(&mut b, "bin/busybox", 0o755, busybox)?;
    file(&mut b, "bin/echo-server", 0o755, ECHO_SERVER.as_bytes())?;
    for applet in APPLETS {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    file(
        &mut b,
        "etc/echo-version",
        0o644,
        format!("{version}\n").as_bytes(),
    )?;
    file(&mut b, "etc/group", 0o644, GROUP.as_bytes())?;
    file(&mut b, "etc/passwd", 0o644, PASSWD.as_bytes())?;
    b.into_inner()
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(EPOCH);
    h.set_uid(0);
    h.set_gid(0);
    // Names are ASCII and short: these cannot fail.
    let _ = h.set_username("root");
    let _ = h.set_groupname("root");
    h
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    // GzBuilder writes mtime 0 and no file name: the same bytes every time.
    let mut enc = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
    enc.write_all(data)?;
    enc.finish()
}

fn sha256(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in d.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The image's platform, as OCI names it.
fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

fn config_json(diff_id: &str, healthcheck: Option<Value>) -> Value {
    let mut v = json!({
        "architecture": architecture(),
        "os": "linux",
        "created": CREATED,
        "config": {
            "Entrypoint": ["/bin/echo-server"],
            "Env": [IMAGE_PATH],
            "WorkingDir": "/",
            "ExposedPorts": {"80/tcp": {}},
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": CREATED, "created_by": "shoal-lab image::build_echo_image"}],
    });
    if let Some(h) = healthcheck {
        v["config"]["Healthcheck"] = h;
    }
    v
}

/// Writes the blobs, then `index.json` and `oci-layout`.
fn write_layout(dir: &Path, tar: &[u8], healthcheck: Option<Value>) -> Result<(), LabError> {
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs)
        .map_err(|e| LabError::io(format!("creating {}", blobs.display()), e))?;
    let put = |data: &[u8]| -> Result<(String, usize), LabError> {
        let digest = sha256(data);
        let path = blobs.join(digest.trim_start_matches("sha256:"));
        fs::write(&path, data)
            .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
        Ok((digest, data.len()))
    };
    let to_bytes = |v: &Value| serde_json::to_vec(v).unwrap_or_default();

    let layer = gzip(tar).map_err(|e| LabError::io("compressing the layer".to_string(), e))?;
    let (layer_digest, layer_size) = put(&layer)?;
    let (config_digest, config_size) = put(&to_bytes(&config_json(&sha256(tar), healthcheck)))?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = put(&to_bytes(&manifest))?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": architecture(), "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": LAYOUT_REF},
        }],
    });
    for (name, data) in [
        ("index.json", to_bytes(&index)),
        (
            "oci-layout",
            to_bytes(&json!({"imageLayoutVersion": "1.0.0"})),
        ),
    ] {
        let path = dir.join(name);
        fs::write(&path, data)
            .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shoal-lab-image-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn blob(layout: &Path, digest: &str) -> Vec<u8> {
        fs::read(
            layout
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .unwrap()
    }

    fn json_of(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn only_a_static_busybox_will_do() {
        assert!(is_static_elf(&fs::read(BUSYBOX).unwrap()));
        // The test binary itself is dynamically linked.
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me));
        assert!(!is_static_elf(b""));
        assert!(!is_static_elf(b"\x7fELF\x02\x01"));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }

    #[test]
    fn the_digest_is_the_same_across_builds_and_versions_differ() {
        let (a, b, c) = (tmp("a"), tmp("b"), tmp("c"));
        let da = manifest_digest(&build_echo_image(&a).unwrap()).unwrap();
        let db = manifest_digest(&build_echo_image(&b).unwrap()).unwrap();
        let dc = manifest_digest(&build_echo_image_version(&c, "2").unwrap()).unwrap();
        assert_eq!(da, db);
        assert_ne!(da, dc);
        assert!(da.starts_with("sha256:") && da.len() == 71, "{da}");
        for d in [a, b, c] {
            fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn the_layout_parses_with_oci_media_types_and_matching_digests() {
        let dir = tmp("layout");
        let layout = build_echo_image(&dir).unwrap();
        assert_eq!(
            json_of(&fs::read(layout.join("oci-layout")).unwrap())["imageLayoutVersion"],
            "1.0.0"
        );
        let index = json_of(&fs::read(layout.join("index.json")).unwrap());
        assert_eq!(index["mediaType"], MEDIA_INDEX);
        let m = &index["manifests"][0];
        assert_eq!(m["mediaType"], MEDIA_MANIFEST);
        assert_eq!(
            m["annotations"]["org.opencontainers.image.ref.name"],
            LAYOUT_REF
        );
        let mbytes = blob(&layout, m["digest"].as_str().unwrap());
        assert_eq!(sha256(&mbytes), m["digest"]);
        assert_eq!(mbytes.len() as u64, m["size"].as_u64().unwrap());
        let manifest = json_of(&mbytes);
        assert_eq!(manifest["schemaVersion"], 2);
        assert_eq!(manifest["mediaType"], MEDIA_MANIFEST);
        assert_eq!(manifest["config"]["mediaType"], MEDIA_CONFIG);
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0]["mediaType"], MEDIA_LAYER);

        let config = json_of(&blob(
            &layout,
            manifest["config"]["digest"].as_str().unwrap(),
        ));
        assert_eq!(config["os"], "linux");
        assert_eq!(config["config"]["Entrypoint"], json!(["/bin/echo-server"]));
        assert_eq!(config["config"]["Env"], json!([IMAGE_PATH]));
        assert_eq!(config["config"]["WorkingDir"], "/");
        assert!(config["config"]["ExposedPorts"]["80/tcp"].is_object());

        // diff_id is the digest of the uncompressed layer.
        let gz = blob(&layout, layers[0]["digest"].as_str().unwrap());
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut tar).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"], json!([sha256(&tar)]));

        // The layer holds what the echo server needs, owned by root.
        let mut names = Vec::new();
        for e in tar::Archive::new(&tar[..]).entries().unwrap() {
            let e = e.unwrap();
            assert_eq!(e.header().uid().unwrap(), 0);
            assert_eq!(e.header().mtime().unwrap(), EPOCH);
            names.push(e.path().unwrap().to_string_lossy().into_owned());
        }
        for want in [
            "bin/busybox",
            "bin/echo-server",
            "bin/sh",
            "bin/httpd",
            "etc/passwd",
            "tmp/",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing in {names:?}"
            );
        }
        fs::remove_dir_all(dir).unwrap();
    }
}
