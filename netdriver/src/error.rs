//! The one error type of the netdriver. Every variant names the object it is
//! about (network id, namespace path, device, entry) so that an operator
//! reading `shoal network inspect` or a daemon log knows what to look at.

use std::path::PathBuf;

/// Everything that can go wrong while turning desired networks into kernel
/// state. Variants carry the network id / path / device / entry concerned.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The network id cannot be used as a file name under `<run_dir>/netns`.
    #[error("network id {id:?} cannot name a namespace file: {reason}")]
    InvalidNetworkId {
        /// The offending id.
        id: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The network spec is inconsistent (VNI out of range, gateway outside
    /// the subnet, impossible MTU, ...).
    #[error("network {network}: invalid spec: {reason}")]
    InvalidSpec {
        /// Network id.
        network: String,
        /// What is wrong and what the valid range is.
        reason: String,
    },
    /// The same network id appears twice in one `Desired`.
    #[error("network {network}: listed twice in the desired state")]
    DuplicateNetwork {
        /// Network id.
        network: String,
    },
    /// An operation named a network this driver has no namespace for.
    #[error("network {network}: no namespace for it on this node (reconcile it first)")]
    UnknownNetwork {
        /// Network id.
        network: String,
    },
    /// A file-system operation on a namespace file or the run dir failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// File or directory concerned.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A namespace syscall (unshare, setns, mount, umount) failed.
    #[error("namespace {path}: {op}: {source}")]
    Namespace {
        /// Bind-mount path of the namespace.
        path: PathBuf,
        /// Which syscall.
        op: &'static str,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
    /// The helper thread that works inside a namespace died or could not be
    /// started.
    #[error("namespace {path}: helper thread failed: {reason}")]
    Thread {
        /// Bind-mount path of the namespace.
        path: PathBuf,
        /// What happened.
        reason: String,
    },
    /// A netlink request failed.
    #[error("network {network}: {what}: {source}")]
    Netlink {
        /// Network id (or `daemon` for the daemon's own namespace, or the
        /// workload namespace path).
        network: String,
        /// The request, naming the device or entry (`add fdb 02:..:.. dst 10.0.0.2 on vx0`).
        what: String,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// The kernel refused one FDB or neighbour request.
    #[error("network {network}: {what}: {source}")]
    Entry {
        /// Network id.
        network: String,
        /// The request (`add fdb 02:..:.. dst 10.0.0.2 on vx0`).
        what: String,
        /// The errno the kernel answered.
        #[source]
        source: std::io::Error,
    },
    /// Several entry requests of one batch failed; the first is kept.
    #[error("network {network}: {failed} entry requests failed, first: {first}")]
    Entries {
        /// Network id.
        network: String,
        /// How many requests failed.
        failed: usize,
        /// The first failure.
        #[source]
        first: Box<NetError>,
    },
    /// A device that should exist does not.
    #[error("network {network}: device {device} not found")]
    DeviceMissing {
        /// Network id (or namespace path).
        network: String,
        /// Device name.
        device: String,
    },
    /// Reconcile handled every network but some failed; the first is kept.
    #[error("{failed} networks failed to reconcile, first: {first}")]
    Networks {
        /// How many networks failed.
        failed: usize,
        /// The first failure.
        #[source]
        first: Box<NetError>,
    },
    /// A name given by the caller cannot be used (interface name too long,
    /// nftables table name with characters nft would misparse, ...).
    #[error("invalid {kind} {name:?}: {reason}")]
    InvalidName {
        /// What the name is for (`interface name`, `nftables table`).
        kind: &'static str,
        /// The offending name.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// `nft` (or `nsenter`, to run it in a namespace) is not installed.
    #[error("{program} not found: install nftables (and util-linux for nsenter); needed for service load balancing and egress NAT")]
    NftMissing {
        /// The program that could not be run.
        program: &'static str,
    },
    /// `nft` ran and refused the request; its stderr says why.
    #[error("nft in {netns}: {what}: {stderr}")]
    Nft {
        /// Namespace path, or `daemon` for the daemon's own namespace.
        netns: String,
        /// What was asked (`replace table ip shoal-vip`).
        what: String,
        /// nft's error output (or its exit status when silent).
        stderr: String,
    },
    /// Every address of an address pool is taken.
    #[error("{pool}: no free address in {subnet}")]
    PoolExhausted {
        /// Which pool (`shoal_gwbridge`).
        pool: String,
        /// The subnet that is full.
        subnet: ipnet::Ipv4Net,
    },
    /// A state file under the run dir could not be parsed or written.
    #[error("{path}: {reason} (delete the file to start over)")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}
