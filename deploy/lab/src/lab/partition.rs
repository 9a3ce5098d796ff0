//! The network between hosts: partitions as an nftables table
//! `inet shoallab` per host's namespace, rebuilt from the record's
//! `blocked` sets (rules from `crate::plan`) on every change and saved
//! with it, healing, and a ping to check who reaches whom.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::error::LabError;
use crate::names::HostId;
use crate::plan;
use crate::state::HostState;
use crate::tools;

use super::exec::run;
use super::{Inner, Lab};

impl Lab {
    /// One ping (1 s reply timeout) from `from` to `to`'s underlay address.
    /// `Ok(false)` means no reply; an error means ping could not be run.
    pub fn ping(&self, from: impl Into<HostId>, to: impl Into<HostId>) -> Result<bool, LabError> {
        let addr = self.host(to)?.addr.to_string();
        let ping = tools::find_program("ping").ok_or(LabError::PingMissing)?;
        let out = self.exec(
            from,
            &[
                ping.as_os_str(),
                "-c1".as_ref(),
                "-W1".as_ref(),
                "-w2".as_ref(),
                "-q".as_ref(),
                addr.as_ref(),
            ],
        )?;
        Ok(out.status.success())
    }

    /// Cuts every host of `a` off from every host of `b` (both addresses,
    /// both directions) with an nftables table `inet shoallab` in each
    /// host's namespace. Partitions add up until [`Lab::heal`].
    pub fn partition<A: Into<HostId> + Copy, B: Into<HostId> + Copy>(
        &self,
        a: &[A],
        b: &[B],
    ) -> Result<(), LabError> {
        let nft = tools::nft()?;
        let mut g = self.lock();
        let a: BTreeSet<usize> = a
            .iter()
            .map(|&h| g.host(h.into()).map(|h| h.index))
            .collect::<Result<_, _>>()?;
        let b: BTreeSet<usize> = b
            .iter()
            .map(|&h| g.host(h.into()).map(|h| h.index))
            .collect::<Result<_, _>>()?;
        if a.is_empty() || b.is_empty() {
            return Err(LabError::BadPartition(
                "both sides need at least one host".into(),
            ));
        }
        if let Some(both) = a.intersection(&b).next() {
            return Err(LabError::BadPartition(format!("h{both} is on both sides")));
        }
        for (side, other) in [(&a, &b), (&b, &a)] {
            for &i in side.iter() {
                g.state.hosts[i - 1].blocked.extend(other.iter().copied());
            }
        }
        for &i in a.union(&b) {
            g.apply_nft(&nft, i)?;
        }
        g.save()
    }

    /// Removes every partition (the `inet shoallab` tables).
    pub fn heal(&self) -> Result<(), LabError> {
        let mut g = self.lock();
        let cut: Vec<usize> = g
            .state
            .hosts
            .iter()
            .filter(|h| !h.blocked.is_empty())
            .map(|h| h.index)
            .collect();
        if cut.is_empty() {
            return Ok(());
        }
        let nft = tools::nft()?;
        for i in cut {
            g.state.hosts[i - 1].blocked.clear();
            g.apply_nft(&nft, i)?;
        }
        g.save()
    }
}

impl Inner {
    fn apply_nft(&self, nft: &Path, i: usize) -> Result<(), LabError> {
        let h = &self.state.hosts[i - 1];
        let addrs: Vec<_> = h
            .blocked
            .iter()
            .filter_map(|&j| self.state.hosts.get(j - 1))
            .flat_map(HostState::addrs)
            .collect();
        run(
            Command::new(&self.ip)
                .args(["netns", "exec", &h.ns])
                .arg(nft)
                .args(["-f", "-"]),
            &format!("setting the partition rules of {}", h.name),
            &plan::nft_ruleset(&addrs),
        )
    }
}
