//! The worker's side of the container runtime: one containerd client
//! (connected on first use, so a node without containerd still runs
//! `--runtime host` tasks), the image a task needs (pulled unless already
//! there), the container of a task (its spec from the service's settings,
//! the /etc files Shoal writes for it, named volumes under the data dir),
//! and the waiter that records each container's exit status.
//!
//! Data flow: executor `start` (or `shoal run`) -> [`Containers::image`]
//! (pull) -> [`Containers::launch`] (containerd creates the container in
//! the workload's network namespace; the overlay records it) -> waiter ->
//! the exit status to the overlay -> the executor reports the exit;
//! executor `finish` -> [`Containers::remove`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shoal_api::Workload;
use shoal_model::service::ContainerSpec as Settings;
use shoal_runtime::{ContainerSpec, ImageInfo, MountSpec, MountType, Runtime, RuntimeError};
use tracing::{info, warn};

use crate::worker::overlay::Overlay;

/// The node's container runtime.
pub struct Containers {
    socket: PathBuf,
    registries: shoal_runtime::Registries,
    volumes: PathBuf,
    runtime: tokio::sync::OnceCell<Arc<Runtime>>,
    /// The seccomp profile every container gets (`None`: none), or why
    /// the configured one cannot be used (then containers do not start).
    seccomp: Result<Option<Arc<serde_json::Value>>, String>,
}

impl std::fmt::Debug for Containers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containers")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

/// The container a workload gets (a service task or `shoal run`).
#[derive(Debug)]
pub struct Launch<'a> {
    /// Host name inside.
    pub hostname: &'a str,
    /// Its image.
    pub image: ImageInfo,
    /// The settings of its service (or of `shoal run`).
    pub settings: &'a Settings,
    /// Arguments replacing the image's CMD.
    pub command: &'a [String],
    /// `K=V` on top of the image's env.
    pub env: Vec<String>,
    /// The host file that becomes its /etc/resolv.conf; /etc/hosts and
    /// /etc/hostname are written beside it.
    pub resolv_conf: PathBuf,
    /// Configs and secrets to mount (read only), written beside it too.
    pub files: &'a [crate::proto::session::TaskFile],
}

/// Write a task's configs and secrets into `dir` (0700, created afresh),
/// each with its owner and mode, and the read-only bind mounts that put
/// them at their paths in the container.
fn write_files(
    dir: &Path,
    files: &[crate::proto::session::TaskFile],
) -> Result<Vec<MountSpec>, RuntimeError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let fail = |what: &Path, e: &dyn std::fmt::Display| {
        RuntimeError::Invalid(format!("config/secret file {}: {e}", what.display()))
    };
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail(dir, &e))?;
    let mut mounts = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let p = dir.join(i.to_string());
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .map_err(|e| fail(&p, &e))?;
        std::io::Write::write_all(&mut out, &f.data).map_err(|e| fail(&p, &e))?;
        nix::unistd::chown(
            &p,
            Some(nix::unistd::Uid::from_raw(f.uid)),
            Some(nix::unistd::Gid::from_raw(f.gid)),
        )
        .map_err(|e| fail(&p, &e))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode))
            .map_err(|e| fail(&p, &e))?;
        mounts.push(MountSpec {
            typ: MountType::Bind,
            source: p,
            target: f.path.clone(),
            readonly: true,
        });
    }
    Ok(mounts)
}

fn load_seccomp(path: &str) -> Result<Option<Arc<serde_json::Value>>, String> {
    if path.is_empty() {
        return Ok(None);
    }
    if !shoal_runtime::seccomp::kernel_has_seccomp() {
        warn!("this kernel has no seccomp: containers run without a seccomp filter");
        return Ok(None);
    }
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if path == crate::config::DEFAULT_SECCOMP_PROFILE => {
            warn!(
                profile = path,
                "Docker's default seccomp profile is not there ({e}; apt-get install \
                 golang-github-containers-common): containers run without a seccomp filter"
            );
            return Ok(None);
        }
        Err(e) => return Err(format!("seccomp_profile {path}: {e}")),
    };
    serde_json::from_slice(&text)
        .map(|v| Some(Arc::new(v)))
        .map_err(|e| format!("seccomp_profile {path}: not JSON: {e}"))
}

impl Containers {
    /// containerd at `socket`; images pulled as `registries` says; named
    /// volumes under `data_dir/volumes`.
    /// `seccomp_profile`: Docker's format; `""` for none. The default
    /// path missing (package not installed) or a kernel without seccomp
    /// means no filter, said once; another path that cannot be read is an
    /// error every container start reports.
    pub fn new(
        socket: &Path,
        registries: shoal_runtime::Registries,
        data_dir: &Path,
        seccomp_profile: &str,
    ) -> Containers {
        Containers {
            socket: socket.to_owned(),
            registries,
            volumes: data_dir.join("volumes"),
            runtime: tokio::sync::OnceCell::new(),
            seccomp: load_seccomp(seccomp_profile),
        }
    }

    /// Whether containerd's socket is there (no socket: nothing to adopt).
    pub fn socket_exists(&self) -> bool {
        self.socket.exists()
    }

    /// The client, connecting on first use (a failed connect is retried
    /// on the next call).
    pub async fn runtime(&self) -> Result<Arc<Runtime>, RuntimeError> {
        self.runtime
            .get_or_try_init(|| async {
                let rt = Runtime::connect(&self.socket, self.registries.clone()).await?;
                info!(socket = %self.socket.display(), "connected to containerd");
                Ok(Arc::new(rt))
            })
            .await
            .cloned()
    }

    /// The image, pulled unless this node has it.
    pub async fn image(&self, reference: &str) -> Result<ImageInfo, RuntimeError> {
        let rt = self.runtime().await?;
        match rt.image(reference).await {
            Ok(i) => Ok(i),
            Err(RuntimeError::NoSuchImage(_)) => {
                info!(image = reference, "pulling");
                rt.pull(reference).await
            }
            Err(e) => Err(e),
        }
    }

    /// A host directory for a named volume (made on first use).
    fn volume(&self, name: &str) -> Result<PathBuf, RuntimeError> {
        let dir = self.volumes.join(name).join("_data");
        std::fs::create_dir_all(&dir)
            .map_err(|e| RuntimeError::Invalid(format!("volume {name}: {}: {e}", dir.display())))?;
        Ok(dir)
    }

    /// Creates and starts the container of workload `w` in its network
    /// namespace, records it in the overlay, and waits for its exit in
    /// the background: `on_exit(pid, status)`.
    pub async fn launch(
        self: &Arc<Self>,
        overlay: &Overlay,
        w: &Workload,
        l: Launch<'_>,
        on_exit: impl Fn(u32, i32) + Send + 'static,
    ) -> anyhow::Result<Workload> {
        let name = l.image.name.clone();
        let command = l.command.to_vec();
        let pid = self.run(w, l, overlay.log_of(&w.id)).await?;
        self.watch(w.id.clone(), move |code| on_exit(pid, code));
        overlay.set_container(&w.id, pid, command, name)
    }

    /// Creates and starts the container; its pid.
    async fn run(&self, w: &Workload, l: Launch<'_>, log: PathBuf) -> Result<u32, RuntimeError> {
        let Launch {
            hostname,
            image,
            settings,
            command,
            env,
            resolv_conf,
            files,
        } = l;
        let rt = self.runtime().await?;
        let etc = |ext: &str| resolv_conf.with_extension(ext);
        let (hosts, hostname_file) = (etc("hosts"), etc("hostname"));
        let mut hosts_text =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        if let Some(e) = &w.endpoint {
            hosts_text.push_str(&format!("{}\t{hostname}\n", e.ip));
        }
        for (p, text) in [
            (&hosts, hosts_text),
            (&hostname_file, format!("{hostname}\n")),
        ] {
            std::fs::write(p, text)
                .map_err(|e| RuntimeError::Invalid(format!("write {}: {e}", p.display())))?;
        }
        let mut mounts = Vec::new();
        for m in &settings.mounts {
            let (typ, source) = match m.typ.as_str() {
                "bind" => (MountType::Bind, PathBuf::from(&m.source)),
                "volume" => (MountType::Bind, self.volume(&m.source)?),
                _ => (MountType::Tmpfs, PathBuf::new()),
            };
            if typ == MountType::Bind && !source.exists() {
                return Err(RuntimeError::Invalid(format!(
                    "invalid mount config for type \"bind\": bind source path does not exist: {}",
                    source.display()
                )));
            }
            mounts.push(MountSpec {
                typ,
                source,
                target: m.target.clone(),
                readonly: m.readonly,
            });
        }
        mounts.extend(write_files(&resolv_conf.with_extension("files"), files)?);
        let seccomp = self.seccomp.clone().map_err(RuntimeError::Invalid)?;
        let spec = ContainerSpec {
            seccomp,
            id: w.id.clone(),
            image,
            entrypoint: settings.entrypoint.clone(),
            command: command.to_vec(),
            env,
            user: settings.user.clone(),
            workdir: settings.workdir.clone(),
            hostname: hostname.into(),
            netns: w.netns.clone(),
            resolv_conf: resolv_conf.clone(),
            hosts,
            hostname_file,
            mounts,
            read_only: settings.read_only,
            cap_add: settings.cap_add.clone(),
            cap_drop: settings.cap_drop.clone(),
            memory_limit: settings.limit_memory,
            nano_cpus: settings.limit_nano_cpus,
            log,
            logger: logger()?,
        };
        rt.run(&spec).await
    }

    /// Waits (in the background) for container `id`'s exit and hands its
    /// status to `done`. containerd being briefly away is retried.
    pub fn watch(self: &Arc<Self>, id: String, done: impl FnOnce(i32) + Send + 'static) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tracing::debug!(container = %id, "waiting for the container to exit");
                let r = match me.runtime().await {
                    Ok(rt) => rt.wait(&id).await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(code) => {
                        info!(container = %id, exit_code = code, "container exited");
                        return done(code);
                    }
                    Err(RuntimeError::NoSuchContainer(_)) => return done(-1),
                    Err(e) => {
                        warn!(container = %id, "waiting for the container: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }

    /// Removes container `id` (and its snapshot).
    pub async fn remove(&self, id: &str) {
        match self.runtime().await {
            Ok(rt) => {
                if let Err(e) = rt.remove(id).await {
                    warn!(container = %id, "cannot remove the container: {e}");
                }
            }
            Err(e) => warn!(container = %id, "cannot remove the container: {e}"),
        }
    }

    /// Removes every container in Shoal's namespace that `keep` does not
    /// name (left by a daemon that died between creating one and
    /// recording it).
    pub async fn remove_unknown(&self, keep: &[String]) {
        let Ok(rt) = self.runtime().await else { return };
        match rt.containers().await {
            Ok(cs) => {
                for c in cs.into_iter().filter(|c| !keep.contains(&c.id)) {
                    info!(container = %c.id, "removing a container no workload claims");
                    let _ = rt.remove(&c.id).await;
                }
            }
            Err(e) => warn!("cannot list containers: {e}"),
        }
    }
}

/// Shoal's own binary: the logging process of every workload
/// (`shoal container-log LOG`).
pub fn logger() -> Result<PathBuf, RuntimeError> {
    std::env::current_exe().map_err(|e| {
        RuntimeError::Invalid(format!("cannot find the shoal binary for logging: {e}"))
    })
}

/// Starts the logging process of a host process: what is written to the
/// returned pipe is recorded in `log` (one stream: give the workload the
/// pipe as stdout and stderr). It outlives the daemon as the workload does.
pub fn spawn_logger(log: &Path) -> anyhow::Result<std::io::PipeWriter> {
    let (read, write) = std::io::pipe()?;
    let mut child = std::process::Command::new(logger()?)
        .arg("container-log")
        .arg(log)
        .stdin(read)
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start the logging process: {e}"))?;
    std::thread::spawn(move || child.wait());
    Ok(write)
}
