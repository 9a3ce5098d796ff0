//! Health checks of a service's containers (docker's `HealthConfig`:
//! `--health-cmd`, `--health-interval`, `--health-timeout`,
//! `--health-retries`, `--health-start-period`, `--no-healthcheck`, and
//! the image's `HEALTHCHECK`). The spec keeps what the user set; the
//! worker merges it over the image's and runs the probes (see the agent's
//! `worker::health`). A task with a check is reported `running` only once
//! healthy, and fails when it turns unhealthy.

use serde::{Deserialize, Serialize};

/// docker's defaults for what neither the spec nor the image sets.
pub const DEFAULT_INTERVAL_MS: u64 = 30_000;
/// See [`DEFAULT_INTERVAL_MS`].
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// See [`DEFAULT_INTERVAL_MS`].
pub const DEFAULT_RETRIES: u64 = 3;
/// Longest test command kept (it is stored and sent to every node).
const MAX_TEST: usize = 4096;

/// The task message of a running task whose check passed (`service ps`
/// shows `(healthy)`).
pub const MSG_HEALTHY: &str = "healthy";
/// The error of a task whose check failed `retries` times in a row
/// (swarmkit's words).
pub const MSG_UNHEALTHY: &str = "unhealthy container";

/// A health check as docker's API has it. `test`: empty (the image's),
/// `["NONE"]` (none, even if the image has one), `["CMD", prog, args…]` or
/// `["CMD-SHELL", command]` (run with `/bin/sh -c`). A zero duration or
/// retry count takes the image's value, then docker's default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthConfig {
    /// The probe.
    pub test: Vec<String>,
    /// Time between probes, ms.
    pub interval_ms: u64,
    /// Longest a probe may run, ms.
    pub timeout_ms: u64,
    /// Failures in a row that make the container unhealthy.
    pub retries: u64,
    /// Time after start during which failures do not count, ms.
    pub start_period_ms: u64,
}

impl HealthConfig {
    /// `--no-healthcheck`.
    pub fn none() -> HealthConfig {
        HealthConfig {
            test: vec!["NONE".into()],
            ..Default::default()
        }
    }

    /// Whether this turns checking off.
    pub fn is_none(&self) -> bool {
        self.test.first().is_some_and(|t| t == "NONE")
    }

    /// docker's rules for the test's form (the daemon refuses others).
    pub fn check(&self) -> Result<(), String> {
        let len: usize = self.test.iter().map(String::len).sum();
        if len > MAX_TEST {
            return Err(format!("the test is longer than {MAX_TEST} bytes"));
        }
        match self.test.first().map(String::as_str) {
            None => Ok(()),
            Some("NONE") if self.test.len() == 1 => Ok(()),
            Some("NONE") => Err("NONE takes no arguments".into()),
            Some("CMD") if self.test.len() > 1 && !self.test[1].is_empty() => Ok(()),
            Some("CMD") => Err("CMD needs a program to run".into()),
            Some("CMD-SHELL") if self.test.len() == 2 && !self.test[1].trim().is_empty() => Ok(()),
            Some("CMD-SHELL") => Err("CMD-SHELL takes exactly one command".into()),
            Some(other) => Err(format!(
                "unknown test type {other:?} (want NONE, CMD or CMD-SHELL)"
            )),
        }
    }

    /// `self` with each field it leaves unset (empty test, zero) taken
    /// from `base`: docker's merge of a service's check over the image's,
    /// and of `service update` flags over the stored check.
    pub fn over(&self, base: &HealthConfig) -> HealthConfig {
        let pick = |a: u64, b: u64| if a > 0 { a } else { b };
        HealthConfig {
            test: match self.test.is_empty() {
                true => base.test.clone(),
                false => self.test.clone(),
            },
            interval_ms: pick(self.interval_ms, base.interval_ms),
            timeout_ms: pick(self.timeout_ms, base.timeout_ms),
            retries: pick(self.retries, base.retries),
            start_period_ms: pick(self.start_period_ms, base.start_period_ms),
        }
    }

    /// `spec` over `image`, with docker's defaults for the rest; `None`
    /// when no check runs.
    pub fn merged(spec: Option<&HealthConfig>, image: Option<&HealthConfig>) -> Option<Resolved> {
        let h = match (spec, image) {
            (Some(s), Some(i)) => s.over(i),
            (Some(h), None) | (None, Some(h)) => h.clone(),
            (None, None) => return None,
        };
        let argv = match h.test.first().map(String::as_str) {
            Some("CMD") => h.test[1..].to_vec(),
            Some("CMD-SHELL") => vec!["/bin/sh".into(), "-c".into(), h.test.get(1)?.clone()],
            _ => return None,
        };
        if argv.is_empty() {
            return None;
        }
        let or = |v: u64, d: u64| if v > 0 { v } else { d };
        Some(Resolved {
            argv,
            interval_ms: or(h.interval_ms, DEFAULT_INTERVAL_MS),
            timeout_ms: or(h.timeout_ms, DEFAULT_TIMEOUT_MS),
            retries: or(h.retries, DEFAULT_RETRIES),
            start_period_ms: h.start_period_ms,
        })
    }
}

/// A check to run, every field decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// What runs in the container.
    pub argv: Vec<String>,
    /// Time between probes, ms.
    pub interval_ms: u64,
    /// Longest a probe may run, ms.
    pub timeout_ms: u64,
    /// Failures in a row that make it unhealthy.
    pub retries: u64,
    /// Grace after start, ms.
    pub start_period_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(test: &[&str]) -> HealthConfig {
        HealthConfig {
            test: test.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn forms_are_checked() {
        for ok in [
            &[][..],
            &["NONE"],
            &["CMD", "true"],
            &["CMD-SHELL", "exit 0"],
        ] {
            assert_eq!(cfg(ok).check(), Ok(()), "{ok:?}");
        }
        for bad in [
            &["NONE", "x"][..],
            &["CMD"],
            &["CMD-SHELL"],
            &["CMD-SHELL", "a", "b"],
            &["SHELL", "x"],
        ] {
            assert!(cfg(bad).check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn spec_overrides_image_field_by_field_then_defaults() {
        let image = HealthConfig {
            test: vec!["CMD".into(), "/bin/check".into()],
            interval_ms: 5_000,
            retries: 5,
            ..Default::default()
        };
        let spec = HealthConfig {
            interval_ms: 1_000,
            ..Default::default()
        };
        let r = HealthConfig::merged(Some(&spec), Some(&image)).expect("a check");
        assert_eq!(r.argv, vec!["/bin/check".to_string()]);
        assert_eq!(
            (r.interval_ms, r.timeout_ms, r.retries, r.start_period_ms),
            (1_000, DEFAULT_TIMEOUT_MS, 5, 0)
        );
        let shell = cfg(&["CMD-SHELL", "wget -q localhost"]);
        let r = HealthConfig::merged(Some(&shell), None).expect("a check");
        assert_eq!(r.argv, ["/bin/sh", "-c", "wget -q localhost"]);
        assert_eq!(r.interval_ms, DEFAULT_INTERVAL_MS);
        // --no-healthcheck wins over the image's; nothing set: none.
        assert_eq!(
            HealthConfig::merged(Some(&HealthConfig::none()), Some(&image)),
            None
        );
        assert_eq!(HealthConfig::merged(None, None), None);
    }
}
