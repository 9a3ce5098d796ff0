//! What a Go server does with JSON and query strings that serde does not:
//! object keys match field names without case (docker-py sends
//! `{"Mode": {"replicated": {...}}}`), `null` reads as the zero value, a
//! boolean query parameter is false only for `""`, `0`, `no`, `false` and
//! `none` (moby's `httputils.BoolValue`), and `filters` comes as
//! `{"k": {"v": true}}` (the CLI) or `{"k": ["v"]}` (docker-py).

use std::collections::BTreeMap;

use serde_json::Value;

/// Every field name of [`super::types`] as Go spells it, plus the fields
/// of Docker's specs Shoal reads only to refuse or report them.
const FIELDS: &[&str] = &[
    "Addr",
    "Addresses",
    "AdvertiseAddr",
    "Aliases",
    "Architecture",
    "Args",
    "Attachable",
    "AutoLockManagers",
    "Availability",
    "CAConfig",
    "CapabilityAdd",
    "CapabilityDrop",
    "Command",
    "CompletedAt",
    "CompletedTasks",
    "Condition",
    "Config",
    "ConfigOnly",
    "Constraints",
    "ContainerID",
    "ContainerSpec",
    "ContainerStatus",
    "CreatedAt",
    "DataPathAddr",
    "DataPathPort",
    "DefaultAddrPool",
    "Delay",
    "Description",
    "DesiredState",
    "DesiredTasks",
    "Dir",
    "Dispatcher",
    "Driver",
    "ElectionTick",
    "EnableIPv6",
    "EncryptionConfig",
    "Endpoint",
    "EndpointSpec",
    "Engine",
    "EngineVersion",
    "Env",
    "Err",
    "ExitCode",
    "FailureAction",
    "ForceNewCluster",
    "ForceRotate",
    "ForceUpdate",
    "Gateway",
    "Global",
    "GlobalJob",
    "HeartbeatPeriod",
    "HeartbeatTick",
    "Hostname",
    "ID",
    "Id",
    "IPAM",
    "IPRange",
    "Image",
    "Index",
    "Ingress",
    "Init",
    "Internal",
    "JoinToken",
    "JoinTokens",
    "Labels",
    "Leader",
    "Limits",
    "ListenAddr",
    "Manager",
    "ManagerStatus",
    "MaxAttempts",
    "MaxFailureRatio",
    "MaxReplicas",
    "MemoryBytes",
    "Message",
    "Mode",
    "Monitor",
    "Mounts",
    "Name",
    "NanoCPUs",
    "Network",
    "NetworkID",
    "Networks",
    "NetworksAttachments",
    "NodeCertExpiry",
    "NodeID",
    "OS",
    "Options",
    "Orchestration",
    "Order",
    "PID",
    "Parallelism",
    "Placement",
    "Platform",
    "PortStatus",
    "Ports",
    "Preferences",
    "PreviousSpec",
    "Protocol",
    "PublishMode",
    "PublishedPort",
    "Raft",
    "Reachability",
    "ReadOnly",
    "RemoteAddrs",
    "Replicas",
    "Replicated",
    "ReplicatedJob",
    "Reservations",
    "Resources",
    "RestartPolicy",
    "Role",
    "RollbackConfig",
    "RootRotationInProgress",
    "RunningTasks",
    "Runtime",
    "Scope",
    "ServiceID",
    "ServiceStatus",
    "Slot",
    "SnapshotInterval",
    "Source",
    "Spec",
    "Spread",
    "SpreadDescriptor",
    "StartedAt",
    "State",
    "Status",
    "Subnet",
    "SubnetSize",
    "TLSInfo",
    "Target",
    "TargetPort",
    "TaskDefaults",
    "TaskHistoryRetentionLimit",
    "TaskTemplate",
    "Timestamp",
    "TrustRoot",
    "Type",
    "UpdateConfig",
    "UpdateStatus",
    "UpdatedAt",
    "User",
    "Version",
    "VirtualIPs",
    "Worker",
    // Read only to refuse or warn.
    "Secrets",
    "Configs",
    "Healthcheck",
    "Hosts",
    "Sysctls",
    "Ulimits",
    "Privileges",
    "TTY",
    "OpenStdin",
    "StopGracePeriod",
    "StopSignal",
    "Groups",
    "LogDriver",
    "DNSConfig",
    "Isolation",
    "CheckDuplicate",
    "ConfigFrom",
    "Platforms",
    "GenericResources",
    "OomScoreAdj",
    "Test",
    "Interval",
    "Timeout",
    "Retries",
    "StartPeriod",
];

/// Fields whose values are maps of the user's own keys: never renamed.
const MAP_FIELDS: &[&str] = &["Labels", "Options", "DriverOpts"];

/// Rewrite `v` as Go would read it: every object key that is not exactly
/// a field name but matches one without case gets the field's spelling;
/// `null` members are dropped (the field keeps its zero value). The keys
/// inside label and option maps are left alone.
pub fn normalize(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let taken = std::mem::take(map);
            for (k, mut val) in taken {
                if val.is_null() {
                    continue;
                }
                let key = canonical(&k);
                if !MAP_FIELDS.contains(&key.as_str()) {
                    normalize(&mut val);
                }
                map.insert(key, val);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

fn canonical(k: &str) -> String {
    if FIELDS.contains(&k) {
        return k.to_string();
    }
    FIELDS
        .iter()
        .find(|f| f.eq_ignore_ascii_case(k))
        .map_or_else(|| k.to_string(), |f| f.to_string())
}

/// A boolean query parameter as moby reads it.
pub fn bool_value(v: &str) -> bool {
    !matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "" | "0" | "no" | "false" | "none"
    )
}

/// `filters`: per key, the values asked for.
pub type Filters = BTreeMap<String, Vec<String>>;

/// Parse `filters` in either of its two shapes; an empty string is no
/// filter.
pub fn parse_filters(raw: &str) -> Result<Filters, String> {
    if raw.trim().is_empty() {
        return Ok(Filters::new());
    }
    let v: Value = serde_json::from_str(raw).map_err(|e| format!("invalid filter '{raw}': {e}"))?;
    let Value::Object(map) = v else {
        return Err(format!("invalid filter '{raw}': not a JSON object"));
    };
    let mut out = Filters::new();
    for (k, vals) in map {
        let list = match vals {
            Value::Object(m) => m
                .into_iter()
                .filter(|(_, on)| on.as_bool().unwrap_or(false))
                .map(|(v, _)| v)
                .collect(),
            Value::Array(a) => a
                .into_iter()
                .map(|x| match x {
                    Value::String(s) => Ok(s),
                    other => Err(format!("invalid filter value {other} for '{k}'")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Value::String(s) => vec![s],
            other => return Err(format!("invalid filter value {other} for '{k}'")),
        };
        out.entry(k).or_default().extend(list);
    }
    Ok(out)
}

/// Refuse filter keys outside `allowed` (moby answers 400 to them).
pub fn check_filters(f: &Filters, allowed: &[&str]) -> Result<(), String> {
    match f.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("invalid filter '{k}'")),
        None => Ok(()),
    }
}

/// Whether `labels` satisfies every `label` filter (`k` or `k=v`).
pub fn labels_match(labels: &BTreeMap<String, String>, wanted: Option<&Vec<String>>) -> bool {
    wanted.is_none_or(|w| {
        w.iter().all(|f| match f.split_once('=') {
            Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
            None => labels.contains_key(f.as_str()),
        })
    })
}

/// Whether `value` passes the filter `wanted` (any of its values), with
/// `m` deciding one match; no filter passes everything.
pub fn any_match(wanted: Option<&Vec<String>>, m: impl Fn(&str) -> bool) -> bool {
    wanted.is_none_or(|w| w.iter().any(|x| m(x)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_match_without_case_but_labels_keep_theirs() {
        let mut v = json!({"name": "web", "mode": {"replicated": {"replicas": 2}},
            "Labels": {"replicas": "x"}, "TaskTemplate": {"containerspec": {"image": "a", "args": null}}});
        normalize(&mut v);
        assert_eq!(
            v,
            json!({"Name": "web", "Mode": {"Replicated": {"Replicas": 2}},
                "Labels": {"replicas": "x"}, "TaskTemplate": {"ContainerSpec": {"Image": "a"}}})
        );
        // Exact spellings stay (`Id` of networks is not `ID`).
        let mut v = json!({"Id": "x", "ID": "y", "nanocpus": 1});
        normalize(&mut v);
        assert_eq!(v, json!({"Id": "x", "ID": "y", "NanoCPUs": 1}));
    }

    #[test]
    fn booleans_as_moby_reads_them() {
        for t in ["1", "true", "True", "yes"] {
            assert!(bool_value(t), "{t}");
        }
        for f in ["", "0", "False", "no", "none", "NONE"] {
            assert!(!bool_value(f), "{f}");
        }
    }

    #[test]
    fn filters_in_both_shapes() {
        let f = parse_filters(r#"{"name":{"web":true,"x":false},"label":["a=b"]}"#).unwrap();
        assert_eq!(f["name"], vec!["web".to_string()]);
        assert_eq!(f["label"], vec!["a=b".to_string()]);
        assert!(parse_filters("").unwrap().is_empty());
        assert!(parse_filters("[1]")
            .unwrap_err()
            .contains("not a JSON object"));
        assert!(parse_filters("{").unwrap_err().contains("invalid filter"));
        assert_eq!(
            check_filters(&f, &["name"]).unwrap_err(),
            "invalid filter 'label'"
        );
        let labels = BTreeMap::from([("a".to_string(), "b".to_string())]);
        assert!(labels_match(&labels, f.get("label")));
        assert!(!labels_match(&labels, Some(&vec!["a=c".into()])));
        assert!(labels_match(&labels, Some(&vec!["a".into()])));
    }
}
