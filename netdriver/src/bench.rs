//! `shoal-lab bench reconcile`: how many kernel entries per second the
//! reconciler programs into one network namespace. Pipelined netlink on one
//! socket reaches ~100,000/s here; one `bridge`/`ip` process per entry, as
//! shell-based drivers do, is ~800/s. The target is >= 80,000/s.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Instant;

use crate::{Desired, Driver, NetError, NetworkSpec, RemoteEndpoint};

/// Result of [`bench_reconcile`]. An entry is one FDB or one neighbour
/// entry, so `n` endpoints are `2n` entries each way.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Remote endpoints programmed.
    pub endpoints: usize,
    /// Entries added (and then deleted): FDB + neighbour.
    pub entries: usize,
    /// Seconds for the reconcile that added them (dump + plan + apply).
    pub add_secs: f64,
    /// Seconds for the reconcile that deleted them.
    pub del_secs: f64,
    /// Entries added per second.
    pub add_per_sec: f64,
    /// Entries deleted per second.
    pub del_per_sec: f64,
}

const BENCH_NETWORK: &str = "shoal-bench";

fn spec() -> Result<NetworkSpec, NetError> {
    let subnet = "10.128.0.0/9".parse().map_err(|_| NetError::InvalidSpec {
        network: BENCH_NETWORK.to_string(),
        reason: "bench subnet".to_string(),
    })?;
    Ok(NetworkSpec {
        id: BENCH_NETWORK.to_string(),
        vni: 0xBE_AC4,
        subnet,
        gateway: Ipv4Addr::new(10, 128, 0, 1),
        mtu: Some(1450),
        // RFC 2544 benchmarking range: no traffic is sent, nothing listens.
        local_vtep: Ipv4Addr::new(198, 19, 255, 254),
        port: crate::DEFAULT_VXLAN_PORT,
        encrypted: false,
    })
}

/// The `n` synthetic endpoints: IPs from 10.128.0.2 up, locally
/// administered MACs, spread over 250 VTEPs in 198.18.0.0/15.
fn endpoints(n: usize) -> Vec<RemoteEndpoint> {
    (0..n)
        .map(|i| {
            let i = i as u32;
            let ip = u32::from(Ipv4Addr::new(10, 128, 0, 2)).wrapping_add(i);
            let b = i.to_be_bytes();
            RemoteEndpoint {
                ip: Ipv4Addr::from(ip),
                mac: [0x02, 0x5b, b[0], b[1], b[2], b[3]],
                vtep: Ipv4Addr::new(198, 18, 0, 1 + (i % 250) as u8),
            }
        })
        .collect()
}

/// For `shoal-lab bench reconcile`: program `n` remote endpoints into one
/// fresh namespace network and remove them; returns add and delete
/// entries/s (FDB + neighbour each count). Target >= 80,000 entries/s.
/// Runs in the caller's network namespace (the VXLAN socket is opened
/// there), with the namespace under `<run_dir>/netns`; everything it
/// creates is removed before it returns, also on failure.
pub async fn bench_reconcile(run_dir: &Path, n: usize) -> Result<BenchReport, NetError> {
    let n = n.min(1 << 23);
    let mut driver = Driver::new(run_dir).await?;
    let result = run(&mut driver, n).await;
    let cleanup = driver.reconcile(&Desired::default()).await;
    let report = result?;
    cleanup?;
    Ok(report)
}

async fn run(driver: &mut Driver, n: usize) -> Result<BenchReport, NetError> {
    let spec = spec()?;
    let empty = Desired {
        networks: vec![(spec.clone(), Vec::new())],
    };
    driver.reconcile(&empty).await?;
    let full = Desired {
        networks: vec![(spec, endpoints(n))],
    };
    let t = Instant::now();
    let added = driver.reconcile(&full).await?;
    let add_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let removed = driver.reconcile(&empty).await?;
    let del_secs = t.elapsed().as_secs_f64();
    let entries = 2 * n;
    if added.fdb_added + added.neigh_added != entries
        || removed.fdb_removed + removed.neigh_removed != entries
    {
        return Err(NetError::InvalidSpec {
            network: BENCH_NETWORK.to_string(),
            reason: format!(
                "bench programmed {}+{} and removed {}+{} entries, expected {n} each",
                added.fdb_added, added.neigh_added, removed.fdb_removed, removed.neigh_removed
            ),
        });
    }
    Ok(BenchReport {
        endpoints: n,
        entries,
        add_secs,
        del_secs,
        add_per_sec: entries as f64 / add_secs.max(1e-9),
        del_per_sec: entries as f64 / del_secs.max(1e-9),
    })
}
