//! Deterministic simulation: many [`Node`]s in one process over a fake
//! network with loss, delay and partitions, an injected clock and seeded
//! randomness. No tokio, no sockets, no wall clock: the same seed gives the
//! same [`SimReport`], so a failing run can be replayed.
//!
//! Datagram sizes are counted as sealed (plaintext + [`SEAL_OVERHEAD`]);
//! anti-entropy exchanges run instantly between two reachable nodes and
//! count packed frame bytes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use rand10::rngs::SmallRng;
use rand10::{RngExt, SeedableRng};

use crate::codec::pack;
use crate::crypto::SEAL_OVERHEAD;
use crate::node::{Ident, Node, NodeTimer, Output};
use crate::types::{Event, MemberInfo};
use crate::GossipConfig;

/// Clock origin of a simulation, in wall-clock milliseconds (versions and
/// tombstones see realistic values).
const EPOCH_MS: u64 = 1_700_000_000_000;

/// Shape of a simulated cluster and network.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of members.
    pub members: usize,
    /// Probability that any datagram is lost.
    pub loss: f64,
    /// Seed of every random choice (network and nodes).
    pub seed: u64,
    /// Smallest one-way delay.
    pub delay_min: Duration,
    /// Largest one-way delay.
    pub delay_max: Duration,
    /// Gossip settings of every member (`bind` is ignored).
    pub gossip: GossipConfig,
}

impl SimConfig {
    /// LAN settings (0.2-1 ms one-way delay) for `members` members.
    pub fn new(members: usize, loss: f64, seed: u64) -> Self {
        let mut gossip = GossipConfig::lan(addr(0));
        gossip.cluster_size_hint = members;
        SimConfig {
            members,
            loss,
            seed,
            delay_min: Duration::from_micros(200),
            delay_max: Duration::from_micros(1000),
            gossip,
        }
    }
}

/// Simulated gossip address of member `i`.
pub fn addr(i: usize) -> SocketAddr {
    let ip = Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8);
    SocketAddr::new(IpAddr::V4(ip), 7946)
}

/// Node id of member `i`.
pub fn node_id(i: usize) -> String {
    format!("sim-node-{i:05}")
}

enum Ev {
    Deliver { to: usize, data: Bytes },
    Timer { node: usize, timer: NodeTimer },
    AntiEntropy { node: usize },
}

/// Traffic counters of a simulation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Datagrams sent (sealed size counted), lost ones included.
    pub udp_packets: u64,
    /// Bytes in those datagrams.
    pub udp_bytes: u64,
    /// Largest datagram sent.
    pub max_datagram: usize,
    /// Bytes of anti-entropy frames.
    pub tcp_bytes: u64,
}

/// A running simulation.
pub struct Sim {
    cfg: SimConfig,
    now_us: u64,
    nodes: Vec<Node>,
    alive: Vec<bool>,
    group: Vec<u32>,
    addrs: HashMap<SocketAddr, usize>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    evs: HashMap<u64, Ev>,
    seq: u64,
    rng: SmallRng,
    /// Traffic so far.
    pub traffic: Traffic,
    /// Events seen by members, with time (µs) and member index, once recording.
    pub log: Vec<(u64, usize, Event)>,
    record: bool,
}

impl Sim {
    /// Builds a formed cluster: every member knows every other one.
    pub fn new(cfg: SimConfig) -> Self {
        let mut rng = SmallRng::seed_from_u64(cfg.seed);
        let ids: Vec<Ident> = (0..cfg.members)
            .map(|i| Ident::new(info(i), EPOCH_MS))
            .collect();
        let mut nodes = Vec::with_capacity(cfg.members);
        for i in 0..cfg.members {
            let mut g = cfg.gossip.clone();
            g.bind = addr(i);
            let seed = rng.random::<u64>();
            match Node::new(&g, info(i), EPOCH_MS, seed) {
                Ok(n) => nodes.push(n),
                Err(e) => panic!("sim config rejected: {e}"),
            }
        }
        let mut sim = Sim {
            addrs: (0..cfg.members).map(|i| (addr(i), i)).collect(),
            alive: vec![true; cfg.members],
            group: vec![0; cfg.members],
            nodes,
            now_us: 0,
            queue: BinaryHeap::new(),
            evs: HashMap::new(),
            seq: 0,
            rng,
            traffic: Traffic::default(),
            log: Vec::new(),
            record: false,
            cfg,
        };
        for i in 0..sim.cfg.members {
            sim.nodes[i].add_members(ids.clone());
            sim.flush(i);
            let ae = sim.cfg.gossip.anti_entropy_interval.as_micros() as u64;
            let first = sim.rng.random_range(0..ae.max(1));
            sim.push(first, Ev::AntiEntropy { node: i });
        }
        sim.record = true;
        sim
    }

    /// Simulated time since the start.
    pub fn now(&self) -> Duration {
        Duration::from_micros(self.now_us)
    }

    fn now_ms(&self) -> u64 {
        EPOCH_MS + self.now_us / 1000
    }

    fn push(&mut self, after_us: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((self.now_us + after_us, self.seq)));
        self.evs.insert(self.seq, ev);
    }

    /// The member `i` (to read its tables or membership).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Is member `i` running?
    pub fn is_alive(&self, i: usize) -> bool {
        self.alive[i]
    }

    /// Member `i` writes an entry.
    pub fn put(&mut self, i: usize, table: &str, key: &str, value: Vec<u8>) {
        let now = self.now_ms();
        if let Err(e) = self.nodes[i].put(now, table, key, value) {
            panic!("sim put refused: {e}");
        }
        self.flush(i);
    }

    /// Member `i` deletes an entry it owns.
    pub fn delete(&mut self, i: usize, table: &str, key: &str) {
        let now = self.now_ms();
        self.nodes[i].delete(now, table, key);
        self.flush(i);
    }

    /// Crashes member `i`: it stops sending, receiving and firing timers.
    pub fn kill(&mut self, i: usize) {
        self.alive[i] = false;
    }

    /// Puts member `i` in partition group `g`; only members of one group talk.
    pub fn set_group(&mut self, i: usize, g: u32) {
        self.group[i] = g;
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.group.iter_mut().for_each(|g| *g = 0);
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.alive[a] && self.alive[b] && self.group[a] == self.group[b]
    }

    fn flush(&mut self, i: usize) {
        let outs = self.nodes[i].drain();
        for o in outs {
            match o {
                Output::Send { to, data } => {
                    let len = data.len() + SEAL_OVERHEAD;
                    self.traffic.udp_packets += 1;
                    self.traffic.udp_bytes += len as u64;
                    self.traffic.max_datagram = self.traffic.max_datagram.max(len);
                    let Some(&j) = self.addrs.get(&to) else {
                        continue;
                    };
                    let lost = self.rng.random_bool(self.cfg.loss.clamp(0.0, 1.0));
                    let lo = self.cfg.delay_min.as_micros() as u64;
                    let hi = (self.cfg.delay_max.as_micros() as u64).max(lo + 1);
                    let delay = self.rng.random_range(lo..hi);
                    if !lost && self.reachable(i, j) {
                        self.push(delay, Ev::Deliver { to: j, data });
                    }
                }
                Output::Schedule { after, timer } => {
                    self.push(after.as_micros() as u64, Ev::Timer { node: i, timer });
                }
                Output::Event(e) => {
                    if self.record {
                        self.log.push((self.now_us, i, e));
                    }
                }
            }
        }
    }

    /// Runs events up to `t` (time since start).
    pub fn run_until(&mut self, t: Duration) {
        let end = t.as_micros() as u64;
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > end {
                break;
            }
            self.queue.pop();
            self.now_us = at;
            let Some(ev) = self.evs.remove(&seq) else {
                continue;
            };
            self.step(ev);
        }
        self.now_us = self.now_us.max(end);
    }

    /// Runs until `done` holds (checked every 10 ms of simulated time) or
    /// `limit` passes; returns the time it first held.
    pub fn run_while(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let stop = self.now() + limit;
        while self.now() < stop {
            if done(self) {
                return Some(self.now());
            }
            let next = self.now() + Duration::from_millis(10);
            self.run_until(next);
        }
        done(self).then(|| self.now())
    }

    fn step(&mut self, ev: Ev) {
        let now = self.now_ms();
        match ev {
            Ev::Deliver { to, data } => {
                if self.alive[to] {
                    let _ = self.nodes[to].handle_data(now, &data);
                    self.flush(to);
                }
            }
            Ev::Timer { node, timer } => {
                if self.alive[node] {
                    self.nodes[node].handle_timer(now, timer);
                    self.flush(node);
                }
            }
            Ev::AntiEntropy { node } => {
                let every = self.cfg.gossip.anti_entropy_interval.as_micros() as u64;
                self.push(every.max(1), Ev::AntiEntropy { node });
                if !self.alive[node] {
                    return;
                }
                self.nodes[node].reap(now);
                let Some(peer) = self.nodes[node].pick_sync_peer() else {
                    return;
                };
                let Some(&j) = self.addrs.get(&peer) else {
                    return;
                };
                if self.reachable(node, j) {
                    self.sync_pair(node, j);
                }
            }
        }
    }

    /// One anti-entropy exchange from `a` to `b`, run to completion.
    pub fn sync_pair(&mut self, a: usize, b: usize) {
        let now = self.now_ms();
        let (mut sa, first) = self.nodes[a].sync_open();
        let mut sb = self.nodes[b].sync_accept();
        let mut to_b = vec![first];
        for _ in 0..16 {
            let mut to_a = Vec::new();
            for f in std::mem::take(&mut to_b) {
                self.traffic.tcp_bytes += (pack(&f).len() + SEAL_OVERHEAD + 4) as u64;
                match self.nodes[b].sync_frame(now, &mut sb, &f) {
                    Ok(r) => to_a.extend(r),
                    Err(_) => return,
                }
            }
            for f in to_a {
                self.traffic.tcp_bytes += (pack(&f).len() + SEAL_OVERHEAD + 4) as u64;
                match self.nodes[a].sync_frame(now, &mut sa, &f) {
                    Ok(r) => to_b.extend(r),
                    Err(_) => return,
                }
            }
            self.flush(a);
            self.flush(b);
            if sa.is_done() && sb.is_done() {
                return;
            }
        }
    }

    /// When each member first saw `key` of `table` live, as time since start.
    pub fn first_seen(&self, table: &str, key: &str) -> Vec<Option<Duration>> {
        let mut seen = vec![None; self.cfg.members];
        for (t, i, e) in &self.log {
            if let Event::EntryChanged(en) = e {
                if en.table == table && en.key == key && !en.deleted && seen[*i].is_none() {
                    seen[*i] = Some(Duration::from_micros(*t));
                }
            }
        }
        seen
    }
}

fn info(i: usize) -> MemberInfo {
    let a = addr(i);
    MemberInfo {
        node_id: node_id(i),
        gossip_addr: a,
        advertise_addr: a.ip(),
        data_path_addr: a.ip(),
    }
}

/// What [`run_sim`] measured.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SimReport {
    /// Members simulated.
    pub members: usize,
    /// Datagram loss probability.
    pub loss: f64,
    /// Seed (replay with the same one).
    pub seed: u64,
    /// A new entry reached half of the other members after this long.
    pub propagation_p50: Option<Duration>,
    /// A new entry reached 99.99 % of the other members after this long.
    pub propagation_9999: Option<Duration>,
    /// ... and every other member after this long.
    pub propagation_all: Option<Duration>,
    /// Members that had the entry when measuring stopped.
    pub reached: usize,
    /// A crashed member was declared down by some member after this long.
    pub failure_detection_first: Option<Duration>,
    /// ... and by every live member (its entries dropped) after this long.
    pub failure_detection_all: Option<Duration>,
    /// Members wrongly declared down during the run (false positives).
    pub false_positives: usize,
    /// Idle SWIM traffic per member, bytes per second (sealed datagrams).
    pub idle_bytes_per_member_per_sec: f64,
    /// Datagram bytes sent from the write until 99.99 % had it (polled every
    /// 10 ms; includes the failure detector's own traffic in that window).
    pub propagation_bytes: u64,
    /// All datagram bytes of the run.
    pub udp_bytes: u64,
    /// All anti-entropy bytes of the run.
    pub tcp_bytes: u64,
    /// Largest datagram (never above `max_packet`).
    pub max_datagram: usize,
    /// Simulated time at the end.
    pub sim_time: Duration,
}

/// The standard scenario for `shoal-lab bench sim`: a formed cluster of
/// `members` with LAN settings and `loss`; a new entry is written on one
/// member (propagation), then another member crashes (failure detection).
pub fn run_sim(members: usize, loss: f64, seed: u64) -> SimReport {
    run_sim_with(SimConfig::new(members, loss, seed))
}

/// [`run_sim`] with explicit settings.
pub fn run_sim_with(cfg: SimConfig) -> SimReport {
    let members = cfg.members.max(3);
    let cfg = SimConfig { members, ..cfg };
    let (loss, seed) = (cfg.loss, cfg.seed);
    let mut sim = Sim::new(cfg);
    // Warm up, then measure idle traffic over 4 s.
    sim.run_until(Duration::from_secs(2));
    let before = sim.traffic;
    sim.run_until(Duration::from_secs(6));
    let idle = (sim.traffic.udp_bytes - before.udp_bytes) as f64 / 4.0 / members as f64;

    // Propagation of a new entry written on member 1.
    let writer = 1;
    let victim = 2;
    let t0 = sim.now();
    let bytes0 = sim.traffic.udp_bytes;
    sim.put(writer, "ep/sim", "probe", vec![7; 40]);
    sim.put(victim, "ep/sim", "victim", vec![9; 40]);
    let need = ((members - 1) as f64 * 0.9999).ceil() as usize;
    let count = |s: &Sim| {
        (0..members)
            .filter(|&i| {
                i != writer && !s.node(i).entries("ep/sim").iter().all(|e| e.key != "probe")
            })
            .count()
    };
    let _ = sim.run_while(Duration::from_secs(60), |s| count(s) >= need);
    let propagation_bytes = sim.traffic.udp_bytes - bytes0;
    let _ = sim.run_while(Duration::from_secs(60), |s| count(s) >= members - 1);
    // Exact times from the members' event logs (not the 10 ms polling).
    let mut seen: Vec<Duration> = sim
        .first_seen("ep/sim", "probe")
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != writer)
        .filter_map(|(_, t)| t.map(|t| t - t0))
        .collect();
    seen.sort();
    let t9999 = seen
        .get(need.saturating_sub(1))
        .copied()
        .filter(|_| seen.len() >= need);
    let tall = seen.last().copied().filter(|_| seen.len() >= members - 1);
    let p50 = seen.get(seen.len() / 2).copied();
    let reached = count(&sim);

    // Failure detection: crash the victim.
    let t1 = sim.now();
    sim.kill(victim);
    let victim_id = node_id(victim);
    let gone_everywhere = |s: &Sim| {
        (0..members).filter(|&i| s.is_alive(i)).all(|i| {
            s.node(i)
                .entries("ep/sim")
                .iter()
                .all(|e| e.key != "victim")
                && s.node(i)
                    .members()
                    .iter()
                    .any(|m| m.info.node_id == victim_id && m.state == crate::MemberState::Down)
        })
    };
    let tdown = sim.run_while(Duration::from_secs(120), gone_everywhere);
    let log_from = t1.as_micros() as u64;
    let first_down = sim
        .log
        .iter()
        .filter(|(t, _, e)| {
            *t >= log_from && matches!(e, Event::MemberDown(m) if m.node_id == victim_id)
        })
        .map(|(t, _, _)| Duration::from_micros(*t) - t1)
        .next();
    let false_positives = sim
        .log
        .iter()
        .filter(|(_, _, e)| matches!(e, Event::MemberDown(m) if m.node_id != victim_id))
        .count();
    SimReport {
        members,
        loss,
        seed,
        propagation_p50: p50,
        propagation_9999: t9999,
        propagation_all: tall,
        reached,
        failure_detection_first: first_down,
        failure_detection_all: tdown.map(|t| t - t1),
        false_positives,
        idle_bytes_per_member_per_sec: idle,
        propagation_bytes,
        udp_bytes: sim.traffic.udp_bytes,
        tcp_bytes: sim.traffic.tcp_bytes,
        max_datagram: sim.traffic.max_datagram,
        sim_time: sim.now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> u64 {
        std::env::var("SHOAL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20261125)
    }

    #[test]
    fn two_hundred_members_one_percent_loss() {
        let s = seed();
        let r = run_sim(200, 0.01, s);
        println!("sim 200 members, seed {s}: {r:#?}");
        assert_eq!(r.reached, 199, "entry must reach every member");
        assert_eq!(r.false_positives, 0);
        assert!(
            r.propagation_9999
                .is_some_and(|t| t < Duration::from_secs(1)),
            "{r:?}"
        );
        assert!(
            r.failure_detection_all
                .is_some_and(|t| t < Duration::from_secs(10)),
            "{r:?}"
        );
        assert!(r.max_datagram <= 1400);
        // Replay: same seed, same report.
        assert_eq!(run_sim(200, 0.01, s), r);
    }

    #[test]
    fn partition_then_heal_converges() {
        let mut cfg = SimConfig::new(40, 0.01, seed());
        cfg.gossip.anti_entropy_interval = Duration::from_secs(5);
        let mut sim = Sim::new(cfg);
        sim.run_until(Duration::from_secs(1));
        for i in 0..40 {
            sim.put(i, "ep/n", &format!("e{i}"), vec![i as u8]);
        }
        sim.run_until(Duration::from_secs(2));
        for i in 20..40 {
            sim.set_group(i, 1);
        }
        // While split, both sides keep writing.
        sim.put(3, "ep/n", "left", vec![1]);
        sim.put(33, "ep/n", "right", vec![2]);
        sim.delete(4, "ep/n", "e4");
        sim.run_until(Duration::from_secs(20));
        // Each side has declared the other down and dropped its entries.
        assert!(sim.node(0).entries("ep/n").iter().all(|e| e.key != "e30"));
        sim.heal();
        let want: Vec<String> = {
            let mut v: Vec<String> = (0..40)
                .filter(|&i| i != 4)
                .map(|i| format!("e{i}"))
                .collect();
            v.push("left".into());
            v.push("right".into());
            v.sort();
            v
        };
        let t = sim.run_while(Duration::from_secs(120), |s| {
            (0..40).all(|i| {
                s.node(i)
                    .entries("ep/n")
                    .iter()
                    .map(|e| e.key.clone())
                    .collect::<Vec<_>>()
                    == want
            })
        });
        assert!(t.is_some(), "tables did not converge after heal");
        println!("healed and converged at {:?}", t);
    }
}

#[cfg(test)]
mod big {
    /// The figure: `cargo test --release -p shoal-membership -- --ignored sim_1000`.
    #[test]
    #[ignore = "slow in debug builds; run with --release"]
    fn sim_1000_members_one_percent_loss() {
        let seed = std::env::var("SHOAL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        let t = std::time::Instant::now();
        let r = super::run_sim(1000, 0.01, seed);
        println!("sim 1000 members (wall {:?}): {r:#?}", t.elapsed());
        assert_eq!(r.reached, 999);
        assert!(r.propagation_9999.is_some());
    }
}
