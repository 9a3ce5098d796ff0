//! Docker's default seccomp profile for a container: a profile in Docker's
//! format (Debian ships it as `/usr/share/containers/seccomp.json`,
//! package `golang-github-containers-common`) turned into the OCI runtime
//! spec's `linux.seccomp` for this machine's architecture and the
//! container's capabilities, as dockerd does: an entry applies when its
//! `includes` (architectures, capabilities, minimum kernel) hold and its
//! `excludes` do not.

use serde_json::{json, Value};

use crate::{Result, RuntimeError};

/// Docker's name of this machine's architecture (`amd64`, `arm64`, ...).
fn docker_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// libseccomp's name of it (`SCMP_ARCH_X86_64`, ...).
fn scmp_arch() -> String {
    match std::env::consts::ARCH {
        "x86_64" => "SCMP_ARCH_X86_64".into(),
        "aarch64" => "SCMP_ARCH_AARCH64".into(),
        "x86" => "SCMP_ARCH_X86".into(),
        other => format!("SCMP_ARCH_{}", other.to_ascii_uppercase()),
    }
}

/// `5.10.0-28-amd64` -> (5, 10).
fn kernel_version(release: &str) -> (u32, u32) {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Whether this kernel filters system calls (a `Seccomp:` line in
/// `/proc/self/status`).
pub fn kernel_has_seccomp() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Seccomp:")))
        .unwrap_or(false)
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The `linux.seccomp` of a container holding `caps`, from `profile`
/// (Docker's format), on a kernel of `release`.
pub fn oci_seccomp(profile: &Value, caps: &[String], release: &str) -> Result<Value> {
    let bad = |m: &str| RuntimeError::Invalid(format!("seccomp profile: {m}"));
    let default = profile["defaultAction"]
        .as_str()
        .ok_or_else(|| bad("no defaultAction"))?;
    let arch = scmp_arch();
    let mut arches = vec![arch.clone()];
    if let Some(map) = profile["archMap"].as_array() {
        for m in map.iter().filter(|m| m["architecture"] == arch.as_str()) {
            arches.extend(
                strings(&m["subArchitectures"])
                    .into_iter()
                    .map(String::from),
            );
        }
    }
    let kernel = kernel_version(release);
    let has = |c: &str| caps.iter().any(|x| x == c);
    let mut syscalls = Vec::new();
    for s in profile["syscalls"]
        .as_array()
        .ok_or_else(|| bad("no syscalls list"))?
    {
        let (inc, exc) = (&s["includes"], &s["excludes"]);
        let inc_arches = strings(&inc["arches"]);
        if !inc_arches.is_empty() && !inc_arches.contains(&docker_arch()) {
            continue;
        }
        if strings(&exc["arches"]).contains(&docker_arch()) {
            continue;
        }
        if !strings(&inc["caps"]).iter().all(|c| has(c)) {
            continue;
        }
        if strings(&exc["caps"]).iter().any(|c| has(c)) {
            continue;
        }
        if let Some(min) = inc["minKernel"].as_str() {
            if kernel < kernel_version(min) {
                continue;
            }
        }
        let mut entry = json!({
            "names": s["names"],
            "action": s["action"],
        });
        if let Some(args) = s["args"].as_array().filter(|a| !a.is_empty()) {
            entry["args"] = Value::Array(args.clone());
        }
        if let Some(e) = s["errnoRet"].as_u64() {
            entry["errnoRet"] = json!(e);
        }
        syscalls.push(entry);
    }
    let mut out = json!({
        "defaultAction": default,
        "architectures": arches,
        "syscalls": syscalls,
    });
    if let Some(e) = profile["defaultErrnoRet"].as_u64() {
        out["defaultErrnoRet"] = json!(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Value {
        json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
            "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "args": [], "includes": {}, "excludes": {}},
                {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}, "excludes": {}},
                {"names": ["sync_file_range2"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["ppc64le"]}, "excludes": {}},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}, "excludes": {}},
                {"names": ["mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "includes": {}, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["clone3"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "5.3"}, "excludes": {}},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}], "includes": {}, "excludes": {}}
            ]
        })
    }

    fn names(v: &Value) -> Vec<(String, String)> {
        v["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| {
                strings(&s["names"])
                    .into_iter()
                    .map(|n| (n.to_string(), s["action"].as_str().unwrap().to_string()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn entries_follow_arch_caps_and_kernel() {
        let default_caps = vec!["CAP_CHOWN".to_string()];
        let v = oci_seccomp(&profile(), &default_caps, "5.10.0-28-amd64").unwrap();
        let n = names(&v);
        let has = |name: &str, action: &str| n.contains(&(name.into(), action.into()));
        assert!(has("read", "SCMP_ACT_ALLOW"));
        if std::env::consts::ARCH == "x86_64" {
            assert!(has("arch_prctl", "SCMP_ACT_ALLOW"));
            assert_eq!(
                v["architectures"],
                json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
            );
        }
        assert!(!n.iter().any(|(x, _)| x == "sync_file_range2"));
        assert!(has("mount", "SCMP_ACT_ERRNO") && !has("mount", "SCMP_ACT_ALLOW"));
        assert!(has("clone3", "SCMP_ACT_ALLOW"));
        assert_eq!(v["defaultErrnoRet"], 38);
        let with_admin = vec!["CAP_SYS_ADMIN".to_string()];
        let n = names(&oci_seccomp(&profile(), &with_admin, "4.19.0").unwrap());
        assert!(n.contains(&("mount".into(), "SCMP_ACT_ALLOW".into())));
        assert!(
            !n.iter().any(|(x, _)| x == "clone3"),
            "minKernel 5.3 on 4.19"
        );
    }

    #[test]
    fn a_profile_without_its_fields_is_an_error() {
        assert!(oci_seccomp(&json!({}), &[], "5.10").is_err());
        assert!(oci_seccomp(&json!({"defaultAction": "SCMP_ACT_ERRNO"}), &[], "5.10").is_err());
    }
}
