//! `shoal_gwbridge` as a local network (scope `local`: this node only,
//! managed by its daemon, no Raft), as docker shows `docker_gwbridge`.
//! Joining a swarm makes it with the defaults; a user can make it first
//! (`network create -d bridge --subnet … -o com.docker.network.bridge.
//! enable_icc=false … shoal_gwbridge`, before `swarm init/join` or after
//! `swarm leave`) and the egress bridge is then set up their way. The
//! record lives in `<data_dir>/gwbridge-network.json`; the bridge itself
//! and its leases are the netdriver's (`GwBridge`).
//!
//! Data flow: daemon handler (`network create/ls/inspect/rm`) -> here;
//! overlay `with_gw` -> [`spec`] -> `GwBridge::ensure`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use shoal_api::{ApiError, ErrorCode, LocalNetworkSpec};
use shoal_netdriver::{GwSpec, GWBRIDGE};

/// The record's file in the data dir.
pub const FILE: &str = "gwbridge-network.json";

const OPT_NAME: &str = "com.docker.network.bridge.name";
const OPT_ICC: &str = "com.docker.network.bridge.enable_icc";
const OPT_MASQ: &str = "com.docker.network.bridge.enable_ip_masquerade";
const OPT_MTU: &str = "com.docker.network.driver.mtu";

/// The local network record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GwNetwork {
    /// Its id.
    pub id: String,
    /// Unix ms it was made.
    pub created_at: u64,
    /// How the bridge is set up.
    pub spec: GwSpec,
    /// `--label`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

fn bad(m: String) -> ApiError {
    ApiError::invalid(m)
}

/// The record, if one was made. A file that does not parse is an error
/// naming it (never silently the defaults).
pub fn load(data_dir: &Path) -> Result<Option<GwNetwork>, ApiError> {
    let p = path(data_dir);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            ApiError::internal(format!(
                "{} is corrupt ({e}): remove it to get the default {GWBRIDGE}",
                p.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ApiError::internal(format!("read {}: {e}", p.display()))),
    }
}

fn save(data_dir: &Path, n: &GwNetwork) -> Result<(), ApiError> {
    let p = path(data_dir);
    let body = serde_json::to_vec_pretty(n).map_err(|e| ApiError::internal(e.to_string()))?;
    crate::swarm::file::write_atomically(&p, &body)
        .map_err(|e| ApiError::internal(format!("write {}: {e:#}", p.display())))
}

/// The bridge's settings: the record's, made with the defaults first if
/// there is none (a node joining a swarm gets its `shoal_gwbridge`).
pub fn spec(data_dir: &Path) -> Result<GwSpec, ApiError> {
    if let Some(n) = load(data_dir)? {
        return Ok(n.spec);
    }
    let n = GwNetwork {
        id: shoal_model::NodeId::generate().to_string(),
        created_at: shoal_model::now_ms(),
        spec: GwSpec::default(),
        labels: BTreeMap::new(),
    };
    save(data_dir, &n)?;
    Ok(n.spec)
}

fn flag(opts: &BTreeMap<String, String>, key: &str) -> Result<Option<bool>, ApiError> {
    match opts.get(key).map(|v| v.as_str()) {
        None => Ok(None),
        Some("true" | "1") => Ok(Some(true)),
        Some("false" | "0") => Ok(Some(false)),
        Some(v) => Err(bad(format!("-o {key}={v}: expected true or false"))),
    }
}

/// `network create -d bridge`: only `shoal_gwbridge` (user-defined bridge
/// networks are not in Shoal yet), and only while this node is in no
/// swarm, since the bridge's settings apply when it is made.
pub fn create(data_dir: &Path, s: &LocalNetworkSpec, in_swarm: bool) -> Result<String, ApiError> {
    if s.name != GWBRIDGE {
        return Err(bad(format!(
            "-d bridge makes only {GWBRIDGE} (the egress bridge) in Shoal; user-defined bridge \
             networks are not supported yet: use an overlay network"
        )));
    }
    if let Some(n) = s.options.get(OPT_NAME).filter(|n| *n != GWBRIDGE) {
        return Err(bad(format!(
            "-o {OPT_NAME}={n}: the egress bridge is {GWBRIDGE}"
        )));
    }
    if s.internal {
        return Err(bad(format!(
            "--internal: {GWBRIDGE} is the egress bridge; make the overlay network internal instead"
        )));
    }
    if let Some(k) = s
        .options
        .keys()
        .find(|k| ![OPT_NAME, OPT_ICC, OPT_MASQ, OPT_MTU].contains(&k.as_str()))
    {
        return Err(bad(format!(
            "-o {k}: unknown option (known: {OPT_NAME}, {OPT_ICC}, {OPT_MASQ}, {OPT_MTU})"
        )));
    }
    if in_swarm {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "network with name {GWBRIDGE} already exists and is in use by this node's swarm: \
                 customise it before `shoal swarm init/join`, or after `shoal swarm leave` and \
                 `shoal network rm {GWBRIDGE}`"
            ),
        ));
    }
    if load(data_dir)?.is_some() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("network with name {GWBRIDGE} already exists"),
        ));
    }
    let subnet: Ipv4Net = s
        .subnet
        .unwrap_or(shoal_netdriver::DEFAULT_GW_SUBNET)
        .trunc();
    if subnet.prefix_len() > 30 {
        return Err(bad(format!("--subnet {subnet}: need at least a /30")));
    }
    if let Some(g) = s.gateway {
        if !subnet.contains(&g) || g == subnet.network() || g == subnet.broadcast() {
            return Err(bad(format!(
                "--gateway {g}: not a host address of subnet {subnet}"
            )));
        }
    }
    let mtu = match s.options.get(OPT_MTU) {
        None => None,
        Some(v) => Some(
            v.parse::<u32>()
                .ok()
                .filter(|m| (576..=9000).contains(m))
                .ok_or_else(|| {
                    bad(format!(
                        "-o {OPT_MTU}={v}: MTU must be a number from 576 to 9000"
                    ))
                })?,
        ),
    };
    let n = GwNetwork {
        id: shoal_model::NodeId::generate().to_string(),
        created_at: shoal_model::now_ms(),
        spec: GwSpec {
            subnet,
            gateway: s.gateway,
            icc: flag(&s.options, OPT_ICC)?.unwrap_or(true),
            masquerade: flag(&s.options, OPT_MASQ)?.unwrap_or(true),
            mtu,
        },
        labels: s.labels.clone(),
    };
    save(data_dir, &n)?;
    Ok(n.id)
}

/// `network rm shoal_gwbridge`: refused while this node is in a swarm;
/// else the record goes and the bridge with it (`run_dir`'s leases).
pub async fn remove(data_dir: &Path, run_dir: &Path, in_swarm: bool) -> Result<(), ApiError> {
    if in_swarm {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("error while removing network: {GWBRIDGE} is in use by this node's swarm tasks: remove it after `shoal swarm leave`"),
        ));
    }
    if load(data_dir)?.is_none() {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("network {GWBRIDGE} not found"),
        ));
    }
    shoal_netdriver::GwBridge::remove(run_dir)
        .await
        .map_err(|e| ApiError::internal(format!("remove {GWBRIDGE}: {e}")))?;
    std::fs::remove_file(path(data_dir))
        .map_err(|e| ApiError::internal(format!("remove {}: {e}", path(data_dir).display())))
}

/// Whether `key` names the local network (its name, its id, or the
/// 12-character id `network ls` shows).
pub fn names(n: &GwNetwork, key: &str) -> bool {
    key == GWBRIDGE || key == n.id || (key.len() >= 12 && n.id.starts_with(key))
}

/// docker's network document for it, with the workloads leased on it.
pub fn doc(n: &GwNetwork, leases: &BTreeMap<String, Ipv4Addr>) -> serde_json::Value {
    let s = &n.spec;
    let gateway = s
        .gateway
        .or_else(|| s.subnet.hosts().next())
        .map(|g| g.to_string())
        .unwrap_or_default();
    let mut options = serde_json::json!({
        OPT_NAME: GWBRIDGE,
        OPT_ICC: s.icc.to_string(),
        OPT_MASQ: s.masquerade.to_string(),
    });
    if let Some(m) = s.mtu {
        options[OPT_MTU] = m.to_string().into();
    }
    let containers: serde_json::Map<String, serde_json::Value> = leases
        .iter()
        .map(|(k, ip)| {
            (
                k.clone(),
                serde_json::json!({
                    "Name": k,
                    "IPv4Address": format!("{ip}/{}", s.subnet.prefix_len()),
                }),
            )
        })
        .collect();
    serde_json::json!({
        "Name": GWBRIDGE,
        "Id": n.id,
        "Created": n.created_at,
        "Scope": "local",
        "Driver": "bridge",
        "IPAM": {"Driver": "default", "Config": [{"Subnet": s.subnet.to_string(), "Gateway": gateway}]},
        "Internal": false,
        "Attachable": false,
        "Ingress": false,
        "Options": options,
        "Labels": n.labels,
        "Containers": containers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(opts: &[(&str, &str)]) -> LocalNetworkSpec {
        LocalNetworkSpec {
            name: GWBRIDGE.into(),
            driver: "bridge".into(),
            subnet: Some("10.11.0.0/16".parse().unwrap()),
            options: opts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_seed_s_options_make_the_record_and_bad_ones_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let id = create(
            d.path(),
            &spec(&[(OPT_NAME, GWBRIDGE), (OPT_ICC, "false"), (OPT_MASQ, "true")]),
            false,
        )
        .unwrap();
        let n = load(d.path()).unwrap().unwrap();
        assert_eq!(n.id, id);
        assert_eq!(
            (n.spec.subnet.to_string(), n.spec.icc, n.spec.masquerade),
            ("10.11.0.0/16".to_string(), false, true)
        );
        assert_eq!(super::spec(d.path()).unwrap(), n.spec);
        let e = create(d.path(), &spec(&[]), false).unwrap_err();
        assert!(e.message.contains("already exists"), "{e:?}");
        let fresh = tempfile::tempdir().unwrap();
        for (opts, want) in [
            (&[(OPT_ICC, "maybe")][..], "expected true or false"),
            (&[("x", "1")][..], "unknown option"),
            (&[(OPT_NAME, "br0")][..], "the egress bridge is"),
            (&[(OPT_MTU, "100")][..], "MTU must be"),
        ] {
            let e = create(fresh.path(), &spec(opts), false).unwrap_err();
            assert!(e.message.contains(want), "{opts:?}: {e:?}");
        }
        let mut other = spec(&[]);
        other.name = "br0".into();
        assert!(create(fresh.path(), &other, false)
            .unwrap_err()
            .message
            .contains("not supported yet"));
        let e = create(fresh.path(), &spec(&[]), true).unwrap_err();
        assert!(e.message.contains("in use by this node's swarm"), "{e:?}");
        // A corrupt record is an error naming the file.
        std::fs::write(fresh.path().join(FILE), "{").unwrap();
        assert!(load(fresh.path()).unwrap_err().message.contains(FILE));
    }

    #[test]
    fn without_a_record_the_defaults_are_made_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let s = super::spec(d.path()).unwrap();
        assert_eq!(s, GwSpec::default());
        let n = load(d.path()).unwrap().unwrap();
        let doc = doc(
            &n,
            &BTreeMap::from([("t1".to_string(), Ipv4Addr::new(172, 18, 0, 2))]),
        );
        assert_eq!(doc["Scope"], "local");
        assert_eq!(doc["IPAM"]["Config"][0]["Gateway"], "172.18.0.1");
        assert_eq!(doc["Containers"]["t1"]["IPv4Address"], "172.18.0.2/16");
        assert_eq!(doc["Options"][OPT_ICC], "true");
    }
}
