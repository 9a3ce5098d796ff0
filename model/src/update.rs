//! Rolling updates: how a service's tasks move to a new spec
//! (`--update-parallelism`, `--update-delay`, `--update-order`,
//! `--update-failure-action`, `--update-monitor`,
//! `--update-max-failure-ratio`, as docker's UpdateConfig; the same for a
//! rollback with `--rollback-*`) and how far that got (`UpdateStatus`,
//! shown by `service inspect`). The leader's scheduler does the rolling.

use serde::{Deserialize, Serialize};

/// `--update-order`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// The old task stops, then its replacement starts.
    #[default]
    StopFirst,
    /// The replacement starts; the old task stops once it runs.
    StartFirst,
}

/// `--update-failure-action`: what a failed replacement task does to
/// the update.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    /// Stop rolling (`paused`); another `service update` starts again.
    #[default]
    Pause,
    /// Go on.
    Continue,
    /// Go back to the previous spec.
    Rollback,
}

/// docker's `--update-monitor` default.
pub const DEFAULT_MONITOR_MS: u64 = 5_000;

fn default_monitor() -> u64 {
    DEFAULT_MONITOR_MS
}

/// `--update-max-failure-ratio`: the share of the service's tasks that
/// may fail during an update before its failure action, kept in
/// millionths (so the config stays `Eq`), written as docker's float.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct FailureRatio(u32);

impl Serialize for FailureRatio {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.get())
    }
}

impl<'de> Deserialize<'de> for FailureRatio {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        FailureRatio::new(f64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl FailureRatio {
    /// A ratio from 0 to 1 (docker's float), refused outside that.
    pub fn new(r: f64) -> Result<FailureRatio, String> {
        if !(0.0..=1.0).contains(&r) {
            return Err(format!(
                "invalid max failure ratio {r}: must be between 0 and 1"
            ));
        }
        Ok(FailureRatio((r * 1e6).round() as u32))
    }

    /// The ratio as docker shows it.
    pub fn get(self) -> f64 {
        f64::from(self.0) / 1e6
    }

    /// Whether `failed` of `total` tasks is more than this tolerates.
    pub fn exceeded(self, failed: u64, total: u64) -> bool {
        failed > 0 && u128::from(failed) * 1_000_000 > u128::from(self.0) * u128::from(total.max(1))
    }
}

impl std::str::FromStr for FailureRatio {
    type Err = String;
    fn from_str(s: &str) -> Result<FailureRatio, String> {
        let r: f64 = s.trim().parse().map_err(|_| {
            format!("invalid max failure ratio {s:?}: expected a number from 0 to 1")
        })?;
        FailureRatio::new(r)
    }
}

/// How an update (or a rollback) replaces tasks (docker's defaults).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Tasks replaced at once (0: all).
    pub parallelism: u64,
    /// Wait between one batch running and the next starting, in ms.
    pub delay_ms: u64,
    /// Stop first or start first.
    pub order: UpdateOrder,
    /// What a replacement that fails does.
    #[serde(default)]
    pub failure_action: FailureAction,
    /// How long a replacement is watched after it runs: one that fails
    /// sooner counts as a failure of the update, ms.
    #[serde(default = "default_monitor")]
    pub monitor_ms: u64,
    /// Failures tolerated before the failure action.
    #[serde(default)]
    pub max_failure_ratio: FailureRatio,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            order: UpdateOrder::StopFirst,
            failure_action: FailureAction::Pause,
            monitor_ms: DEFAULT_MONITOR_MS,
            max_failure_ratio: FailureRatio::default(),
        }
    }
}

/// Where an update is (docker's UpdateStatus.State).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// Tasks are being replaced.
    Updating,
    /// A replacement failed: no more are made (`--update-failure-action
    /// pause`).
    Paused,
    /// Every task runs the new spec.
    Completed,
    /// Going back to the previous spec (`service rollback`, or a failure
    /// with `--update-failure-action rollback`).
    RollbackStarted,
    /// Every task runs the previous spec again.
    RollbackCompleted,
    /// A rolled-back task failed (`--rollback-failure-action pause`).
    RollbackPaused,
}

/// How far the last update got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// Updating or completed.
    pub state: UpdateState,
    /// Unix ms it started.
    pub started_at: u64,
    /// Unix ms it completed (0 until then).
    pub completed_at: u64,
    /// `update in progress` / `update completed`.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_ratio_is_docker_float_in_millionths() {
        assert_eq!(
            "0.25".parse::<FailureRatio>().map(FailureRatio::get),
            Ok(0.25)
        );
        assert!("1.5".parse::<FailureRatio>().is_err());
        assert!("x".parse::<FailureRatio>().is_err());
        let zero = FailureRatio::default();
        assert!(!zero.exceeded(0, 6));
        assert!(zero.exceeded(1, 6));
        let third = FailureRatio::new(0.34).unwrap();
        assert!(!third.exceeded(2, 6));
        assert!(third.exceeded(3, 6));
        // Older configs read with docker's monitor default.
        let old: UpdateConfig =
            serde_json::from_str(r#"{"parallelism":1,"delay_ms":0,"order":"stop-first"}"#).unwrap();
        assert_eq!(old.monitor_ms, DEFAULT_MONITOR_MS);
        let r = FailureRatio::new(0.3).unwrap();
        let back: FailureRatio = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert!(serde_json::from_str::<FailureRatio>("2.0").is_err());
    }
}
