//! Cluster events (`shoal events`): what changed in the store, as Docker
//! prints it — node up/down, role and availability changes, networks and
//! services created, updated and removed.
//!
//! Every manager derives them itself: on each applied change it compares a
//! small summary of the state with the previous one ([`diff`], pure) and
//! appends the differences to a bounded in-memory log. Clients long-poll
//! the log by sequence number, so `shoal events` streams with the plain
//! request/response protocol of the local API.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use shoal_api::Event;
use shoal_model::state::State;

/// Events kept in memory per manager.
pub const KEPT: usize = 10_000;
/// How long one poll waits for a new event.
pub const POLL_WAIT: Duration = Duration::from_secs(10);

/// What events are computed from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    nodes: BTreeMap<String, [String; 4]>,
    networks: BTreeMap<String, String>,
    services: BTreeMap<String, (String, u64, u64)>,
}

impl Summary {
    /// The parts of the state events are about.
    pub fn of(s: &State) -> Summary {
        Summary {
            nodes: s
                .nodes
                .values()
                .map(|n| {
                    (
                        n.id.to_string(),
                        [
                            n.hostname.clone(),
                            n.role.to_string().to_lowercase(),
                            n.status.to_string().to_lowercase(),
                            n.availability.to_string().to_lowercase(),
                        ],
                    )
                })
                .collect(),
            networks: s
                .networks
                .values()
                .map(|n| (n.id.clone(), n.name.clone()))
                .collect(),
            services: s
                .services
                .values()
                .map(|v| {
                    (
                        v.id.clone(),
                        (v.spec.name.clone(), v.spec.replicas, v.spec_version),
                    )
                })
                .collect(),
        }
    }
}

/// One difference: (type, action, id, name, attributes).
pub type Change = (String, String, String, String, Vec<(String, String)>);

/// Every difference between two summaries.
pub fn diff(old: &Summary, new: &Summary) -> Vec<Change> {
    let mut out = Vec::new();
    for (id, n) in &new.nodes {
        match old.nodes.get(id) {
            None => out.push(ev(
                "node",
                "create",
                id,
                &n[0],
                vec![("role", n[1].clone())],
            )),
            Some(o) if o != n => {
                let mut attrs = Vec::new();
                for (i, what) in [(1, "role"), (2, "state"), (3, "availability")] {
                    if o[i] != n[i] {
                        attrs.push((format!("{what}.old"), o[i].clone()));
                        attrs.push((format!("{what}.new"), n[i].clone()));
                    }
                }
                if !attrs.is_empty() {
                    out.push((
                        "node".into(),
                        "update".into(),
                        id.clone(),
                        n[0].clone(),
                        attrs,
                    ));
                }
            }
            Some(_) => {}
        }
    }
    for (id, n) in &old.nodes {
        if !new.nodes.contains_key(id) {
            out.push(ev("node", "remove", id, &n[0], vec![]));
        }
    }
    for (id, name) in &new.networks {
        if !old.networks.contains_key(id) {
            out.push(ev("network", "create", id, name, vec![]));
        }
    }
    for (id, name) in &old.networks {
        if !new.networks.contains_key(id) {
            out.push(ev("network", "remove", id, name, vec![]));
        }
    }
    for (id, (name, replicas, spec)) in &new.services {
        match old.services.get(id) {
            None => out.push(ev(
                "service",
                "create",
                id,
                name,
                vec![("replicas", replicas.to_string())],
            )),
            Some((_, r0, s0)) if r0 != replicas || s0 != spec => {
                let mut attrs = Vec::new();
                if r0 != replicas {
                    attrs.push(("replicas.old".to_string(), r0.to_string()));
                    attrs.push(("replicas.new".to_string(), replicas.to_string()));
                }
                if s0 != spec {
                    attrs.push(("updatestate.new".to_string(), "updating".to_string()));
                }
                out.push((
                    "service".into(),
                    "update".into(),
                    id.clone(),
                    name.clone(),
                    attrs,
                ));
            }
            Some(_) => {}
        }
    }
    for (id, (name, _, _)) in &old.services {
        if !new.services.contains_key(id) {
            out.push(ev("service", "remove", id, name, vec![]));
        }
    }
    out
}

fn ev(kind: &str, action: &str, id: &str, name: &str, attrs: Vec<(&str, String)>) -> Change {
    (
        kind.into(),
        action.into(),
        id.into(),
        name.into(),
        attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    )
}

/// The bounded log of one manager.
#[derive(Debug, Default)]
pub struct EventLog {
    buf: Mutex<VecDeque<Event>>,
    last: Mutex<Option<Summary>>,
    /// Wakes pollers.
    pub notify: tokio::sync::Notify,
}

impl EventLog {
    /// Record the differences between the last summary and `now`. The
    /// first call only sets the baseline.
    pub fn observe(&self, now: Summary, time_ms: u64) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        let Some(prev) = last.replace(now.clone()) else {
            return;
        };
        let changes = diff(&prev, &now);
        if changes.is_empty() {
            return;
        }
        if let Ok(mut buf) = self.buf.lock() {
            let first = buf.back().map(|e| e.seq).unwrap_or(0) + 1;
            for (seq, (kind, action, id, name, attrs)) in (first..).zip(changes) {
                buf.push_back(Event {
                    seq,
                    time_ms,
                    kind,
                    action,
                    id,
                    name,
                    attributes: attrs.into_iter().collect(),
                });
            }
            while buf.len() > KEPT {
                buf.pop_front();
            }
        }
        self.notify.notify_waiters();
    }

    /// Events after sequence `after`, or (first call) since `since_ms`.
    pub fn after(&self, after: Option<u64>, since_ms: Option<u64>) -> Vec<Event> {
        self.buf
            .lock()
            .map(|b| {
                b.iter()
                    .filter(|e| match after {
                        Some(a) => e.seq > a,
                        None => since_ms.is_some_and(|s| e.time_ms >= s),
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The newest sequence number (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.buf
            .lock()
            .ok()
            .and_then(|b| b.back().map(|e| e.seq))
            .unwrap_or(0)
    }
}

/// Every manager: turn every applied change into events.
pub async fn run(manager: std::sync::Weak<super::Manager>) {
    let Some(mut rx) = manager.upgrade().map(|m| m.store().subscribe()) else {
        return;
    };
    loop {
        let Some(m) = manager.upgrade() else { return };
        if let Ok(sum) = m.store().read_local(Summary::of).await {
            m.events().observe(sum, shoal_model::now_ms());
        }
        drop(m);
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_network_and_service_changes() {
        let mut a = Summary::default();
        a.nodes.insert(
            "n1".into(),
            [
                "h1".into(),
                "worker".into(),
                "ready".into(),
                "active".into(),
            ],
        );
        a.services.insert("s1".into(), ("web".into(), 3, 1));
        let mut b = a.clone();
        b.nodes.get_mut("n1").unwrap()[2] = "down".into();
        b.networks.insert("x".into(), "app".into());
        b.services.insert("s1".into(), ("web".into(), 5, 1));
        let d = diff(&a, &b);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d.iter().any(|e| e.0 == "node"
            && e.1 == "update"
            && e.4.contains(&("state.new".into(), "down".into()))));
        assert!(d
            .iter()
            .any(|e| e.0 == "network" && e.1 == "create" && e.3 == "app"));
        assert!(d
            .iter()
            .any(|e| e.0 == "service" && e.4.contains(&("replicas.new".into(), "5".into()))));
        let log = EventLog::default();
        log.observe(a.clone(), 1);
        log.observe(b, 2);
        log.observe(a, 3);
        assert_eq!(log.last_seq(), 6);
        assert_eq!(log.after(Some(3), None).len(), 3);
        assert_eq!(log.after(None, Some(3)).len(), 3);
        let line = log.after(Some(0), None)[0].line();
        assert!(
            line.contains(" node update n1 (name=h1, state.new=down, state.old=ready)"),
            "{line}"
        );
    }
}
