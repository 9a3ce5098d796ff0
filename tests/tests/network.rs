//! Overlay network objects in the replicated store, through the CLI of
//! real daemons in the lab. Needs root and the built `shoal` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use shoal_lab::Lab;
use shoal_tests::cli;

fn inspect(lab: &Lab, host: usize, net: &str) -> Value {
    let v: Value =
        serde_json::from_str(&cli(lab, host, &["network", "inspect", net]).unwrap()).unwrap();
    v[0].clone()
}

#[test]
fn networks_are_allocated_in_the_store_and_agree_everywhere() {
    let lab = Lab::builder()
        .nodes(3)
        .daemon_config("heartbeat_ms = 500\n")
        .start()
        .unwrap();
    lab.init_swarm(2).unwrap();
    // swarm init made the ingress network, like docker.
    let ingress = inspect(&lab, 1, "ingress");
    assert_eq!(ingress["Ingress"], true);
    assert_eq!(ingress["IPAM"]["Config"][0]["Subnet"], "10.0.0.0/24");
    assert_eq!(
        ingress["Options"]["com.docker.network.driver.overlay.vxlanid_list"],
        "4096"
    );

    cli(
        &lab,
        1,
        &[
            "network",
            "create",
            "-d",
            "overlay",
            "--attachable",
            "--subnet",
            "10.0.9.0/24",
            "--opt",
            "com.docker.network.driver.mtu=1400",
            "my-net",
        ],
    )
    .unwrap();
    // Allocated from the pool: the next free /24.
    cli(&lab, 2, &["network", "create", "app"]).unwrap();
    let app = inspect(&lab, 1, "app");
    assert_eq!(app["IPAM"]["Config"][0]["Subnet"], "10.0.1.0/24");
    assert_eq!(app["IPAM"]["Config"][0]["Gateway"], "10.0.1.1");
    // Both managers hold the same documents.
    assert_eq!(inspect(&lab, 2, "my-net"), inspect(&lab, 1, "my-net"));
    assert_eq!(
        inspect(&lab, 2, "my-net")["Options"]["com.docker.network.driver.mtu"],
        "1400"
    );

    let e = cli(
        &lab,
        1,
        &["network", "create", "--subnet", "10.0.9.0/25", "dup"],
    )
    .unwrap_err();
    assert!(
        e.contains("dup") && e.contains("my-net") && e.contains("overlaps"),
        "{e}"
    );
    let e = cli(&lab, 1, &["network", "create", "--ingress", "ing2"]).unwrap_err();
    assert!(e.contains("only one ingress network"), "{e}");
    let e = cli(
        &lab,
        1,
        &[
            "network",
            "create",
            "--subnet",
            "10.5.0.0/24",
            "--gateway",
            "10.6.0.1",
            "g",
        ],
    )
    .unwrap_err();
    assert!(e.contains("gateway 10.6.0.1"), "{e}");
    let e = cli(&lab, 3, &["network", "create", "w"]).unwrap_err();
    assert!(e.contains("not a swarm manager"), "{e}");

    let ls = cli(&lab, 2, &["network", "ls"]).unwrap();
    for name in ["ingress", "my-net", "app"] {
        assert!(ls.contains(name), "{ls}");
    }
    cli(&lab, 1, &["network", "rm", "app"]).unwrap();
    assert!(!cli(&lab, 2, &["network", "ls"]).unwrap().contains("app"));
    let e = cli(&lab, 1, &["network", "inspect", "app"]).unwrap_err();
    assert!(e.contains("network app not found"), "{e}");
}
