//! The persistable record of a lab: exactly what it created, by name and
//! by PID. Cleanup works from this record alone, so a lab can be torn down
//! by another process (`shoal-lab down`, `shoal-lab gc`) and nothing that
//! is not in the record is ever touched.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::LabError;
use crate::names;

/// Format version of [`LabState`]; bumped when a field changes meaning.
pub const STATE_VERSION: u32 = 1;

/// A process the lab started (or its owner), identified by PID *and*
/// kernel start time so that a reused PID is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// Process id.
    pub pid: i32,
    /// Field 22 of /proc/<pid>/stat (clock ticks after boot).
    pub start_time: u64,
}

/// One host of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    /// 1-based index; the host is called `h<index>`.
    pub index: usize,
    /// `h<index>`.
    pub name: String,
    /// Its network namespace (`<prefix>-h<index>`).
    pub ns: String,
    /// eth0 address on the underlay, 10.77.0.<index>.
    pub addr: Ipv4Addr,
    /// eth1 address on the data-path network, 10.77.1.<index>, when the lab has one.
    pub data_addr: Option<Ipv4Addr>,
    /// `/run/shoal-lab/<prefix>/h<index>`.
    pub dir: PathBuf,
    /// `--data-dir` of its daemon.
    pub data_dir: PathBuf,
    /// `--run-dir` of its daemon.
    pub run_dir: PathBuf,
    /// `--socket` of its daemon (and `SHOAL_HOST` for CLI calls).
    pub socket: PathBuf,
    /// `--config` of its daemon.
    pub config: PathBuf,
    /// stdout and stderr of its daemon.
    pub log: PathBuf,
    /// The daemon last started on this host, if any.
    pub daemon: Option<ProcessRecord>,
    /// Hosts this one is partitioned from (indices), see `Lab::partition`.
    #[serde(default)]
    pub blocked: BTreeSet<usize>,
    /// The gRPC socket of this host's own containerd
    /// (`<dir>/ctd/c.sock`), when the lab runs one
    /// (`LabBuilder::containerd`); its daemon's `containerd_socket`.
    #[serde(default)]
    pub containerd_socket: Option<PathBuf>,
    /// The containerd the lab started for this host, while it runs.
    #[serde(default)]
    pub containerd: Option<ProcessRecord>,
    /// The OCI registry the lab started on this host (`Lab::start_registry`).
    #[serde(default)]
    pub registry: Option<ProcessRecord>,
}

impl HostState {
    /// Both addresses of the host (eth0, then eth1 if any).
    pub fn addrs(&self) -> Vec<Ipv4Addr> {
        std::iter::once(self.addr).chain(self.data_addr).collect()
    }
}

/// Everything a lab created, in a form that survives the process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Random per-lab prefix (`sl` + 6 lowercase alnum).
    pub prefix: String,
    /// The lab's own directory, `/run/shoal-lab/<prefix>`; removed on cleanup.
    pub dir: PathBuf,
    /// Namespace holding the underlay bridge(s).
    pub underlay_ns: String,
    /// Whether hosts have a second network (eth1 on bridge dp0).
    pub data_path: bool,
    /// Managers asked for (`shoal-lab up --managers`); used by `init_swarm`.
    pub managers: Option<usize>,
    /// The shoal binary the daemons run.
    pub shoal_bin: PathBuf,
    /// The process that owns the lab and cleans it on exit; `None` once
    /// detached (left running by `shoal-lab up`).
    pub owner: Option<ProcessRecord>,
    /// Every namespace this lab created, in creation order. Cleanup deletes
    /// exactly these.
    pub namespaces: Vec<String>,
    /// The hosts, h1 first.
    pub hosts: Vec<HostState>,
}

impl LabState {
    /// The per-lab state file, `<dir>/state.json`.
    pub fn file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// JSON text of the state.
    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings and numbers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses and checks a state; `path` is only for the error message.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, LabError> {
        let bad = |reason: String| LabError::State {
            path: path.to_path_buf(),
            reason,
        };
        let st: LabState = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        st.check().map_err(bad)?;
        Ok(st)
    }

    /// Refuses a state that would make cleanup touch things no lab named:
    /// every namespace and the directory must carry the prefix.
    pub fn check(&self) -> Result<(), String> {
        if self.version != STATE_VERSION {
            return Err(format!(
                "state version {} (this shoal-lab reads {STATE_VERSION})",
                self.version
            ));
        }
        if !names::is_valid_prefix(&self.prefix) {
            return Err(format!("invalid lab prefix {:?}", self.prefix));
        }
        let owned = |ns: &str| {
            ns.strip_prefix(&self.prefix)
                .is_some_and(|rest| rest.starts_with('-') && !rest.contains('/'))
        };
        if let Some(ns) = self.namespaces.iter().find(|ns| !owned(ns)) {
            return Err(format!(
                "namespace {ns:?} does not carry the lab prefix {}",
                self.prefix
            ));
        }
        if self.dir.file_name().and_then(|n| n.to_str()) != Some(self.prefix.as_str()) {
            return Err(format!(
                "lab dir {} is not named after the prefix {}",
                self.dir.display(),
                self.prefix
            ));
        }
        // Cleanup removes dirs under each host dir and kills the shims of
        // each containerd socket: both must be the lab's own.
        for h in &self.hosts {
            if h.dir != self.dir.join(format!("h{}", h.index)) {
                return Err(format!(
                    "host dir {} is not {}/h{}",
                    h.dir.display(),
                    self.dir.display(),
                    h.index
                ));
            }
            if let Some(s) = &h.containerd_socket {
                if *s != h.dir.join("ctd").join("c.sock") {
                    return Err(format!(
                        "containerd socket {} of h{} is not the lab's {}/ctd/c.sock",
                        s.display(),
                        h.index,
                        h.dir.display()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Reads a state file.
    pub fn load(path: &Path) -> Result<Self, LabError> {
        let text = fs::read_to_string(path).map_err(|e| LabError::State {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_json(&text, path)
    }

    /// Writes the state to `path` atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<(), LabError> {
        let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(self.to_json().as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            LabError::State {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LabState {
        let prefix = "slq1w2e3".to_string();
        let dir = PathBuf::from("/run/shoal-lab").join(&prefix);
        let hdir = dir.join("h1");
        LabState {
            version: STATE_VERSION,
            prefix: prefix.clone(),
            dir: dir.clone(),
            underlay_ns: names::underlay_ns(&prefix),
            data_path: true,
            managers: Some(3),
            shoal_bin: PathBuf::from("/usr/local/bin/shoal"),
            owner: Some(ProcessRecord {
                pid: 42,
                start_time: 1234,
            }),
            namespaces: vec![names::underlay_ns(&prefix), names::host_ns(&prefix, 1)],
            hosts: vec![HostState {
                index: 1,
                name: "h1".into(),
                ns: names::host_ns(&prefix, 1),
                addr: names::underlay_addr(1),
                data_addr: Some(names::data_addr(1)),
                data_dir: hdir.join("data"),
                run_dir: hdir.join("run"),
                socket: hdir.join("shoal.sock"),
                config: hdir.join("shoal.toml"),
                log: hdir.join("daemon.log"),
                dir: hdir.clone(),
                daemon: Some(ProcessRecord {
                    pid: 4242,
                    start_time: 99,
                }),
                blocked: [2, 3].into_iter().collect(),
                containerd_socket: Some(hdir.join("ctd/c.sock")),
                containerd: Some(ProcessRecord {
                    pid: 4343,
                    start_time: 100,
                }),
                registry: None,
            }],
        }
    }

    #[test]
    fn state_round_trips_through_json() {
        let st = sample();
        let back = LabState::from_json(&st.to_json(), Path::new("x")).unwrap();
        assert_eq!(back, st);
        assert_eq!(back.hosts[0].addrs().len(), 2);
    }

    #[test]
    fn state_round_trips_through_a_file() {
        let dir = std::env::temp_dir().join(format!("shoal-lab-state-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lab.json");
        let st = sample();
        st.save(&path).unwrap();
        assert_eq!(LabState::load(&path).unwrap(), st);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_state_from_before_containerd_still_loads() {
        let mut v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        for k in ["containerd_socket", "containerd", "registry"] {
            v["hosts"][0].as_object_mut().unwrap().remove(k);
        }
        let st = LabState::from_json(&v.to_string(), Path::new("x")).unwrap();
        assert_eq!(st.hosts[0].containerd_socket, None);
        assert_eq!(st.hosts[0].containerd, None);
    }

    #[test]
    fn hostile_states_are_refused() {
        let mut st = sample();
        st.namespaces.push("default".into());
        assert!(LabState::from_json(&st.to_json(), Path::new("x")).is_err());

        let mut st = sample();
        st.namespaces.push("slq1w2e3-h1/../../x".into());
        assert!(st.check().is_err());

        let mut st = sample();
        st.dir = PathBuf::from("/");
        assert!(st.check().is_err());

        let mut st = sample();
        st.prefix = "".into();
        assert!(st.check().is_err());

        // Cleanup kills the shims of the recorded socket: never another
        // containerd's.
        let mut st = sample();
        st.hosts[0].containerd_socket = Some("/run/containerd/containerd.sock".into());
        assert!(st.check().is_err());

        let mut st = sample();
        st.hosts[0].dir = PathBuf::from("/");
        st.hosts[0].containerd_socket = Some("/ctd/c.sock".into());
        assert!(st.check().is_err());

        for text in ["", "{", "[]", "{\"version\":1}", "null"] {
            assert!(LabState::from_json(text, Path::new("x")).is_err(), "{text}");
        }
    }
}
