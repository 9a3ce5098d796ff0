//! Decide, then do: the `ip -batch` scripts and nftables rulesets a lab
//! needs, as plain text built from names and addresses. `lab/` runs them.

use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::names;

/// Commands for `ip -n <underlay> -batch -`: bridge ul0 (and dp0), and per
/// host a veth whose lab end `h<i>` (`d<i>`) joins the bridge and whose
/// other end is created directly inside the host namespace as `eth0`
/// (`eth1`). Nothing is ever named in the root namespace.
pub(crate) fn underlay_batch(prefix: &str, nodes: usize, data_path: bool) -> String {
    let mut s = String::from("link set lo up\nlink add ul0 type bridge\nlink set ul0 up\n");
    if data_path {
        s.push_str("link add dp0 type bridge\nlink set dp0 up\n");
    }
    for i in 1..=nodes {
        let ns = names::host_ns(prefix, i);
        let _ = writeln!(s, "link add h{i} type veth peer name eth0 netns {ns}");
        let _ = writeln!(s, "link set h{i} master ul0 up");
        if data_path {
            let _ = writeln!(s, "link add d{i} type veth peer name eth1 netns {ns}");
            let _ = writeln!(s, "link set d{i} master dp0 up");
        }
    }
    s
}

/// Commands for `ip -n <host ns> -batch -`: addresses and links up.
pub(crate) fn host_batch(i: usize, data_path: bool) -> String {
    let mut s = String::from("link set lo up\n");
    let _ = writeln!(s, "addr add {}/24 dev eth0", names::underlay_addr(i));
    s.push_str("link set eth0 up\n");
    if data_path {
        let _ = writeln!(s, "addr add {}/24 dev eth1", names::data_addr(i));
        s.push_str("link set eth1 up\n");
    }
    s
}

/// Name of the nftables table the lab owns inside each host namespace.
pub(crate) const NFT_TABLE: &str = "inet shoallab";

/// An `nft -f -` script that replaces the lab's table in one transaction:
/// drop everything to or from `blocked`, in input and output. With nothing
/// blocked the table is removed. Creating the table first makes the delete
/// succeed whether or not it existed.
pub(crate) fn nft_ruleset(blocked: &[Ipv4Addr]) -> String {
    let mut s = format!("table {NFT_TABLE}\ndelete table {NFT_TABLE}\n");
    if blocked.is_empty() {
        return s;
    }
    let set = blocked
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let _ = write!(
        s,
        "table {NFT_TABLE} {{\n\
         \tchain input {{\n\t\ttype filter hook input priority -10; policy accept;\n\t\tip saddr {{ {set} }} drop\n\t}}\n\
         \tchain output {{\n\t\ttype filter hook output priority -10; policy accept;\n\t\tip daddr {{ {set} }} drop\n\t}}\n\
         }}\n"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underlay_names_nothing_outside_the_lab_namespaces() {
        let s = underlay_batch("slabcdef", 2, true);
        assert!(s.contains("link add h2 type veth peer name eth0 netns slabcdef-h2\n"));
        assert!(s.contains("link add d1 type veth peer name eth1 netns slabcdef-h1\n"));
        assert!(s.contains("link set d2 master dp0 up\n"));
        let s = underlay_batch("slabcdef", 1, false);
        assert!(!s.contains("dp0"));
    }

    #[test]
    fn host_addresses() {
        let s = host_batch(3, true);
        assert!(s.contains("addr add 10.77.0.3/24 dev eth0\n"));
        assert!(s.contains("addr add 10.77.1.3/24 dev eth1\n"));
        assert!(!host_batch(3, false).contains("eth1"));
    }

    #[test]
    fn nft_rules_drop_both_directions_and_heal_removes_the_table() {
        let s = nft_ruleset(&[Ipv4Addr::new(10, 77, 0, 5), Ipv4Addr::new(10, 77, 1, 5)]);
        assert!(s.contains("ip saddr { 10.77.0.5, 10.77.1.5 } drop"));
        assert!(s.contains("ip daddr { 10.77.0.5, 10.77.1.5 } drop"));
        assert_eq!(
            nft_ruleset(&[]),
            "table inet shoallab\ndelete table inet shoallab\n"
        );
    }
}
