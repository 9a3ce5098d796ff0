//! The `service create` / `service update` flag groups: how updates and
//! rollbacks roll, health checks, the service mode.

use clap::{Args, ValueEnum};

use super::args::{parse_duration_ms, parse_duration_or_zero};

/// How an update replaces a service's tasks (`service create` and
/// `service update`).
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Maximum number of tasks updated at once (0 to update all at once)
    /// [default: 1].
    #[arg(long)]
    pub update_parallelism: Option<u64>,
    /// Delay between one batch running and the next (500ms, 10s, 1m)
    /// [default: 0s].
    #[arg(long, value_parser = parse_duration_ms)]
    pub update_delay: Option<u64>,
    /// Update order [default: stop-first].
    #[arg(long, value_enum)]
    pub update_order: Option<Order>,
    /// What a failed replacement does to the update [default: pause].
    #[arg(long, value_enum)]
    pub update_failure_action: Option<OnFailure>,
    /// How long each replacement is watched for failure after it runs
    /// (ms|s|m|h) [default: 5s].
    #[arg(long, value_parser = parse_duration_or_zero)]
    pub update_monitor: Option<u64>,
    /// Share of the tasks that may fail during an update before the
    /// failure action (0 to 1) [default: 0].
    #[arg(long)]
    pub update_max_failure_ratio: Option<shoal_model::update::FailureRatio>,
}

/// How a rollback replaces a service's tasks (`service create` and
/// `service update`), as `--update-*` does for an update.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Maximum number of tasks rolled back at once (0: all) [default: 1].
    #[arg(long)]
    pub rollback_parallelism: Option<u64>,
    /// Delay between task rollbacks (ms|s|m|h) [default: 0s].
    #[arg(long, value_parser = parse_duration_or_zero)]
    pub rollback_delay: Option<u64>,
    /// Rollback order [default: stop-first].
    #[arg(long, value_enum)]
    pub rollback_order: Option<Order>,
    /// What a failed rollback task does [default: pause].
    #[arg(long, value_enum)]
    pub rollback_failure_action: Option<OnRollbackFailure>,
    /// How long each rolled-back task is watched for failure (ms|s|m|h)
    /// [default: 5s].
    #[arg(long, value_parser = parse_duration_or_zero)]
    pub rollback_monitor: Option<u64>,
    /// Share of the tasks that may fail during a rollback (0 to 1)
    /// [default: 0].
    #[arg(long)]
    pub rollback_max_failure_ratio: Option<shoal_model::update::FailureRatio>,
}

/// `--rollback-failure-action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnRollbackFailure {
    /// Stop rolling back.
    Pause,
    /// Go on.
    Continue,
}

/// A task's health check (`service create` and `service update`; docker's
/// flags). Without them the image's HEALTHCHECK, if any, runs.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Command to run to check health (with /bin/sh -c in the container).
    #[arg(long)]
    pub health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h) [default: 30s].
    #[arg(long, value_parser = parse_duration_or_zero)]
    pub health_interval: Option<u64>,
    /// Maximum time to allow one check to run (ms|s|m|h) [default: 30s].
    #[arg(long, value_parser = parse_duration_or_zero)]
    pub health_timeout: Option<u64>,
    /// Consecutive failures needed to report unhealthy [default: 3].
    #[arg(long)]
    pub health_retries: Option<u64>,
    /// Start period for the container to initialize before counting
    /// retries towards unstable (ms|s|m|h) [default: 0s].
    #[arg(long, value_parser = parse_duration_or_zero)]
    pub health_start_period: Option<u64>,
    /// Disable any container-specified HEALTHCHECK.
    #[arg(long, conflicts_with_all = ["health_cmd", "health_interval", "health_timeout", "health_retries", "health_start_period"])]
    pub no_healthcheck: bool,
}

impl HealthArgs {
    /// The health check the flags describe (`None`: no flag given).
    pub fn config(&self) -> Option<shoal_model::health::HealthConfig> {
        if self.no_healthcheck {
            return Some(shoal_model::health::HealthConfig::none());
        }
        let h = shoal_model::health::HealthConfig {
            test: self
                .health_cmd
                .iter()
                .flat_map(|c| ["CMD-SHELL".to_string(), c.clone()])
                .collect(),
            interval_ms: self.health_interval.unwrap_or(0),
            timeout_ms: self.health_timeout.unwrap_or(0),
            retries: self.health_retries.unwrap_or(0),
            start_period_ms: self.health_start_period.unwrap_or(0),
        };
        (h != Default::default()).then_some(h)
    }
}

/// `--update-failure-action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnFailure {
    /// Stop replacing tasks.
    Pause,
    /// Go on.
    Continue,
    /// Go back to the previous spec.
    Rollback,
}

/// `--update-order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Order {
    /// Stop the old task, then start its replacement.
    StopFirst,
    /// Start the replacement, stop the old task once it runs.
    StartFirst,
}

/// `service create --mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// `--replicas` tasks spread over the nodes.
    Replicated,
    /// One task on every ready, active node.
    Global,
}
