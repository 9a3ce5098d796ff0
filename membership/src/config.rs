//! Gossip timings and limits. LAN defaults tuned for "a crashed host is gone
//! everywhere in under 3 s"; fast values for tests.

use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use crate::crypto::SEAL_OVERHEAD;

/// Timings and limits of one gossip agent. Every member of a cluster should
/// use the same values.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GossipConfig {
    /// Advertise ip and gossip port (7946): UDP for SWIM, TCP for bulk sync.
    pub bind: SocketAddr,
    /// One random member is probed every period.
    pub probe_period: Duration,
    /// Wait this long for a direct ack before asking others to probe.
    pub probe_timeout: Duration,
    /// Suspicion lasts `suspicion_mult * max(1, log10(n)) * probe_period`
    /// (memberlist's formula) before a suspect is declared down.
    pub suspicion_mult: u32,
    /// Members asked to probe indirectly; also the fan-out of an immediate push.
    pub indirect_probes: usize,
    /// Pending updates are gossiped to 3 random members this often.
    pub gossip_interval: Duration,
    /// Push/pull anti-entropy over TCP with one random member this often.
    pub anti_entropy_interval: Duration,
    /// Deletions are remembered this long so they win over stale copies.
    pub tombstone_ttl: Duration,
    /// Largest datagram ever sent, sealing overhead included.
    pub max_packet: usize,
    /// Expected cluster size: scales retransmits and suspicion.
    pub cluster_size_hint: usize,
    /// This member's life (identity generation); `None`: the start time in
    /// ms. A restarted daemon passes its previous value, so peers see the
    /// same member come back instead of a new life that replaces (and
    /// first drops) its entries.
    pub generation: Option<u64>,
    /// This start's epoch for replay protection (see `fresh`): it must
    /// grow with every start of the member. Defaults to the start time in
    /// seconds; the agent takes one persisted in its data dir.
    pub epoch: u32,
}

/// Seconds since 1970: the default [`GossipConfig::epoch`].
fn epoch_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}

impl GossipConfig {
    /// Production values for a LAN: a crashed member's entries gone from a
    /// 20-host cluster in about 1.9 s (probe every 400 ms, suspicion
    /// 2 x probe x log10(size)), with no false positive when a member
    /// stalls for 1 s (measured: `shoal-lab bench failure`), and idle
    /// traffic of about 0.75 kB/s per member.
    pub fn lan(bind: SocketAddr) -> Self {
        GossipConfig {
            bind,
            probe_period: Duration::from_millis(400),
            probe_timeout: Duration::from_millis(200),
            suspicion_mult: 2,
            indirect_probes: 3,
            gossip_interval: Duration::from_millis(200),
            anti_entropy_interval: Duration::from_secs(30),
            tombstone_ttl: Duration::from_secs(3600),
            max_packet: 1400,
            cluster_size_hint: 32,
            generation: None,
            epoch: epoch_now(),
        }
    }

    /// Test values: failure detected in about 1-2 s on loopback.
    pub fn fast(bind: SocketAddr) -> Self {
        GossipConfig {
            bind,
            probe_period: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(80),
            suspicion_mult: 3,
            indirect_probes: 3,
            gossip_interval: Duration::from_millis(100),
            anti_entropy_interval: Duration::from_secs(2),
            tombstone_ttl: Duration::from_secs(60),
            max_packet: 1400,
            cluster_size_hint: 8,
            generation: None,
            epoch: epoch_now(),
        }
    }

    /// How long a suspect has to refute before being declared down.
    pub fn suspicion_timeout(&self) -> Duration {
        let n = self.cluster_size_hint.max(1) as f64;
        let scale = n.log10().max(1.0);
        self.probe_period
            .mul_f64(scale * f64::from(self.suspicion_mult.max(1)))
    }

    /// How many times each update is retransmitted (memberlist: 4 * log10(n+1)).
    pub fn max_transmissions(&self) -> u8 {
        let n = (self.cluster_size_hint as f64 + 1.0).log10();
        (4.0 * n).ceil().clamp(3.0, 255.0) as u8
    }

    /// Largest plaintext a foca packet may have so the stamped and sealed
    /// datagram stays within `max_packet`.
    pub(crate) fn foca_packet_size(&self) -> usize {
        self.max_packet
            .saturating_sub(SEAL_OVERHEAD + crate::fresh::STAMP_MAX)
    }

    pub(crate) fn validate(&self) -> Result<(), crate::GossipError> {
        if self.foca_packet_size() < 512 {
            return Err(crate::GossipError::Config(format!(
                "max_packet {} is too small: at least {} bytes are needed",
                self.max_packet,
                512 + SEAL_OVERHEAD + crate::fresh::STAMP_MAX
            )));
        }
        if self.indirect_probes == 0 || self.probe_period.is_zero() {
            return Err(crate::GossipError::Config(
                "indirect_probes and probe_period must be non-zero".into(),
            ));
        }
        if self.probe_timeout >= self.probe_period {
            return Err(crate::GossipError::Config(
                "probe_timeout must be shorter than probe_period".into(),
            ));
        }
        Ok(())
    }

    /// The foca configuration these values translate to.
    pub(crate) fn to_foca(&self) -> foca::Config {
        let mut c = foca::Config::simple();
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_timeout;
        c.num_indirect_probes =
            NonZeroUsize::new(self.indirect_probes).unwrap_or(NonZeroUsize::MIN);
        c.max_transmissions = NonZeroU8::new(self.max_transmissions()).unwrap_or(NonZeroU8::MIN);
        c.suspect_to_down_after = self.suspicion_timeout();
        c.remove_down_after = Some(Duration::from_secs(15 * 60));
        c.max_packet_size = NonZeroUsize::new(self.foca_packet_size()).unwrap_or(NonZeroUsize::MIN);
        c.notify_down_members = true;
        let one = NonZeroUsize::MIN;
        c.periodic_announce = Some(foca::PeriodicParams {
            frequency: self.anti_entropy_interval,
            num_members: one,
        });
        c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: (self.anti_entropy_interval / 3).max(Duration::from_secs(1)),
            num_members: NonZeroUsize::new(2).unwrap_or(one),
        });
        c.periodic_gossip = Some(foca::PeriodicParams {
            frequency: self.gossip_interval,
            num_members: NonZeroUsize::new(3).unwrap_or(one),
        });
        c
    }
}
