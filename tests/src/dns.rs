//! DNS capture in the differential tests: nameservers in the world, the proxy's DNS listener
//! in each pod, pod pairs with `--redirect-dns`, and the UDP probe's answers made comparable.
use std::net::IpAddr;

use anyhow::{Context, Result};
use meshsteer::inspect::Capture;
use serde_json::Value;

use crate::{
    Agent, Node, Pair, Pod, Testbed,
    cmd::{self, Proc},
    istio_rules,
    topology::{WORLD_V4, WORLD_V6, probe_bin},
};

/// The world's DNS port, and a port that is not DNS.
pub const DNS: u16 = 53;
pub const NOT_DNS: u16 = 5353;
/// The proxy's DNS listener.
pub const PROXY_DNS: u16 = istio_rules::DNS_PROXY_PORT;
/// Tags the responders answer with.
pub const WORLD_TAG: &str = "world";
pub const PROXY_TAG: &str = "proxy-dns";

/// Responders on every world address, UDP on 53 and 5353, TCP on 53: each bound to its
/// address, so an answer leaves from the address asked.
pub fn start_world(node: &Node) -> Result<Vec<Proc>> {
    let mut udp = vec!["udp-serve".to_string(), "--tag".into(), WORLD_TAG.into()];
    let mut tcp = vec!["listen".to_string(), "--tag".into(), WORLD_TAG.into()];
    for a in WORLD_V4 {
        udp.extend([format!("{a}:{DNS}"), format!("{a}:{NOT_DNS}")]);
        tcp.push(format!("{a}:{DNS}"));
    }
    for a in WORLD_V6 {
        udp.extend([format!("[{a}]:{DNS}"), format!("[{a}]:{NOT_DNS}")]);
        tcp.push(format!("[{a}]:{DNS}"));
    }
    [udp, tcp]
        .iter()
        .map(|args| {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            Proc::spawn_ready(&node.place(), probe_bin(), &refs).context("world DNS responders")
        })
        .collect()
}

/// The stand-in for the proxy's DNS listener in `pod`: UDP and TCP on 127.0.0.1:15053 and
/// [::1]:15053, as the proxy (uid/gid 1337).
pub fn start_proxy_dns(pod: &mut Pod) -> Result<()> {
    let addrs = [
        format!("127.0.0.1:{PROXY_DNS}"),
        format!("[::1]:{PROXY_DNS}"),
    ];
    for mode in ["udp-serve", "listen"] {
        let mut args = vec![mode, "--tag", PROXY_TAG];
        args.extend(addrs.iter().map(String::as_str));
        let p = Proc::spawn_ready(&pod.place(1337, 1337), probe_bin(), &args)
            .with_context(|| format!("proxy DNS stand-in ({mode}) in {}", pod.name))?;
        pod.keep(p);
    }
    Ok(())
}

/// Two identical pods whose resolv.conf lists `nameservers`: `ipt` with istio-iptables'
/// rules for `args`, `ebpf` enrolled with them (spec field `nameservers:`). Both run the
/// proxy's listeners and its DNS stand-in.
pub fn pair(bed: &mut Testbed, args: &str, nameservers: &[IpAddr]) -> Result<Pair> {
    let mut ipt = bed.node.add_pod("ipt")?;
    let mut ebpf = bed.node.add_pod("ebpf")?;
    istio_rules::install_dns(&ipt.netns, &Capture::from_args(args)?, nameservers)?;
    enrol(&bed.agent, &ebpf, args, nameservers)?;
    for pod in [&mut ipt, &mut ebpf] {
        pod.start_listener()?;
        start_proxy_dns(pod)?;
    }
    Ok(Pair { ipt, ebpf })
}

/// Enrols `pod` with its nameservers and waits until the agent has them in effect.
pub fn enrol(agent: &Agent, pod: &Pod, args: &str, nameservers: &[IpAddr]) -> Result<()> {
    let list: Vec<String> = nameservers.iter().map(ToString::to_string).collect();
    let spec = format!(
        "{}nameservers: {}\n",
        pod.spec(args),
        serde_json::to_string(&list)?
    );
    agent.write_spec(&pod.name, &spec)?;
    agent.wait_pod(&format!("test/{}", pod.name), |p| {
        p["state"] == "ready" && p["nameservers"].as_array().map(Vec::len) == Some(list.len())
    })
}

/// `mst-probe <mode> ARGS…` in `pod` as `uid:gid` (0:0 for `udp-reuse`, which switches
/// itself), its output with the pod's own addresses as SELF4/SELF6.
pub fn probe(pod: &Pod, (uid, gid): (u32, u32), mode: &str, args: &[&str]) -> Result<Value> {
    let args: Vec<String> = args.iter().map(|a| to_pod(a, pod)).collect();
    let mut full = vec![mode];
    full.extend(args.iter().map(String::as_str));
    let out = cmd::run(&pod.place(uid, gid), probe_bin(), &full)?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "mst-probe {full:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    Ok(from_pod(v, pod))
}

/// SELF4/SELF6 in a test's argument: this pod's addresses.
pub fn to_pod(a: &str, pod: &Pod) -> String {
    a.replace("SELF4", &pod.ip4).replace("SELF6", &pod.ip6)
}

fn from_pod(v: Value, pod: &Pod) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace(&pod.ip4, "SELF4").replace(&pod.ip6, "SELF6")),
        Value::Object(m) => {
            Value::Object(m.into_iter().map(|(k, v)| (k, from_pod(v, pod))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(|v| from_pod(v, pod)).collect()),
        other => other,
    }
}

/// `meshsteer explain --udp` (or TCP) for `owner` sending from `src` to `dst`: the port it
/// says the datagram lands on.
pub fn explain_port(
    agent: &Agent,
    pod: &Pod,
    owner: (u32, u32),
    src: Option<&str>,
    dst: &str,
    udp: bool,
) -> Result<Option<u64>> {
    let (uid, gid) = (owner.0.to_string(), owner.1.to_string());
    let name = format!("test/{}", pod.name);
    let dst = to_pod(dst, pod);
    let mut args = vec![
        "explain", "--json", "--pod", &name, "--uid", &uid, "--gid", &gid, "--dst", &dst,
    ];
    if udp {
        args.push("--udp");
    }
    let src = src.map(|s| to_pod(s, pod));
    if let Some(s) = &src {
        args.extend(["--src", s]);
    }
    let e: Value = serde_json::from_slice(&agent.cli(&args)?)?;
    Ok(e["lands"]
        .as_str()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.parse().ok()))
}
