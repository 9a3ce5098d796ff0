//! Rolling updates: how a service's tasks move to a new spec
//! (`--update-parallelism`, `--update-delay`, `--update-order`, as
//! docker's UpdateConfig) and how far that got (`UpdateStatus`, shown by
//! `service inspect`). The leader's scheduler does the rolling.

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

/// How an update replaces tasks (docker's defaults).
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
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            order: UpdateOrder::StopFirst,
            failure_action: FailureAction::Pause,
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
