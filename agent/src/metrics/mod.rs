//! The Prometheus endpoint of the daemon: `GET /metrics` on a small TCP
//! listener (default [`DEFAULT_METRICS_ADDR`], loopback only).
//!
//! Two kinds of numbers feed it. Events the daemon sees as they happen
//! (a netdriver reconcile finished) go into [`Metrics`], which lives as
//! long as the daemon. Everything that is state somewhere else (raft term
//! and indexes, gossip members and tables, sessions, DNS, tasks) is read
//! at scrape time into a plain [`Snapshot`] by a closure the daemon gives
//! to [`serve`]; a section left `None` (a worker has no raft) is simply
//! not emitted. [`render`] turns both into text with `prometheus-client`,
//! registry built per scrape.
//!
//! Format: `prometheus-client` writes OpenMetrics 1.0. Scrapers that ask
//! for it (`Accept: application/openmetrics-text`, as Prometheus does) get
//! it as is; everyone else (curl, the benchmarks) gets the classic text
//! format 0.0.4, which differs only in naming a counter's family after
//! its sample (`foo_total`) and having no `# EOF` line.
//!
//! The HTTP side is deliberately tiny (no HTTP crate): one request per
//! connection, the request head capped in size and time, connections
//! served concurrently up to a bound, every failure answered with a
//! status line and never a panic.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use shoal_raft_store::{HistogramSnapshot, RaftStats};
use tokio::net::TcpListener;
use tracing::warn;

mod http;

/// Where the endpoint listens unless the config says otherwise
/// (`metrics_addr`; `""` disables it). Loopback: the numbers are not
/// secret, but nothing outside the host should be able to load the daemon.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9323";

/// Content type of the classic text format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics text.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the reconcile-duration histogram: a no-op
/// reconcile is a few dumps (milliseconds), 10,000 entries take ~0.2 s.
pub const RECONCILE_BOUNDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Errors of [`bind`]: they name the address and what to change.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// `metrics_addr` is not `IP:PORT`.
    #[error("metrics_addr {addr:?} is not IP:PORT (e.g. {DEFAULT_METRICS_ADDR}); use \"\" to disable the endpoint")]
    BadAddr {
        /// What was configured.
        addr: String,
    },
    /// The port is taken or the address is not local.
    #[error("cannot listen for metrics on {addr}: {source}; pick another metrics_addr or \"\" to disable")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Binds the endpoint's listener: `None` when `addr` is empty (disabled).
pub async fn bind(addr: &str) -> Result<Option<TcpListener>, MetricsError> {
    let addr = addr.trim();
    if addr.is_empty() {
        return Ok(None);
    }
    let sa: SocketAddr = addr.parse().map_err(|_| MetricsError::BadAddr {
        addr: addr.to_string(),
    })?;
    TcpListener::bind(sa)
        .await
        .map(Some)
        .map_err(|source| MetricsError::Bind { addr: sa, source })
}

/// Gossip numbers at scrape time. Built with [`GossipStats::from_gossip`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GossipStats {
    /// The membership crate's own counters (packets, bytes, decrypt
    /// failures, syncs).
    pub counters: shoal_membership::Metrics,
    /// Other members seen alive (self excluded).
    pub members_alive: u64,
    /// Other members suspected.
    pub members_suspect: u64,
    /// Other members declared down (still remembered).
    pub members_down: u64,
    /// Live entries per table name.
    pub table_entries: Vec<(String, u64)>,
}

impl GossipStats {
    /// Reads a running gossip instance. Walks the tables (a copy of every
    /// entry): fine once per scrape, not in a hot loop.
    pub fn from_gossip(g: &shoal_membership::Gossip) -> Self {
        let mut s = GossipStats {
            counters: g.metrics(),
            ..Default::default()
        };
        // The first row is this node itself.
        for m in g.members().iter().skip(1) {
            match m.state {
                shoal_membership::MemberState::Alive => s.members_alive += 1,
                shoal_membership::MemberState::Suspect => s.members_suspect += 1,
                shoal_membership::MemberState::Down => s.members_down += 1,
            }
        }
        s.table_entries = g
            .tables()
            .into_iter()
            .map(|t| {
                let n = g.entries(&t).len() as u64;
                (t, n)
            })
            .collect();
        s
    }
}

/// The embedded DNS server's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Queries received.
    pub queries_total: u64,
    /// Queries sent on to the host's resolvers (names not in the cluster).
    pub forwarded_total: u64,
    /// Queries answered with SERVFAIL or dropped (malformed, upstream down).
    pub failures_total: u64,
}

/// Everything read at scrape time. Plain data: the daemon fills what this
/// node has and leaves the rest `None`, which omits those series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Managers: [`shoal_raft_store::RaftNode::stats`].
    pub raft: Option<RaftStats>,
    /// Once gossip runs: [`GossipStats::from_gossip`].
    pub gossip: Option<GossipStats>,
    /// Leader: nodes with a live session to this manager.
    pub session_connected_nodes: Option<u64>,
    /// When the DNS server runs.
    pub dns: Option<DnsStats>,
    /// Tasks running on this node.
    pub tasks_running: Option<u64>,
    /// While the encrypted data path runs: its counters.
    pub dataplane: Option<crate::proto::gossip::EncryptionStatus>,
}

/// The daemon's one [`Metrics`] (the netdriver reconciler and the
/// `/metrics` server share it).
pub fn global() -> &'static Arc<Metrics> {
    static GLOBAL: std::sync::OnceLock<Arc<Metrics>> = std::sync::OnceLock::new();
    GLOBAL.get_or_init(|| Arc::new(Metrics::default()))
}

/// The async closure [`serve`] calls once per scrape.
pub type SnapshotFn = Arc<dyn Fn() -> BoxFuture<'static, Snapshot> + Send + Sync>;

/// Wraps an async closure as a [`SnapshotFn`].
pub fn snapshot_fn<F, Fut>(f: F) -> SnapshotFn
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Snapshot> + Send + 'static,
{
    Arc::new(move || -> BoxFuture<'static, Snapshot> { Box::pin(f()) })
}

/// Counters and histograms the daemon updates as events happen. Cheap to
/// update from any task (atomics, one short lock per histogram sample).
#[derive(Debug)]
pub struct Metrics {
    reconciles: Counter,
    reconcile_errors: Counter,
    entries_programmed: Counter,
    /// Nanoseconds of the last reconcile (ok or not); 0 before the first.
    last_reconcile_nanos: std::sync::atomic::AtomicU64,
    reconcile_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: Counter::default(),
            reconcile_errors: Counter::default(),
            entries_programmed: Counter::default(),
            last_reconcile_nanos: std::sync::atomic::AtomicU64::new(0),
            reconcile_duration: Histogram::new(RECONCILE_BOUNDS),
        }
    }
}

impl Metrics {
    /// All zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// One netdriver reconcile finished: how long it took, how many FDB +
    /// neighbour entries it wrote, and whether it succeeded.
    pub fn observe_reconcile(&self, duration: Duration, entries_changed: u64, ok: bool) {
        self.reconciles.inc();
        if !ok {
            self.reconcile_errors.inc();
        }
        self.entries_programmed.inc_by(entries_changed);
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.last_reconcile_nanos
            .store(nanos, std::sync::atomic::Ordering::Relaxed);
        self.reconcile_duration.observe(duration.as_secs_f64());
    }

    /// [`Metrics::observe_reconcile`] for a successful reconcile's report.
    pub fn observe_report(&self, report: &shoal_netdriver::ReconcileReport) {
        self.observe_reconcile(report.duration, report.entries_changed() as u64, true);
    }
}

// ---------------------------------------------------------------------------
// Rendering

/// Label values come from the network (table names): escape them as both
/// text formats require.
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

type Labels = Vec<(&'static str, String)>;

/// A counter or gauge family with values fixed at scrape time, rows in the
/// order given (deterministic output).
#[derive(Debug)]
struct Const<V> {
    kind: MetricType,
    rows: Vec<(Labels, V)>,
}

impl<V> EncodeMetric for Const<V>
where
    V: prometheus_client::encoding::EncodeGaugeValue
        + prometheus_client::encoding::EncodeCounterValue
        + std::fmt::Debug
        + Send
        + Sync,
{
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let kind = self.kind;
        let put = |e: &mut MetricEncoder, v: &V| match kind {
            MetricType::Counter => e.encode_counter::<NoLabelSet, V, u64>(v, None),
            _ => e.encode_gauge(v),
        };
        for (labels, v) in &self.rows {
            // No labels: no `{}` either.
            if labels.is_empty() {
                put(&mut encoder, v)?;
            } else {
                put(&mut encoder.encode_family(labels)?, v)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

/// A histogram known only as bounds + per-bucket counts (the raft node's).
#[derive(Debug)]
struct ConstHistogram {
    sum: f64,
    count: u64,
    /// Non-cumulative; the last bound is `f64::MAX` (`+Inf`).
    buckets: Vec<(f64, u64)>,
}

impl ConstHistogram {
    /// Tolerates a malformed snapshot: counts beyond the bounds go to
    /// `+Inf`, and the count is the buckets' total so `+Inf == _count`.
    fn from_snapshot(h: &HistogramSnapshot) -> Self {
        let mut buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .zip(h.counts.iter())
            .map(|(b, c)| (*b, *c))
            .collect();
        let overflow: u64 = h.counts.iter().skip(h.bounds.len()).sum();
        // Missing counts (fewer than bounds) are zero.
        for b in h.bounds.iter().skip(h.counts.len()) {
            buckets.push((*b, 0));
        }
        buckets.push((f64::MAX, overflow));
        let count = buckets.iter().map(|(_, c)| *c).sum();
        ConstHistogram {
            sum: h.sum,
            count,
            buckets,
        }
    }
}

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    r.register(
        name,
        help,
        Const {
            kind: MetricType::Counter,
            rows: vec![(Vec::new(), v)],
        },
    );
}

fn gauge<V>(r: &mut Registry, name: &str, help: &str, v: V)
where
    V: prometheus_client::encoding::EncodeGaugeValue
        + prometheus_client::encoding::EncodeCounterValue
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    r.register(
        name,
        help,
        Const {
            kind: MetricType::Gauge,
            rows: vec![(Vec::new(), v)],
        },
    );
}

fn family(r: &mut Registry, name: &str, help: &str, kind: MetricType, rows: Vec<(Labels, u64)>) {
    r.register(name, help, Const { kind, rows });
}

fn b(v: bool) -> u64 {
    u64::from(v)
}

/// Builds this scrape's registry. Names are registered without `_total`:
/// the encoder adds it to counter samples. Help texts get a final period
/// from the encoder.
fn registry(m: &Metrics, s: &Snapshot) -> Registry {
    let mut r = Registry::default();
    r.register(
        "shoal_build",
        "Version of this shoal daemon",
        Info::new(vec![("version", escape_label(env!("CARGO_PKG_VERSION")))]),
    );

    if let Some(raft) = &s.raft {
        gauge(&mut r, "shoal_raft_term", "Current raft term", raft.term);
        gauge(
            &mut r,
            "shoal_raft_commit_index",
            "Highest raft log index known committed",
            raft.commit_index,
        );
        gauge(
            &mut r,
            "shoal_raft_applied_index",
            "Highest raft log index applied to the store on this manager",
            raft.applied_index,
        );
        gauge(
            &mut r,
            "shoal_raft_snapshot_index",
            "Raft log index of the latest stored snapshot",
            raft.snapshot_index,
        );
        gauge(
            &mut r,
            "shoal_raft_is_leader",
            "1 if this manager is the raft leader, else 0",
            b(raft.is_leader),
        );
        gauge(
            &mut r,
            "shoal_raft_has_leader",
            "1 if this manager knows a raft leader, else 0",
            b(raft.leader_id.is_some()),
        );
        // Raft ids are 63-bit random: a label, not a (float) sample value.
        if let Some(leader) = raft.leader_id {
            family(
                &mut r,
                "shoal_raft_leader",
                "The raft leader this manager knows of, by raft id (always 1)",
                MetricType::Gauge,
                vec![(vec![("leader_id", leader.to_string())], 1)],
            );
        }
        gauge(
            &mut r,
            "shoal_raft_voters",
            "Voters in the applied raft configuration",
            raft.voters,
        );
        gauge(
            &mut r,
            "shoal_raft_voters_reachable",
            "Voters heard from within an election timeout, this manager included",
            raft.voters_reachable,
        );
        counter(
            &mut r,
            "shoal_raft_proposals",
            "Commands proposed to raft on this manager",
            raft.proposals_total,
        );
        counter(
            &mut r,
            "shoal_raft_proposals_failed",
            "Commands proposed on this manager that failed (no quorum, no leader, timeout, leader change)",
            raft.proposals_failed_total,
        );
        counter(
            &mut r,
            "shoal_raft_inbound_dropped",
            "Inbound raft batches dropped because the raft loop's queue was full",
            raft.inbound_dropped_total,
        );
        r.register(
            "shoal_raft_apply_latency_seconds",
            "Time from a command's submission on this manager to its apply here",
            ConstHistogram::from_snapshot(&raft.apply_latency),
        );
    }

    if let Some(g) = &s.gossip {
        let c = &g.counters;
        family(
            &mut r,
            "shoal_gossip_members",
            "Other gossip members by local liveness opinion",
            MetricType::Gauge,
            vec![
                (vec![("state", "alive".into())], g.members_alive),
                (vec![("state", "suspect".into())], g.members_suspect),
                (vec![("state", "down".into())], g.members_down),
            ],
        );
        let dir = |d: &str, t: &str| vec![("direction", d.to_string()), ("transport", t.into())];
        family(
            &mut r,
            "shoal_gossip_messages",
            "Gossip messages: UDP datagrams and TCP sync frames",
            MetricType::Counter,
            vec![
                (dir("sent", "udp"), c.udp_packets_sent),
                (dir("received", "udp"), c.udp_packets_received),
                (dir("sent", "tcp"), c.tcp_frames_sent),
                (dir("received", "tcp"), c.tcp_frames_received),
            ],
        );
        family(
            &mut r,
            "shoal_gossip_bytes",
            "Gossip bytes on the wire (sealed), UDP and TCP",
            MetricType::Counter,
            vec![
                (dir("sent", "udp"), c.udp_bytes_sent),
                (dir("received", "udp"), c.udp_bytes_received),
                (dir("sent", "tcp"), c.tcp_bytes_sent),
                (dir("received", "tcp"), c.tcp_bytes_received),
            ],
        );
        counter(
            &mut r,
            "shoal_gossip_decrypt_failures",
            "Gossip messages no key of the ring opened (wrong cluster, stale key, tampering)",
            c.decrypt_failures_total,
        );
        counter(
            &mut r,
            "shoal_gossip_replays",
            "Gossip messages refused as replays (seen already, or from an earlier start of their sender)",
            c.replays_total,
        );
        counter(
            &mut r,
            "shoal_gossip_malformed",
            "Opened gossip datagrams refused as malformed",
            c.malformed_total,
        );
        counter(
            &mut r,
            "shoal_gossip_syncs",
            "Completed anti-entropy table exchanges",
            c.syncs_total,
        );
        counter(
            &mut r,
            "shoal_gossip_sync_failures",
            "Failed anti-entropy table exchanges",
            c.sync_failures_total,
        );
        family(
            &mut r,
            "shoal_gossip_table_entries",
            "Live entries per replicated table",
            MetricType::Gauge,
            g.table_entries
                .iter()
                .map(|(t, n)| (vec![("table", escape_label(t))], *n))
                .collect(),
        );
    }

    if let Some(n) = s.session_connected_nodes {
        gauge(
            &mut r,
            "shoal_session_connected_nodes",
            "Nodes with a live session to this manager",
            n,
        );
    }

    counter(
        &mut r,
        "shoal_netdriver_reconciles",
        "Netdriver reconciles run",
        m.reconciles.get(),
    );
    counter(
        &mut r,
        "shoal_netdriver_errors",
        "Netdriver reconciles that failed",
        m.reconcile_errors.get(),
    );
    counter(
        &mut r,
        "shoal_netdriver_entries_programmed",
        "FDB and neighbour entries written to the kernel (added, removed or replaced)",
        m.entries_programmed.get(),
    );
    gauge(
        &mut r,
        "shoal_netdriver_last_reconcile_duration_seconds",
        "Duration of the latest netdriver reconcile (0 before the first)",
        m.last_reconcile_nanos
            .load(std::sync::atomic::Ordering::Relaxed) as f64
            / 1e9,
    );
    r.register(
        "shoal_netdriver_reconcile_duration_seconds",
        "Duration of netdriver reconciles",
        m.reconcile_duration.clone(),
    );

    if let Some(d) = &s.dns {
        counter(
            &mut r,
            "shoal_dns_queries",
            "DNS queries received by the embedded server",
            d.queries_total,
        );
        counter(
            &mut r,
            "shoal_dns_forwarded",
            "DNS queries forwarded to the host's resolvers",
            d.forwarded_total,
        );
        counter(
            &mut r,
            "shoal_dns_failures",
            "DNS queries answered with an error or dropped",
            d.failures_total,
        );
    }

    if let Some(n) = s.tasks_running {
        gauge(
            &mut r,
            "shoal_tasks_running",
            "Tasks running on this node",
            n,
        );
    }
    if let Some(d) = &s.dataplane {
        dataplane(&mut r, d);
    }
    r
}

/// The encrypted data path's counters, per peer node.
fn dataplane(r: &mut Registry, d: &crate::proto::gossip::EncryptionStatus) {
    type Get = fn(&shoal_dataplane::PeerStats) -> u64;
    let per_peer: [(&str, &str, Get); 11] = [
        ("tx_packets", "Frames sealed and sent to the peer", |p| {
            p.tx_packets
        }),
        ("tx_bytes", "Frame bytes sealed and sent to the peer", |p| {
            p.tx_bytes
        }),
        (
            "rx_packets",
            "Frames received from the peer and delivered",
            |p| p.rx_packets,
        ),
        (
            "rx_bytes",
            "Frame bytes received from the peer and delivered",
            |p| p.rx_bytes,
        ),
        (
            "auth_failures",
            "Datagrams from the peer that failed authentication",
            |p| p.auth_failures,
        ),
        (
            "replays",
            "Datagrams from the peer refused by the replay window",
            |p| p.replays,
        ),
        (
            "unknown_key",
            "Datagrams from the peer under a key id not in the ring",
            |p| p.unknown_key,
        ),
        (
            "stale_epoch",
            "Datagrams from an older start of the peer",
            |p| p.stale_epoch,
        ),
        (
            "malformed",
            "Datagrams from the peer too short, of another version or network",
            |p| p.malformed,
        ),
        (
            "no_common_key",
            "Frames not sent: the peer advertises no key we may send with",
            |p| p.no_common_key,
        ),
        (
            "spoofed",
            "Authentic frames whose source MAC is not one of the peer's endpoints",
            |p| p.spoofed,
        ),
    ];
    for (name, help, get) in per_peer {
        let rows = d
            .peers
            .iter()
            .map(|p| (vec![("peer", escape_label(&p.node))], get(p)))
            .collect();
        family(
            r,
            &format!("shoal_dataplane_{name}"),
            help,
            MetricType::Counter,
            rows,
        );
    }
    counter(
        r,
        "shoal_dataplane_unknown_peer",
        "Datagrams on the encrypted port from an address that is no peer",
        d.unknown_peer,
    );
    counter(
        r,
        "shoal_dataplane_broadcast_dropped",
        "Broadcast and multicast frames of encrypted networks dropped (ARP is answered locally)",
        d.broadcast_dropped,
    );
    gauge(
        r,
        "shoal_dataplane_epoch",
        "Epoch of this start of the encrypted data path",
        u64::from(d.epoch),
    );
}

/// OpenMetrics 1.0 text, as `prometheus-client` writes it (ends in `# EOF`).
pub fn render_openmetrics(metrics: &Metrics, snap: &Snapshot) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry(metrics, snap)) {
        // Writing to a String fails only if an encoder reports an error;
        // ours do not. Say so rather than serving half a page silently.
        warn!("metrics encoding failed: {e}");
        out.clear();
        out.push_str("# EOF\n");
    }
    out
}

/// The Prometheus text format 0.0.4 (`text/plain; version=0.0.4`).
pub fn render(metrics: &Metrics, snap: &Snapshot) -> String {
    to_text_004(&render_openmetrics(metrics, snap))
}

/// OpenMetrics -> 0.0.4: a family is named after its sample, so counter
/// `foo` becomes `# TYPE foo_total counter`; info `foo` (a type 0.0.4
/// lacks) becomes `# TYPE foo_info gauge`; and there is no `# EOF` (nor
/// `# UNIT`, which we never emit). The samples are the same text.
fn to_text_004(om: &str) -> String {
    let renamed: std::collections::HashMap<&str, (&str, &str)> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            if let Some(name) = rest.strip_suffix(" counter") {
                Some((name, ("_total", "counter")))
            } else {
                rest.strip_suffix(" info")
                    .map(|name| (name, ("_info", "gauge")))
            }
        })
        .collect();
    let mut out = String::with_capacity(om.len() + 16 * renamed.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Some((suffix, _)) = renamed.get(name) {
                let _ = writeln!(out, "# HELP {name}{suffix} {help}");
                continue;
            }
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_once(' ').map_or(rest, |(n, _)| n);
            if let Some((suffix, kind)) = renamed.get(name) {
                let _ = writeln!(out, "# TYPE {name}{suffix} {kind}");
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

pub use http::{serve, serve_with, ServeConfig};

#[cfg(test)]
mod tests {
    use super::http::*;
    use super::*;
    use std::collections::{BTreeMap, HashMap};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::task::JoinHandle;

    // -- a tiny parser of the text format, strict enough to catch mistakes

    #[derive(Debug, Clone)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    #[derive(Debug, Default)]
    struct Exposition {
        help: HashMap<String, String>,
        types: HashMap<String, String>,
        samples: Vec<Sample>,
    }

    fn valid_name(n: &str) -> bool {
        let mut cs = n.chars();
        matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
        let mut labels = BTreeMap::new();
        let mut rest = s;
        loop {
            rest = rest.trim_start_matches(',');
            if let Some(r) = rest.strip_prefix('}') {
                return Ok((labels, r));
            }
            let (name, r) = rest.split_once("=\"").ok_or(format!("label in {s:?}"))?;
            if !valid_name(name) {
                return Err(format!("label name {name:?}"));
            }
            let mut value = String::new();
            let mut chars = r.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        other => return Err(format!("bad escape {other:?} in {s:?}")),
                    },
                    Some((i, '"')) => break i,
                    Some((_, '\n')) => return Err("raw newline in label".into()),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated label in {s:?}")),
                }
            };
            if labels.insert(name.to_string(), value).is_some() {
                return Err(format!("duplicate label {name}"));
            }
            rest = &r[end + 1..];
        }
    }

    /// Parses exposition text; `openmetrics` relaxes family naming to
    /// that format's rules and requires `# EOF` at the end.
    fn parse(text: &str, openmetrics: bool) -> Result<Exposition, String> {
        let mut x = Exposition::default();
        if !text.ends_with('\n') {
            return Err("no final newline".into());
        }
        let mut lines: Vec<&str> = text.lines().collect();
        if openmetrics {
            if lines.pop() != Some("# EOF") {
                return Err("no # EOF".into());
            }
        } else if text.contains("# EOF") {
            return Err("# EOF in 0.0.4 text".into());
        }
        for line in lines {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').ok_or("HELP without text")?;
                if x.help.insert(name.into(), help.into()).is_some() {
                    return Err(format!("second HELP for {name}"));
                }
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').ok_or("TYPE without type")?;
                let ok = if openmetrics {
                    ["counter", "gauge", "histogram", "info", "unknown"].contains(&ty)
                } else {
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty)
                };
                if !ok || !valid_name(name) {
                    return Err(format!("bad TYPE line {line:?}"));
                }
                if x.samples
                    .iter()
                    .any(|s| family_of(&s.name, &x.types) == Some(name))
                {
                    return Err(format!("TYPE for {name} after its samples"));
                }
                if x.types.insert(name.into(), ty.into()).is_some() {
                    return Err(format!("second TYPE for {name}"));
                }
            } else if line.starts_with('#') {
                return Err(format!("unexpected comment {line:?}"));
            } else {
                let name_end = line.find(['{', ' ']).ok_or(format!("sample {line:?}"))?;
                let name = &line[..name_end];
                if !valid_name(name) {
                    return Err(format!("sample name {name:?}"));
                }
                let (labels, rest) = match line[name_end..].strip_prefix('{') {
                    Some(r) => parse_labels(r)?,
                    None => (BTreeMap::new(), &line[name_end..]),
                };
                let v = rest
                    .strip_prefix(' ')
                    .ok_or(format!("no value in {line:?}"))?;
                let value = match v {
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    v => v.parse::<f64>().map_err(|e| format!("value {v:?}: {e}"))?,
                };
                x.samples.push(Sample {
                    name: name.into(),
                    labels,
                    value,
                });
            }
        }
        // Every sample belongs to a family with HELP and TYPE.
        for s in &x.samples {
            let fam =
                family_of(&s.name, &x.types).ok_or(format!("sample {} has no TYPE", s.name))?;
            if !x.help.contains_key(fam) {
                return Err(format!("family {fam} has no HELP"));
            }
        }
        Ok(x)
    }

    /// The family a sample name belongs to, given the declared types.
    fn family_of<'a>(sample: &str, types: &'a HashMap<String, String>) -> Option<&'a str> {
        if let Some((k, _)) = types.get_key_value(sample) {
            return Some(k.as_str());
        }
        for suffix in ["_bucket", "_sum", "_count", "_total", "_info"] {
            if let Some(base) = sample.strip_suffix(suffix) {
                if let Some((k, ty)) = types.get_key_value(base) {
                    let fits = match ty.as_str() {
                        "histogram" => ["_bucket", "_sum", "_count"].contains(&suffix),
                        "counter" => suffix == "_total",
                        "info" => suffix == "_info",
                        _ => false,
                    };
                    if fits {
                        return Some(k.as_str());
                    }
                }
            }
        }
        None
    }

    impl Exposition {
        fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
            self.samples
                .iter()
                .find(|s| {
                    s.name == name
                        && s.labels.len() == labels.len()
                        && labels
                            .iter()
                            .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
                })
                .map(|s| s.value)
        }

        fn ty(&self, name: &str) -> Option<&str> {
            self.types.get(name).map(String::as_str)
        }

        /// `(le, cumulative count)` of a histogram, in output order.
        fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
            let bucket = format!("{name}_bucket");
            self.samples
                .iter()
                .filter(|s| s.name == bucket)
                .map(|s| {
                    let le = match s.labels.get("le").map(String::as_str) {
                        Some("+Inf") => f64::INFINITY,
                        Some(v) => v.parse().unwrap(),
                        None => panic!("bucket without le"),
                    };
                    (le, s.value)
                })
                .collect()
        }
    }

    fn check_histogram(x: &Exposition, name: &str) -> Vec<(f64, f64)> {
        let b = x.buckets(name);
        assert!(!b.is_empty(), "{name}: no buckets");
        assert!(
            b.windows(2).all(|w| w[0].0 < w[1].0),
            "{name}: le not ascending: {b:?}"
        );
        assert!(
            b.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name}: not cumulative: {b:?}"
        );
        let (last_le, last) = *b.last().unwrap();
        assert_eq!(last_le, f64::INFINITY, "{name}: last bucket is not +Inf");
        assert_eq!(
            Some(last),
            x.get(&format!("{name}_count"), &[]),
            "{name}: +Inf != count"
        );
        assert!(
            x.get(&format!("{name}_sum"), &[]).is_some(),
            "{name}: no sum"
        );
        b
    }

    fn full_snapshot() -> Snapshot {
        let mut counts = vec![0u64; shoal_raft_store::APPLY_LATENCY_BOUNDS.len() + 1];
        counts[0] = 2;
        counts[3] = 1;
        counts[shoal_raft_store::APPLY_LATENCY_BOUNDS.len()] = 1;
        Snapshot {
            raft: Some(RaftStats {
                id: 7,
                term: 3,
                commit_index: 120,
                applied_index: 118,
                snapshot_index: 100,
                is_leader: true,
                leader_id: Some(4_611_686_018_427_387_903),
                voters: 3,
                voters_reachable: 2,
                proposals_total: 50,
                proposals_failed_total: 4,
                inbound_dropped_total: 0,
                apply_latency: HistogramSnapshot {
                    bounds: shoal_raft_store::APPLY_LATENCY_BOUNDS.to_vec(),
                    counts,
                    sum: 12.5,
                    count: 4,
                },
            }),
            gossip: Some(GossipStats {
                counters: shoal_membership::Metrics {
                    decrypt_failures_total: 9,
                    udp_packets_sent: 100,
                    udp_packets_received: 90,
                    udp_bytes_sent: 10_000,
                    udp_bytes_received: 9_000,
                    tcp_frames_sent: 5,
                    tcp_frames_received: 6,
                    tcp_bytes_sent: 500,
                    tcp_bytes_received: 600,
                    ..Default::default()
                },
                members_alive: 4,
                members_suspect: 1,
                members_down: 2,
                table_entries: vec![("ep/n1".into(), 12), ("peers".into(), 5)],
            }),
            session_connected_nodes: Some(5),
            dns: Some(DnsStats {
                queries_total: 40,
                forwarded_total: 10,
                failures_total: 1,
            }),
            tasks_running: Some(3),
            dataplane: Some(crate::proto::gossip::EncryptionStatus {
                mode: "userspace".into(),
                key_ids: vec![3, 2, 1],
                port: 4790,
                epoch: 4,
                peers: vec![shoal_dataplane::PeerStats {
                    node: "h2".into(),
                    tx_packets: 10,
                    replays: 2,
                    ..Default::default()
                }],
                unknown_peer: 1,
                broadcast_dropped: 0,
            }),
        }
    }

    #[test]
    fn render_parses_with_help_type_and_values() {
        let m = Metrics::new();
        m.observe_reconcile(Duration::from_millis(3), 20, true);
        m.observe_reconcile(Duration::from_millis(400), 0, false);
        let text = render(&m, &full_snapshot());
        let x = parse(&text, false).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(!text.contains("{}"), "empty label sets:\n{text}");

        for (name, ty) in [
            ("shoal_raft_term", "gauge"),
            ("shoal_raft_commit_index", "gauge"),
            ("shoal_raft_applied_index", "gauge"),
            ("shoal_raft_is_leader", "gauge"),
            ("shoal_raft_proposals_total", "counter"),
            ("shoal_raft_proposals_failed_total", "counter"),
            ("shoal_raft_apply_latency_seconds", "histogram"),
            ("shoal_gossip_members", "gauge"),
            ("shoal_gossip_messages_total", "counter"),
            ("shoal_gossip_bytes_total", "counter"),
            ("shoal_gossip_decrypt_failures_total", "counter"),
            ("shoal_gossip_table_entries", "gauge"),
            ("shoal_netdriver_entries_programmed_total", "counter"),
            ("shoal_netdriver_reconciles_total", "counter"),
            ("shoal_netdriver_errors_total", "counter"),
            ("shoal_netdriver_reconcile_duration_seconds", "histogram"),
            ("shoal_netdriver_last_reconcile_duration_seconds", "gauge"),
            ("shoal_session_connected_nodes", "gauge"),
            ("shoal_dns_queries_total", "counter"),
            ("shoal_dns_forwarded_total", "counter"),
            ("shoal_dns_failures_total", "counter"),
            ("shoal_tasks_running", "gauge"),
            ("shoal_build_info", "gauge"),
            ("shoal_dataplane_tx_packets_total", "counter"),
            ("shoal_dataplane_replays_total", "counter"),
            ("shoal_dataplane_unknown_peer_total", "counter"),
            ("shoal_dataplane_epoch", "gauge"),
        ] {
            assert_eq!(x.ty(name), Some(ty), "TYPE of {name}\n{text}");
            assert!(
                x.help.get(name).is_some_and(|h| h.len() > 10),
                "HELP of {name}"
            );
        }
        assert_eq!(x.get("shoal_raft_term", &[]), Some(3.0));
        assert_eq!(x.get("shoal_raft_commit_index", &[]), Some(120.0));
        assert_eq!(x.get("shoal_raft_applied_index", &[]), Some(118.0));
        assert_eq!(x.get("shoal_raft_is_leader", &[]), Some(1.0));
        assert_eq!(x.get("shoal_raft_proposals_total", &[]), Some(50.0));
        assert_eq!(x.get("shoal_raft_proposals_failed_total", &[]), Some(4.0));
        // A 63-bit id survives exactly, as a label.
        assert_eq!(
            x.get("shoal_raft_leader", &[("leader_id", "4611686018427387903")]),
            Some(1.0)
        );
        assert_eq!(
            x.get("shoal_gossip_members", &[("state", "alive")]),
            Some(4.0)
        );
        assert_eq!(
            x.get("shoal_gossip_members", &[("state", "suspect")]),
            Some(1.0)
        );
        assert_eq!(
            x.get("shoal_gossip_members", &[("state", "down")]),
            Some(2.0)
        );
        assert_eq!(
            x.get(
                "shoal_gossip_messages_total",
                &[("direction", "sent"), ("transport", "udp")]
            ),
            Some(100.0)
        );
        assert_eq!(
            x.get(
                "shoal_gossip_bytes_total",
                &[("direction", "received"), ("transport", "tcp")]
            ),
            Some(600.0)
        );
        assert_eq!(x.get("shoal_gossip_decrypt_failures_total", &[]), Some(9.0));
        assert_eq!(
            x.get("shoal_gossip_table_entries", &[("table", "ep/n1")]),
            Some(12.0)
        );
        assert_eq!(
            x.get("shoal_gossip_table_entries", &[("table", "peers")]),
            Some(5.0)
        );
        assert_eq!(x.get("shoal_netdriver_reconciles_total", &[]), Some(2.0));
        assert_eq!(x.get("shoal_netdriver_errors_total", &[]), Some(1.0));
        assert_eq!(
            x.get("shoal_netdriver_entries_programmed_total", &[]),
            Some(20.0)
        );
        assert_eq!(
            x.get("shoal_netdriver_last_reconcile_duration_seconds", &[]),
            Some(0.4)
        );
        assert_eq!(x.get("shoal_session_connected_nodes", &[]), Some(5.0));
        assert_eq!(x.get("shoal_dns_queries_total", &[]), Some(40.0));
        assert_eq!(x.get("shoal_tasks_running", &[]), Some(3.0));
        let peer = [("peer", "h2")];
        assert_eq!(x.get("shoal_dataplane_tx_packets_total", &peer), Some(10.0));
        assert_eq!(x.get("shoal_dataplane_replays_total", &peer), Some(2.0));
        assert_eq!(x.get("shoal_dataplane_unknown_peer_total", &[]), Some(1.0));
        assert_eq!(
            x.get(
                "shoal_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_count() {
        let m = Metrics::new();
        for ms in [0, 2, 2, 7, 90, 40_000] {
            m.observe_reconcile(Duration::from_millis(ms), 1, true);
        }
        let x = parse(&render(&m, &full_snapshot()), false).unwrap();

        let raft = check_histogram(&x, "shoal_raft_apply_latency_seconds");
        assert_eq!(raft.len(), shoal_raft_store::APPLY_LATENCY_BOUNDS.len() + 1);
        assert_eq!(raft[0], (0.0005, 2.0));
        assert_eq!(raft[2].1, 2.0);
        assert_eq!(raft[3], (0.005, 3.0));
        assert_eq!(raft.last().map(|b| b.1), Some(4.0));
        assert_eq!(
            x.get("shoal_raft_apply_latency_seconds_sum", &[]),
            Some(12.5)
        );

        let nd = check_histogram(&x, "shoal_netdriver_reconcile_duration_seconds");
        assert_eq!(nd.len(), RECONCILE_BOUNDS.len() + 1);
        assert_eq!(nd[0], (0.001, 1.0)); // 0 ms
        assert_eq!(nd[1], (0.0025, 3.0)); // + 2 x 2 ms
        assert_eq!(nd[3], (0.01, 4.0)); // + 7 ms
        assert_eq!(nd[6], (0.1, 5.0)); // + 90 ms
        assert_eq!(nd[RECONCILE_BOUNDS.len() - 1].1, 5.0); // 40 s is above 30 s
        assert_eq!(nd.last().map(|b| b.1), Some(6.0));
        let sum = x
            .get("shoal_netdriver_reconcile_duration_seconds_sum", &[])
            .unwrap();
        assert!((sum - 40.101).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn absent_sections_are_not_emitted() {
        let text = render(&Metrics::new(), &Snapshot::default());
        let x = parse(&text, false).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for prefix in [
            "shoal_raft_",
            "shoal_gossip_",
            "shoal_session_",
            "shoal_dns_",
            "shoal_tasks_",
        ] {
            assert!(
                !text.contains(prefix),
                "{prefix} emitted without its section:\n{text}"
            );
        }
        // The daemon's own counters are always there, zero at first.
        assert_eq!(x.get("shoal_netdriver_reconciles_total", &[]), Some(0.0));
        let nd = check_histogram(&x, "shoal_netdriver_reconcile_duration_seconds");
        assert!(nd.iter().all(|(_, c)| *c == 0.0));

        // A follower without a known leader: no leader series.
        let mut snap = full_snapshot();
        if let Some(r) = snap.raft.as_mut() {
            r.leader_id = None;
            r.is_leader = false;
        }
        let x = parse(&render(&Metrics::new(), &snap), false).unwrap();
        assert_eq!(x.get("shoal_raft_has_leader", &[]), Some(0.0));
        assert!(x.samples.iter().all(|s| s.name != "shoal_raft_leader"));
    }

    #[test]
    fn hostile_label_values_are_escaped() {
        let mut snap = Snapshot::default();
        let nasty = "ep/a\"b\\c\nd} 1\n# TYPE x counter";
        snap.gossip = Some(GossipStats {
            table_entries: vec![(nasty.into(), 7)],
            ..Default::default()
        });
        let text = render(&Metrics::new(), &snap);
        let x = parse(&text, false).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            x.get("shoal_gossip_table_entries", &[("table", nasty)]),
            Some(7.0)
        );
        assert!(!x.types.contains_key("x"));
    }

    #[test]
    fn openmetrics_variant_is_valid_and_differs_only_in_naming() {
        let m = Metrics::new();
        m.observe_reconcile(Duration::from_millis(5), 3, true);
        let snap = full_snapshot();
        let om = render_openmetrics(&m, &snap);
        let x = parse(&om, true).unwrap_or_else(|e| panic!("{e}\n{om}"));
        assert_eq!(x.ty("shoal_raft_proposals"), Some("counter"));
        assert_eq!(x.ty("shoal_build"), Some("info"));
        assert_eq!(x.get("shoal_raft_proposals_total", &[]), Some(50.0));
        check_histogram(&x, "shoal_raft_apply_latency_seconds");
        // Same samples, line for line, in both formats.
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(String::from)
                .collect()
        };
        assert_eq!(samples(&om), samples(&render(&m, &snap)));
    }

    #[test]
    fn malformed_histogram_snapshot_is_tolerated() {
        for (bounds, counts) in [
            (vec![0.1, 1.0], vec![1]),          // too few counts
            (vec![0.1, 1.0], vec![1, 2, 3, 4]), // too many
            (vec![], vec![]),                   // nothing at all
        ] {
            let mut snap = full_snapshot();
            if let Some(r) = snap.raft.as_mut() {
                r.apply_latency = HistogramSnapshot {
                    bounds,
                    counts: counts.clone(),
                    sum: 1.0,
                    count: 999,
                };
            }
            let text = render(&Metrics::new(), &snap);
            let x = parse(&text, false).unwrap_or_else(|e| panic!("{e}\n{text}"));
            let b = check_histogram(&x, "shoal_raft_apply_latency_seconds");
            assert_eq!(
                b.last().map(|b| b.1),
                Some(counts.iter().sum::<u64>() as f64)
            );
        }
    }

    #[test]
    fn request_heads_parse_and_hostile_ones_are_refused() {
        let ok = |h: &[u8]| parse_head(h);
        assert_eq!(
            ok(b"GET /metrics HTTP/1.1\r\nHost: x"),
            Parsed::Metrics {
                head: false,
                openmetrics: false
            }
        );
        assert_eq!(
            ok(b"GET /metrics?x=1 HTTP/1.0\r\nAccept: Application/OpenMetrics-Text; version=1.0.0"),
            Parsed::Metrics {
                head: false,
                openmetrics: true
            }
        );
        assert_eq!(
            ok(b"HEAD /metrics HTTP/1.1"),
            Parsed::Metrics {
                head: true,
                openmetrics: false
            }
        );
        assert_eq!(ok(b"GET / HTTP/1.1"), Parsed::Status(404, "Not Found"));
        assert_eq!(
            ok(b"POST /metrics HTTP/1.1"),
            Parsed::Status(405, "Method Not Allowed")
        );
        for bad in [
            &b""[..],
            b"GET",
            b"GET /metrics",
            b"GET /metrics HTTP/2.0",
            b"GET /metrics HTTP/1.1 extra",
            b"GET  /metrics HTTP/1.1",
            b"GET metrics HTTP/1.1",
            b"GET /metrics HTTP/1.1\r\nno colon here",
            b"GET /metrics HTTP/1.1\r\nBad Name: x",
            b"\xff\xfe /metrics HTTP/1.1",
        ] {
            assert_eq!(ok(bad), Parsed::Status(400, "Bad Request"), "{bad:?}");
        }
        // Random bytes: any answer, never a panic.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9323);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..64);
            let mut v: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if rng.gen_bool(0.5) {
                v.splice(0..0, b"GET /metrics HTTP/1.1\r\n".iter().copied());
            }
            let _ = parse_head(&v);
            let _ = find_head_end(&v);
        }
    }

    #[tokio::test]
    async fn gossip_stats_read_a_running_gossip() {
        use shoal_membership::{Gossip, GossipConfig, KeyRing, MemberInfo};
        // Two ports that were free a moment ago (gossip must know its own).
        let port = || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let (pa, pb) = (port(), port());
        let info = |id: &str, a: SocketAddr| MemberInfo {
            node_id: id.into(),
            gossip_addr: a,
            advertise_addr: a.ip(),
            data_path_addr: a.ip(),
        };
        let ring = || KeyRing::new(vec![(1, [7u8; 32])]).unwrap();
        let a = Gossip::start(GossipConfig::fast(pa), info("a", pa), ring(), vec![])
            .await
            .unwrap();
        let b = Gossip::start(GossipConfig::fast(pb), info("b", pb), ring(), vec![pa])
            .await
            .unwrap();
        a.put("ep/n1", "e1", b"x".to_vec());
        a.put("ep/n1", "e2", b"y".to_vec());
        a.put("ep/n2", "e3", b"z".to_vec());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let s = loop {
            let s = GossipStats::from_gossip(&a);
            if s.members_alive == 1 || std::time::Instant::now() > deadline {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            (s.members_alive, s.members_suspect, s.members_down),
            (1, 0, 0)
        );
        let mut tables = s.table_entries.clone();
        tables.sort();
        assert_eq!(
            tables,
            vec![("ep/n1".to_string(), 2), ("ep/n2".to_string(), 1)]
        );
        assert!(s.counters.udp_packets_sent > 0 && s.counters.udp_packets_received > 0);
        let x = parse(
            &render(
                &Metrics::new(),
                &Snapshot {
                    gossip: Some(s),
                    ..Default::default()
                },
            ),
            false,
        )
        .unwrap();
        assert_eq!(
            x.get("shoal_gossip_members", &[("state", "alive")]),
            Some(1.0)
        );
        assert_eq!(
            x.get("shoal_gossip_table_entries", &[("table", "ep/n1")]),
            Some(2.0)
        );
        b.leave().await.unwrap();
        a.leave().await.unwrap();
    }

    #[tokio::test]
    async fn bind_empty_disables_and_bad_addresses_are_named() {
        assert!(bind("").await.unwrap().is_none());
        assert!(bind("  ").await.unwrap().is_none());
        let e = bind("localhost:9323").await.unwrap_err();
        assert!(e.to_string().contains("localhost:9323"), "{e}");
        let l = bind("127.0.0.1:0").await.unwrap().unwrap();
        let taken = l.local_addr().unwrap().to_string();
        let e = bind(&taken).await.unwrap_err();
        assert!(e.to_string().contains(&taken), "{e}");
    }

    // -- the HTTP server, over real sockets on 127.0.0.1

    struct Reply {
        status: u16,
        headers: HashMap<String, String>,
        body: String,
    }

    async fn exchange(addr: SocketAddr, request: &[u8]) -> Reply {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        read_reply(&mut s).await
    }

    async fn read_reply(s: &mut TcpStream) -> Reply {
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
            .await
            .expect("server did not close the connection in time")
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("no head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                (k.to_ascii_lowercase(), v.to_string())
            })
            .collect();
        Reply {
            status,
            headers,
            body: body.to_string(),
        }
    }

    struct Server {
        addr: SocketAddr,
        task: JoinHandle<()>,
        metrics: Arc<Metrics>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn start(cfg: ServeConfig) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let snap = snapshot_fn(move || {
            let calls = calls.clone();
            async move {
                // Each scrape reads fresh state.
                let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                Snapshot {
                    tasks_running: Some(n),
                    ..full_snapshot()
                }
            }
        });
        let task = serve_with(listener, metrics.clone(), snap, cfg);
        Server {
            addr,
            task,
            metrics,
        }
    }

    #[tokio::test]
    async fn scrape_over_tcp_returns_the_series() {
        let srv = start(ServeConfig::default()).await;
        srv.metrics
            .observe_reconcile(Duration::from_millis(12), 8, true);
        let r = exchange(
            srv.addr,
            b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some(CONTENT_TYPE_TEXT)
        );
        assert_eq!(
            r.headers.get("content-length"),
            Some(&r.body.len().to_string())
        );
        let x = parse(&r.body, false).unwrap_or_else(|e| panic!("{e}\n{}", r.body));
        assert_eq!(x.get("shoal_raft_term", &[]), Some(3.0));
        assert_eq!(
            x.get("shoal_netdriver_entries_programmed_total", &[]),
            Some(8.0)
        );
        assert_eq!(x.get("shoal_tasks_running", &[]), Some(1.0));

        // A second scrape calls the snapshot closure again.
        let r = exchange(srv.addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        let x = parse(&r.body, false).unwrap();
        assert_eq!(x.get("shoal_tasks_running", &[]), Some(2.0));

        // Prometheus asks for OpenMetrics and gets it.
        let r = exchange(
            srv.addr,
            b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some(CONTENT_TYPE_OPENMETRICS)
        );
        parse(&r.body, true).unwrap_or_else(|e| panic!("{e}\n{}", r.body));

        // HEAD: headers only, with the length GET would have.
        let r = exchange(srv.addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty());
        assert!(
            r.headers
                .get("content-length")
                .unwrap()
                .parse::<usize>()
                .unwrap()
                > 1000
        );
    }

    #[tokio::test]
    async fn other_paths_methods_and_garbage_get_errors_and_the_server_lives() {
        let srv = start(ServeConfig::default()).await;
        let r = exchange(srv.addr, b"GET /other HTTP/1.1\r\n\r\n").await;
        assert_eq!(r.status, 404);
        let r = exchange(
            srv.addr,
            b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 405);
        assert_eq!(
            r.headers.get("allow").map(String::as_str),
            Some("GET, HEAD")
        );
        let r = exchange(
            srv.addr,
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 400);
        let r = exchange(srv.addr, b"GARBAGE\n\n").await;
        assert_eq!(r.status, 400);
        // Request head over 8 KiB, never terminated.
        let mut big = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 9 * 1024));
        let r = exchange(srv.addr, &big).await;
        assert_eq!(r.status, 431);
        // A client that connects and closes at once.
        drop(TcpStream::connect(srv.addr).await.unwrap());
        // Still serving.
        let r = exchange(srv.addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(r.status, 200);
        parse(&r.body, false).unwrap();
    }

    #[tokio::test]
    async fn slow_clients_time_out_without_blocking_others() {
        let srv = start(ServeConfig {
            read_timeout: Duration::from_millis(1500),
            ..ServeConfig::default()
        })
        .await;
        // Half a request, then silence.
        let mut idle = TcpStream::connect(srv.addr).await.unwrap();
        idle.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        // Served while the idle one is still pending: connections are
        // handled concurrently.
        let r = exchange(srv.addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(r.status, 200);
        let mut probe = [0u8; 1];
        match idle.try_read(&mut probe) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the idle connection was answered before its timeout: {other:?}"),
        }
        // The idle one is answered 408 and closed.
        let r = read_reply(&mut idle).await;
        assert_eq!(r.status, 408);
    }

    #[tokio::test]
    async fn a_stuck_snapshot_is_503_and_excess_connections_are_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let snap = snapshot_fn(|| async {
            futures::future::pending::<()>().await;
            Snapshot::default()
        });
        let task = serve_with(
            listener,
            Arc::new(Metrics::new()),
            snap,
            ServeConfig {
                snapshot_timeout: Duration::from_millis(200),
                read_timeout: Duration::from_secs(5),
                max_connections: 1,
                ..ServeConfig::default()
            },
        );
        // Holds the only slot (never finishes its head within the test).
        let mut holder = TcpStream::connect(addr).await.unwrap();
        holder
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        // Let the server accept it before the next connection arrives.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let busy = loop {
            let r = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
            if (r.status == 503 && r.body == "busy\n") || std::time::Instant::now() > deadline {
                break r;
            }
        };
        assert_eq!(busy.status, 503);
        assert_eq!(busy.body, "busy\n");
        holder.write_all(b"\r\n").await.unwrap();
        let r = read_reply(&mut holder).await;
        assert_eq!(r.status, 503, "stuck snapshot");
        assert!(r.body.contains("snapshot timed out"), "{}", r.body);
        task.abort();
    }
}
