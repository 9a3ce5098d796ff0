//! Daemon configuration: `/etc/shoal/shoal.toml` (or `--config`), then flags.
//!
//! Unknown keys are errors, so a typo in the file is reported with its line
//! and key instead of being silently ignored.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the daemon looks for its config file when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/shoal/shoal.toml";
/// Default state directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/shoal";
/// Default local API socket.
pub const DEFAULT_SOCKET: &str = "/run/shoal/shoal.sock";
/// Default directory for runtime state (namespace bind mounts).
pub const DEFAULT_RUN_DIR: &str = "/run/shoal";
/// Docker's default seccomp profile as Debian ships it (package
/// `golang-github-containers-common`).
pub const DEFAULT_SECCOMP_PROFILE: &str = "/usr/share/containers/seccomp.json";
/// Default `registry_certs_dir`.
pub const DEFAULT_REGISTRY_CERTS_DIR: &str = "/etc/shoal/certs.d";
/// Default `registry_auth_file`: root's docker credentials.
pub const DEFAULT_REGISTRY_AUTH_FILE: &str = "/root/.docker/config.json";
/// Default containerd socket.
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

/// The daemon's settings after file and flags are merged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Persistent state: node id, certificates, Raft log.
    pub data_dir: PathBuf,
    /// Unix socket of the local API.
    pub socket: PathBuf,
    /// Unix socket of the Docker Engine API (the `docker` CLI and its
    /// ecosystem); unset: `docker.sock` next to `socket`
    /// (`/run/shoal/docker.sock`); `""`: off.
    pub docker_socket: Option<PathBuf>,
    /// Runtime state that does not survive a reboot.
    pub run_dir: PathBuf,
    /// `tracing` filter (e.g. `info`, `shoal=debug`); `RUST_LOG` wins.
    pub log_level: String,
    /// Host name shown in `node ls` (default: the kernel's host name; the
    /// lab sets one per namespace host, which share the kernel's).
    pub hostname: Option<String>,
    /// Raft timings of a manager.
    pub raft: RaftSettings,
    /// How often a node checks in with a manager (certificate, role,
    /// manager list), in milliseconds.
    pub heartbeat_ms: u64,
    /// Gossip (SWIM) port, UDP and TCP, on the advertise address.
    pub gossip_port: u16,
    /// UDP port of the encrypted data path (overlays created with `--opt
    /// encrypted`), on the data-path address; 0: the data-path port + 1
    /// (4790 by default). Advertised to the other nodes through gossip.
    pub encrypted_port: u16,
    /// Gossip timings: `lan` (production: failure detected in ~3 s) or
    /// `fast` (tests).
    pub gossip_profile: String,
    /// Resolvers the embedded DNS forwards non-service names to (`IP` or
    /// `IP:PORT`); empty: the nameservers of the host's /etc/resolv.conf.
    pub dns_upstream: Vec<String>,
    /// Address of the Prometheus `/metrics` endpoint; empty: disabled.
    pub metrics_addr: String,
    /// containerd's gRPC socket; tasks run as containers in its `shoal`
    /// namespace.
    pub containerd_socket: PathBuf,
    /// Registries (`host[:port]`) pulled from over plain HTTP; every other
    /// registry is reached over TLS.
    pub insecure_registries: Vec<String>,
    /// Extra CA roots of TLS registries, docker's layout:
    /// `<dir>/<host[:port]>/*.crt` (PEM).
    pub registry_certs_dir: PathBuf,
    /// Registry credentials in docker's `config.json` format (what
    /// `docker login` writes; credential helpers are not read).
    pub registry_auth_file: PathBuf,
    /// Seccomp profile of containers, in Docker's format; `""`: none.
    pub seccomp_profile: String,
}

impl Config {
    /// Where the Engine API listens, if it is on.
    pub fn docker_socket(&self) -> Option<PathBuf> {
        match &self.docker_socket {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
            None => Some(self.socket.with_file_name("docker.sock")),
        }
    }

    /// How images are pulled: insecure registries, CA roots, credentials.
    pub fn registries(&self) -> shoal_runtime::Registries {
        shoal_runtime::Registries {
            insecure: self.insecure_registries.clone(),
            certs_dir: self.registry_certs_dir.clone(),
            auth_file: self.registry_auth_file.clone(),
        }
    }

    /// The upstream resolvers: `dns_upstream`, else the host's.
    pub fn upstreams(&self) -> Result<Vec<std::net::SocketAddr>, String> {
        if self.dns_upstream.is_empty() {
            let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            return Ok(crate::worker::dns::upstreams_from_resolv_conf(&text));
        }
        self.dns_upstream
            .iter()
            .map(|u| {
                u.parse::<std::net::SocketAddr>()
                    .or_else(|_| u.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                    .map_err(|_| format!("dns_upstream {u:?} is not an IP or IP:PORT"))
            })
            .collect()
    }
}

/// Raft timings; production defaults, tests shrink them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSettings {
    /// Milliseconds per Raft tick.
    pub tick_ms: u64,
    /// Election timeout in ticks (randomised by raft-rs to [n, 2n)).
    pub election_ticks: usize,
    /// Leader heartbeat interval in ticks.
    pub heartbeat_ticks: usize,
    /// Take a snapshot and compact the log every this many entries.
    pub snapshot_every: u64,
    /// Entries kept behind a snapshot so slightly lagging followers catch
    /// up from the log.
    pub compact_keep: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            tick_ms: 50,
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_every: 10_000,
            compact_keep: 1_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: DEFAULT_DATA_DIR.into(),
            socket: DEFAULT_SOCKET.into(),
            docker_socket: None,
            run_dir: DEFAULT_RUN_DIR.into(),
            log_level: "info".into(),
            hostname: None,
            raft: RaftSettings::default(),
            heartbeat_ms: 5000,
            gossip_port: 7946,
            encrypted_port: 0,
            gossip_profile: "lan".into(),
            dns_upstream: Vec::new(),
            metrics_addr: "127.0.0.1:9323".into(),
            containerd_socket: DEFAULT_CONTAINERD_SOCKET.into(),
            insecure_registries: Vec::new(),
            registry_certs_dir: DEFAULT_REGISTRY_CERTS_DIR.into(),
            registry_auth_file: DEFAULT_REGISTRY_AUTH_FILE.into(),
            seccomp_profile: DEFAULT_SECCOMP_PROFILE.into(),
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `--config` could not be read.
    #[error("config {path}: {source}")]
    Read {
        /// File that was read.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys or wrong types.
    #[error("config {path}: {source}")]
    Parse {
        /// File that was parsed.
        path: PathBuf,
        /// toml's error, which names the line, column and key.
        source: toml::de::Error,
    },
}

impl Config {
    /// Parse a config file's text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Load `explicit` if given (it must exist), else the default path if it
    /// exists, else defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match explicit {
            Some(p) => p.to_owned(),
            None => {
                let p = PathBuf::from(DEFAULT_CONFIG_PATH);
                if !p.exists() {
                    return Ok(Config::default());
                }
                p
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Config::parse(&text, &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_partial_file() {
        let c = Config::parse("data_dir = \"/tmp/x\"\n", Path::new("f.toml")).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn unknown_key_names_path_line_and_key() {
        let err = Config::parse(
            "log_level = \"info\"\nsockett = \"/x\"\n",
            Path::new("/e/s.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/e/s.toml"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("sockett"), "{err}");
    }

    #[test]
    fn wrong_type_is_reported() {
        let err = Config::parse("data_dir = 5\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1") && err.contains("data_dir"), "{err}");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/shoal.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/shoal.toml"), "{err}");
    }
}
