//! Pod specs drive capture live: adding, changing and deleting a spec file applies at once;
//! an option meshsteer does not implement is a clear error and never half-enrols a pod.
use meshsteer::inspect::{Pins, PodMaps};
use meshsteer_tests::{Testbed, World, agent::agent_bin};

const WORLD: &str = "10.200.0.1:80";

/// `meshsteer explain --json` of an app connection to [`WORLD`].
fn explain(agent: &meshsteer_tests::Agent, pod: &str) -> anyhow::Result<serde_json::Value> {
    let out = agent.cli(&[
        "explain", "--json", "--pod", pod, "--uid", "1000", "--dst", WORLD,
    ])?;
    Ok(serde_json::from_slice(&out)?)
}

#[test]
fn specs_apply_live_and_errors_are_clear() -> anyhow::Result<()> {
    let mut bed = Testbed::new()?;
    let mut pod = bed.node.add_pod("a")?;
    pod.start_listener()?;
    let name = "test/a";
    let agent = &bed.agent;

    agent.write_spec("a", &pod.spec("-i '*'"))?;
    let took = pod.lands_on(WORLD, 15001)?;
    eprintln!("enrolment took effect after {took:?}");

    // A change (exclude the destination) applies without restarting anything.
    agent.write_spec("a", &pod.spec("-i '*' -x 10.200.0.0/16"))?;
    let took = pod.lands_on(WORLD, 80)?;
    eprintln!("update took effect after {took:?}");
    agent.wait_state(name, |s| s == "ready")?;

    // An unsupported option: a clear error naming it; the last good capture stays in effect
    // (dropping it would let traffic escape the proxy).
    agent.write_spec("a", &pod.spec("-i '*' -k eth1"))?;
    agent.wait_state(name, |s| s.contains("unsupported istio-iptables option -k"))?;
    assert_eq!(pod.probe(1000, 1000, WORLD, &[])?["listener"], 80);
    // `explain` answers from what the agent has in effect, not from the refused file.
    let e = explain(agent, name)?;
    assert_eq!(e["from"], "agent", "{e}");
    assert_eq!(e["lands"], WORLD, "{e}");

    // A new pod with a bad spec is enrolled refused, fail closed (as a pod whose istio-init
    // failed never runs): its connections fail rather than go uncaptured, and nothing of its
    // spec is in the maps.
    let mut other = bed.node.add_pod("b")?;
    other.start_listener()?;
    agent.write_spec("b", &other.spec("-m TPROXY -i '*'"))?;
    agent.wait_state("test/b", |s| s.contains("TPROXY"))?;
    let v = other.probe(1000, 1000, WORLD, &[])?;
    assert_eq!(v["error"], "permission denied", "{v}");
    let maps = PodMaps::from_pins(&Pins::new(&agent.bpffs_dir))?;
    assert_eq!(captured(&maps), 1, "only pod a is captured");
    assert_eq!(maps.enrolled().len(), 2, "pod b is enrolled refused");

    // Fixing the spec enrols it.
    agent.write_spec("b", &other.spec("-i '*'"))?;
    agent.wait_state("test/b", |s| s == "ready")?;
    assert_eq!(other.probe(1000, 1000, WORLD, &[])?["listener"], 15001);
    let e = explain(agent, "test/b")?;
    assert_eq!(e["from"], "agent", "{e}");
    assert_eq!(e["lands"], "127.0.0.1:15001", "{e}");

    // Deleting a spec stops capture and frees the pod's map entries.
    agent.remove_spec("a")?;
    agent.remove_spec("b")?;
    other.lands_on(WORLD, 80)?;
    agent.wait_until(
        std::time::Duration::from_secs(5),
        "pods to leave the status",
        |a| a.state(name).is_none() && a.state("test/b").is_none(),
    )?;
    let maps = PodMaps::from_pins(&Pins::new(&agent.bpffs_dir))?;
    assert!(maps.enrolled().is_empty());
    Ok(())
}

#[test]
fn a_cgroup_outside_the_attach_root_is_refused() -> anyhow::Result<()> {
    let bed = Testbed::start(World::Absent, &[])?;
    let agent = &bed.agent;
    let spec = "name: test/outside\ncgroup: /sys/fs/cgroup\nargs: \"-i '*'\"\n";
    agent.write_spec("outside", spec)?;
    agent.wait_state("test/outside", |s| s.contains("outside the cgroup root"))?;
    Ok(())
}

/// One agent per pin directory: a second `run` on the same pins, or an `uninstall` while an
/// agent is live, fails with a clear error and leaves the live agent's pods captured (before
/// the lock, the second agent reconciled the first one's pods away as unknown to it).
#[test]
fn a_second_agent_or_an_uninstall_cannot_take_a_live_agents_pins() -> anyhow::Result<()> {
    let mut bed = Testbed::new()?;
    let pod = bed.enrolled_pod("a")?;
    let agent = &bed.agent;
    let other_pods = agent.pods_dir.with_file_name("other-pods");
    std::fs::create_dir_all(&other_pods)?;
    let bpffs = agent.bpffs_dir.to_string_lossy().into_owned();
    let status = agent.status_file.with_file_name("other-status.json");
    let cgroup_root = bed.node.cgroup_root.to_string_lossy().into_owned();
    let mut second = std::process::Command::new(agent_bin());
    second
        .args(["run", "--cgroup-root", &cgroup_root, "--bpffs-dir", &bpffs])
        .args(["--pods-dir", &other_pods.to_string_lossy()])
        .args(["--status-file", &status.to_string_lossy()])
        .args(["--metrics-addr", "127.0.0.1:0"]);
    // Killed if still running after the lock's wait and then some: it must have given up.
    let second = output_within(&mut second, std::time::Duration::from_secs(30))?;
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second agent ran: {stderr}");
    assert!(stderr.contains("one agent per pin directory"), "{stderr}");

    let uninstall = std::process::Command::new(agent_bin())
        .args(["uninstall", "--bpffs-dir", &bpffs])
        .output()?;
    let stderr = String::from_utf8_lossy(&uninstall.stderr);
    assert!(
        !uninstall.status.success(),
        "uninstall ran under a live agent: {stderr}"
    );
    assert!(stderr.contains("one agent per pin directory"), "{stderr}");

    // The live agent's pod is still captured and in the maps.
    agent.wait_state("test/a", |s| s == "ready")?;
    assert_eq!(pod.probe(1000, 1000, WORLD, &[])?["listener"], 15001);
    let maps = PodMaps::from_pins(&Pins::new(&agent.bpffs_dir))?;
    assert_eq!(maps.enrolled().len(), 1);

    // Once the agent is gone, uninstall works (the kernel dropped its lock with it).
    bed.agent.stop(libc::SIGKILL);
    bed.agent.cli(&["uninstall"])?;
    assert!(!Pins::new(&bed.agent.bpffs_dir).root.exists());
    Ok(())
}

/// Runs `cmd` to completion, or kills it after `limit` (its output then says it was killed).
fn output_within(
    cmd: &mut std::process::Command,
    limit: std::time::Duration,
) -> anyhow::Result<std::process::Output> {
    use std::process::Stdio;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let start = std::time::Instant::now();
    while child.try_wait()?.is_none() {
        if start.elapsed() > limit {
            child.kill()?;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(child.wait_with_output()?)
}

/// Operator input is checked before anything is applied: each bad spec gets a clear error in
/// `status` and writes nothing, while the pod already enrolled keeps its capture. (cgroupfs
/// has no symlinks; the symlink check is a unit test of `host::cgroup`.)
#[test]
fn bad_specs_are_refused_with_clear_errors_and_nothing_applied() -> anyhow::Result<()> {
    let mut bed = Testbed::new()?;
    let good = bed.enrolled_pod("good")?;
    let root = bed.node.cgroup_root.clone();
    // 16 levels below the hierarchy's root: deeper than the datapath's ancestor walk.
    let mut deep = root.clone();
    // Removed on every exit path, deepest first (before `good`'s own cgroup goes).
    let mut made = RemovedDirs(Vec::new());
    while deep.components().count() - cgroup2_depth_base(&root) < 16 {
        deep.push("d");
        made.0.push(deep.clone());
    }
    std::fs::create_dir_all(&deep)?;
    let dotdot = root
        .join("x")
        .join("..")
        .join(good.cgroup.file_name().unwrap_or_default());
    let inner = good.cgroup.join("inner");
    std::fs::create_dir_all(&inner)?;
    made.0.push(inner.clone());
    let spec = |name: &str, cgroup: &std::path::Path, netns: Option<&str>| {
        let netns = netns.map(|n| format!("netns: {n}\n")).unwrap_or_default();
        format!(
            "name: test/{name}\ncgroup: {}\n{netns}args: \"-i '*' -b ''\"\n",
            cgroup.display()
        )
    };
    let mut cases: Vec<(&str, String, &str)> = vec![
        ("deep", spec("deep", &deep, None), "levels deep"),
        ("dotdot", spec("dotdot", &dotdot, None), "without `..`"),
        ("root", spec("root", &root, None), "is the cgroup root"),
        ("inner", spec("inner", &inner, None), "are nested"),
        ("tmp", spec("tmp", &root.join("nope"), None), "No such file"),
        (
            "hostns",
            format!(
                "name: test/hostns\ncgroup: {}\nnetns: /proc/1/ns/net\nips: [10.88.0.99]\n",
                deep.parent().unwrap_or(&deep).display()
            ),
            "the node's own network namespace",
        ),
    ];
    let agent = &bed.agent;
    for (_, text, _) in &mut cases {
        // The agent's own namespace is the node's (it runs in the host network namespace).
        *text = text.replace(
            "/proc/1/ns/net",
            &format!("/proc/{}/ns/net", agent.pid().unwrap_or(1)),
        );
    }
    for (stem, text, _) in &cases {
        agent.write_spec(stem, text)?;
    }
    for (stem, _, expected) in &cases {
        agent.wait_state(&format!("test/{stem}"), |s| {
            s.starts_with("error: ") && s.contains(expected)
        })?;
    }
    let maps = PodMaps::from_pins(&Pins::new(&agent.bpffs_dir))?;
    assert_eq!(captured(&maps), 1, "only the good pod is captured");
    // Of the bad specs only `hostns` names a cgroup a pod could be enrolled under: it is
    // enrolled refused (fail closed); the others name none.
    assert_eq!(
        maps.enrolled().len(),
        2,
        "the hostns pod is enrolled refused"
    );
    assert_eq!(good.probe(1000, 1000, WORLD, &[])?["listener"], 15001);
    for (stem, _, _) in &cases {
        agent.remove_spec(stem)?;
    }
    drop(made);
    assert!(
        !inner.exists() && !root.join("d").exists(),
        "cgroups left behind"
    );
    Ok(())
}

/// Directories a test made, removed when it ends however it ends (last made first).
struct RemovedDirs(Vec<std::path::PathBuf>);

impl Drop for RemovedDirs {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Path components of the cgroup2 mount point above `dir` (where cgroup depth 0 is).
fn cgroup2_depth_base(dir: &std::path::Path) -> usize {
    let mount = meshsteer::inspect::cgroup2_mount().expect("cgroup2 mount");
    assert!(dir.starts_with(&mount));
    mount.components().count()
}

/// An agent without CAP_NET_ADMIN (nor CAP_SYS_ADMIN, which would stand in for it) is told so:
/// the kernel's EPERM on a feature probe once read as "the kernel lacks sockops programs
/// (needs Linux 4.13)", on a 6.x kernel. It exits before attaching anything.
#[test]
fn an_agent_without_a_capability_is_told_so_not_that_the_kernel_is_too_old() -> anyhow::Result<()> {
    let _area = meshsteer_tests::area::enter();
    let dir = std::env::temp_dir().join(format!("ms-nocap-{}", std::process::id()));
    let out = std::process::Command::new("setpriv")
        .args([
            "--bounding-set=-net_admin,-sys_admin",
            "--inh-caps=-net_admin,-sys_admin",
            "--",
        ])
        .arg(agent_bin())
        .args(["run", "--metrics-addr", "off", "--bpffs-dir"])
        .arg(dir.join("bpf"))
        .arg("--pods-dir")
        .arg(dir.join("pods"))
        .output()?;
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ran without CAP_NET_ADMIN: {stderr}");
    assert!(!stderr.contains("the kernel lacks"), "{stderr}");
    assert!(
        stderr.contains("could not probe the kernel") && stderr.contains("CAP_NET_ADMIN"),
        "{stderr}"
    );
    Ok(())
}

/// `uninstall --live` under a live agent: the agent itself detaches everything and removes its
/// pins, and then idles, still answering its probes (so a kubelet would not restart it into
/// capturing again) and capturing nothing, until it is stopped.
#[test]
fn uninstall_live_has_the_agent_remove_everything_and_idle() -> anyhow::Result<()> {
    let mut bed = Testbed::new()?;
    let pod = bed.enrolled_pod("a")?;
    assert_eq!(pod.probe(1000, 1000, WORLD, &[])?["listener"], 15001);
    let pod_id = meshsteer::inspect::cgroup_id(&pod.cgroup)?;
    assert!(!meshsteer::inspect::cgroup_links(pod_id)?.is_empty());

    bed.agent.cli(&["uninstall", "--live"])?;
    assert!(!Pins::new(&bed.agent.bpffs_dir).root.exists());
    assert_eq!(meshsteer::inspect::cgroup_links(pod_id)?, Vec::<u32>::new());
    assert_eq!(pod.probe(1000, 1000, WORLD, &[])?["listener"], 80);
    // Idle, alive and healthy; nothing comes back meanwhile.
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(bed.agent.http_get("/healthz")?.0, 200);
    assert!(!Pins::new(&bed.agent.bpffs_dir).root.exists());
    let status = bed.agent.stop(libc::SIGTERM);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    Ok(())
}

/// Pods in the maps with capture (not enrolled refused).
fn captured(maps: &PodMaps) -> usize {
    maps.enrolled()
        .iter()
        .filter(|(_, c)| c.flags & meshsteer_common::maps::pod_flags::REFUSED == 0)
        .count()
}

/// With `--redirect-dns` and no `nameservers` in its spec, a pod's nameservers are those of
/// its own /etc/resolv.conf, read through its process: here one that runs in a mount
/// namespace of its own, where a test file is bind-mounted over /etc/resolv.conf, so the
/// host's file (what the agent would read without going through the process) differs.
#[test]
fn a_pods_nameservers_come_from_its_own_resolv_conf() -> anyhow::Result<()> {
    let mut bed = Testbed::start(World::Absent, &[])?;
    let mut pod = bed.node.add_pod("dns")?;
    // In the agent's work directory, which goes with the agent on every path.
    let file = bed.agent.pods_dir.with_file_name("dns-test-resolv.conf");
    std::fs::write(
        &file,
        "search test.svc.cluster.local\nnameserver 10.55.0.53\nnameserver fd00:55::53\n",
    )?;
    let script = format!(
        "mount --bind {} /etc/resolv.conf && echo ready && exec sleep 600",
        file.display()
    );
    // As root in the pod (a mount needs it); `unshare` makes its mounts private.
    let app = meshsteer_tests::cmd::Proc::spawn_ready(
        &pod.place(0, 0),
        "unshare",
        &["--mount", "--propagation", "private", "sh", "-c", &script],
    )?;
    pod.keep(app);
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert!(
        !host.contains("10.55.0.53"),
        "the host's file is not the test's"
    );

    let agent = &bed.agent;
    agent.write_spec("dns", &pod.spec("--redirect-dns"))?;
    agent.wait_pod("test/dns", |p| {
        p["state"] == "ready" && p["nameserversFrom"] == "pod"
    })?;
    let p = agent.pod_status("test/dns").expect("listed");
    assert_eq!(
        p["nameservers"],
        serde_json::json!(["10.55.0.53", "fd00:55::53"]),
        "{p}"
    );
    let text = String::from_utf8(agent.cli(&["status"])?)?;
    assert!(
        text.contains("nameservers 10.55.0.53 fd00:55::53 (from the pod's resolv.conf)"),
        "{text}"
    );
    Ok(())
}
