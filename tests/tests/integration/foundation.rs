//! The agent's programs load, attach under a test cgroup subtree (never the machine's root),
//! and change only what processes inside an enrolled cgroup see.
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

    // Every link is attached to the test's own subtree, not to the machine's root cgroup.
    let root_id = meshsteer::inspect::cgroup_id(&bed.node.cgroup_root)?;
    let links = bed
        .agent
        .bpffs_dir
        .join(format!("v{}/links", meshsteer_common::maps::LAYOUT_VERSION));
    let mut n = 0;
    for e in std::fs::read_dir(links)? {
        let path = e?.path();
        if path.is_dir() {
            continue; // links/netns: per-pod sk_lookup links, attached to namespaces
        }
        let fd = meshsteer::inspect::obj_get(&path)?;
        let info = meshsteer::inspect::cgroup_link_info(std::os::fd::AsFd::as_fd(&fd))?;
        assert_eq!(info.cgroup_id, root_id);
        n += 1;
    }
    assert_eq!(n, 7, "one link per cgroup program");
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
