//! Rolling updates, part of the scheduler's plan (leader): when a
//! service's spec changes, which tasks of the old spec are replaced now —
//! `parallelism` slots at a time (0: all), a batch only once the last one
//! has run for `delay`, the old task stopped first or its replacement
//! started first (`--update-order start-first`: the old task stops once
//! the new one runs), what a failed replacement does
//! (`--update-failure-action pause|continue|rollback`) once more than
//! `--update-max-failure-ratio` of the slots failed, counting a
//! replacement that fails before it runs or within `--update-monitor` of
//! running — and the service's UpdateStatus (`updating`, `paused`,
//! `completed` once the last replacements ran for the monitor period,
//! `rollback_started`, `rollback_paused`, `rollback_completed`). A
//! rollback rolls with the `--rollback-*` settings of the spec it leaves.
//!
//! A slot is `(slot, node)`: the node only for a global service's tasks
//! (slot 0, one per node).

use std::collections::{BTreeMap, BTreeSet};

use shoal_model::service::{Service, Task, TaskState};
use shoal_model::state::{Command, State};
use shoal_model::update::{FailureAction, UpdateOrder, UpdateState, UpdateStatus};

/// A slot of a service: (service id, slot, node for global tasks).
pub type SlotKey = (String, u64, String);

/// What the rolling part of a plan decided.
#[derive(Debug, Default)]
pub struct Rolling {
    /// Tasks of an old spec to stop now.
    pub stop: BTreeSet<String>,
    /// Slots whose replacement starts while the old task still runs.
    pub start_first: BTreeSet<SlotKey>,
    /// UpdateStatus changes.
    pub status: Vec<Command>,
}

/// The slot a task holds.
pub fn slot_key(t: &Task) -> SlotKey {
    let node = if t.slot == 0 {
        t.node.clone()
    } else {
        String::new()
    };
    (t.service.clone(), t.slot, node)
}

/// Rolls every service with tasks of an older spec; `live` says whether a
/// task runs (or will) on a node that is up.
pub fn plan(state: &State, now: u64, live: impl Fn(&Task) -> bool) -> Rolling {
    let mut out = Rolling::default();
    // Each service's tasks, in one pass over the store.
    let mut by_service: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for t in state.tasks.values() {
        by_service.entry(t.service.as_str()).or_default().push(t);
    }
    for svc in state.services.values() {
        let tasks = by_service
            .get(svc.id.as_str())
            .map_or(&[][..], Vec::as_slice);
        roll(svc, tasks, now, &live, &mut out);
    }
    out
}

fn roll(
    svc: &Service,
    tasks: &[&Task],
    now: u64,
    live: &impl Fn(&Task) -> bool,
    out: &mut Rolling,
) {
    let current = svc.spec_version;
    let mut slots: BTreeMap<SlotKey, Vec<&Task>> = BTreeMap::new();
    for t in tasks.iter().copied() {
        if !t.state.is_terminal() && !t.is_pending() {
            slots.entry(slot_key(t)).or_default().push(t);
        }
    }
    let state_now = svc.update_status.as_ref().map(|s| s.state);
    let rolling_back = matches!(
        state_now,
        Some(UpdateState::RollbackStarted | UpdateState::RollbackPaused)
    );
    let cfg = match (&svc.previous_spec, rolling_back) {
        (Some(left), true) => &left.rollback_config,
        (None, true) => &svc.spec.rollback_config,
        _ => &svc.spec.update_config,
    };
    let mut in_progress = 0u64;
    let mut waiting: Vec<(SlotKey, &Task)> = Vec::new();
    let mut outdated = false;
    for (key, ts) in &slots {
        let old_running = ts
            .iter()
            .find(|t| t.spec_version < current && t.desired == TaskState::Running && live(t));
        let old_stopping = ts
            .iter()
            .any(|t| t.spec_version < current && t.desired != TaskState::Running);
        let new = ts
            .iter()
            .find(|t| t.spec_version >= current && t.desired == TaskState::Running);
        let new_running = new.is_some_and(|t| t.state == TaskState::Running);
        outdated |= old_running.is_some() || old_stopping;
        match (old_running, new) {
            // Start-first: the replacement runs, the old task goes.
            (Some(old), Some(_)) if new_running => {
                out.stop.insert(old.id.clone());
                in_progress += 1;
            }
            (Some(_), Some(_)) => in_progress += 1,
            (Some(old), None) if !old_stopping => waiting.push((key.clone(), old)),
            _ if old_stopping || (new.is_some() && !new_running) => in_progress += 1,
            _ => {}
        }
    }
    // `--update-delay`: the next batch waits for the last one to have run
    // that long.
    let last_ran = tasks
        .iter()
        .filter(|t| t.spec_version >= current)
        .filter(|t| t.state == TaskState::Running)
        .map(|t| t.updated_at)
        .max();
    let rested = cfg.delay_ms == 0 || last_ran.is_none_or(|at| now >= at + cfg.delay_ms);
    // Replacements that failed while this rollout went on: before they
    // ran, or within the monitor period of running.
    let started = svc.update_status.as_ref().map_or(0, |s| s.started_at);
    let failed: Vec<&Task> = tasks
        .iter()
        .copied()
        .filter(|t| t.spec_version >= current && t.updated_at >= started)
        .filter(|t| matches!(t.state, TaskState::Failed | TaskState::Rejected))
        .filter(|t| t.running_at == 0 || t.updated_at < t.running_at + cfg.monitor_ms)
        .collect();
    let too_many = cfg
        .max_failure_ratio
        .exceeded(failed.len() as u64, slots.len() as u64);
    let mut paused = matches!(
        state_now,
        Some(UpdateState::Paused | UpdateState::RollbackPaused)
    );
    if let (Some(f), true, true, false) = (failed.first(), too_many, outdated, paused) {
        match cfg.failure_action {
            FailureAction::Continue => {}
            FailureAction::Rollback if !rolling_back => {
                paused = true; // the rollback makes the next plan
                out.status.push(Command::RollbackService {
                    service: svc.id.clone(),
                    at: now,
                });
            }
            // Pause; a rollback that fails pauses too (docker has no
            // rollback of a rollback).
            _ => {
                paused = true;
                let (state, what) = match rolling_back {
                    true => (UpdateState::RollbackPaused, "rollback"),
                    false => (UpdateState::Paused, "update"),
                };
                out.status.push(status(
                    svc,
                    state,
                    started,
                    0,
                    format!(
                        "{what} paused due to failure or early termination of task {}",
                        f.id
                    ),
                ));
            }
        }
    }
    let rested = rested && !paused;
    let room = match cfg.parallelism {
        0 => usize::MAX,
        p => p.saturating_sub(in_progress) as usize,
    };
    if rested {
        for (key, old) in waiting.into_iter().take(room) {
            match cfg.order {
                UpdateOrder::StopFirst => {
                    out.stop.insert(old.id.clone());
                }
                UpdateOrder::StartFirst => {
                    out.start_first.insert(key);
                }
            }
        }
    }
    // The status: updating while old tasks remain or the last
    // replacements are watched, then completed (or rollback_completed).
    let watched = tasks.iter().any(|t| {
        t.spec_version >= current
            && t.state == TaskState::Running
            && t.updated_at >= started
            && now < t.running_at + cfg.monitor_ms
    });
    let started_at = if started == 0 { now } else { started };
    match (outdated, watched, state_now) {
        (true, _, None | Some(UpdateState::Completed) | Some(UpdateState::RollbackCompleted)) => {
            out.status.push(status(
                svc,
                UpdateState::Updating,
                now,
                0,
                "update in progress".into(),
            ))
        }
        (false, false, Some(UpdateState::Updating) | Some(UpdateState::Paused)) => {
            out.status.push(status(
                svc,
                UpdateState::Completed,
                started_at,
                now,
                "update completed".into(),
            ))
        }
        (false, false, Some(UpdateState::RollbackStarted | UpdateState::RollbackPaused)) => {
            out.status.push(status(
                svc,
                UpdateState::RollbackCompleted,
                started_at,
                now,
                "rollback completed".into(),
            ))
        }
        _ => {}
    }
}

fn status(
    svc: &Service,
    state: UpdateState,
    started_at: u64,
    completed_at: u64,
    message: String,
) -> Command {
    Command::SetUpdateStatus {
        service: svc.id.clone(),
        status: UpdateStatus {
            state,
            started_at,
            completed_at,
            message,
        },
    }
}
