//! A linearizability checker for the chaos run's registers (in the manner
//! of Knossos and Porcupine, for one small model): each key is a named
//! network that clients create, remove and read through the CLI of random
//! managers while faults go on. Every operation is recorded with when it
//! was invoked and when it returned (never, if its outcome is unknown:
//! timeout, daemon killed, no quorum), and the history of each key must
//! have a linearization: a total order, consistent with real time, in
//! which every acknowledged result is what a single copy would have
//! answered. Operations with an unknown outcome may appear anywhere after
//! their invocation, or not at all.
//!
//! Pure: `super::writers` records, `super::run` checks after the run.

use std::collections::{BTreeMap, HashSet};

/// What a client asked of one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `network create NAME`: succeeds iff absent.
    Create,
    /// `network rm NAME`: succeeds iff present.
    Remove,
    /// `network inspect NAME`: present or not.
    Read,
}

/// What the client saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Create or remove acknowledged.
    Ok,
    /// Create refused because present ("already exists"), remove refused
    /// because absent ("not found").
    Refused,
    /// A read's answer: present?
    Read(bool),
    /// Anything else: it may or may not have taken effect.
    Unknown,
}

/// One client operation on one key; times in microseconds since the start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// The key (network name).
    pub key: String,
    /// What was asked.
    pub kind: Kind,
    /// When it was sent.
    pub invoked: u64,
    /// When its answer came (`None`: never, outcome unknown).
    pub returned: Option<u64>,
    /// The answer.
    pub outcome: Outcome,
}

/// The single-copy model: does the key exist? Returns the new state, or
/// `None` when `op` could not have answered what it did from `present`.
fn step(present: bool, op: &Op) -> Option<bool> {
    match (op.kind, op.outcome) {
        (_, Outcome::Unknown) => Some(match op.kind {
            Kind::Create => true,
            Kind::Remove => false,
            Kind::Read => present,
        }),
        (Kind::Create, Outcome::Ok) if !present => Some(true),
        (Kind::Create, Outcome::Refused) if present => Some(true),
        (Kind::Remove, Outcome::Ok) if present => Some(false),
        (Kind::Remove, Outcome::Refused) if !present => Some(false),
        (Kind::Read, Outcome::Read(p)) if p == present => Some(present),
        _ => None,
    }
}

/// Most operations checked per key (a search over subsets).
pub const MAX_OPS_PER_KEY: usize = 128;

/// Checks every key's history; `Err` names the first key without a
/// linearization.
pub fn check(history: &[Op]) -> Result<(), String> {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    for (key, ops) in by_key {
        if ops.len() > MAX_OPS_PER_KEY {
            return Err(format!(
                "key {key}: {} operations, more than the checker takes ({MAX_OPS_PER_KEY})",
                ops.len()
            ));
        }
        if !linearizable(&ops) {
            let mut lines: Vec<String> = ops
                .iter()
                .map(|o| {
                    format!(
                        "{:?} {:?} [{} .. {}]",
                        o.kind,
                        o.outcome,
                        o.invoked,
                        o.returned.map_or("?".into(), |r| r.to_string())
                    )
                })
                .collect();
            lines.sort();
            return Err(format!(
                "key {key}: no linearization of {} operations: {}",
                ops.len(),
                lines.join("; ")
            ));
        }
    }
    Ok(())
}

/// Depth-first search for a linearization (WGL): the next operation may
/// be any remaining one invoked before every remaining known return;
/// unknown ones may also be dropped. Visited (done-set, state) pairs are
/// not searched twice.
fn linearizable(ops: &[&Op]) -> bool {
    let n = ops.len();
    let full: u128 = if n == 128 {
        u128::MAX
    } else {
        (1u128 << n) - 1
    };
    // Operations that must be placed: those with a known outcome.
    let must: u128 = (0..n)
        .filter(|&i| ops[i].outcome != Outcome::Unknown)
        .fold(0, |m, i| m | 1 << i);
    let mut seen: HashSet<(u128, bool)> = HashSet::new();
    let mut stack: Vec<(u128, bool)> = vec![(0, false)];
    while let Some((done, present)) = stack.pop() {
        if done & must == must {
            return true;
        }
        if !seen.insert((done, present)) {
            continue;
        }
        let remaining = full & !done;
        // Earliest known return among the remaining operations.
        let horizon = (0..n)
            .filter(|&i| remaining & 1 << i != 0)
            .filter_map(|i| ops[i].returned)
            .min()
            .unwrap_or(u64::MAX);
        for i in (0..n).filter(|&i| remaining & 1 << i != 0) {
            if ops[i].invoked > horizon {
                continue;
            }
            let next = done | 1 << i;
            if let Some(p) = step(present, ops[i]) {
                stack.push((next, p));
            }
            if ops[i].outcome == Outcome::Unknown {
                stack.push((next, present)); // it never happened
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: Kind, outcome: Outcome, invoked: u64, returned: Option<u64>) -> Op {
        Op {
            key: "k".into(),
            kind,
            invoked,
            returned,
            outcome,
        }
    }

    #[test]
    fn sequential_histories_follow_the_model() {
        let h = vec![
            op(Kind::Read, Outcome::Read(false), 0, Some(1)),
            op(Kind::Create, Outcome::Ok, 2, Some(3)),
            op(Kind::Create, Outcome::Refused, 4, Some(5)),
            op(Kind::Read, Outcome::Read(true), 6, Some(7)),
            op(Kind::Remove, Outcome::Ok, 8, Some(9)),
            op(Kind::Remove, Outcome::Refused, 10, Some(11)),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_caught() {
        let h = vec![
            op(Kind::Create, Outcome::Ok, 0, Some(10)),
            op(Kind::Read, Outcome::Read(false), 20, Some(30)),
        ];
        let e = check(&h).unwrap_err();
        assert!(e.contains("key k"), "{e}");
    }

    #[test]
    fn overlapping_operations_may_take_either_order() {
        // The read overlaps the create: both answers are fine.
        for seen in [true, false] {
            let h = vec![
                op(Kind::Create, Outcome::Ok, 0, Some(10)),
                op(Kind::Read, Outcome::Read(seen), 5, Some(15)),
            ];
            assert!(check(&h).is_ok(), "read {seen}");
        }
        // Two creates that both succeed cannot both have happened.
        let h = vec![
            op(Kind::Create, Outcome::Ok, 0, Some(10)),
            op(Kind::Create, Outcome::Ok, 5, Some(15)),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn unknown_outcomes_may_happen_late_or_never() {
        // A create with no answer, then a read that sees it much later.
        let h = vec![
            op(Kind::Create, Outcome::Unknown, 0, None),
            op(Kind::Read, Outcome::Read(false), 10, Some(20)),
            op(Kind::Read, Outcome::Read(true), 30, Some(40)),
        ];
        assert!(check(&h).is_ok());
        // ... or never: reads keep saying absent.
        let h = vec![
            op(Kind::Create, Outcome::Unknown, 0, None),
            op(Kind::Read, Outcome::Read(false), 30, Some(40)),
        ];
        assert!(check(&h).is_ok());
        // But it cannot undo itself: present, then absent with no remove.
        let h = vec![
            op(Kind::Create, Outcome::Unknown, 0, None),
            op(Kind::Read, Outcome::Read(true), 30, Some(40)),
            op(Kind::Read, Outcome::Read(false), 50, Some(60)),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn keys_are_checked_apart() {
        let mut a = op(Kind::Create, Outcome::Ok, 0, Some(1));
        a.key = "a".into();
        let mut b = op(Kind::Read, Outcome::Read(false), 2, Some(3));
        b.key = "b".into();
        assert!(check(&[a, b]).is_ok());
    }

    #[test]
    fn a_long_concurrent_history_is_checked_quickly() {
        // 100 reads overlapping 10 creates/removes in turn.
        let mut h = Vec::new();
        let mut t = 0;
        for i in 0..10 {
            let kind = if i % 2 == 0 {
                Kind::Create
            } else {
                Kind::Remove
            };
            h.push(op(kind, Outcome::Ok, t, Some(t + 100)));
            for j in 0..10 {
                h.push(op(
                    Kind::Read,
                    Outcome::Read(i % 2 == 0),
                    t + 101 + j,
                    Some(t + 150),
                ));
            }
            t += 200;
        }
        let started = std::time::Instant::now();
        assert!(check(&h).is_ok());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
