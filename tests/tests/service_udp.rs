//! A UDP service through the routing mesh: `-p 5353:53/udp` is answered
//! on every host (also one without a task), by more than one task.
//! Needs root, iproute2, nftables and the built binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use shoal_lab::Lab;
use shoal_tests::{cli, in_netns, wait_until};

const CONFIG: &str = "heartbeat_ms = 500\ngossip_profile = \"fast\"\nmetrics_addr = \"\"\n";

/// One datagram to `to` from `ns`; the answer, if any within 500 ms.
fn ask(ns: &str, to: SocketAddr) -> Option<String> {
    in_netns(ns, async move {
        let s = UdpSocket::bind("0.0.0.0:0").ok()?;
        s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
        s.send_to(b"hi", to).ok()?;
        let mut buf = [0u8; 512];
        let (n, _) = s.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    })
}

#[test]
fn udp_ports_are_published_through_the_mesh_on_every_host() {
    let lab = Lab::builder()
        .nodes(3)
        .daemon_config(CONFIG)
        .start()
        .unwrap();
    lab.form_swarm(3, 1).unwrap();
    cli(&lab, 1, &["network", "create", "-d", "overlay", "app"]).unwrap();
    let echo = shoal_tests::shoal_lab_bin().display().to_string();
    cli(
        &lab,
        1,
        &[
            "service",
            "create",
            "--runtime",
            "host",
            "--name",
            "dns",
            "--replicas",
            "2",
            "--network",
            "app",
            "-p",
            "5353:53/udp",
            "--",
            &echo,
            "udp-echo",
            "--port",
            "53",
        ],
    )
    .unwrap();
    let client = lab.host(3).unwrap().ns;
    for h in 1..=3 {
        let to = SocketAddr::new(lab.host(h).unwrap().addr.into(), 5353);
        let (_, took) = wait_until(
            "UDP answer through the mesh",
            Duration::from_secs(40),
            || ask(&client, to).filter(|a| a.starts_with("dns.")),
        );
        eprintln!("h{h}:5353/udp answers after {took:?}");
    }
    // New source ports are new flows: the mesh spreads them over the tasks.
    let to = SocketAddr::new(lab.host(2).unwrap().addr.into(), 5353);
    let names: BTreeSet<String> = (0..12)
        .filter_map(|_| ask(&client, to))
        .filter_map(|a| a.split_whitespace().next().map(str::to_string))
        .collect();
    assert!(names.len() > 1, "balanced over both tasks: {names:?}");
}
