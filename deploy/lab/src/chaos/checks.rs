//! The checks after a chaos run: once everything is healed, does the
//! cluster hold what the writers were told it holds (the [`Ledger`]), and
//! has it converged — networks on every manager, every node ready, gossip
//! tables equal, workloads' FDB entries, the service's replicas and its
//! routing mesh, no panic in a daemon log. Callers may add their own
//! [`Check`]s.
//!
//! Data flow: `super::run` polls each check until it holds or the settle
//! deadline passes; the checks read the cluster through the CLI
//! ([`cli_timeout`], JSON output), commands in host namespaces
//! ([`run_timeout`]) and HTTP from inside a host ([`in_netns`],
//! [`http_get`]), and answer `Ok` or why not.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::time::Duration;

use serde_json::Value;

use super::{Ledger, CHAOS_SERVICE, CHAOS_SERVICE_PORT, CHAOS_TABLE, CLI_TIMEOUT};
use crate::probe::{cli_timeout, host_netns, http_get, in_netns, run_timeout};
use crate::Lab;

/// The body of a [`Check`].
pub type CheckFn = Box<dyn Fn(&Lab, &Ledger) -> Result<(), String> + Send + Sync>;

/// Entries of a gossip table as (key, owner, version).
type TableView = BTreeSet<(String, String, u64)>;

/// An extra check run after the built-in ones (polled until it returns
/// `Ok` or the settle deadline passes), e.g. "every service answers".
pub struct Check {
    /// Shown in the report.
    pub name: String,
    /// The check itself.
    pub run: CheckFn,
}

impl Check {
    /// A named check.
    pub fn new(
        name: &str,
        run: impl Fn(&Lab, &Ledger) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        Check {
            name: name.to_string(),
            run: Box::new(run),
        }
    }
}

fn json(text: &str, what: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("{what}: not JSON ({e}): {text}"))
}

/// `shoal ps` on `h` (with the checks' time limit), as JSON rows.
fn ps(lab: &Lab, h: usize) -> Result<Vec<Value>, String> {
    let out = cli_timeout(lab, h, &["--format", "json", "ps"], CLI_TIMEOUT)
        .map_err(|e| format!("ps on h{h}: {e}"))?;
    Ok(json(&out, "ps")?.as_array().cloned().unwrap_or_default())
}

/// Tasks of [`CHAOS_SERVICE`] running (and meant to) per `host`'s `service ps`.
pub(super) fn running_tasks(lab: &Lab, host: usize) -> Result<usize, String> {
    let v = json(
        &cli_timeout(
            lab,
            host,
            &["--format", "json", "service", "ps", CHAOS_SERVICE],
            CLI_TIMEOUT,
        )
        .map_err(|e| format!("service ps on h{host}: {e}"))?,
        "service ps",
    )?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter(|t| t["state"] == "running" && t["desired"] == "running")
                .count()
        })
        .unwrap_or_default())
}

pub(super) fn check_service(lab: &Lab, managers: usize, l: &Ledger) -> Result<(), String> {
    let expected = l
        .service_replicas
        .ok_or("no acknowledged replica count for the service")?;
    let spec = json(
        &cli_timeout(
            lab,
            1,
            &["--format", "json", "service", "inspect", CHAOS_SERVICE],
            CLI_TIMEOUT,
        )
        .map_err(|e| format!("service inspect on h1: {e}"))?,
        "service inspect",
    )?;
    let replicas = spec[0]["spec"]["replicas"]
        .as_u64()
        .ok_or_else(|| format!("service inspect: no spec.replicas in {spec}"))?;
    if replicas != expected && !l.scale_unknown.contains(&replicas) {
        return Err(format!(
            "{CHAOS_SERVICE} has {replicas} replicas; last acknowledged {expected} (unacknowledged scales: {:?})",
            l.scale_unknown
        ));
    }
    for h in 1..=managers {
        let n = running_tasks(lab, h)?;
        if n as u64 != replicas {
            return Err(format!(
                "service ps on h{h}: {n} running tasks, want {replicas}"
            ));
        }
    }
    // The nodes agree: exactly that many task processes in the lab.
    let mut processes = Vec::new();
    for h in 1..=lab.len() {
        let v = ps(lab, h)?;
        for w in v {
            let name = w["name"].as_str().unwrap_or_default();
            if w["task"].is_string() && name.starts_with(&format!("{CHAOS_SERVICE}.")) {
                processes.push(format!("{name}@h{h}"));
            }
        }
    }
    if processes.len() as u64 != replicas {
        return Err(format!(
            "{} task workloads on the nodes, want {replicas}: {processes:?}",
            processes.len()
        ));
    }
    mesh_answers(lab)
}

/// Every host answers on [`CHAOS_SERVICE_PORT`] (3 requests each, from the
/// host's own namespace to its underlay address).
pub(super) fn mesh_answers(lab: &Lab) -> Result<(), String> {
    for h in 1..=lab.len() {
        let addr = std::net::SocketAddr::from((
            lab.host(h).map_err(|e| e.to_string())?.addr,
            CHAOS_SERVICE_PORT,
        ));
        let ns = host_netns(lab, h).map_err(|e| e.to_string())?;
        in_netns(&ns, || {
            for i in 0..3 {
                let body = http_get(addr, Duration::from_secs(2))
                    .map_err(|e| format!("h{h} request {}: {e}", i + 1))?;
                if !body.starts_with(&format!("{CHAOS_SERVICE}.")) {
                    return Err(format!("h{h} {addr}: unexpected answer {body:?}"));
                }
            }
            Ok(())
        })??;
    }
    Ok(())
}

pub(super) fn check_networks(lab: &Lab, managers: usize, l: &Ledger) -> Result<(), String> {
    for h in 1..=managers {
        let v = json(
            &cli_timeout(lab, h, &["--format", "json", "network", "ls"], CLI_TIMEOUT)
                .map_err(|e| format!("network ls on h{h}: {e}"))?,
            "network ls",
        )?;
        let names: BTreeSet<String> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n["Name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let missing: Vec<&String> = l
            .created
            .iter()
            .filter(|n| {
                !l.removed.contains(*n) && !l.rm_unknown.contains(*n) && !names.contains(*n)
            })
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "h{h} lacks {} acknowledged network(s): {:?}",
                missing.len(),
                missing.iter().take(10).collect::<Vec<_>>()
            ));
        }
        let back: Vec<&String> = l.removed.iter().filter(|n| names.contains(*n)).collect();
        if !back.is_empty() {
            return Err(format!("h{h} still lists removed network(s) {back:?}"));
        }
    }
    Ok(())
}

pub(super) fn check_nodes(lab: &Lab, managers: usize, nodes: usize) -> Result<(), String> {
    for h in 1..=managers {
        let v = json(
            &cli_timeout(lab, h, &["--format", "json", "node", "ls"], CLI_TIMEOUT)
                .map_err(|e| format!("node ls on h{h}: {e}"))?,
            "node ls",
        )?;
        let rows = v.as_array().cloned().unwrap_or_default();
        if rows.len() != nodes {
            return Err(format!(
                "node ls on h{h} shows {} nodes, want {nodes}",
                rows.len()
            ));
        }
        let bad: Vec<String> = rows
            .iter()
            .filter(|r| r["status"] != "ready")
            .map(|r| format!("{} {}", r["hostname"], r["status"]))
            .collect();
        if !bad.is_empty() {
            return Err(format!("node ls on h{h}: not ready: {bad:?}"));
        }
    }
    Ok(())
}

pub(super) fn check_gossip(lab: &Lab, nodes: usize) -> Result<(), String> {
    let mut first: Option<(usize, TableView)> = None;
    for h in 1..=nodes {
        let v = json(
            &cli_timeout(
                lab,
                h,
                &[
                    "--format",
                    "json",
                    "gossip",
                    "tables",
                    "--table",
                    CHAOS_TABLE,
                ],
                CLI_TIMEOUT,
            )
            .map_err(|e| format!("gossip tables on h{h}: {e}"))?,
            "gossip tables",
        )?;
        let set: TableView = v
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e["key"].as_str().unwrap_or_default().to_string(),
                            e["owner"].as_str().unwrap_or_default().to_string(),
                            e["version"].as_u64().unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        match &first {
            None => first = Some((h, set)),
            Some((f, fs)) if *fs != set => {
                let only_f: Vec<_> = fs.difference(&set).take(5).collect();
                let only_h: Vec<_> = set.difference(fs).take(5).collect();
                return Err(format!(
                    "h{f} ({} entries) and h{h} ({} entries) differ: only on h{f} {only_f:?}, only on h{h} {only_h:?}",
                    fs.len(),
                    set.len()
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A MAC as `aa:bb:..` from the JSON byte array `ps` prints.
pub fn mac_text(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|b| format!("{:02x}", b.as_u64().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(":")
        })
        .unwrap_or_default()
}

/// The FDB lines (`bridge fdb show dev vx0`, remote entries only) of the
/// overlay namespace of network `net_id` on `host`.
pub fn overlay_fdb(lab: &Lab, host: usize, net_id: &str) -> Result<Vec<String>, String> {
    let ns = lab
        .host(host)
        .map_err(|e| e.to_string())?
        .run_dir
        .join("overlay/netns")
        .join(net_id);
    let argv: Vec<OsString> = vec![
        "nsenter".into(),
        format!("--net={}", ns.display()).into(),
        "bridge".into(),
        "fdb".into(),
        "show".into(),
        "dev".into(),
        "vx0".into(),
    ];
    let out = run_timeout(lab, host, &argv, CLI_TIMEOUT)?;
    Ok(out
        .lines()
        .filter(|l| l.contains(" dst "))
        .map(str::to_string)
        .collect())
}

pub(super) fn check_fdb(lab: &Lab, net: &str) -> Result<(), String> {
    // (host, mac, network id) of every running workload on `net`.
    let mut wl: Vec<(usize, String, String)> = Vec::new();
    for h in 1..=lab.len() {
        let v = ps(lab, h)?;
        for w in v {
            if w["network"]["name"] == net {
                wl.push((
                    h,
                    mac_text(&w["endpoint"]["mac"]),
                    w["network"]["id"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    for (h, _, net_id) in &wl {
        let fdb = overlay_fdb(lab, *h, net_id)?;
        for (o, mac, _) in wl.iter().filter(|(o, _, _)| o != h) {
            let vtep = lab.host(*o).map_err(|e| e.to_string())?.addr.to_string();
            let n = fdb
                .iter()
                .filter(|l| l.starts_with(mac.as_str()) && l.contains(&format!("dst {vtep} ")))
                .count();
            if n != 1 {
                return Err(format!(
                    "h{h}: {n} FDB entries for h{o}'s workload {mac} -> {vtep} (want 1): {fdb:?}"
                ));
            }
        }
        let mut seen = BTreeSet::new();
        if let Some(dup) = fdb.iter().find(|l| !seen.insert(l.as_str())) {
            return Err(format!("h{h}: duplicate FDB entry {dup}"));
        }
    }
    Ok(())
}

/// Every host's containerd holds exactly the containers of the workloads
/// its daemon lists: a SIGKILLed daemon adopted what it left running and
/// removed what no workload claims (no duplicates, no strays).
pub(super) fn check_containers(lab: &Lab) -> Result<(), String> {
    for h in 1..=lab.len() {
        let v = ps(lab, h)?;
        let listed: BTreeSet<String> = v
            .iter()
            // Containers only (not the ingress sandbox or host processes).
            .filter(|w| w["image"].as_str().is_some_and(|i| !i.is_empty()))
            .filter_map(|w| w["id"].as_str().map(str::to_string))
            .collect();
        let out = lab
            .ctr(h, &["-n", "shoal", "containers", "ls", "-q"], CLI_TIMEOUT)
            .map_err(|e| format!("ctr on h{h}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ctr on h{h}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let held: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if held != listed {
            return Err(format!(
                "h{h}: containerd holds {held:?}, the daemon lists {listed:?}"
            ));
        }
    }
    Ok(())
}

pub(super) fn check_logs(lab: &Lab) -> Result<(), String> {
    for h in lab.hosts() {
        let text = std::fs::read_to_string(&h.log)
            .map_err(|e| format!("reading {}: {e}", h.log.display()))?;
        if let Some(line) = text.lines().find(|l| l.contains("panicked")) {
            return Err(format!("{} ({}): {line}", h.name, h.log.display()));
        }
    }
    Ok(())
}
