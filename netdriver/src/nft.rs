//! nftables for services: the rules that make a service reachable. Three
//! places hold them, each as one table owned by Shoal:
//!
//! - a task's namespace ([`vip_table`]): connections to a service VIP are
//!   DNATed to one of the service's tasks, round robin (Docker does this
//!   with IPVS, which this kernel does not have);
//! - the per-node ingress sandbox ([`ingress_sandbox_table`]): the routing
//!   mesh; a published port is DNATed to a task anywhere in the cluster
//!   over the ingress overlay, masqueraded so replies come back here;
//! - the daemon's namespace ([`host_publish_table`]): a published port on
//!   any local address is DNATed to the ingress sandbox (or, for
//!   `mode=host`, to the task itself).
//!
//! The builders are pure (text in, text out) and unit-tested on their
//! output; [`apply_table`] loads a table through the `nft` binary, replacing
//! the whole table in one transaction so readers never see half of it.
//! Every table is `ip` family (the egress bridge's isolation table is
//! `bridge`) and never touches tables it does not name,
//! so it coexists with firewalls and with other daemons' tables.

use std::ffi::OsString;
use std::fmt::{self, Display, Write as _};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::NetError;

/// Table holding a task namespace's VIP rules ([`vip_table`]).
pub const VIP_TABLE: &str = "shoal-vip";
/// Table holding the ingress sandbox's rules ([`ingress_sandbox_table`]).
pub const INGRESS_TABLE: &str = "shoal-ingress";
/// Table holding the daemon namespace's published ports
/// ([`host_publish_table`]).
pub const PUBLISH_TABLE: &str = "shoal-publish";

/// How long one `nft` run may take before it is killed: it loads a few
/// hundred rules in milliseconds, so this only catches a wedged process.
const NFT_TIMEOUT: Duration = Duration::from_secs(30);

/// Refuse table names nft would misparse (the name is pasted into a script).
fn check_table(table: &str) -> Result<(), NetError> {
    let ok_first = table
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic());
    let ok_rest = table
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok_first && ok_rest && table.len() <= 64 {
        Ok(())
    } else {
        Err(NetError::InvalidName {
            kind: "nftables table",
            name: table.to_string(),
            reason: "must be 1 to 64 ASCII letters, digits, '-' or '_', starting with a letter",
        })
    }
}

fn ns_label(netns: Option<&Path>) -> String {
    match netns {
        Some(p) => p.display().to_string(),
        None => "daemon".to_string(),
    }
}

/// Run `nft <args>` (with `stdin` fed to it) in `netns` (through
/// `nsenter --net=`) or in the caller's namespace. Returns stdout on
/// success; `Err(Nft)` carries stderr otherwise.
async fn run_nft(
    netns: Option<&Path>,
    args: &[&str],
    stdin: Option<&str>,
    what: &str,
) -> Result<String, NetError> {
    let (mut cmd, program) = match netns {
        Some(path) => {
            let mut c = tokio::process::Command::new("nsenter");
            let mut net = OsString::from("--net=");
            net.push(path.as_os_str());
            c.arg(net).arg("nft");
            (c, "nsenter")
        }
        None => (tokio::process::Command::new("nft"), "nft"),
    };
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let nft_err = |stderr: String| NetError::Nft {
        netns: ns_label(netns),
        what: what.to_string(),
        stderr,
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(NetError::NftMissing { program })
        }
        Err(e) => return Err(nft_err(format!("cannot start {program}: {e}"))),
    };
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A failed write means nft exited early; its stderr says why.
        let _ = pipe.write_all(text.as_bytes()).await;
        drop(pipe);
    }
    let out = match tokio::time::timeout(NFT_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(nft_err(format!("waiting for {program}: {e}"))),
        Err(_) => {
            return Err(nft_err(format!(
                "{program} still running after {NFT_TIMEOUT:?}; killed"
            )))
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    // nsenter exits 127 when it cannot find the program to run.
    if netns.is_some() && out.status.code() == Some(127) {
        return Err(NetError::NftMissing { program: "nft" });
    }
    Err(nft_err(if stderr.is_empty() {
        format!("{program} failed: {}", out.status)
    } else {
        stderr
    }))
}

/// The script [`apply_table`] feeds to `nft -f -`: create the table if
/// missing (so the delete cannot fail), delete it, recreate it with `body`.
/// nft runs a file as one transaction, so this is an atomic replace.
pub fn replace_table_script(table: &str, body: &str) -> String {
    family_script("ip", table, body)
}

fn family_script(family: &str, table: &str, body: &str) -> String {
    format!(
        "table {family} {table} {{}}\ndelete table {family} {table}\ntable {family} {table} {{\n{body}}}\n"
    )
}

/// [`apply_table`] for a `bridge` family table (frames forwarded between
/// the ports of a Linux bridge).
pub async fn apply_bridge_table(table: &str, body: &str) -> Result<(), NetError> {
    check_table(table)?;
    let script = family_script("bridge", table, body);
    run_nft(
        None,
        &["-f", "-"],
        Some(&script),
        &format!("replace table bridge {table}"),
    )
    .await?;
    Ok(())
}

/// [`delete_table`] for a `bridge` family table.
pub async fn delete_bridge_table(table: &str) -> Result<(), NetError> {
    check_table(table)?;
    let script = format!("table bridge {table} {{}}\ndelete table bridge {table}\n");
    run_nft(
        None,
        &["-f", "-"],
        Some(&script),
        &format!("delete table bridge {table}"),
    )
    .await?;
    Ok(())
}

/// Replace the whole table `ip <table>` in `netns` (a namespace
/// bind-mount path; `None`: the caller's namespace) with `body` (its
/// chains and rules, as the builders here return), in one nft
/// transaction: the table is never half-loaded, and applying the same body
/// twice is a no-op. A body nft refuses leaves the old table in place.
pub async fn apply_table(netns: Option<&Path>, table: &str, body: &str) -> Result<(), NetError> {
    check_table(table)?;
    let script = replace_table_script(table, body);
    run_nft(
        netns,
        &["-f", "-"],
        Some(&script),
        &format!("replace table ip {table}"),
    )
    .await?;
    Ok(())
}

/// Delete the table `ip <table>` in `netns`. Idempotent: a missing table
/// is not an error.
pub async fn delete_table(netns: Option<&Path>, table: &str) -> Result<(), NetError> {
    check_table(table)?;
    let script = format!("table ip {table} {{}}\ndelete table ip {table}\n");
    run_nft(
        netns,
        &["-f", "-"],
        Some(&script),
        &format!("delete table ip {table}"),
    )
    .await?;
    Ok(())
}

/// The table `ip <table>` in `netns` as `nft list table` prints it, or
/// `None` if there is no such table. For `inspect` output and tests.
pub async fn list_table(netns: Option<&Path>, table: &str) -> Result<Option<String>, NetError> {
    check_table(table)?;
    let what = format!("list table ip {table}");
    match run_nft(netns, &["list", "table", "ip", table], None, &what).await {
        Ok(out) => Ok(Some(out)),
        Err(NetError::Nft { stderr, .. }) if stderr.contains("No such file or directory") => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Turn IPv4 forwarding on or off in `netns` (`None`: the calling
/// thread's namespace). `/proc/sys/net` shows the namespace of the thread
/// that opens it, so for another namespace the write happens on a
/// short-lived thread that has `setns`-ed into it.
pub fn set_ip_forward(netns: Option<&Path>, on: bool) -> Result<(), NetError> {
    set_sysctl(
        netns,
        "/proc/sys/net/ipv4/ip_forward",
        if on { "1" } else { "0" },
    )
}

/// Write a `/proc/sys/net` value in `netns` (see [`set_ip_forward`]).
pub(crate) fn set_sysctl(
    netns: Option<&Path>,
    key: &str,
    value: &'static str,
) -> Result<(), NetError> {
    let key = key.to_string();
    let write = move || {
        std::fs::write(&key, value).map_err(|source| NetError::Io {
            path: key.clone().into(),
            op: "write sysctl",
            source,
        })
    };
    let Some(path) = netns else {
        return write();
    };
    let p = path.to_path_buf();
    std::thread::Builder::new()
        .name("shoal-sysctl".to_string())
        .spawn(move || {
            let f = std::fs::File::open(&p).map_err(|source| NetError::Io {
                path: p.clone(),
                op: "open namespace file",
                source,
            })?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| {
                NetError::Namespace {
                    path: p.clone(),
                    op: "setns",
                    source,
                }
            })?;
            write()
        })
        .map_err(|e| NetError::Thread {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?
        .join()
        .map_err(|_| NetError::Thread {
            path: path.to_path_buf(),
            reason: "sysctl thread panicked".to_string(),
        })?
}

/// A service VIP as a task sees it: connections to `vip` go to one of
/// `backends` (the service's task addresses on that network).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipRule {
    /// The service's virtual IP on one network.
    pub vip: Ipv4Addr,
    /// The task addresses on that network; empty: connections are refused.
    pub backends: Vec<Ipv4Addr>,
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Where a published port leads: an address and the port there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Backend address (a task, or the ingress sandbox).
    pub ip: Ipv4Addr,
    /// Port at the backend (the target port).
    pub port: u16,
}

/// A published port: `proto`/`port` on this node leads to one of
/// `backends`, round robin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    /// TCP or UDP.
    pub proto: Proto,
    /// The published port.
    pub port: u16,
    /// Where connections go; empty: they are refused.
    pub backends: Vec<Backend>,
}

/// nft priority of the chains that refuse ports or VIPs without
/// backends: after conntrack (-200), before DNAT (-100), so they see the
/// destination the client asked for, not a DNATed one.
const REJECT_PRIORITY: i32 = -150;

/// `numgen inc mod N map { 0 : a, 1 : b, … }`, or just `a` for one item:
/// round robin over new connections (NAT runs once per connection, so
/// every packet of a connection goes to the same backend).
fn round_robin<T: Display>(items: &[T]) -> String {
    match items {
        [one] => one.to_string(),
        _ => {
            let mut s = format!("numgen inc mod {} map {{ ", items.len());
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                let _ = write!(s, "{i} : {x}");
            }
            s.push_str(" }");
            s
        }
    }
}

/// The DNAT statement for port backends: `dnat to a:p` for one,
/// `dnat ip addr . port to numgen … map { 0 : a . p, … }` for several.
fn dnat_ports(backends: &[Backend]) -> String {
    match backends {
        [one] => format!("dnat to {}:{}", one.ip, one.port),
        _ => {
            let items: Vec<String> = backends
                .iter()
                .map(|b| format!("{} . {}", b.ip, b.port))
                .collect();
            format!("dnat ip addr . port to {}", round_robin(&items))
        }
    }
}

/// The reject statement for a refused connection: a TCP reset for TCP
/// (the client sees "connection refused" at once), ICMP port unreachable
/// for the rest.
fn reject(proto: Proto) -> &'static str {
    match proto {
        Proto::Tcp => "reject with tcp reset",
        Proto::Udp => "reject with icmp type port-unreachable",
    }
}

fn chain_head(s: &mut String, name: &str, kind: &str, hook: &str, priority: i32) {
    let _ = writeln!(
        s,
        "  chain {name} {{\n    type {kind} hook {hook} priority {priority}; policy accept;"
    );
}

/// Body of the [`VIP_TABLE`] for a task's namespace: locally generated
/// connections to a VIP are DNATed (nat `output` hook) round robin to the
/// VIP's backends, every protocol and port kept; a VIP without backends
/// is refused at once (TCP reset, ICMP port unreachable), not left to
/// time out on an address nobody answers. One rule per VIP; if a VIP is
/// listed twice the first rule wins.
pub fn vip_table(rules: &[VipRule]) -> String {
    let mut s = String::new();
    chain_head(&mut s, "output", "nat", "output", -100);
    for r in rules.iter().filter(|r| !r.backends.is_empty()) {
        let _ = writeln!(
            s,
            "    ip daddr {} dnat to {}",
            r.vip,
            round_robin(&r.backends)
        );
    }
    s.push_str("  }\n");
    let empty: Vec<Ipv4Addr> = rules
        .iter()
        .filter(|r| r.backends.is_empty())
        .map(|r| r.vip)
        .collect();
    if !empty.is_empty() {
        chain_head(&mut s, "refuse", "filter", "output", REJECT_PRIORITY);
        let set = addr_set(&empty);
        let _ = writeln!(
            s,
            "    ip daddr {set} meta l4proto tcp reject with tcp reset"
        );
        let _ = writeln!(
            s,
            "    ip daddr {set} reject with icmp type port-unreachable"
        );
        s.push_str("  }\n");
    }
    s
}

fn addr_set(addrs: &[Ipv4Addr]) -> String {
    match addrs {
        [one] => one.to_string(),
        _ => {
            let items: Vec<String> = addrs.iter().map(Ipv4Addr::to_string).collect();
            format!("{{ {} }}", items.join(", "))
        }
    }
}

/// Body of the [`INGRESS_TABLE`] for the ingress sandbox (routing mesh):
/// packets arriving for a published port are DNATed (prerouting) round
/// robin to `backend.ip:backend.port`, and masqueraded when they leave
/// through `ingress_ifname` (the sandbox's device on the ingress overlay),
/// so that the task answers the sandbox, which undoes both NATs. A port
/// without backends is refused (TCP reset / ICMP port unreachable).
pub fn ingress_sandbox_table(rules: &[PortRule], ingress_ifname: &str) -> String {
    let mut s = String::new();
    chain_head(&mut s, "prerouting", "nat", "prerouting", -100);
    for r in rules.iter().filter(|r| !r.backends.is_empty()) {
        let _ = writeln!(
            s,
            "    {} dport {} {}",
            r.proto,
            r.port,
            dnat_ports(&r.backends)
        );
    }
    s.push_str("  }\n");
    chain_head(&mut s, "postrouting", "nat", "postrouting", 100);
    let _ = writeln!(
        s,
        "    oifname {} ct status dnat masquerade",
        quote(ingress_ifname)
    );
    s.push_str("  }\n");
    let refused: Vec<&PortRule> = rules.iter().filter(|r| r.backends.is_empty()).collect();
    if !refused.is_empty() {
        chain_head(&mut s, "refuse", "filter", "prerouting", REJECT_PRIORITY);
        for r in refused {
            let _ = writeln!(s, "    {} dport {} {}", r.proto, r.port, reject(r.proto));
        }
        s.push_str("  }\n");
    }
    s
}

/// Body of the [`PUBLISH_TABLE`] for the daemon's namespace: a connection
/// to a published port on any local address, from outside (prerouting) or
/// from a process on this node (output), is DNATed to the rule's backends
/// (the ingress sandbox's gwbridge address for the routing mesh, a task's
/// gwbridge address for `mode=host`), `127.0.0.1` included (the egress
/// bridge's table masquerades those, see [`crate::GwBridge`]). A port
/// without backends is refused.
pub fn host_publish_table(rules: &[PortRule]) -> String {
    let local = "fib daddr type local";
    let mut s = String::new();
    for (chain, hook) in [("prerouting", "prerouting"), ("output", "output")] {
        chain_head(&mut s, chain, "nat", hook, -100);
        for r in rules.iter().filter(|r| !r.backends.is_empty()) {
            let _ = writeln!(
                s,
                "    {local} {} dport {} {}",
                r.proto,
                r.port,
                dnat_ports(&r.backends)
            );
        }
        s.push_str("  }\n");
    }
    let refused: Vec<&PortRule> = rules.iter().filter(|r| r.backends.is_empty()).collect();
    if !refused.is_empty() {
        for (chain, hook) in [("refuse_in", "prerouting"), ("refuse_out", "output")] {
            chain_head(&mut s, chain, "filter", hook, REJECT_PRIORITY);
            for r in &refused {
                let _ = writeln!(
                    s,
                    "    {local} {} dport {} {}",
                    r.proto,
                    r.port,
                    reject(r.proto)
                );
            }
            s.push_str("  }\n");
        }
    }
    s
}

/// An interface name as an nft string literal. Interface names never
/// contain quotes (the kernel refuses few characters, so strip them to
/// keep the script well-formed).
pub(crate) fn quote(name: &str) -> String {
    let clean: String = name.chars().filter(|c| *c != '"' && *c != '\\').collect();
    format!("\"{clean}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    #[test]
    fn replace_script_creates_deletes_recreates() {
        let s = replace_table_script("shoal-vip", "  chain c {\n  }\n");
        assert_eq!(
            s,
            "table ip shoal-vip {}\ndelete table ip shoal-vip\ntable ip shoal-vip {\n  chain c {\n  }\n}\n"
        );
    }

    #[test]
    fn table_names_are_checked() {
        for ok in ["shoal-vip", "t", "a_b-9"] {
            assert!(check_table(ok).is_ok(), "{ok}");
        }
        for bad in ["", "9a", "a b", "a;flush ruleset", "a}", "-x", "a\"b"] {
            assert!(check_table(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn vip_round_robin_and_single_backend() {
        let t = vip_table(&[
            VipRule {
                vip: ip("10.0.9.5"),
                backends: vec![ip("10.0.9.6"), ip("10.0.9.7"), ip("10.0.9.8")],
            },
            VipRule {
                vip: ip("10.0.9.10"),
                backends: vec![ip("10.0.9.11")],
            },
        ]);
        assert!(t.contains("type nat hook output priority -100;"), "{t}");
        assert!(
            t.contains(
                "ip daddr 10.0.9.5 dnat to numgen inc mod 3 map { 0 : 10.0.9.6, 1 : 10.0.9.7, 2 : 10.0.9.8 }\n"
            ),
            "{t}"
        );
        assert!(t.contains("ip daddr 10.0.9.10 dnat to 10.0.9.11\n"), "{t}");
        assert!(!t.contains("reject"), "{t}");
    }

    #[test]
    fn vip_without_backends_is_refused_not_dnated() {
        let t = vip_table(&[
            VipRule {
                vip: ip("10.0.9.5"),
                backends: vec![],
            },
            VipRule {
                vip: ip("10.0.9.6"),
                backends: vec![],
            },
        ]);
        assert!(!t.contains("dnat"), "{t}");
        assert!(t.contains("type filter hook output priority -150;"), "{t}");
        assert!(
            t.contains("ip daddr { 10.0.9.5, 10.0.9.6 } meta l4proto tcp reject with tcp reset"),
            "{t}"
        );
        assert!(
            t.contains("ip daddr { 10.0.9.5, 10.0.9.6 } reject with icmp type port-unreachable"),
            "{t}"
        );
    }

    #[test]
    fn empty_vip_table_is_a_valid_empty_chain() {
        assert_eq!(
            vip_table(&[]),
            "  chain output {\n    type nat hook output priority -100; policy accept;\n  }\n"
        );
    }

    #[test]
    fn ingress_sandbox_dnat_masquerade_and_refuse() {
        let t = ingress_sandbox_table(
            &[
                PortRule {
                    proto: Proto::Tcp,
                    port: 8080,
                    backends: vec![
                        Backend {
                            ip: ip("10.255.0.5"),
                            port: 80,
                        },
                        Backend {
                            ip: ip("10.255.0.6"),
                            port: 80,
                        },
                    ],
                },
                PortRule {
                    proto: Proto::Udp,
                    port: 53,
                    backends: vec![Backend {
                        ip: ip("10.255.0.7"),
                        port: 5353,
                    }],
                },
                PortRule {
                    proto: Proto::Tcp,
                    port: 9000,
                    backends: vec![],
                },
            ],
            "eth1",
        );
        assert!(t.contains("type nat hook prerouting priority -100;"), "{t}");
        assert!(
            t.contains("tcp dport 8080 dnat ip addr . port to numgen inc mod 2 map { 0 : 10.255.0.5 . 80, 1 : 10.255.0.6 . 80 }\n"),
            "{t}"
        );
        assert!(t.contains("udp dport 53 dnat to 10.255.0.7:5353\n"), "{t}");
        assert!(
            t.contains("oifname \"eth1\" ct status dnat masquerade"),
            "{t}"
        );
        assert!(
            t.contains("type filter hook prerouting priority -150;"),
            "{t}"
        );
        assert!(t.contains("tcp dport 9000 reject with tcp reset"), "{t}");
        assert!(!t.contains("dport 9000 dnat"), "{t}");
    }

    #[test]
    fn host_publish_prerouting_and_output_local_only() {
        let t = host_publish_table(&[
            PortRule {
                proto: Proto::Tcp,
                port: 8080,
                backends: vec![Backend {
                    ip: ip("172.18.0.2"),
                    port: 8080,
                }],
            },
            PortRule {
                proto: Proto::Udp,
                port: 7000,
                backends: vec![],
            },
        ]);
        let rule = "fib daddr type local tcp dport 8080 dnat to 172.18.0.2:8080\n";
        assert_eq!(t.matches(rule).count(), 2, "{t}");
        assert!(t.contains("type nat hook prerouting priority -100;"), "{t}");
        assert!(t.contains("type nat hook output priority -100;"), "{t}");
        assert_eq!(
            t.matches("udp dport 7000 reject with icmp type port-unreachable")
                .count(),
            2,
            "{t}"
        );
    }

    #[test]
    fn quoting_strips_quotes() {
        assert_eq!(quote("eth1"), "\"eth1\"");
        assert_eq!(quote("a\"b\\"), "\"ab\"");
    }
}
