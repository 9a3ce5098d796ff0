//! The writers of a chaos run: client loops that, while the faults go on,
//! create and remove networks, put gossip entries and scale the service
//! through the CLI of healthy hosts, and record in the [`Ledger`] which of
//! those writes were acknowledged; and register clients that create,
//! remove and read a few shared names and record every operation's
//! invocation, return and outcome for the linearizability check
//! (`super::linearize`).
//!
//! Data flow: `super::run` starts the writers on threads next to the fault
//! driver; they pick hosts not in the driver's `Faulted` set, and the
//! ledger they fill is what `super::checks` holds the cluster to.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::faults::Faulted;
use super::linearize::{self, Kind, Op, Outcome};
use super::{ChaosConfig, CHAOS_SERVICE, CHAOS_TABLE, CLI_TIMEOUT};
use crate::probe::cli_timeout;
use crate::Lab;

/// Writes that were acknowledged (the CLI exited 0), and the rest.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// Networks whose create was acknowledged.
    pub created: BTreeSet<String>,
    /// Networks whose rm was acknowledged.
    pub removed: BTreeSet<String>,
    /// Networks whose rm was attempted without acknowledgement (state unknown).
    pub rm_unknown: BTreeSet<String>,
    /// Gossip keys whose put was acknowledged, with the host that took it.
    pub puts: BTreeMap<String, usize>,
    /// The service's replica count as last acknowledged (create, then
    /// scales; one scale in flight at a time, so acknowledgements are in
    /// commit order). `None` without a service.
    pub service_replicas: Option<u64>,
    /// Scales acknowledged during the run.
    pub scales: u64,
    /// Replica counts of scales that were not acknowledged: they may still
    /// have been applied (even after a later acknowledged one, when the
    /// daemon that took them was paused with the request in hand).
    pub scale_unknown: BTreeSet<u64>,
    /// Writes that failed or timed out (not acknowledged).
    pub failed: u64,
    /// Every register operation, for the linearizability check.
    pub history: Vec<Op>,
}

/// How long the register clients work on one name before the next (so
/// that each name's history stays small enough to check exhaustively).
const REGISTER_WINDOW: Duration = Duration::from_secs(3);

/// A register client: create, remove and read the current window's name
/// through random healthy managers, recording each operation.
pub(super) fn register_client(
    lab: &Lab,
    cfg: &ChaosConfig,
    id: usize,
    started: Instant,
    faulted: &Faulted,
    stop: &AtomicBool,
    ledger: &Mutex<Ledger>,
) {
    let mut rng =
        StdRng::seed_from_u64(cfg.seed ^ 0x5151_0000 ^ (id as u64).wrapping_mul(0x2545_f491));
    let micros = || started.elapsed().as_micros() as u64;
    while !stop.load(Ordering::Relaxed) {
        let managers = faulted.healthy(1..=cfg.managers);
        let Some(&host) = managers.get(rng.gen_range(0..managers.len().max(1))) else {
            thread::sleep(Duration::from_millis(100));
            continue;
        };
        let window = started.elapsed().as_secs() / REGISTER_WINDOW.as_secs();
        let key = format!("lin-{window}");
        let full = ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .history
            .iter()
            .filter(|o| o.key == key)
            .count()
            >= linearize::MAX_OPS_PER_KEY - cfg.writers;
        if full {
            thread::sleep(Duration::from_millis(50));
            continue;
        }
        let kind = match rng.gen_range(0..10u32) {
            0..=3 => Kind::Create,
            4..=6 => Kind::Remove,
            _ => Kind::Read,
        };
        let args: &[&str] = match kind {
            Kind::Create => &["network", "create", &key],
            Kind::Remove => &["network", "rm", &key],
            Kind::Read => &["network", "inspect", &key],
        };
        let invoked = micros();
        let r = cli_timeout(lab, host, args, CLI_TIMEOUT);
        let returned = micros();
        let outcome = match (&r, kind) {
            (Ok(_), Kind::Read) => Outcome::Read(true),
            (Ok(_), _) => Outcome::Ok,
            (Err(e), Kind::Create) if e.contains("already exists") => Outcome::Refused,
            (Err(e), Kind::Remove) if e.contains("not found") => Outcome::Refused,
            (Err(e), Kind::Read) if e.contains("not found") => Outcome::Read(false),
            (Err(_), _) => Outcome::Unknown,
        };
        let op = Op {
            key,
            kind,
            invoked,
            returned: (outcome != Outcome::Unknown).then_some(returned),
            outcome,
        };
        ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .history
            .push(op);
    }
}

/// One writer loop: network create/rm through healthy managers and gossip
/// puts on healthy nodes, until `stop`.
pub(super) fn writer(
    lab: &Lab,
    cfg: &ChaosConfig,
    id: usize,
    faulted: &Faulted,
    stop: &AtomicBool,
    ledger: &Mutex<Ledger>,
    scaling: &Mutex<()>,
) {
    let mut rng =
        StdRng::seed_from_u64(cfg.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(id as u64 + 1)));
    let mut mine: Vec<String> = Vec::new();
    let mut n = 0u64;
    let record =
        |f: &dyn Fn(&mut Ledger)| f(&mut ledger.lock().unwrap_or_else(PoisonError::into_inner));
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let roll = rng.gen_range(0..100u32);
        if roll < 35 {
            let nodes = faulted.healthy(1..=cfg.nodes);
            let Some(&host) = nodes.get(rng.gen_range(0..nodes.len().max(1))) else {
                thread::sleep(Duration::from_millis(100));
                continue;
            };
            let key = format!("w{id}-{n}");
            let val = format!("v{n}");
            match cli_timeout(
                lab,
                host,
                &["gossip", "put", CHAOS_TABLE, &key, &val],
                CLI_TIMEOUT,
            ) {
                Ok(_) => record(&|l| {
                    l.puts.insert(key.clone(), host);
                }),
                Err(_) => record(&|l| l.failed += 1),
            }
            continue;
        }
        let managers = faulted.healthy(1..=cfg.managers);
        let Some(&host) = managers.get(rng.gen_range(0..managers.len().max(1))) else {
            thread::sleep(Duration::from_millis(100));
            continue;
        };
        if cfg.services && (35..38).contains(&roll) {
            let replicas = rng.gen_range(2..=4u64);
            // One scale in flight at a time: acknowledgements then come in
            // commit order and the last one is the expected count.
            let _one = scaling.lock().unwrap_or_else(PoisonError::into_inner);
            let arg = format!("{CHAOS_SERVICE}={replicas}");
            match cli_timeout(lab, host, &["service", "scale", &arg], CLI_TIMEOUT) {
                Ok(_) => record(&|l| {
                    l.service_replicas = Some(replicas);
                    l.scales += 1;
                }),
                Err(_) => record(&|l| {
                    l.failed += 1;
                    l.scale_unknown.insert(replicas);
                }),
            }
            continue;
        }
        if roll < 50 && !mine.is_empty() {
            let name = mine.remove(rng.gen_range(0..mine.len()));
            match cli_timeout(lab, host, &["network", "rm", &name], CLI_TIMEOUT) {
                Ok(_) => record(&|l| {
                    l.removed.insert(name.clone());
                }),
                Err(_) => record(&|l| {
                    l.failed += 1;
                    l.rm_unknown.insert(name.clone());
                }),
            }
        } else {
            let name = format!("chaos-w{id}-{n}");
            match cli_timeout(
                lab,
                host,
                &["network", "create", "--attachable", &name],
                CLI_TIMEOUT,
            ) {
                Ok(_) => {
                    record(&|l| {
                        l.created.insert(name.clone());
                    });
                    mine.push(name);
                }
                Err(_) => record(&|l| l.failed += 1),
            }
        }
    }
}
