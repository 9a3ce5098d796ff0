//! Containers: create and start one from an image in a prepared network
//! namespace, wait for its exit, signal it, remove it with its snapshot,
//! list what runs (a restarted daemon adopts those), and exec into it.
//!
//! Output goes to Shoal's logging binary, which the shim starts and keeps
//! (`binary://` stdio, records in [`crate::logfile`]'s format), so logs
//! keep flowing while the daemon is down.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::container::Runtime as ContainerRuntime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    PrepareSnapshotRequest, RemoveSnapshotRequest, ViewSnapshotRequest,
};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    CloseIoRequest, Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteProcessRequest, DeleteTaskRequest, ExecProcessRequest, KillRequest,
    ListContainersRequest, ListTasksRequest, ResizePtyRequest, StartRequest, WaitRequest,
};
use containerd_client::types::Mount;

use crate::image::ImageInfo;
use crate::{cd_err, req, spec, Result, Runtime, RuntimeError, RUNC_SHIM, SNAPSHOTTER};

const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// Label on every container Shoal creates: the task or workload id.
pub const LABEL_WORKLOAD: &str = "io.shoal.workload";

/// What a mount brings in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MountType {
    /// A host path (a volume is a host path the daemon owns).
    Bind,
    /// A fresh tmpfs.
    Tmpfs,
}

/// One `--mount`, resolved to the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MountSpec {
    /// Bind or tmpfs.
    pub typ: MountType,
    /// Host path (bind).
    pub source: PathBuf,
    /// Path inside the container.
    pub target: String,
    /// Read-only.
    pub readonly: bool,
}

/// A container to run.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// containerd id (the task or workload id).
    pub id: String,
    /// Its image, as [`Runtime::image`] describes it.
    pub image: ImageInfo,
    /// `--entrypoint` (replaces the image's and drops its CMD).
    pub entrypoint: Option<Vec<String>>,
    /// Arguments (replace the image's CMD).
    pub command: Vec<String>,
    /// `K=V` on top of the image's env.
    pub env: Vec<String>,
    /// `--user` (`uid[:gid]` or a name in the image's /etc/passwd).
    pub user: Option<String>,
    /// `--workdir`.
    pub workdir: Option<String>,
    /// Host name inside (UTS namespace).
    pub hostname: String,
    /// Network namespace to join.
    pub netns: PathBuf,
    /// Host files bind-mounted over /etc/resolv.conf, /etc/hosts and
    /// /etc/hostname.
    pub resolv_conf: PathBuf,
    /// See `resolv_conf`.
    pub hosts: PathBuf,
    /// See `resolv_conf`.
    pub hostname_file: PathBuf,
    /// `--mount`.
    pub mounts: Vec<MountSpec>,
    /// `--read-only` root file system.
    pub read_only: bool,
    /// `--cap-add`.
    pub cap_add: Vec<String>,
    /// `--cap-drop`.
    pub cap_drop: Vec<String>,
    /// `--limit-memory`, bytes.
    pub memory_limit: Option<i64>,
    /// `--limit-cpu`, billionths of a CPU.
    pub nano_cpus: Option<i64>,
    /// The log stdout and stderr go to (see [`crate::logfile`]).
    pub log: PathBuf,
    /// The logging binary containerd's shim starts for the container:
    /// invoked as `LOGGER container-log LOG` (Shoal's own binary).
    pub logger: PathBuf,
    /// A seccomp profile in Docker's format (Docker's default profile);
    /// `None`: no filter.
    pub seccomp: Option<std::sync::Arc<serde_json::Value>>,
}

/// A container containerd knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Its id.
    pub id: String,
    /// Its image name.
    pub image: String,
    /// Its init process, if it has a task.
    pub pid: Option<u32>,
    /// Whether that task runs.
    pub running: bool,
}

fn any(type_url: &str, value: Vec<u8>) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.into(),
        value,
    }
}

/// containerd's `file://` stdio: the shim appends to the file itself.
pub fn file_uri(p: &Path) -> String {
    format!("file://{}", p.display())
}

/// containerd's `binary://` stdio: the shim starts `logger` with the
/// query's key and value as its arguments (`container-log LOG`).
fn logger_uri(logger: &Path, log: &Path) -> String {
    let arg: String =
        url::form_urlencoded::byte_serialize(log.as_os_str().as_encoded_bytes()).collect();
    format!("binary://{}?container-log={arg}", logger.display())
}

/// `uid[:gid]` or names, looked up in the image's /etc/passwd and
/// /etc/group (read from its layers, topmost first).
fn resolve_user(user: &str, layers: &[PathBuf]) -> Result<(u32, u32, Vec<u32>)> {
    let read = |rel: &str| -> String {
        layers
            .iter()
            .find_map(|l| std::fs::read_to_string(l.join(rel)).ok())
            .unwrap_or_default()
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read("etc/passwd");
    let entry = |name: &str| {
        passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 3 && (f[0] == name || f[2] == name))
            .map(|f| (f[2].parse::<u32>().ok(), f[3].parse::<u32>().ok()))
    };
    let (uid, pw_gid) = if u.is_empty() || u == "root" {
        (0, Some(0))
    } else if let Ok(n) = u.parse::<u32>() {
        (n, entry(u).and_then(|e| e.1).or(Some(0)))
    } else {
        match entry(u) {
            Some((Some(uid), gid)) => (uid, gid),
            _ => {
                return Err(RuntimeError::Invalid(format!(
                    "unable to find user {u}: no matching entries in passwd file"
                )))
            }
        }
    };
    let group = read("etc/group");
    let gid = match g {
        None => pw_gid.unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    RuntimeError::Invalid(format!(
                        "unable to find group {g}: no matching entries in group file"
                    ))
                })?,
        },
    };
    Ok((uid, gid, Vec::new()))
}

/// The directories of a snapshot's mounts, topmost layer first.
fn layer_dirs(mounts: &[Mount]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for m in mounts {
        if m.r#type == "bind" {
            out.push(PathBuf::from(&m.source));
        }
        for o in &m.options {
            if let Some(up) = o.strip_prefix("upperdir=") {
                out.push(PathBuf::from(up));
            }
        }
        for o in &m.options {
            if let Some(lower) = o.strip_prefix("lowerdir=") {
                out.extend(lower.split(':').map(PathBuf::from));
            }
        }
    }
    out
}

impl Runtime {
    async fn remove_snapshot(&self, key: &str) {
        let _ = SnapshotsClient::new(self.channel.clone())
            .remove(req(
                RemoveSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.into(),
                },
                None,
            ))
            .await;
    }

    /// The uid, gid and groups `user` means in `image`.
    async fn user_of(
        &self,
        id: &str,
        image: &ImageInfo,
        user: &str,
        lease: &str,
    ) -> Result<(u32, u32, Vec<u32>)> {
        if user.is_empty() || user == "root" || user == "0" {
            return Ok((0, 0, Vec::new()));
        }
        let key = format!("shoal-view-{id}");
        self.remove_snapshot(&key).await;
        let view = SnapshotsClient::new(self.channel.clone())
            .view(req(
                ViewSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.clone(),
                    parent: image.chain_id.clone(),
                    labels: HashMap::new(),
                },
                Some(lease),
            ))
            .await
            .map_err(cd_err("view snapshot"));
        let r = view.and_then(|v| resolve_user(user, &layer_dirs(&v.into_inner().mounts)));
        self.remove_snapshot(&key).await;
        r
    }

    /// Creates and starts a container; its init's pid. Whatever an earlier
    /// attempt left under the same id is removed first. The snapshots it
    /// makes are leased until the container record refers to them, so a
    /// garbage collection in between (one a finished pull set off, say)
    /// cannot take them.
    pub async fn run(&self, c: &ContainerSpec) -> Result<u32> {
        self.remove(&c.id).await?;
        let lease = self.lease().await?;
        let r = self.run_leased(c, &lease).await;
        self.unlease(lease).await;
        r
    }

    async fn run_leased(&self, c: &ContainerSpec, lease: &str) -> Result<u32> {
        let user = c
            .user
            .clone()
            .unwrap_or_else(|| c.image.config.user.clone());
        let (uid, gid, gids) = self.user_of(&c.id, &c.image, &user, lease).await?;
        let args = spec::argv(
            c.entrypoint.as_deref(),
            &c.command,
            &c.image.config.entrypoint,
            &c.image.config.cmd,
        );
        let oci = spec::build(c, args, uid, gid, gids)?;
        let json = serde_json::to_vec(&oci)
            .map_err(|e| RuntimeError::Invalid(format!("runtime spec: {e}")))?;
        if let Some(dir) = c.log.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| RuntimeError::Invalid(format!("log dir {}: {e}", dir.display())))?;
        }
        let mounts = SnapshotsClient::new(self.channel.clone())
            .prepare(req(
                PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: c.id.clone(),
                    parent: c.image.chain_id.clone(),
                    labels: HashMap::new(),
                },
                Some(lease),
            ))
            .await
            .map_err(cd_err("prepare the container's snapshot"))?
            .into_inner()
            .mounts;
        let container = Container {
            id: c.id.clone(),
            labels: HashMap::from([(LABEL_WORKLOAD.to_string(), c.id.clone())]),
            image: c.image.name.clone(),
            runtime: Some(ContainerRuntime {
                name: RUNC_SHIM.into(),
                options: None,
            }),
            spec: Some(any(SPEC_TYPE, json)),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: c.id.clone(),
            ..Default::default()
        };
        let started = async {
            ContainersClient::new(self.channel.clone())
                .create(req(
                    CreateContainerRequest {
                        container: Some(container),
                    },
                    Some(lease),
                ))
                .await
                .map_err(cd_err("create container"))?;
            let log = logger_uri(&c.logger, &c.log);
            let mut tasks = TasksClient::new(self.channel.clone());
            tasks
                .create(req(
                    CreateTaskRequest {
                        container_id: c.id.clone(),
                        rootfs: mounts,
                        stdout: log.clone(),
                        stderr: log,
                        ..Default::default()
                    },
                    None,
                ))
                .await
                .map_err(cd_err("create task"))?;
            let pid = tasks
                .start(req(
                    StartRequest {
                        container_id: c.id.clone(),
                        exec_id: String::new(),
                    },
                    None,
                ))
                .await
                .map_err(cd_err("start task"))?
                .into_inner()
                .pid;
            Ok(pid)
        }
        .await;
        if started.is_err() {
            let _ = self.remove(&c.id).await;
        }
        started
    }

    /// Waits for the container's init to exit: its exit status (128 +
    /// signal when killed, so an OOM kill is 137).
    pub async fn wait(&self, id: &str) -> Result<i32> {
        let r = TasksClient::new(self.channel.clone())
            .wait(req(
                WaitRequest {
                    container_id: id.into(),
                    exec_id: String::new(),
                },
                None,
            ))
            .await
            .map_err(|s| match s.code() {
                tonic::Code::NotFound => RuntimeError::NoSuchContainer(id.into()),
                _ => cd_err("wait")(s),
            })?;
        Ok(r.into_inner().exit_status as i32)
    }

    /// Sends a signal to every process of the container.
    pub async fn kill(&self, id: &str, signal: i32) -> Result<()> {
        match TasksClient::new(self.channel.clone())
            .kill(req(
                KillRequest {
                    container_id: id.into(),
                    exec_id: String::new(),
                    signal: signal as u32,
                    all: true,
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => {
                Err(RuntimeError::NoSuchContainer(id.into()))
            }
            Err(s) => Err(cd_err("kill")(s)),
        }
    }

    /// Removes the container, its task (killed first if it runs) and its
    /// snapshot. Nothing there is not an error.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let mut tasks = TasksClient::new(self.channel.clone());
        let _ = self
            .kill(id, nix::sys::signal::Signal::SIGKILL as i32)
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tasks
                .delete(req(
                    DeleteTaskRequest {
                        container_id: id.into(),
                    },
                    None,
                ))
                .await
            {
                Ok(_) => break,
                Err(s) if s.code() == tonic::Code::NotFound => break,
                Err(s)
                    if s.code() == tonic::Code::FailedPrecondition
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(s) => return Err(cd_err(format!("delete task {id}"))(s)),
            }
        }
        match ContainersClient::new(self.channel.clone())
            .delete(req(DeleteContainerRequest { id: id.into() }, None))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(cd_err(format!("delete container {id}"))(s)),
        }
        self.remove_snapshot(id).await;
        Ok(())
    }

    /// Every container in Shoal's namespace, with its task.
    pub async fn containers(&self) -> Result<Vec<ContainerInfo>> {
        let cs = ContainersClient::new(self.channel.clone())
            .list(req(ListContainersRequest { filters: vec![] }, None))
            .await
            .map_err(cd_err("list containers"))?
            .into_inner()
            .containers;
        let ts = TasksClient::new(self.channel.clone())
            .list(req(ListTasksRequest::default(), None))
            .await
            .map_err(cd_err("list tasks"))?
            .into_inner()
            .tasks;
        let running = containerd_client::types::v1::Status::Running as i32;
        Ok(cs
            .into_iter()
            .map(|c| {
                let t = ts.iter().find(|t| t.id == c.id);
                ContainerInfo {
                    pid: t.map(|t| t.pid),
                    running: t.is_some_and(|t| t.status == running),
                    image: c.image,
                    id: c.id,
                }
            })
            .collect())
    }

    /// Starts `argv` in the container (its namespaces, user, env and cwd)
    /// with the given stdio: the exec's id, for [`Runtime::exec_wait`],
    /// [`Runtime::exec_resize`] and [`Runtime::exec_kill`].
    pub async fn exec_start(&self, id: &str, argv: &[String], io: &ExecIo) -> Result<String> {
        let c = ContainersClient::new(self.channel.clone())
            .get(req(
                containerd_client::services::v1::GetContainerRequest { id: id.into() },
                None,
            ))
            .await
            .map_err(|s| match s.code() {
                tonic::Code::NotFound => RuntimeError::NoSuchContainer(id.into()),
                _ => cd_err("get container")(s),
            })?
            .into_inner()
            .container
            .ok_or_else(|| RuntimeError::NoSuchContainer(id.into()))?;
        let spec: serde_json::Value = c
            .spec
            .as_ref()
            .and_then(|s| serde_json::from_slice(&s.value).ok())
            .ok_or_else(|| RuntimeError::Invalid(format!("container {id} has no spec")))?;
        let mut process = spec["process"].clone();
        process["args"] = serde_json::json!(argv);
        process["terminal"] = serde_json::json!(io.terminal);
        if io.terminal {
            // As docker does for `exec -t`.
            if let Some(env) = process["env"].as_array_mut() {
                env.push(serde_json::json!("TERM=xterm"));
            }
        }
        let process = serde_json::to_vec(&process)
            .map_err(|e| RuntimeError::Invalid(format!("process spec: {e}")))?;
        let exec_id = format!("exec-{}-{}", std::process::id(), rand_u32());
        let mut tasks = TasksClient::new(self.channel.clone());
        tasks
            .exec(req(
                ExecProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.clone(),
                    stdin: io.stdin.clone(),
                    stdout: io.stdout.clone(),
                    stderr: io.stderr.clone(),
                    terminal: io.terminal,
                    spec: Some(any(PROCESS_TYPE, process)),
                },
                None,
            ))
            .await
            .map_err(cd_err("exec"))?;
        let started = tasks
            .start(req(
                StartRequest {
                    container_id: id.into(),
                    exec_id: exec_id.clone(),
                },
                None,
            ))
            .await;
        if let Err(s) = started {
            self.exec_delete(id, &exec_id).await;
            return Err(cd_err("start exec")(s));
        }
        Ok(exec_id)
    }

    /// Waits for an exec to end: its exit status; the process is deleted.
    pub async fn exec_wait(&self, id: &str, exec_id: &str) -> Result<i32> {
        let w = TasksClient::new(self.channel.clone())
            .wait(req(
                WaitRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                },
                None,
            ))
            .await
            .map_err(cd_err("wait exec"));
        self.exec_delete(id, exec_id).await;
        Ok(w?.into_inner().exit_status as i32)
    }

    /// Sets the size of an exec's terminal.
    pub async fn exec_resize(
        &self,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<()> {
        TasksClient::new(self.channel.clone())
            .resize_pty(req(
                ResizePtyRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    width,
                    height,
                },
                None,
            ))
            .await
            .map(|_| ())
            .map_err(cd_err("resize"))
    }

    /// Ends an exec's stdin: the shim holds the FIFO open itself, so the
    /// command sees end of file only when asked (containerd's CloseIO).
    pub async fn exec_close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        TasksClient::new(self.channel.clone())
            .close_io(req(
                CloseIoRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    stdin: true,
                },
                None,
            ))
            .await
            .map(|_| ())
            .map_err(cd_err("close stdin"))
    }

    /// SIGKILLs an exec (its client went away).
    pub async fn exec_kill(&self, id: &str, exec_id: &str) {
        let _ = TasksClient::new(self.channel.clone())
            .kill(req(
                KillRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    signal: 9,
                    all: false,
                },
                None,
            ))
            .await;
    }

    async fn exec_delete(&self, id: &str, exec_id: &str) {
        let _ = TasksClient::new(self.channel.clone())
            .delete_process(req(
                DeleteProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                },
                None,
            ))
            .await;
    }
}

/// Where an exec's stdio goes, as containerd names it: a FIFO's path
/// (the caller made it and holds its other end) or a `file://` URI; an
/// empty stdin is /dev/null, stderr is unused with a terminal.
#[derive(Debug, Clone, Default)]
pub struct ExecIo {
    /// The command's stdin.
    pub stdin: String,
    /// Its stdout (with a terminal: the terminal's output).
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    /// Give it a terminal.
    pub terminal: bool,
}

fn rand_u32() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_from_the_image_files() {
        let top = tempfile::tempdir().unwrap();
        let low = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(low.path().join("etc")).unwrap();
        std::fs::write(
            low.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(low.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let layers = vec![top.path().to_path_buf(), low.path().to_path_buf()];
        assert_eq!(
            resolve_user("nobody", &layers).unwrap(),
            (65534, 65534, vec![])
        );
        assert_eq!(resolve_user("1000", &layers).unwrap(), (1000, 0, vec![]));
        assert_eq!(
            resolve_user("1000:50", &layers).unwrap(),
            (1000, 50, vec![])
        );
        assert_eq!(
            resolve_user("nobody:staff", &layers).unwrap(),
            (65534, 50, vec![])
        );
        let e = resolve_user("alice", &layers).unwrap_err();
        assert!(e.to_string().contains("unable to find user alice"), "{e}");
        assert!(resolve_user("0:nogroup", &layers).is_err());
    }

    #[test]
    fn overlay_mounts_list_layers_top_first() {
        let m = Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            options: vec!["index=off".into(), "lowerdir=/a:/b".into()],
            ..Default::default()
        };
        assert_eq!(
            layer_dirs(&[m]),
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
    }
}
