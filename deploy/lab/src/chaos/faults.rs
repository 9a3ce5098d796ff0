//! The faults of a chaos run: what they are ([`Fault`], [`Event`]), when
//! they happen ([`schedule`], a pure function of the seed and the lab
//! shape), and the driver that applies them to the lab in real time and
//! undoes them ([`heal_all`] after the last one).
//!
//! Data flow: `super::run` computes the schedule, then `drive` follows it
//! on the lab while marking the hosts it takes out in a `Faulted` set that
//! the writers (`super::writers`) read to pick healthy hosts.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::ChaosConfig;
use crate::{Lab, LabError};

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the daemon, restart it after the fault's duration.
    Kill(usize),
    /// SIGSTOP the daemon, SIGCONT after the fault's duration.
    Pause(usize),
    /// Restart the daemon (SIGTERM, start, wait until it answers).
    Restart(usize),
    /// Cut these hosts off from all others; heal after the duration.
    Partition(Vec<usize>),
}

impl Fault {
    /// The hosts the fault takes out.
    pub fn hosts(&self) -> Vec<usize> {
        match self {
            Fault::Kill(h) | Fault::Pause(h) | Fault::Restart(h) => vec![*h],
            Fault::Partition(hs) => hs.clone(),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(h) => write!(f, "kill -9 h{h}"),
            Fault::Pause(h) => write!(f, "SIGSTOP h{h}"),
            Fault::Restart(h) => write!(f, "restart h{h}"),
            Fault::Partition(hs) => {
                let l: Vec<String> = hs.iter().map(|h| format!("h{h}")).collect();
                write!(f, "partition {} | rest", l.join(","))
            }
        }
    }
}

/// A fault at an offset from the start of the schedule, lasting `length`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When it starts.
    pub at: Duration,
    /// How long it lasts (zero for a restart).
    pub length: Duration,
    /// What happens.
    pub fault: Fault,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "t={:>6.1}s {} for {:.1}s",
            self.at.as_secs_f64(),
            self.fault,
            self.length.as_secs_f64()
        )
    }
}

/// The fault schedule of `cfg`: a pure function of the seed, the duration
/// and the lab shape. Each host is in at most one fault at a time, at most
/// one partition is active (heal removes all), at most `(managers - 1) / 2`
/// managers and half the workers are faulted at once.
pub fn schedule(cfg: &ChaosConfig) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let managers: Vec<usize> = (1..=cfg.managers.min(cfg.nodes)).collect();
    let workers: Vec<usize> = (cfg.managers + 1..=cfg.nodes).collect();
    let max_managers = cfg.managers.saturating_sub(1) / 2;
    let max_workers = workers.len().div_ceil(2);
    let mut events: Vec<Event> = Vec::new();
    let mut t = Duration::from_millis(rng.gen_range(500..2_000));
    while t < cfg.duration {
        let active: Vec<&Event> = events
            .iter()
            .filter(|e| e.at <= t && t < e.at + e.length.max(Duration::from_secs(3)))
            .collect();
        let busy: BTreeSet<usize> = active.iter().flat_map(|e| e.fault.hosts()).collect();
        let partition_active = active
            .iter()
            .any(|e| matches!(e.fault, Fault::Partition(_)));
        let free_m: Vec<usize> = managers
            .iter()
            .copied()
            .filter(|h| !busy.contains(h))
            .collect();
        let free_w: Vec<usize> = workers
            .iter()
            .copied()
            .filter(|h| !busy.contains(h))
            .collect();
        let room_m =
            max_managers.saturating_sub(busy.iter().filter(|h| **h <= cfg.managers).count());
        let room_w = max_workers.saturating_sub(busy.iter().filter(|h| **h > cfg.managers).count());
        let pick = |from: &[usize], room: usize, rng: &mut StdRng| -> Option<usize> {
            (room > 0 && !from.is_empty()).then(|| from[rng.gen_range(0..from.len())])
        };
        let kind = rng.gen_range(0..4u8);
        let length = Duration::from_millis(rng.gen_range(1_000..6_000));
        let fault = match kind {
            3 if !partition_active => {
                // A minority of managers and/or some workers on one side.
                let nm = if room_m > 0 {
                    rng.gen_range(0..=room_m)
                } else {
                    0
                };
                let nw = if room_w > 0 {
                    rng.gen_range(0..=room_w)
                } else {
                    0
                };
                let mut side = Vec::new();
                let mut fm = free_m.clone();
                for _ in 0..nm.min(fm.len()) {
                    side.push(fm.remove(rng.gen_range(0..fm.len())));
                }
                let mut fw = free_w.clone();
                for _ in 0..nw.min(fw.len()) {
                    side.push(fw.remove(rng.gen_range(0..fw.len())));
                }
                side.sort_unstable();
                (!side.is_empty()).then_some(Fault::Partition(side))
            }
            _ => {
                let manager = rng.gen_bool(0.5);
                let host = if manager {
                    pick(&free_m, room_m, &mut rng).or_else(|| pick(&free_w, room_w, &mut rng))
                } else {
                    pick(&free_w, room_w, &mut rng).or_else(|| pick(&free_m, room_m, &mut rng))
                };
                host.map(|h| match kind {
                    0 => Fault::Kill(h),
                    1 => Fault::Pause(h),
                    _ => Fault::Restart(h),
                })
            }
        };
        if let Some(fault) = fault {
            let length = if matches!(fault, Fault::Restart(_)) {
                Duration::ZERO
            } else {
                length
            };
            events.push(Event {
                at: t,
                length,
                fault,
            });
        }
        t += Duration::from_millis(rng.gen_range(700..3_000));
    }
    events
}

/// The hosts now faulted, shared by the fault driver and the writers.
pub(super) struct Faulted(pub(super) Mutex<BTreeSet<usize>>);

impl Faulted {
    pub(super) fn set(&self, hosts: &[usize], on: bool) {
        let mut g = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for h in hosts {
            if on {
                g.insert(*h);
            } else {
                g.remove(h);
            }
        }
    }

    pub(super) fn healthy(&self, among: impl Iterator<Item = usize>) -> Vec<usize> {
        let g = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        among.filter(|h| !g.contains(h)).collect()
    }
}

fn apply(lab: &Lab, fault: &Fault, start: bool) -> Result<(), LabError> {
    match (fault, start) {
        (Fault::Kill(h), true) => lab.kill(*h),
        (Fault::Kill(h), false) => lab.restart(*h),
        (Fault::Pause(h), true) => lab.pause(*h),
        (Fault::Pause(h), false) => lab.resume(*h),
        (Fault::Restart(h), true) => lab.restart(*h),
        (Fault::Restart(_), false) => Ok(()),
        (Fault::Partition(side), true) => {
            let rest: Vec<usize> = (1..=lab.len()).filter(|h| !side.contains(h)).collect();
            lab.partition(side, &rest)
        }
        (Fault::Partition(_), false) => lab.heal(),
    }
}

/// Follows the schedule in real time (late steps run late, in order).
pub(super) fn drive(
    lab: &Lab,
    cfg: &ChaosConfig,
    events: &[Event],
    faulted: &Faulted,
) -> Result<(), LabError> {
    let mut steps: Vec<(Duration, usize, bool)> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        steps.push((e.at, i, true));
        if e.length > Duration::ZERO {
            steps.push((e.at + e.length, i, false));
        }
    }
    // Ends before starts at the same instant: a host is freed before reuse.
    steps.sort_by_key(|&(t, i, start)| (t, start, i));
    let t0 = Instant::now();
    for (at, i, start) in steps {
        if let Some(wait) = at.checked_sub(t0.elapsed()) {
            thread::sleep(wait);
        }
        let e = &events[i];
        let hosts = e.fault.hosts();
        if start {
            faulted.set(&hosts, true);
        }
        if cfg.verbose {
            println!(
                "chaos: [{:>6.1}s] {} {}",
                t0.elapsed().as_secs_f64(),
                if start { "start" } else { "end  " },
                e.fault
            );
        }
        apply(lab, &e.fault, start)?;
        if !start || e.length == Duration::ZERO {
            faulted.set(&hosts, false);
        }
    }
    Ok(())
}

/// Heals every partition, resumes paused daemons and restarts dead ones.
pub fn heal_all(lab: &Lab) -> Result<(), LabError> {
    lab.heal()?;
    for h in 1..=lab.len() {
        match lab.daemon_state(h)? {
            crate::DaemonState::Paused => lab.resume(h)?,
            crate::DaemonState::Exited(_) => lab.restart(h)?,
            crate::DaemonState::Running => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(seed: u64) -> ChaosConfig {
        ChaosConfig {
            duration: Duration::from_secs(600),
            ..ChaosConfig::new(seed)
        }
    }

    #[test]
    fn same_seed_same_schedule() {
        assert_eq!(schedule(&cfg(7)), schedule(&cfg(7)));
        assert_ne!(schedule(&cfg(7)), schedule(&cfg(8)));
    }

    #[test]
    fn never_more_than_a_minority_of_managers_faulted() {
        for seed in 0..20 {
            let c = cfg(seed);
            let ev = schedule(&c);
            assert!(ev.len() > 50, "seed {seed}: only {} faults", ev.len());
            let mut ms = 0u64;
            while ms < 600_000 {
                let t = Duration::from_millis(ms);
                let active: Vec<&Event> = ev
                    .iter()
                    .filter(|e| e.at <= t && t < e.at + e.length)
                    .collect();
                let hosts: Vec<usize> = active.iter().flat_map(|e| e.fault.hosts()).collect();
                let uniq: BTreeSet<usize> = hosts.iter().copied().collect();
                assert_eq!(
                    uniq.len(),
                    hosts.len(),
                    "seed {seed} t {t:?}: a host in two faults"
                );
                assert!(
                    uniq.iter().filter(|h| **h <= c.managers).count() <= 1,
                    "seed {seed} t {t:?}: {active:?}"
                );
                assert!(
                    active
                        .iter()
                        .filter(|e| matches!(e.fault, Fault::Partition(_)))
                        .count()
                        <= 1
                );
                ms += 250;
            }
        }
    }
}
