//! The one error type of the lab. Every variant names what was wrong and
//! what to do about it, because most of them end up as one line on a
//! terminal (`shoal-lab up`) or in a failing test's output.

use std::io;
use std::path::PathBuf;

/// What went wrong while building, driving or cleaning a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Network namespaces and bridges need CAP_SYS_ADMIN/CAP_NET_ADMIN.
    #[error("shoal-lab needs root to create network namespaces (run with sudo)")]
    NotRoot,
    /// The kernel (or the container we run in) cannot give us namespaces.
    #[error("no network namespace support here: {0}")]
    NoNetns(String),
    /// The lab drives the kernel through iproute2.
    #[error(
        "`ip` not found in PATH, /usr/sbin or /sbin: install iproute2 (apt-get install iproute2)"
    )]
    IpMissing,
    /// Partitions are nftables rules inside the host namespaces.
    #[error("`nft` not found in PATH, /usr/sbin or /sbin: install nftables (apt-get install nftables) to partition hosts")]
    NftMissing,
    /// The daemon binary the lab runs on every host.
    #[error("shoal binary not found (looked at {looked}): build it with `cargo build -p shoal` (or `cargo build --release -p shoal`), or set SHOAL_BIN=/path/to/shoal")]
    ShoalMissing {
        /// Every place that was tried, comma-separated.
        looked: String,
    },
    /// A lab holds 1 to 250 hosts (10.77.0.1 .. 10.77.0.250).
    #[error("invalid node count {0}: a lab has 1 to 250 hosts")]
    BadNodeCount(usize),
    /// A host name or index outside the lab.
    #[error("no host {host} in this lab (hosts are h1..h{count})")]
    NoSuchHost {
        /// What the caller asked for.
        host: String,
        /// How many hosts the lab has.
        count: usize,
    },
    /// Bad arguments to `partition`.
    #[error("invalid partition: {0}")]
    BadPartition(String),
    /// An external command (`ip`, `nft`, ...) failed.
    #[error("{what}: `{cmd}` failed: {stderr}")]
    Command {
        /// What the lab was doing.
        what: String,
        /// The command line.
        cmd: String,
        /// Its stderr (or exit status when it printed nothing).
        stderr: String,
    },
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the lab was doing.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Sending a signal failed for another reason than "no such process".
    #[error("signal {signal} to the daemon of {host} (pid {pid}): {source}")]
    Signal {
        /// Host name (h1..).
        host: String,
        /// Process id.
        pid: i32,
        /// Signal name.
        signal: String,
        /// errno.
        #[source]
        source: nix::Error,
    },
    /// The daemon did not come up in time.
    #[error("daemon on {host} did not answer `shoal info` within {secs}s (last answer: {last}); its log is {log}")]
    NotReady {
        /// Host name.
        host: String,
        /// How long the lab waited.
        secs: u64,
        /// The last error from the CLI.
        last: String,
        /// Path of daemon.log.
        log: PathBuf,
    },
    /// The daemon died while the lab waited for it to answer.
    #[error("daemon on {host} {state} before it answered `shoal info`; {log} ends with:\n{tail}")]
    DaemonExited {
        /// Host name.
        host: String,
        /// How it ended.
        state: String,
        /// Path of daemon.log.
        log: PathBuf,
        /// The last lines of daemon.log.
        tail: String,
    },
    /// `kill`, `pause` or `resume` on a daemon that is not running.
    #[error("daemon on {host} is not running ({state})")]
    NotRunning {
        /// Host name.
        host: String,
        /// Its state.
        state: String,
    },
    /// A state file that cannot be read or written.
    #[error("lab state file {path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Lab::ping needs the ping command.
    #[error("`ping` not found: install iputils-ping (apt-get install iputils-ping)")]
    PingMissing,
    /// Cleanup could not remove everything; what is left is still recorded.
    #[error("cleanup incomplete: {0}")]
    Cleanup(String),
    /// A feature that a later piece of work brings.
    #[error("forming the swarm: {0}")]
    Swarm(String),

    #[error("benchmark: {0}")]
    Bench(String),
}

impl LabError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        LabError::Io {
            what: what.into(),
            source,
        }
    }
}
