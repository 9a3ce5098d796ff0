//! An OCI registry on a lab host ([`Lab::start_registry`]): Debian's
//! `docker-registry serve` (distribution v2) in the host's network
//! namespace, plain HTTP on `<host underlay IP>:5000`, storage under
//! `<host dir>/registry/`. Lab hosts push the test image there
//! (`crate::image::push`) and their containerds pull from it; the daemons
//! list it in `insecure_registries`. Its PID is recorded and it is stopped
//! (SIGTERM, then SIGKILL) at teardown.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::LabError;
use crate::names::{self, HostId};
use crate::process::{self, Liveness};
use crate::tools;

use super::{spawn_in_netns, stop_process, tail};
use super::{Inner, Lab, POLL};

/// The registry's port on its host's underlay address.
pub const REGISTRY_PORT: u16 = 5000;
/// How long a fresh registry gets to answer `GET /v2/`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one probe connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a registry on lab host `i` listens (`10.77.0.<i>:5000`), known
/// before the lab starts: e.g. for `insecure_registries` in
/// [`LabBuilder::daemon_config`](super::LabBuilder::daemon_config).
pub fn registry_addr(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(names::underlay_addr(i), REGISTRY_PORT)
}

/// The files of the registry on a host, under `<host dir>/registry`.
pub(crate) struct RegistryPaths {
    pub config: PathBuf,
    pub data: PathBuf,
    pub log: PathBuf,
}

impl RegistryPaths {
    pub(crate) fn of(host_dir: &Path) -> RegistryPaths {
        let dir = host_dir.join("registry");
        RegistryPaths {
            config: dir.join("config.yml"),
            data: dir.join("data"),
            log: dir.join("registry.log"),
        }
    }

    fn config_yaml(&self, addr: SocketAddrV4, o: &RegistryOptions) -> String {
        // YAML double-quoted strings share JSON's escapes.
        let q = |p: &Path| serde_json::to_string(&p.to_string_lossy()).unwrap_or_default();
        let mut y = format!(
            "# shoal-lab: a registry for the lab's hosts\n\
             version: 0.1\n\
             log:\n  level: info\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: \"{addr}\"\n",
            q(&self.data)
        );
        if let Some((cert, key)) = &o.tls {
            y.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                q(cert),
                q(key)
            ));
        }
        if let Some(h) = &o.htpasswd {
            y.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: shoal-lab\n    path: {}\n",
                q(h)
            ));
        }
        y
    }
}

/// How a lab registry is served: plain HTTP and open by default.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// TLS: the certificate chain and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Basic authentication against this htpasswd file (bcrypt).
    pub htpasswd: Option<PathBuf>,
}

impl Lab {
    /// Starts an OCI registry on `host` (see the module docs) and returns
    /// its address, `"10.77.0.<i>:5000"`, once `GET /v2/` answers 200 from
    /// inside the host's namespace. Asking again for a host whose registry
    /// runs returns the same address.
    pub fn start_registry(&self, host: impl Into<HostId>) -> Result<String, LabError> {
        self.start_registry_with(host, &RegistryOptions::default())
    }

    /// [`Lab::start_registry`] served as `o` says; with TLS or
    /// authentication it is ready once it accepts connections.
    pub fn start_registry_with(
        &self,
        host: impl Into<HostId>,
        o: &RegistryOptions,
    ) -> Result<String, LabError> {
        let host = host.into();
        let (i, ns, addr, paths) = {
            let mut g = self.lock();
            let h = g.host(host)?;
            let (i, ns) = (h.index, h.ns.clone());
            let addr = registry_addr(i);
            let paths = RegistryPaths::of(&h.dir);
            if g.registry_alive(i) {
                return Ok(addr.to_string());
            }
            g.spawn_registry(i, addr, &paths, o)?;
            (i, ns, addr, paths)
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last;
        loop {
            if !self.lock().registry_alive(i) {
                return Err(LabError::io(
                    format!("starting the registry on h{i}"),
                    std::io::Error::other(format!(
                        "it exited; {} ends with:\n{}",
                        paths.log.display(),
                        tail(&paths.log, 15)
                    )),
                ));
            }
            let probe = if o.tls.is_some() || o.htpasswd.is_some() {
                connects_in_netns(&ns, SocketAddr::V4(addr)).map(|()| 200)
            } else {
                http_status_in_netns(&ns, SocketAddr::V4(addr), "/v2/")
            };
            match probe {
                Ok(200) => return Ok(addr.to_string()),
                Ok(code) => last = format!("status {code}"),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                return Err(LabError::io(
                    format!("starting the registry on h{i}"),
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "GET http://{addr}/v2/ did not answer 200 within {}s (last: {last}); \
                             its log is {}",
                            READY_TIMEOUT.as_secs(),
                            paths.log.display()
                        ),
                    ),
                ));
            }
            thread::sleep(POLL);
        }
    }
}

impl Inner {
    fn spawn_registry(
        &mut self,
        i: usize,
        addr: SocketAddrV4,
        paths: &RegistryPaths,
        o: &RegistryOptions,
    ) -> Result<(), LabError> {
        let h = &self.state.hosts[i - 1];
        let bin = tools::find_program("docker-registry").ok_or_else(|| {
            LabError::io(
                format!("starting the registry on {}", h.name),
                std::io::Error::other(
                    "`docker-registry` not found: apt-get install docker-registry",
                ),
            )
        })?;
        fs::create_dir_all(&paths.data)
            .map_err(|e| LabError::io(format!("creating {}", paths.data.display()), e))?;
        fs::write(&paths.config, paths.config_yaml(addr, o))
            .map_err(|e| LabError::io(format!("writing {}", paths.config.display()), e))?;
        let (child, rec) = spawn_in_netns(
            &h.ns,
            &bin,
            &[OsStr::new("serve"), paths.config.as_os_str()],
            &paths.log,
            &format!("starting the registry on {}", h.name),
        )?;
        self.state.hosts[i - 1].registry = Some(rec);
        self.registries.insert(i, child);
        self.save()
    }

    fn registry_alive(&mut self, i: usize) -> bool {
        let Some(rec) = self.state.hosts[i - 1].registry else {
            return false;
        };
        if let Some(c) = self.registries.get_mut(&i) {
            if let Ok(Some(_)) = c.try_wait() {
                return false;
            }
        }
        process::liveness(&rec) != Liveness::Gone
    }

    /// Stops host `i`'s registry, if the lab started one.
    pub(super) fn stop_registry(&mut self, i: usize) -> Option<String> {
        let rec = self.state.hosts[i - 1].registry?;
        let name = format!("registry of {}", self.state.hosts[i - 1].name);
        let problem = stop_process(rec, self.registries.get_mut(&i), &name);
        if problem.is_none() {
            self.state.hosts[i - 1].registry = None;
            self.registries.remove(&i);
        }
        problem
    }
}

/// Whether a TCP connection to `addr` from inside namespace `ns` opens.
fn connects_in_netns(ns: &str, addr: SocketAddr) -> Result<(), String> {
    let ns_file = format!("/run/netns/{ns}");
    thread::scope(|s| {
        s.spawn(|| -> Result<(), String> {
            let f = fs::File::open(&ns_file).map_err(|e| format!("opening {ns_file}: {e}"))?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("entering {ns_file}: {e}"))?;
            TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)
                .map(|_| ())
                .map_err(|e| format!("connecting to {addr}: {e}"))
        })
        .join()
        .unwrap_or_else(|_| Err("the probe thread panicked".into()))
    })
}

/// `GET path` over HTTP/1.0 to `addr` from a thread inside namespace `ns`:
/// the status code.
pub(crate) fn http_status_in_netns(ns: &str, addr: SocketAddr, path: &str) -> Result<u16, String> {
    let ns_file = format!("/run/netns/{ns}");
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    thread::scope(|s| {
        s.spawn(|| -> Result<u16, String> {
            let f = fs::File::open(&ns_file).map_err(|e| format!("opening {ns_file}: {e}"))?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("entering {ns_file}: {e}"))?;
            let mut conn = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)
                .map_err(|e| format!("connecting to {addr}: {e}"))?;
            let _ = conn.set_read_timeout(Some(PROBE_TIMEOUT));
            let _ = conn.set_write_timeout(Some(PROBE_TIMEOUT));
            conn.write_all(request.as_bytes())
                .map_err(|e| format!("sending to {addr}: {e}"))?;
            let mut head = [0u8; 64];
            let n = conn
                .read(&mut head)
                .map_err(|e| format!("reading from {addr}: {e}"))?;
            parse_status(&head[..n]).ok_or_else(|| {
                format!(
                    "{addr} answered {:?}, not HTTP",
                    String::from_utf8_lossy(&head[..n])
                )
            })
        })
        .join()
        .unwrap_or_else(|_| Err("the probe thread panicked".into()))
    })
}

/// The status code of an HTTP response's first line.
fn parse_status(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head.get(..head.len().min(32))?).ok()?;
    let mut parts = text.split(' ');
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_addr_is_the_hosts_underlay_address() {
        assert_eq!(registry_addr(3).to_string(), "10.77.0.3:5000");
    }

    #[test]
    fn config_names_the_storage_and_the_address() {
        let p = RegistryPaths::of(Path::new("/run/shoal-lab/slabc123/h1"));
        let y = p.config_yaml(registry_addr(1), &RegistryOptions::default());
        assert!(y.contains("version: 0.1\n"));
        assert!(y.contains("rootdirectory: \"/run/shoal-lab/slabc123/h1/registry/data\""));
        assert!(y.contains("addr: \"10.77.0.1:5000\""));
        assert!(!y.contains("tls:") && !y.contains("auth:"));
        let o = RegistryOptions {
            tls: Some(("/c.pem".into(), "/k.pem".into())),
            htpasswd: Some("/h".into()),
        };
        let y = p.config_yaml(registry_addr(1), &o);
        assert!(
            y.contains("  tls:\n    certificate: \"/c.pem\"\n    key: \"/k.pem\"\n"),
            "{y}"
        );
        assert!(
            y.contains("auth:\n  htpasswd:\n    realm: shoal-lab\n    path: \"/h\"\n"),
            "{y}"
        );
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 404 Not Found"), Some(404));
        assert_eq!(parse_status(b"SSH-2.0"), None);
        assert_eq!(parse_status(b""), None);
        assert_eq!(parse_status(&[0xff, 0xfe]), None);
    }
}
