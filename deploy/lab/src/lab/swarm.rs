//! Forming a swarm of a lab's hosts with the shoal CLI: `swarm init` on
//! h1, `swarm join` with the right token on the others, then waiting until
//! every manager sees all managers as reachable voters.

use std::time::Duration;

use crate::error::LabError;

use super::{Lab, POLL};

impl Lab {
    /// Forms a swarm of every host: see [`Lab::form_swarm`].
    pub fn init_swarm(&self, managers: usize) -> Result<(), LabError> {
        self.form_swarm(self.len(), managers)
    }

    /// Forms a swarm of h1..h`members`: `shoal swarm init` on h1 and
    /// `shoal swarm join` on the others, h1..h`managers` as managers, the
    /// rest as workers; the other hosts stay outside. Every member
    /// advertises eth0 (and eth1 as data path when the lab has one).
    /// Returns once every manager sees all managers as reachable voters.
    pub fn form_swarm(&self, members: usize, managers: usize) -> Result<(), LabError> {
        self.form_swarm_with(members, managers, &[])
    }

    /// [`Lab::form_swarm`] with extra `shoal swarm init` flags, e.g.
    /// `["--key-rotation-interval", "2s"]`.
    pub fn form_swarm_with(
        &self,
        members: usize,
        managers: usize,
        init_args: &[&str],
    ) -> Result<(), LabError> {
        let n = members;
        if n > self.len() {
            return Err(LabError::Swarm(format!(
                "{n} members asked of a {}-host lab",
                self.len()
            )));
        }
        if managers == 0 || managers > n {
            return Err(LabError::Swarm(format!(
                "{managers} managers asked of a {n}-host lab"
            )));
        }
        let data_path = self.lock().state.data_path;
        let mut addr_args = vec!["--advertise-addr", "eth0"];
        if data_path {
            addr_args.extend(["--data-path-addr", "eth1"]);
        }
        let run = |host: usize, args: &[&str]| -> Result<String, LabError> {
            let out = self.shoal(host, args)?;
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            } else {
                Err(LabError::Swarm(format!(
                    "h{host}: shoal {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
        };
        let mut init = vec!["swarm", "init"];
        init.extend(&addr_args);
        init.extend(init_args);
        run(1, &init)?;
        let worker = run(1, &["swarm", "join-token", "-q", "worker"])?;
        let manager = run(1, &["swarm", "join-token", "-q", "manager"])?;
        let remote = format!("{}:2377", self.host(1)?.addr);
        for h in 2..=n {
            let token = if h <= managers { &manager } else { &worker };
            let mut join = vec!["swarm", "join", "--token", token.as_str()];
            join.extend(&addr_args);
            join.push(&remote);
            run(h, &join)?;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for h in 1..=managers {
            loop {
                let info = run(h, &["--format", "json", "info"])?;
                let v: serde_json::Value = serde_json::from_str(&info)
                    .map_err(|e| LabError::Swarm(format!("h{h}: info is not JSON: {e}")))?;
                let raft = &v["swarm"]["raft"];
                let full = |k: &str| raft[k].as_u64() == Some(managers as u64);
                if full("voters") && full("reachable") && raft["leader"].is_u64() {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    return Err(LabError::Swarm(format!(
                        "h{h} does not see {managers} reachable managers: {raft}"
                    )));
                }
                std::thread::sleep(POLL);
            }
        }
        Ok(())
    }
}
