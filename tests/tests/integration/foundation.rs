//! The agent's programs load, attach to enrolled pods' cgroups only (never to a root), and
//! change only what processes inside an enrolled cgroup see.
use meshsteer_tests::{Testbed, cmd::Place, topology::probe_bin};

#[test]
fn capture_applies_only_inside_enrolled_cgroups() -> anyhow::Result<()> {
    let mut bed = Testbed::new()?;
    let enrolled = bed.enrolled_pod("a")?;
    let mut plain = bed.node.add_pod("b")?;
    plain.start_listener()?;

    // Enrolled pod, app identity: steered to its own proxy port, original destination kept.
    let v = enrolled.probe(1000, 1000, "10.200.0.1:80", &[])?;
    assert_eq!(v["listener"], 15001, "{v}");
    assert_eq!(v["orig_dst"], "10.200.0.1:80", "{v}");
    assert_eq!(v["getpeername"], "10.200.0.1:80", "{v}");

    // A pod that is not enrolled, under the same attach root: untouched.
    let v = plain.probe(1000, 1000, "10.200.0.1:80", &[])?;
    assert_eq!(v["listener"], 80, "{v}");
    assert_eq!(v["orig_dst"], serde_json::Value::Null, "{v}");

    // A process in the enrolled pod's network namespace but outside its cgroup: untouched.
    let stray = bed.node.cgroup_root.join("stray");
    std::fs::create_dir_all(&stray)?;
    let place = Place {
        netns: Some(&enrolled.netns),
        cgroup: Some(&stray),
        uid: 1000,
        gid: 1000,
    };
    let out = meshsteer_tests::cmd::run(&place, probe_bin(), &["connect", "10.200.0.1:80"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["listener"], 80, "{v}");
    std::fs::remove_dir(&stray)?;

    // The programs are attached to the enrolled pod's own cgroup, never to the root (of the
    // test's subtree, let alone the machine's): nothing runs for other sockets.
    let root_id = meshsteer::inspect::cgroup_id(&bed.node.cgroup_root)?;
    assert_eq!(
        meshsteer::inspect::cgroup_links(root_id)?,
        Vec::<u32>::new()
    );
    let pod_id = meshsteer::inspect::cgroup_id(&enrolled.cgroup)?;
    let links = meshsteer::inspect::Pins::new(&bed.agent.bpffs_dir)
        .cgroup_links()
        .join(pod_id.to_string());
    let mut n = 0;
    for e in std::fs::read_dir(links)? {
        let fd = meshsteer::inspect::obj_get(&e?.path())?;
        let info = meshsteer::inspect::cgroup_link_info(std::os::fd::AsFd::as_fd(&fd))?;
        assert_eq!(info.cgroup_id, pod_id);
        n += 1;
    }
    assert_eq!(n, 11, "one link per cgroup program");
    assert_eq!(meshsteer::inspect::cgroup_links(pod_id)?.len(), 11);
    let plain_id = meshsteer::inspect::cgroup_id(&plain.cgroup)?;
    assert_eq!(
        meshsteer::inspect::cgroup_links(plain_id)?,
        Vec::<u32>::new()
    );
    Ok(())
}

/// cgroup/getsockopt runs on every getsockopt() of an enrolled pod: everything but
/// SO_ORIGINAL_DST must come back exactly as the kernel answered it, including buffers larger
/// than a page (where the program must return optlen 0 to keep the kernel's answer).
#[test]
fn other_socket_options_pass_through_untouched() -> anyhow::Result<()> {
    let mut bed = Testbed::new()?;
    let enrolled = bed.node.add_pod("a")?;
    let plain = bed.node.add_pod("b")?;
    bed.agent
        .enrol(&enrolled, meshsteer::inspect::INJECTOR_DEFAULT_ARGS)?;
    // As the proxy (R11: not redirected), both connections take the same path.
    let ask = |pod: &meshsteer_tests::Pod| -> anyhow::Result<serde_json::Value> {
        let out = meshsteer_tests::cmd::run(
            &pod.place(1337, 1337),
            probe_bin(),
            &["sockopts", "10.200.0.1:80"],
        )?;
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let (with, without) = (ask(&enrolled)?, ask(&plain)?);
    assert_eq!(with, without);
    assert!(
        with["tcp_info_len"]
            .as_u64()
            .is_some_and(|l| l > 100 && l < 4096),
        "{with}"
    );
    Ok(())
}

/// `run --kubernetes` without a usable configuration (no node name, no kubeconfig and no
/// service account, an unreadable kubeconfig) exits with a clear error before it changes the
/// node: no pins, no bpffs directory, no link on the cgroup it would have attached to.
#[test]
fn kubernetes_without_configuration_changes_nothing() -> anyhow::Result<()> {
    let node = meshsteer_tests::Node::new()?;
    let work = std::env::temp_dir()
        .join("meshsteer-tests")
        .join(format!("{}-noconf", node.id));
    std::fs::create_dir_all(&work)?;
    let bpffs = std::path::Path::new("/sys/fs/bpf").join(format!("meshsteer-{}-noconf", node.id));
    // Pins an agent wrongly made would outlive the test: removed whatever happens.
    struct Unpin(std::path::PathBuf);
    impl Drop for Unpin {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _unpin = Unpin(bpffs.clone());
    let missing = work.join("no-such-kubeconfig");
    let root = node.cgroup_root.to_str().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (&[], "needs this node's name"),
        (&["--node-name", "n1"], "no in-cluster service account"),
        (
            &[
                "--node-name",
                "n1",
                "--kubeconfig",
                missing.to_str().unwrap(),
            ],
            "loading kubeconfig",
        ),
    ];
    for (args, expected) in cases {
        let out = std::process::Command::new(meshsteer_tests::agent::agent_bin())
            .args(["run", "--kubernetes", "--cgroup-root", root])
            .args(["--bpffs-dir", bpffs.to_str().unwrap()])
            .args(["--status-file", work.join("status.json").to_str().unwrap()])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(args)
            // Nothing from the environment may stand in for what the case leaves out.
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env_remove("NODE_NAME")
            .env_remove("MESHSTEER_NODE_NAME")
            .env_remove("MESHSTEER_KUBECONFIG")
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: exited 0: {stderr}");
        assert!(!bpffs.exists(), "{args:?}: {} was created", bpffs.display());
        let root_id = meshsteer::inspect::cgroup_id(&node.cgroup_root)?;
        assert_eq!(
            meshsteer::inspect::cgroup_links(root_id)?,
            Vec::<u32>::new(),
            "{args:?}: links attached to the cgroup root"
        );
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(
            stderr.contains("nothing was attached"),
            "{args:?}: {stderr}"
        );
    }
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

/// A node leaves no cgroup behind: whatever its tests made below its root (a sandbox's
/// `kubepods.slice/…/pod…/app`, parents no pod owns) and however late their last process exits.
#[test]
fn a_node_leaves_no_cgroup_behind() -> anyhow::Result<()> {
    let node = meshsteer_tests::Node::new()?;
    let root = node.cgroup_root.clone();
    let app =
        root.join("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podx.slice/app");
    std::fs::create_dir_all(&app)?;
    // Still running in the pod's cgroup when the node goes (reparented, so nobody waits).
    let place = Place {
        cgroup: Some(&app),
        ..Default::default()
    };
    meshsteer_tests::cmd::run(&place, "sh", &["-c", "sleep 0.3 >/dev/null 2>&1 &"])?;
    drop(node);
    assert!(!root.exists(), "{} left behind", root.display());
    Ok(())
}

/// Zero tax outside meshed pods: the sockets of a pod that is not enrolled run no meshsteer
/// program at all (the kernel's run counts of every program behind a pinned link stand still
/// while it connects), and those of an enrolled pod do.
#[test]
fn sockets_outside_enrolled_pods_run_no_program() -> anyhow::Result<()> {
    use meshsteer::inspect::{Pins, enable_run_stats, pinned_program_runs};

    let mut bed = Testbed::new()?;
    let enrolled = bed.enrolled_pod("a")?;
    let plain = bed.node.add_pod("b")?;
    let pins = Pins::new(&bed.agent.bpffs_dir);
    let _stats = enable_run_stats()?;
    let runs = || pinned_program_runs(&pins).map(|r| r.run_cnt);

    let before = runs()?;
    for _ in 0..20 {
        let v = plain.probe(1000, 1000, "10.200.0.1:80", &[])?;
        assert_eq!(v["listener"], 80, "{v}");
    }
    assert_eq!(
        runs()?,
        before,
        "programs ran for a pod that is not enrolled"
    );

    let v = enrolled.probe(1000, 1000, "10.200.0.1:80", &[])?;
    assert_eq!(v["listener"], 15001, "{v}");
    assert!(runs()? > before, "no program ran for the enrolled pod");
    Ok(())
}
