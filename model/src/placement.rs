//! Placement: docker's `--constraint` expressions (`node.id`,
//! `node.hostname`, `node.role`, `node.labels.K` with `==` or `!=`) and
//! node labels (`node update --label-add`). The scheduler keeps a task on
//! the nodes every constraint of its service matches.

use std::collections::BTreeMap;

use crate::service::ServiceError;
use crate::state::Node;

/// Most labels on one node, and the longest key or value.
const MAX_LABELS: usize = 64;
const MAX_LABEL_LEN: usize = 256;

/// What a constraint looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Key {
    Id,
    Hostname,
    Role,
    Label(String),
}

/// One parsed `--constraint`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    key: Key,
    equal: bool,
    value: String,
}

impl Constraint {
    /// `node.role==manager`, `node.labels.zone != a` (spaces allowed
    /// around the operator, as docker allows).
    pub fn parse(s: &str) -> Result<Constraint, ServiceError> {
        let bad = |why: &str| ServiceError::BadConstraint(format!("{s:?}: {why}"));
        let (k, v, equal) = match (s.split_once("=="), s.split_once("!=")) {
            (Some((k, v)), None) => (k, v, true),
            (None, Some((k, v))) => (k, v, false),
            _ => return Err(bad("expected one operator from ==, !=")),
        };
        let (k, value) = (k.trim(), v.trim());
        if value.is_empty() || value.contains(['=', '!']) {
            return Err(bad("expected a value after the operator"));
        }
        let key = match k.to_ascii_lowercase().as_str() {
            "node.id" => Key::Id,
            "node.hostname" => Key::Hostname,
            "node.role" if value == "manager" || value == "worker" => Key::Role,
            "node.role" => return Err(bad("node.role is manager or worker")),
            _ => match k.strip_prefix("node.labels.") {
                Some(l) if !l.is_empty() => Key::Label(l.to_string()),
                _ => {
                    return Err(bad(
                        "the key is node.id, node.hostname, node.role or node.labels.<label>",
                    ))
                }
            },
        };
        Ok(Constraint {
            key,
            equal,
            value: value.to_string(),
        })
    }

    /// Whether `node` (with its labels) satisfies it. A label the node
    /// lacks satisfies `!=` only.
    pub fn matches(&self, node: &Node, labels: Option<&BTreeMap<String, String>>) -> bool {
        let have = match &self.key {
            Key::Id => Some(node.id.to_string()),
            Key::Hostname => Some(node.hostname.clone()),
            Key::Role => Some(node.role.to_string()),
            Key::Label(l) => labels.and_then(|m| m.get(l)).cloned(),
        };
        let same = have.is_some_and(|h| match self.key {
            // Host names and ids compare case-insensitively, as docker.
            Key::Hostname | Key::Id => h.eq_ignore_ascii_case(&self.value),
            _ => h == self.value,
        });
        same == self.equal
    }
}

/// A service's constraints, parsed once (the scheduler asks every node).
/// One that does not parse (they are checked at create) fits no node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraints(Option<Vec<Constraint>>);

impl Constraints {
    /// The stored expressions.
    pub fn parse(exprs: &[String]) -> Constraints {
        Constraints(exprs.iter().map(|c| Constraint::parse(c).ok()).collect())
    }

    /// Whether `node` (with its labels) satisfies every constraint.
    pub fn fit(&self, node: &Node, labels: Option<&BTreeMap<String, String>>) -> bool {
        self.0
            .as_ref()
            .is_some_and(|cs| cs.iter().all(|c| c.matches(node, labels)))
    }
}

/// The label of a `--placement-pref` (`spread=node.labels.K` → `K`), if
/// it is one.
pub fn spread_label(pref: &str) -> Option<&str> {
    pref.strip_prefix("spread=")?
        .strip_prefix("node.labels.")
        .filter(|k| !k.is_empty())
}

/// A `--placement-pref` docker would take: `spread=node.labels.K`.
pub fn check_pref(pref: &str) -> Result<(), ServiceError> {
    spread_label(pref).map(|_| ()).ok_or_else(|| {
        ServiceError::BadConstraint(format!(
            "placement preference {pref:?}: expected spread=node.labels.<label>"
        ))
    })
}

/// A node's labels, bounded: at most 64, keys and values of 256 bytes.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), ServiceError> {
    if labels.len() > MAX_LABELS {
        return Err(ServiceError::BadLabels(format!(
            "{} labels: a node has at most {MAX_LABELS}",
            labels.len()
        )));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > MAX_LABEL_LEN || v.len() > MAX_LABEL_LEN {
            return Err(ServiceError::BadLabels(format!(
                "label {k:?}: keys are 1 to {MAX_LABEL_LEN} bytes, values up to {MAX_LABEL_LEN}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, role: shoal_tls::Role) -> Node {
        Node {
            id: shoal_tls::NodeId::generate(),
            hostname: host.into(),
            role,
            availability: crate::state::Availability::Active,
            status: crate::state::NodeStatus::Ready,
            addr: "10.0.0.1:2377".parse().unwrap(),
            data_path_addr: "10.0.0.1".parse().unwrap(),
            raft_id: None,
            created_at: 1,
            updated_at: 1,
            version: 0,
        }
    }

    #[test]
    fn constraints_parse_and_match_as_docker_reads_them() {
        let m = node("h1", shoal_tls::Role::Manager);
        let w = node("h2", shoal_tls::Role::Worker);
        let zone = BTreeMap::from([("zone".to_string(), "a".to_string())]);
        let c = |s: &str| Constraint::parse(s).unwrap();
        assert!(c("node.role==manager").matches(&m, None));
        assert!(!c("node.role==manager").matches(&w, None));
        assert!(c("node.role != manager").matches(&w, None));
        assert!(c("node.hostname==H2").matches(&w, None));
        assert!(c(&format!("node.id=={}", w.id)).matches(&w, None));
        assert!(c("node.labels.zone==a").matches(&w, Some(&zone)));
        assert!(!c("node.labels.zone==a").matches(&m, None));
        assert!(c("node.labels.zone!=a").matches(&m, None));
        assert!(!c("node.labels.zone!=a").matches(&w, Some(&zone)));
        for bad in [
            "node.role",
            "node.role=manager",
            "node.role==boss",
            "engine.labels.x==y",
            "node.labels.==y",
            "node.hostname==",
            "node.id==a==b",
        ] {
            assert!(Constraint::parse(bad).is_err(), "{bad}");
        }
        let all =
            |cs: &[&str]| Constraints::parse(&cs.iter().map(|c| c.to_string()).collect::<Vec<_>>());
        assert!(all(&["node.role==worker"]).fit(&w, None));
        assert!(!all(&["node.role==worker", "node.hostname==x"]).fit(&w, None));
        assert!(!all(&["node.role==boss"]).fit(&w, None));
        assert!(all(&[]).fit(&w, None));
    }

    #[test]
    fn spread_preferences_name_a_node_label() {
        assert_eq!(spread_label("spread=node.labels.zone"), Some("zone"));
        for bad in [
            "spread=zone",
            "spread=node.labels.",
            "pack=node.labels.zone",
            "",
        ] {
            assert_eq!(spread_label(bad), None, "{bad}");
            assert!(check_pref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels_are_bounded() {
        let many: BTreeMap<String, String> =
            (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(check_labels(&many).is_err());
        let long = BTreeMap::from([("k".to_string(), "v".repeat(300))]);
        assert!(check_labels(&long).is_err());
        assert!(check_labels(&BTreeMap::from([("zone".into(), "a".into())])).is_ok());
    }
}
