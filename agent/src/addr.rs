//! Addresses given as `<ip|interface>[:port]`, resolved in the daemon's own
//! network namespace (an interface name means its first IPv4 address).

use std::net::{IpAddr, SocketAddr};

/// Resolve `spec` for the flag `flag` (used in messages) to an address with
/// a port (`default_port` when none is given).
pub fn resolve_socket(flag: &str, spec: &str, default_port: u16) -> Result<SocketAddr, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(format!("{flag}: empty address"));
    }
    if let Ok(sa) = spec.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = spec.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let (host, port) = match spec.rsplit_once(':') {
        Some((h, p)) => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("{flag} {spec}: invalid port {p:?}"))?;
            (h, port)
        }
        None => (spec, default_port),
    };
    let ip = match host.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => interface_ipv4(flag, host)?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// Resolve `spec` (an IP or an interface name, no port) to an IP.
pub fn resolve_ip(flag: &str, spec: &str) -> Result<IpAddr, String> {
    let spec = spec.trim();
    if let Ok(ip) = spec.parse::<IpAddr>() {
        return Ok(ip);
    }
    if spec.contains(':') {
        return Err(format!(
            "{flag} {spec}: expected an IP address or an interface name, without a port"
        ));
    }
    interface_ipv4(flag, spec)
}

/// The first IPv4 address of interface `name`.
fn interface_ipv4(flag: &str, name: &str) -> Result<IpAddr, String> {
    let addrs: Vec<_> = nix::ifaddrs::getifaddrs()
        .map_err(|e| format!("{flag} {name}: cannot list interfaces: {e}"))?
        .collect();
    let mut names: Vec<String> = addrs.iter().map(|a| a.interface_name.clone()).collect();
    names.dedup();
    if !names.iter().any(|n| n == name) {
        return Err(format!(
            "{flag} {name}: no such interface; interfaces here: {}",
            names.join(", ")
        ));
    }
    addrs
        .iter()
        .filter(|a| a.interface_name == name)
        .find_map(|a| {
            a.address
                .as_ref()
                .and_then(|s| s.as_sockaddr_in().map(|sin| IpAddr::V4(sin.ip())))
        })
        .ok_or_else(|| format!("{flag} {name}: interface has no IPv4 address"))
}

/// Reject addresses other nodes cannot reach.
pub fn check_advertisable(flag: &str, addr: IpAddr) -> Result<(), String> {
    if addr.is_unspecified() {
        return Err(format!(
            "{flag} {addr}: must be an address other nodes can reach, not 0.0.0.0"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_and_port_forms() {
        assert_eq!(
            resolve_socket("--a", "10.0.0.1", 2377).unwrap(),
            "10.0.0.1:2377".parse().unwrap()
        );
        assert_eq!(
            resolve_socket("--a", "10.0.0.1:4000", 2377).unwrap(),
            "10.0.0.1:4000".parse().unwrap()
        );
        assert_eq!(
            resolve_socket("--a", "lo:4000", 2377).unwrap(),
            "127.0.0.1:4000".parse().unwrap()
        );
        assert_eq!(
            resolve_ip("--d", "lo").unwrap(),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn unknown_interface_lists_the_real_ones() {
        let e = resolve_socket("--advertise-addr", "eth9x", 2377).unwrap_err();
        assert!(
            e.starts_with("--advertise-addr eth9x: no such interface; interfaces here:"),
            "{e}"
        );
        assert!(e.contains("lo"), "{e}");
        let e = resolve_socket("--advertise-addr", "10.0.0.1:http", 2377).unwrap_err();
        assert!(e.contains("invalid port"), "{e}");
        assert!(check_advertisable("--advertise-addr", "0.0.0.0".parse().unwrap()).is_err());
    }
}
