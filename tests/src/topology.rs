//! Simulated node and pods: network namespaces, veth, bridge, cgroups.
use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result};

use crate::area::AreaGuard;
use crate::cmd::{self, Place, Proc};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Addresses the node namespace owns besides its bridge: the "rest of the world" a pod can
/// reach (and the only destinations off-pod traffic ever has).
pub const WORLD_V4: [&str; 2] = ["10.200.0.1", "10.201.0.1"];
pub const WORLD_V6: [&str; 2] = ["fd00:200::1", "fd00:201::1"];
/// Ports the world and every pod listen on.
pub const PROBE_PORTS: [u16; 11] = [
    22, 80, 3306, 8080, 9000, 15001, 15006, 15008, 15020, 15021, 15090,
];

fn unique_id() -> String {
    format!(
        "mst{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// `ip` inside a named namespace.
fn ip(ns: &str, args: &[&str]) -> Result<()> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    cmd::host("ip", &full).map(drop)
}

pub struct Node {
    pub id: String,
    ns: String,
    pub netns: PathBuf,
    /// Test-only cgroup subtree: the agent attaches here, never at the machine's root.
    pub cgroup_root: PathBuf,
    next_pod: u32,
    world: Option<Proc>,
    /// Last field, so released only once the node is torn down.
    _area: AreaGuard,
}

impl Node {
    /// A new node, once no other area's tests are running (see [`crate::area`]).
    pub fn new() -> Result<Self> {
        crate::require_root();
        let area = crate::area::enter();
        let id = unique_id();
        let ns = format!("{id}-node");
        let cg2 = meshsteer::inspect::cgroup2_mount()?;
        let cgroup_root = cg2.join("meshsteer-tests").join(&id);
        let mut node = Self {
            netns: netns_path(&ns),
            ns,
            id,
            cgroup_root,
            next_pod: 0,
            world: None,
            _area: area,
        };
        node.setup().context("setting up the simulated node")?;
        Ok(node)
    }

    fn setup(&mut self) -> Result<()> {
        cmd::host("ip", &["netns", "add", &self.ns])?;
        fs::create_dir_all(&self.cgroup_root)
            .with_context(|| format!("creating {}", self.cgroup_root.display()))?;
        let ns = self.ns.as_str();
        ip(ns, &["link", "set", "lo", "up"])?;
        ip(ns, &["link", "add", "br0", "type", "bridge"])?;
        ip(ns, &["addr", "add", "10.88.0.1/24", "dev", "br0"])?;
        ip(
            ns,
            &["-6", "addr", "add", "fd88::1/64", "dev", "br0", "nodad"],
        )?;
        ip(ns, &["link", "set", "br0", "up"])?;
        // The "world" lives on the node's loopback (no dummy driver needed): reachable from
        // every pod through its default route, and from nowhere else.
        for a in WORLD_V4 {
            ip(ns, &["addr", "add", &format!("{a}/32"), "dev", "lo"])?;
        }
        for a in WORLD_V6 {
            ip(ns, &["-6", "addr", "add", &format!("{a}/128"), "dev", "lo"])?;
        }
        Ok(())
    }

    /// Runs the probe listener on every probe port, IPv4 and IPv6, in the node namespace.
    pub fn start_world(&mut self) -> Result<()> {
        let place = Place {
            netns: Some(&self.netns),
            ..Default::default()
        };
        self.world = Some(start_listener(&place)?);
        Ok(())
    }

    pub fn place(&self) -> Place<'_> {
        Place {
            netns: Some(&self.netns),
            ..Default::default()
        }
    }

    pub fn add_pod(&mut self, name: &str) -> Result<Pod> {
        self.next_pod += 1;
        let n = self.next_pod + 9;
        Pod::new(self, name, n, Path::new(name), None)
            .with_context(|| format!("creating pod {name}"))
    }

    /// A pod in a user namespace of its own whose ids map to the host's `ids_base..`.
    pub fn add_userns_pod(&mut self, name: &str, ids_base: u32) -> Result<Pod> {
        self.next_pod += 1;
        let n = self.next_pod + 9;
        Pod::new(self, name, n, Path::new(name), Some(ids_base))
            .with_context(|| format!("creating user-namespaced pod {name}"))
    }

    /// A pod whose pod-level cgroup is `cgroup`, relative to the node's cgroup root (as a
    /// kubelet lays it out, e.g. `kubepods.slice/…/kubepods-besteffort-pod<uid>.slice`).
    pub fn add_pod_at(&mut self, name: &str, cgroup: &Path) -> Result<Pod> {
        self.next_pod += 1;
        let n = self.next_pod + 9;
        Pod::new(self, name, n, cgroup, None).with_context(|| format!("creating pod {name}"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.world = None;
        let _ = cmd::host("ip", &["netns", "del", &self.ns]);
        // Everything made below the node's root goes: pods, sandboxes, the kubelet-like
        // `kubepods.slice/…` parents that no single pod owns.
        let _ = remove_cgroup_tree(&self.cgroup_root);
        let _ = fs::remove_dir(
            self.cgroup_root
                .parent()
                .unwrap_or(Path::new("/nonexistent")),
        );
    }
}

/// Removes the cgroup `dir` and every cgroup below it, deepest first. A cgroup whose last
/// process is still exiting refuses rmdir (EBUSY) for a moment: each is retried for up to a
/// second. Whether `dir` is gone.
pub fn remove_cgroup_tree(dir: &Path) -> bool {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

/// The IPv6 addresses on `lo` in `netns`, as `addr/prefixlen` (`::1/128`, and `::6/128` once
/// istio-init or meshsteer added Envoy's inbound-passthrough source).
pub fn lo_ipv6(netns: &Path) -> Result<Vec<String>> {
    let place = Place {
        netns: Some(netns),
        ..Default::default()
    };
    let out = cmd::run(&place, "ip", &["-j", "-6", "addr", "show", "dev", "lo"])?;
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j addr")?;
    Ok(links[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or("?"), a["prefixlen"]))
        .collect())
}

pub fn start_listener(place: &Place<'_>) -> Result<Proc> {
    start_listener_on(place, &PROBE_PORTS)
}

/// The probe listener on `ports`, IPv4 and IPv6.
pub fn start_listener_on(place: &Place<'_>, ports: &[u16]) -> Result<Proc> {
    start_tagged_listener_on(place, ports, None)
}

/// [`start_listener_on`], whose answers carry `"tag": tag`: tells same-port listeners apart.
pub fn start_tagged_listener_on(
    place: &Place<'_>,
    ports: &[u16],
    tag: Option<&str>,
) -> Result<Proc> {
    let mut addrs = vec!["listen".to_string()];
    if let Some(tag) = tag {
        addrs.extend(["--tag".to_string(), tag.to_string()]);
    }
    for p in ports {
        addrs.push(format!("0.0.0.0:{p}"));
        addrs.push(format!("[::]:{p}"));
    }
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    Proc::spawn_ready(place, probe_bin(), &refs)
}

/// [`late_accept`] by the app (uid 1000) of `pod`, to `dst` through its proxy's 15001, on a
/// thread of its own: the caller does something (restarts the agent, fills a budget) before
/// the proxy accepts, `delay_ms` after the client sent and closed.
pub fn late_accept_in(
    pod: &Pod,
    dst: &str,
    delay_ms: u32,
) -> std::thread::JoinHandle<Result<serde_json::Value>> {
    let (ns, cg, dst) = (pod.netns.clone(), pod.app_cgroup.clone(), dst.to_string());
    std::thread::spawn(move || {
        let place = Place {
            netns: Some(&ns),
            cgroup: Some(&cg),
            uid: 1000,
            gid: 1000,
        };
        late_accept(&place, &["0.0.0.0:15001"], &dst, delay_ms)
    })
}

/// `mst-probe late`: a client at `place` sends to `dst` and closes, and only `delay_ms` later
/// a proxy listening on `listen` (`[addr]` or `[addr, "dual"]`) accepts; what the proxy learnt.
pub fn late_accept(
    place: &Place<'_>,
    listen: &[&str],
    dst: &str,
    delay_ms: u32,
) -> Result<serde_json::Value> {
    let delay = delay_ms.to_string();
    let mut args = vec!["late", listen[0], dst, &delay];
    args.extend_from_slice(&listen[1..]);
    let out = cmd::run(place, probe_bin(), &args)?;
    serde_json::from_slice(&out.stdout).context("mst-probe late output")
}

/// The `mst-probe` binary cargo builds beside the test binaries (`target/<profile>/`, whether
/// we run from `target/<profile>/deps` as a test or from `target/<profile>` as `mst-bench`).
pub fn probe_bin() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let exe = std::env::current_exe().expect("own binary path");
        let mut dir = exe.parent().expect("binary directory");
        if dir.ends_with("deps") {
            dir = dir.parent().expect("target/<profile>");
        }
        dir.join("mst-probe").to_string_lossy().into_owned()
    })
}

pub struct Pod {
    pub name: String,
    ns: String,
    pub netns: PathBuf,
    /// The pod-level cgroup (what a pod spec names).
    pub cgroup: PathBuf,
    /// A container cgroup below it: pod processes run here.
    pub app_cgroup: PathBuf,
    pub ip4: String,
    pub ip6: String,
    procs: Vec<Proc>,
    /// The node's cgroup root: cgroups between it and the pod's are removed with the pod.
    node_cgroup_root: PathBuf,
    /// A user-namespaced pod (`hostUsers: false`): its network namespace belongs to a user
    /// namespace that maps the pod's ids 0..65536 to the host's `ids_base..`, held by this
    /// process (the pod's "sandbox", in its container cgroup).
    pub userns_holder: Option<u32>,
    pub ids_base: u32,
}

impl Pod {
    /// Runs `ip args…` in the pod's network namespace, as root (an address added behind the
    /// agent's back, say).
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        ip(&self.ns, args)
    }

    /// The index of the pod's interface `name` (a link-local address's scope, as seen here).
    pub fn ifindex(&self, name: &str) -> Result<u32> {
        let out = cmd::host("ip", &["-n", &self.ns, "-j", "link", "show", "dev", name])?;
        let links: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        links[0]["ifindex"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .with_context(|| format!("no ifindex for {name} in {links}"))
    }

    fn new(node: &Node, name: &str, n: u32, cgroup: &Path, userns: Option<u32>) -> Result<Self> {
        let ns = format!("{}-{name}", node.id);
        let cgroup = node.cgroup_root.join(cgroup);
        let mut pod = Self {
            node_cgroup_root: node.cgroup_root.clone(),
            name: name.into(),
            netns: netns_path(&ns),
            app_cgroup: cgroup.join("app"),
            cgroup,
            ns,
            ip4: format!("10.88.0.{n}"),
            ip6: format!("fd88::{n}"),
            procs: Vec::new(),
            userns_holder: None,
            ids_base: userns.unwrap_or(0),
        };
        fs::create_dir_all(&pod.app_cgroup)?;
        match userns {
            None => cmd::host("ip", &["netns", "add", &pod.ns]).map(drop)?,
            Some(base) => pod.hold_userns_netns(base)?,
        }
        let veth = format!("v{name}");
        ip(
            &node.ns,
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pod.ns,
            ],
        )?;
        ip(&node.ns, &["link", "set", &veth, "master", "br0", "up"])?;
        let ns = pod.ns.clone();
        ip(&ns, &["link", "set", "lo", "up"])?;
        ip(
            &ns,
            &["addr", "add", &format!("{}/24", pod.ip4), "dev", "eth0"],
        )?;
        ip(
            &ns,
            &[
                "-6",
                "addr",
                "add",
                &format!("{}/64", pod.ip6),
                "dev",
                "eth0",
                "nodad",
            ],
        )?;
        ip(&ns, &["link", "set", "eth0", "up"])?;
        ip(&ns, &["route", "add", "default", "via", "10.88.0.1"])?;
        ip(&ns, &["-6", "route", "add", "default", "via", "fd88::1"])?;
        // As container runtimes set it: pod processes may bind low ports without privileges.
        let place = Place {
            netns: Some(&pod.netns),
            ..Default::default()
        };
        cmd::run(
            &place,
            "sysctl",
            &["-qw", "net.ipv4.ip_unprivileged_port_start=0"],
        )?;
        Ok(pod)
    }

    /// A process in a new user and network namespace, its ids mapped to `base..`, and the
    /// network namespace named as `ip netns add` names it.
    fn hold_userns_netns(&mut self, base: u32) -> Result<()> {
        let place = Place {
            cgroup: Some(&self.app_cgroup),
            ..Default::default()
        };
        let holder = Proc::spawn(
            &place,
            "unshare",
            &["--user", "--net", "--", "sleep", "infinity"],
        )?;
        let pid = holder.pid();
        self.procs.push(holder);
        // unshare has run once the process's user namespace is no longer ours.
        let ours = fs::read_link("/proc/self/ns/user")?;
        let mut waited = 0;
        while fs::read_link(format!("/proc/{pid}/ns/user")).ok().as_ref() == Some(&ours) {
            anyhow::ensure!(waited < 500, "unshare did not create a user namespace");
            std::thread::sleep(std::time::Duration::from_millis(10));
            waited += 1;
        }
        for file in ["uid_map", "gid_map"] {
            fs::write(format!("/proc/{pid}/{file}"), format!("0 {base} 65536\n"))
                .with_context(|| format!("writing {file} of {pid}"))?;
        }
        self.userns_holder = Some(pid);
        cmd::host("ip", &["netns", "attach", &self.ns, &pid.to_string()]).map(drop)
    }

    /// Inside the pod's namespace and container cgroup, as the pod's `uid:gid` (in a
    /// user-namespaced pod, the host ids they map to: the same kernel ids).
    pub fn place(&self, uid: u32, gid: u32) -> Place<'_> {
        Place {
            netns: Some(&self.netns),
            cgroup: Some(&self.app_cgroup),
            uid: self.ids_base + uid,
            gid: self.ids_base + gid,
        }
    }

    /// Starts the probe listener (as the proxy would run: uid 1337) on every probe port.
    pub fn start_listener(&mut self) -> Result<()> {
        let p = start_listener(&self.place(1337, 1337))?;
        self.procs.push(p);
        Ok(())
    }

    pub fn keep(&mut self, p: Proc) {
        self.procs.push(p);
    }

    /// Stops the pod's processes and removes its container cgroup, as a runtime does when the
    /// pod's containers stop; the pod-level cgroup stays (as on hybrid hosts).
    pub fn stop_containers(&mut self) -> Result<()> {
        self.procs.clear();
        anyhow::ensure!(
            remove_cgroup_tree(&self.app_cgroup),
            "{} still in use",
            self.app_cgroup.display()
        );
        Ok(())
    }

    /// Waits until a connection from the pod's app (uid 1000) to `dst` lands on `port`;
    /// returns how long that took.
    pub fn lands_on(&self, dst: &str, port: u64) -> Result<std::time::Duration> {
        let start = std::time::Instant::now();
        loop {
            let v = self.probe(1000, 1000, dst, &[])?;
            if v["listener"].as_u64() == Some(port) {
                return Ok(start.elapsed());
            }
            anyhow::ensure!(
                start.elapsed().as_secs() < 5,
                "{dst} still lands on {} after 5 s, not on {port}",
                v["listener"]
            );
        }
    }

    /// Runs `mst-probe connect` in the pod and returns its JSON line.
    pub fn probe(
        &self,
        uid: u32,
        gid: u32,
        dst: &str,
        extra: &[&str],
    ) -> Result<serde_json::Value> {
        let mut args = vec!["connect", dst];
        args.extend_from_slice(extra);
        let out = cmd::run(&self.place(uid, gid), probe_bin(), &args)?;
        serde_json::from_slice(&out.stdout).context("probe output")
    }

    /// The pod spec meshsteer enrols it with. The pod is dual-stack and [`crate::istio_rules`]
    /// installs ip6tables rules too, as istio-init does with `--dual-stack`: so `args` gets it.
    pub fn spec(&self, args: &str) -> String {
        let args = format!("{args} --dual-stack");
        format!(
            "name: test/{}\ncgroup: {}\nnetns: {}\nips: [{}, \"{}\"]\nargs: {}\n",
            self.name,
            self.cgroup.display(),
            self.netns.display(),
            self.ip4,
            self.ip6,
            serde_json::to_string(&args).unwrap_or_default()
        )
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.procs.clear();
        let _ = cmd::host("ip", &["netns", "del", &self.ns]);
        // Processes are gone: the cgroups are empty and can go.
        remove_cgroup_tree(&self.app_cgroup);
        // The pod's cgroup, then its parents up to the node's root while they are empty.
        for dir in self
            .cgroup
            .ancestors()
            .take_while(|d| *d != self.node_cgroup_root)
        {
            // Already gone (the agent removes deleted pods' empty cgroups): go on upwards.
            if fs::remove_dir(dir).is_err() && dir.exists() {
                break;
            }
        }
    }
}
