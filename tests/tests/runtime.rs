//! `shoal-runtime` against a real containerd and a real registry (a lab
//! host's): pull, run in a given network namespace, exit status, output in
//! the log file, exec, remove, and a pull of an unknown tag failing with
//! the registry's reason. Needs root, containerd, runc, docker-registry,
//! skopeo and busybox-static.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use shoal_lab::{image, Lab};
use shoal_runtime::{ContainerSpec, ExecIo, Runtime, RuntimeError};
use shoal_tests::{in_netns, start};

fn spec(
    id: &str,
    image: shoal_runtime::ImageInfo,
    dir: &std::path::Path,
    ns: &str,
    cmd: &[&str],
) -> ContainerSpec {
    let f = |n: &str| {
        let p = dir.join(n);
        std::fs::write(&p, "").unwrap();
        p
    };
    ContainerSpec {
        id: id.into(),
        image,
        entrypoint: None,
        command: cmd.iter().map(|s| s.to_string()).collect(),
        env: vec!["GREETING=hello".into()],
        user: None,
        workdir: None,
        hostname: id.into(),
        netns: PathBuf::from(format!("/run/netns/{ns}")),
        resolv_conf: f("resolv.conf"),
        hosts: f("hosts"),
        hostname_file: f("hostname"),
        mounts: vec![],
        read_only: false,
        cap_add: vec![],
        cap_drop: vec![],
        memory_limit: None,
        nano_cpus: None,
        log: dir.join(format!("{id}.log")),
        logger: shoal_lab::find_shoal_bin().expect("the shoal binary"),
        seccomp: None,
    }
}

/// Runs `argv` in container `id`, its output appended to `out`: its exit
/// status.
async fn exec(rt: &Runtime, id: &str, argv: &[&str], out: &std::path::Path) -> i32 {
    let uri = shoal_runtime::file_uri(out);
    let io = ExecIo {
        stdout: uri.clone(),
        stderr: uri,
        ..Default::default()
    };
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let e = rt.exec_start(id, &argv, &io).await.unwrap();
    rt.exec_wait(id, &e).await.unwrap()
}

#[test]
fn pull_run_wait_exec_and_remove_through_containerd() {
    let lab = start(Lab::builder().nodes(1).containerd(true));
    let reg = lab.start_registry(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = image::build_echo_image(&dir.path().join("echo")).unwrap();
    let reference = format!("{reg}/shoal/echo:1");
    image::push(&lab, 1, &layout, &reference).unwrap();
    let socket = lab.containerd_socket(1).unwrap();
    let ns = lab.host(1).unwrap().ns;
    let id = format!("{}-rt1", lab.prefix());
    let d = dir.path().to_path_buf();
    in_netns(&ns.clone(), async move {
        let rt = Runtime::connect(
            &socket,
            shoal_runtime::Registries {
                insecure: vec![reg.clone()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
        // Unknown tag: the registry's reason, nothing recorded.
        let e = rt
            .pull(&format!("{reg}/shoal/echo:nope"))
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("manifest unknown") || e.to_string().contains("not found"),
            "{e}"
        );
        assert!(matches!(
            rt.image(&format!("{reg}/shoal/echo:nope")).await,
            Err(RuntimeError::NoSuchImage(_))
        ));

        let img = rt.pull(&reference).await.unwrap();
        assert_eq!(img.config.entrypoint, vec!["/bin/echo-server".to_string()]);
        // A second pull finds everything there.
        assert_eq!(rt.pull(&reference).await.unwrap(), img);

        // Archives for hosts without a registry: an OCI layout tar and a
        // `docker save` tar, both written by skopeo, both import and run.
        for (transport, name) in [
            ("oci-archive", "shoal/echo:oci"),
            ("docker-archive", "shoal/echo:saved"),
        ] {
            let file = d.join(format!("{transport}.tar"));
            image::save(&layout, transport, &file, name).unwrap();
            let got = rt.import(&file, None).await.unwrap();
            assert_eq!(got.name, format!("docker.io/{name}"));
            assert_eq!(got.config, img.config, "{transport}");
            assert_eq!(got.chain_id, img.chain_id, "{transport}: the same layers");
            // A name given on the command line wins.
            let renamed = rt.import(&file, Some("local/other:2")).await.unwrap();
            assert_eq!(renamed.name, "docker.io/local/other:2");
        }
        let junk = d.join("junk.tar");
        std::fs::write(&junk, b"no tar here").unwrap();
        let e = rt.import(&junk, None).await.unwrap_err().to_string();
        assert!(e.contains("junk.tar") && e.contains("tar"), "{e}");
        let img = rt.image("shoal/echo:saved").await.unwrap();

        let c = spec(
            &id,
            img.clone(),
            &d,
            &ns,
            &["sh", "-c", "echo $GREETING from $(hostname); exit 3"],
        );
        let pid = rt.run(&c).await.unwrap();
        assert!(pid > 0);
        let code = tokio::time::timeout(Duration::from_secs(30), rt.wait(&id))
            .await
            .expect("wait timed out")
            .unwrap();
        assert_eq!(code, 3);
        // The shim's logging process (Shoal's binary) wrote the line as a
        // json-file record.
        let log = shoal_runtime::logfile::read(&c.log, None, None);
        assert_eq!(log.len(), 1, "{log:?}");
        assert_eq!(log[0].line, format!("hello from {id}"));
        assert_eq!(log[0].stream, "stdout");
        rt.remove(&id).await.unwrap();
        assert!(rt.containers().await.unwrap().iter().all(|x| x.id != id));

        // exec into a running one.
        let c = spec(&id, img, &d, &ns, &[]);
        let pid = rt.run(&c).await.unwrap();
        let rt = std::sync::Arc::new(rt);
        let waiter = {
            let (rt, id) = (rt.clone(), id.clone());
            tokio::spawn(async move { rt.wait(&id).await })
        };
        let out = d.join("exec.out");
        let code = exec(&rt, &id, &["sh", "-c", "id -u; exit 7"], &out).await;
        assert_eq!(code, 7);
        assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "0");
        // Failed execs leave the init and its waiter alone.
        for _ in 0..3 {
            let code = exec(&rt, &id, &["ls", "/nope"], &out).await;
            assert_ne!(code, 0);
        }
        // PID 1 of its namespace ignores SIGTERM without a handler (as
        // under docker); SIGKILL from outside ends it, and the waiter
        // started before the execs sees 137.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let code = tokio::time::timeout(Duration::from_secs(30), waiter)
            .await
            .expect("wait timed out")
            .unwrap()
            .unwrap();
        assert_eq!(code, 137);
        rt.remove(&id).await.unwrap();
        assert!(rt.containers().await.unwrap().is_empty());
    });
}
