//! The chained CNI plugin (`meshsteer-cni`) with real CNI plugins (Debian's bridge and
//! host-local) run as a runtime runs them, pods from the test API server, and the agent in
//! Kubernetes mode serving the plugin's socket: capture is in effect when ADD returns, before
//! any process of the pod could run; ADD fails closed; DEL is idempotent; CHECK looks at the
//! datapath itself.
use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use meshsteer::inspect::{Pins, PodMaps};
use meshsteer_tests::{
    agent::{agent_bin, path_str},
    cmd::{self, Place, Proc},
    cni::{self as cni_driver, Chain, PodId, Sandbox},
    cni_scene::{Meshed, Scene, captured, first_connect, median_p99},
    kube::besteffort_cgroup,
    topology::{lo_ipv6, probe_bin, start_tagged_listener_on},
};
use serde_json::{Value, json};

const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";

/// Item 1: sandbox after sandbox, a process started the instant ADD returns connects out, and
/// every connection lands on the proxy with its original destination. ADD's latency (the
/// plugin's own, the rest of the chain left out) is printed.
#[test]
fn every_sandbox_is_captured_from_its_first_connect() -> Result<()> {
    const SANDBOXES: usize = 200;
    let s = Scene::new()?;
    let chain = Chain::new(&s.node, &s.socket, 30)?;
    let took = s.sandboxes_in_a_row(&chain, SANDBOXES)?;
    let (median, p99) = median_p99(&took);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    eprintln!(
        "meshsteer-cni ADD over {SANDBOXES} sandboxes: median {:.1} ms, p99 {:.1} ms",
        ms(median),
        ms(p99)
    );
    s.agent.wait_until(
        Duration::from_secs(5),
        "every sandbox's enrolment to go",
        |_| s.agent.enrolled_pods().is_ok_and(|n| n == 0),
    )?;
    Ok(())
}

/// On a hybrid host (cgroup v1 beside v2, as the test node is) the kubelet makes a pod's
/// cgroup in v1 only, and runc makes the cgroup2 one when the sandbox's first process starts,
/// after ADD returned. ADD makes it, so that process is captured from its first connect.
#[test]
fn a_sandbox_without_its_cgroup2_directory_is_captured_from_its_first_process() -> Result<()> {
    let s = Scene::new()?;
    let v1 = cni_driver::CgroupV1::mount(&s.node)?;
    let chain = Chain::new(&s.node, &s.socket, 30)?;
    let name = "hybrid";
    let uid = s
        .k8s
        .create_pod(&s.ns, name, &s.node.id, true, &BTreeMap::new())?;
    // The cgroupfs driver's layout (systemd makes its slices in cgroup2 too).
    let rel = PathBuf::from(format!("kubepods/besteffort/pod{uid}"));
    v1.make(&rel)?;
    let sandbox = Sandbox::without_cgroup2(&s.node, name, &rel)?;
    let id = PodId {
        namespace: s.ns.clone(),
        name: name.into(),
        uid,
    };
    chain.add(&sandbox, &id)?;
    ensure!(
        sandbox.cgroup.is_dir(),
        "ADD returned without the pod's cgroup2 directory {}",
        sandbox.cgroup.display()
    );
    let status = s
        .agent
        .pod_status(&format!("{}/{name}", s.ns))
        .context("the pod is not in status")?;
    ensure!(status["enrolledBy"] == "cni", "status: {status}");
    // runc, now: the sandbox's container cgroup, then the pod's first processes.
    sandbox.make_cgroup2()?;
    let proxy = start_tagged_listener_on(&sandbox.place(1337), &[15001], Some("proxy"))?;
    let m = Meshed::of(id, sandbox, proxy);
    let v = first_connect(&m)?;
    ensure!(captured(&v), "the first process's connect escaped: {v}");
    chain.del(&m.sandbox, &m.id)?;
    Ok(())
}

/// Item 2 and 3: with the agent down, ADD fails naming what it waited for, and nothing of the
/// pod is enrolled; the retried ADD succeeds once the agent is back. A SIGKILLed agent leaves
/// the capture of a pod ADD returned for in effect.
#[test]
fn add_fails_closed_while_the_agent_is_down_and_capture_outlives_it() -> Result<()> {
    let mut s = Scene::new()?;
    let chain = Chain::new(&s.node, &s.socket, 2)?;
    let m = s.pod("a", &BTreeMap::new())?;
    s.agent.stop(libc::SIGTERM);
    let e = chain
        .add(&m.sandbox, &m.id)
        .expect_err("ADD succeeded with no agent");
    let text = e.text();
    ensure!(
        text.contains("not reachable") && text.contains(path_str(&s.socket)),
        "the error names what it waited for: {e}"
    );
    ensure!(
        s.agent.enrolled_pods()? == 0,
        "ADD left an enrolment behind"
    );
    // The runtime tears the failed sandbox's network down and retries.
    chain.del(&m.sandbox, &m.id)?;
    s.agent.restart(libc::SIGTERM)?;
    chain.add(&m.sandbox, &m.id)?;
    s.agent.stop(libc::SIGKILL);
    let v = first_connect(&m)?;
    ensure!(captured(&v), "escaped after the agent's SIGKILL: {v}");
    Ok(())
}

/// Item 4: DEL twice, DEL after the agent restarted, DEL of a pod the agent never heard of.
#[test]
fn del_always_succeeds() -> Result<()> {
    let mut s = Scene::new()?;
    let chain = Chain::new(&s.node, &s.socket, 30)?;
    let m = s.pod("a", &BTreeMap::new())?;
    chain.add(&m.sandbox, &m.id)?;
    chain.del(&m.sandbox, &m.id)?;
    chain.del(&m.sandbox, &m.id)?;
    ensure!(s.agent.enrolled_pods()? == 0, "DEL left the pod enrolled");

    let b = s.pod("b", &BTreeMap::new())?;
    chain.add(&b.sandbox, &b.id)?;
    s.agent.restart(libc::SIGTERM)?;
    chain.del(&b.sandbox, &b.id)?;

    let unknown = PodId {
        name: "never".into(),
        uid: "00000000-0000-0000-0000-000000000000".into(),
        ..b.id.clone()
    };
    chain.del(&b.sandbox, &unknown)?;
    Ok(())
}

/// Item 5: CHECK passes while capture is in effect, and fails once the pod's config is removed
/// from the datapath behind the agent's back.
#[test]
fn check_sees_capture_removed_behind_the_agents_back() -> Result<()> {
    let s = Scene::new()?;
    let chain = Chain::new(&s.node, &s.socket, 30)?;
    let m = s.pod("a", &BTreeMap::new())?;
    let added = chain.add(&m.sandbox, &m.id)?;
    chain.check(&m.sandbox, &m.id, &added)?;
    let mut maps = PodMaps::from_pins(&Pins::new(&s.agent.bpffs_dir))?;
    let cgroup_id = meshsteer::inspect::cgroup_id(&m.sandbox.cgroup)?;
    maps.remove(cgroup_id, None);
    let e = chain
        .check(&m.sandbox, &m.id, &added)
        .expect_err("CHECK passed with the capture gone");
    ensure!(e.text().contains("MS_PODS"), "{e}");
    Ok(())
}

/// Item 8: a pod asking for what meshsteer cannot do fails ADD, and the error names the
/// annotation.
#[test]
fn a_refused_pod_fails_add_naming_its_annotation() -> Result<()> {
    let s = Scene::new()?;
    let chain = Chain::new(&s.node, &s.socket, 30)?;
    let tproxy = BTreeMap::from([(INTERCEPTION_MODE.to_string(), "TPROXY".to_string())]);
    let m = s.pod("t", &tproxy)?;
    let e = chain
        .add(&m.sandbox, &m.id)
        .expect_err("ADD succeeded for a refused pod");
    ensure!(
        e.text().contains(INTERCEPTION_MODE) && e.text().contains("TPROXY"),
        "{e}"
    );
    Ok(())
}

/// Item 7: a dual-stack pod (an IPv6 range in the primary plugin's IPAM, ISTIO_DUAL_STACK on
/// its sidecar, as istio-init gets `--dual-stack`) has `::6/128` on its `lo` once ADD returns,
/// and its proxy (uid 1337) bound to `::6` reaches the app at the pod's IPv6 address: the app
/// takes it and sees `::6`, as under istio-init's R8; it does not come back to 15006.
#[test]
fn a_dual_stack_pod_gets_the_ipv6_passthrough_source_by_add() -> Result<()> {
    let s = Scene::new()?;
    let chain = Chain::new(&s.node, &s.socket, 30)?.with_ipv6("fd89::/64");
    let dual_stack = json!({"name": "ISTIO_DUAL_STACK", "value": "true"});
    let pod = json!({"metadata": {}, "spec": {"containers": [
        {"name": "app", "image": "app"},
        {"name": "istio-proxy", "image": "proxy", "env": [dual_stack]},
    ]}});
    let uid = s.k8s.create_pod_object(&s.ns, "ds", &s.node.id, pod)?;
    let sandbox = Sandbox::new(&s.node, "ds", &besteffort_cgroup(&uid))?;
    let id = PodId {
        namespace: s.ns.clone(),
        name: "ds".into(),
        uid,
    };
    let _app = start_tagged_listener_on(&sandbox.place(1000), &[8080], Some("app"))?;
    let _proxy = start_tagged_listener_on(&sandbox.place(1337), &[15006], Some("proxy"))?;
    let added = chain.add(&sandbox, &id)?;
    let on_lo = lo_ipv6(&sandbox.netns)?;
    ensure!(on_lo.iter().any(|a| a == "::6/128"), "lo has {on_lo:?}");

    let app = format!("[{}]:8080", cni_driver::first_ipv6(&added)?);
    let args = ["connect", app.as_str(), "--bind", "::6"];
    let out = cmd::run(&sandbox.place(1337), probe_bin(), &args)?;
    let v: Value = serde_json::from_slice(&out.stdout).context("probe output")?;
    ensure!(
        v["tag"] == "app" && v["peer_ip"] == "::6",
        "the proxy's passthrough from ::6 to {app}: {v}"
    );
    chain.del(&sandbox, &id)?;
    s.k8s.delete_pod(&s.ns, "ds")?;
    Ok(())
}

/// Waits up to `limit` for `f`.
fn wait_for(limit: Duration, what: &str, f: impl Fn() -> bool) -> Result<()> {
    let start = Instant::now();
    while !f() {
        ensure!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// As a primary plugin's agent writes its configuration: a temporary file renamed over it.
fn rewrite(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_file_name(".primary-rewrite.tmp");
    fs::write(&tmp, text)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// Item 6: `meshsteer install-cni`, running, copies the plugin and puts its entry last in the
/// primary conflist of a real conf dir; a pod set up through that file's chain gets its address
/// from bridge/host-local and is captured from its first connect; the primary plugin rewriting
/// its file drops the entry and install-cni puts it back; stopped, it leaves the entry; and
/// `--uninstall` gives back the file byte for byte and removes the binary.
#[test]
fn install_cni_chains_the_plugin_into_a_conf_dir_and_uninstall_restores_it() -> Result<()> {
    let s = Scene::new()?;
    let work = std::env::temp_dir()
        .join("meshsteer-tests")
        .join(format!("{}-install-cni", s.node.id));
    let _ = fs::remove_dir_all(&work);
    let (conf_dir, bin_dir) = (work.join("net.d"), work.join("bin"));
    fs::create_dir_all(&conf_dir)?;
    fs::create_dir_all(&bin_dir)?;
    let _cleanup = Cleanup(work.clone());
    // The primary plugin's file, and a later one the runtime does not use.
    let primary = conf_dir.join("10-pods.conflist");
    let original = format!(
        "{}\n",
        serde_json::to_string_pretty(&serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "mst-pods",
            "plugins": [cni_driver::bridge_plugin(&work.join("ipam"))],
        }))?
    );
    rewrite(&primary, &original)?;
    let later = conf_dir.join("20-later.conflist");
    fs::write(&later, &original)?;

    let bin = agent_bin();
    let dirs = [
        "--cni-conf-dir",
        path_str(&conf_dir),
        "--cni-bin-dir",
        path_str(&bin_dir),
    ];
    let plugin = cni_driver::plugin_bin();
    let mut install_args = vec!["install-cni"];
    install_args.extend(dirs);
    install_args.extend([
        "--plugin-bin",
        path_str(&plugin),
        "--cni-socket",
        path_str(&s.socket),
    ]);
    let mut uninstall_args = vec!["install-cni", "--uninstall"];
    uninstall_args.extend(dirs);
    let log = work.join("install-cni.log");
    let spawn = || Proc::spawn_logged(&Place::default(), path_str(&bin), &install_args, &log);
    let mut installer = spawn()?;
    let has_entry = || fs::read_to_string(&primary).is_ok_and(|t| t.contains("meshsteer-cni"));
    wait_for(Duration::from_secs(10), "install-cni's entry", has_entry)?;
    let installed = bin_dir.join("meshsteer-cni");
    ensure!(
        fs::metadata(&installed)?.permissions().mode() & 0o777 == 0o755,
        "the plugin is installed executable"
    );
    ensure!(
        fs::read_to_string(&later)? == original,
        "only the primary file is changed"
    );

    // A pod, set up as the runtime reads the directory; plugins from the bin dir first.
    let dirs_path = [bin_dir.clone(), PathBuf::from(cni_driver::PLUGINS_DIR)];
    let chain = Chain::from_conf_dir(&s.node, &conf_dir, &dirs_path)?;
    ensure!(
        chain.types() == ["bridge", "meshsteer-cni"],
        "{:?}",
        chain.types()
    );
    let m = s.pod("a", &BTreeMap::new())?;
    let added = chain.add(&m.sandbox, &m.id)?;
    let ip = cni_driver::first_ipv4(&added)?;
    ensure!(ip.starts_with("10.89."), "host-local's address: {added}");
    let in_pod = Place {
        netns: Some(&m.sandbox.netns),
        ..Place::default()
    };
    let link = cmd::run(&in_pod, "ip", &["-4", "addr", "show", "eth0"])?;
    ensure!(
        String::from_utf8_lossy(&link.stdout).contains(&format!("inet {ip}/")),
        "bridge gave the pod's eth0 {ip}"
    );
    let v = first_connect(&m)?;
    ensure!(captured(&v), "the first connect escaped: {v}");
    chain.del(&m.sandbox, &m.id)?;

    // The primary plugin rewrites its file, without the entry: it comes back.
    for _ in 0..3 {
        rewrite(&primary, &original)?;
        wait_for(Duration::from_secs(3), "the entry to come back", has_entry)?;
    }
    let chain = Chain::from_conf_dir(&s.node, &conf_dir, &dirs_path)?;
    ensure!(
        chain.types() == ["bridge", "meshsteer-cni"],
        "{:?}",
        chain.types()
    );

    // Stopped, it leaves everything: ADD keeps failing closed while meshsteer is away.
    installer.kill(libc::SIGTERM);
    let status = installer.wait().context("install-cni's exit")?;
    ensure!(status.success(), "install-cni on SIGTERM: {status}");
    ensure!(
        has_entry() && installed.exists(),
        "the entry and the binary stay"
    );

    cmd::run(&Place::default(), path_str(&bin), &uninstall_args)?;
    ensure!(
        fs::read(&primary)? == original.as_bytes(),
        "uninstall left {:?}",
        fs::read_to_string(&primary)?
    );
    ensure!(!installed.exists(), "the binary is gone");

    // Uninstalled under a running install-cni: it removes everything, then idles instead of
    // putting the entry back.
    let mut installer = spawn()?;
    wait_for(Duration::from_secs(10), "install-cni again", has_entry)?;
    cmd::run(&Place::default(), path_str(&bin), &uninstall_args)?;
    ensure!(
        fs::read(&primary)? == original.as_bytes() && !installed.exists(),
        "the running install-cni did not uninstall: {:?}",
        fs::read_to_string(&primary)?
    );
    ensure!(
        installer.try_wait().is_none(),
        "install-cni exited instead of idling"
    );
    rewrite(&primary, &original)?;
    std::thread::sleep(Duration::from_millis(300));
    ensure!(
        !has_entry(),
        "install-cni put the entry back after an uninstall"
    );
    installer.kill(libc::SIGTERM);
    let status = installer.wait().context("install-cni's exit")?;
    ensure!(status.success(), "idle install-cni on SIGTERM: {status}");
    ensure!(
        fs::read_to_string(&later)? == original,
        "the later file untouched"
    );
    Ok(())
}

/// Removes a test's directory on every exit path.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
