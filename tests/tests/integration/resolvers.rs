//! Real resolvers through DNS capture: `dig`, glibc's resolver (`getent hosts`) and our own
//! strict client (`mst-dnsq`) in a pod enrolled with `--redirect-dns` ask the pod's nameserver
//! (another pod running dnsmasq, "the cluster DNS"); meshsteer sends them to the pod's DNS
//! proxy instead, a second dnsmasq running as uid 1337 on 127.0.0.1:15053 and [::1]:15053, as
//! Istio's agent listens. Each answer tells which server made it, and each client takes only
//! replies that come from the server it asked: so an answer proves both the capture and the
//! reverse translation. The proxy's own queries (uid 1337) go out uncaptured.
use std::fs;

use meshsteer_tests::{
    Agent, Node, Pod, Testbed, World,
    apps::Scratch,
    cmd,
    resolver::{dnsmasq, dnsq, wait_answers},
};
use serde_json::Value;

const PROXY: u32 = 1337;
const APP: u32 = 1000;
/// What the cluster DNS answers, and what the pod's DNS proxy answers, for `svc.mesh.test`.
const DIRECT: &str = "10.6.6.6";
const PROXIED: &str = "10.9.9.9";
/// Names the proxy does not know itself: it forwards them to the cluster DNS (its own,
/// uncaptured upstream query), which answers this.
const UPSTREAM: &str = "10.7.7.7";
const DIG: &str = "/usr/bin/dig";

/// Field order is drop order: pods (and their dnsmasq) first, then the agent and node.
struct Resolvers {
    cli: Pod,
    srv: Pod,
    scratch: Scratch,
    _agent: Agent,
    _node: Node,
}

impl Resolvers {
    fn new() -> anyhow::Result<Self> {
        let Testbed { mut node, agent } = Testbed::start(World::Absent, &[])?;
        let scratch = Scratch::new("resolvers")?;
        let mut srv = node.add_pod("dns")?;
        let mut cli = node.add_pod("cli")?;
        // The cluster DNS, in its own (not enrolled) pod.
        let listen = format!("--listen-address={},{}", srv.ip4, srv.ip6);
        let cluster = dnsmasq(
            &srv.place(0, 0),
            &[
                &listen,
                "--port=53",
                &format!("--address=/svc.mesh.test/{DIRECT}"),
                &format!("--address=/upstream.test/{UPSTREAM}"),
            ],
        )?;
        srv.keep(cluster);
        wait_answers(&srv, 0, &format!("{}:53", srv.ip4), DIRECT)?;
        // The pod, enrolled as the injector does with DNS capture on, its resolv.conf naming
        // the cluster DNS.
        let spec = format!(
            "{}nameservers: [{}, \"{}\"]\n",
            cli.spec(&format!(
                "{} --redirect-dns",
                meshsteer::inspect::INJECTOR_DEFAULT_ARGS
            )),
            srv.ip4,
            srv.ip6
        );
        agent.write_spec(&cli.name, &spec)?;
        agent.wait_state(&format!("test/{}", cli.name), |s| s == "ready")?;
        // Its DNS proxy, as Istio's agent: localhost:15053, uid 1337, forwarding what it does
        // not know to the cluster DNS itself.
        let proxy = dnsmasq(
            &cli.place(PROXY, PROXY),
            &[
                "--listen-address=127.0.0.1,::1",
                "--port=15053",
                &format!("--address=/svc.mesh.test/{PROXIED}"),
                &format!("--server=/upstream.test/{}", srv.ip4),
            ],
        )?;
        cli.keep(proxy);
        wait_answers(&cli, PROXY, "127.0.0.1:15053", PROXIED)?;
        Ok(Self {
            cli,
            srv,
            scratch,
            _agent: agent,
            _node: node,
        })
    }

    /// `mst-dnsq` in the client pod as `uid`: the answer and the source it came from.
    fn ask(&self, uid: u32, server: &str, name: &str, flags: &[&str]) -> anyhow::Result<Value> {
        dnsq(&self.cli, uid, server, name, flags)
    }
}

#[test]
fn strict_clients_get_the_proxys_answers_from_the_server_they_asked() -> anyhow::Result<()> {
    let r = Resolvers::new()?;
    let ns4 = format!("{}:53", r.srv.ip4);
    let ns6 = format!("[{}]:53", r.srv.ip6);
    for (server, flags) in [
        (&ns4, &[][..]),
        (&ns4, &["--connect"][..]),
        (&ns4, &["--tcp"][..]),
        (&ns6, &[][..]),
        (&ns6, &["--connect"][..]),
    ] {
        let got = r.ask(APP, server, "svc.mesh.test", flags)?;
        assert_eq!(got["answer"], PROXIED, "{server} {flags:?}: {got}");
        assert_eq!(got["from"], server.as_str(), "{server} {flags:?}: {got}");
    }
    // A name the proxy forwards: its own upstream query (uid 1337) is not captured, so it
    // reaches the cluster DNS instead of looping back into the proxy.
    let got = r.ask(APP, &ns4, "x.upstream.test", &[])?;
    assert_eq!(got["answer"], UPSTREAM, "{got}");
    // The proxy asking the cluster DNS itself: straight there.
    let got = r.ask(PROXY, &ns4, "svc.mesh.test", &[])?;
    assert_eq!(got["answer"], DIRECT, "{got}");
    assert_eq!(got["from"], ns4.as_str());
    Ok(())
}

#[test]
fn dig_and_glibc_resolve_through_the_proxy() -> anyhow::Result<()> {
    let r = Resolvers::new()?;
    let app = r.cli.place(APP, APP);
    for tcp in ["+notcp", "+tcp"] {
        let at = format!("@{}", r.srv.ip4);
        let out = cmd::run(
            &app,
            DIG,
            &[
                &at,
                "svc.mesh.test",
                "A",
                tcp,
                "+short",
                "+tries=1",
                "+time=2",
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.trim(), PROXIED, "dig {tcp}: {text}");
    }
    // glibc's resolver reads /etc/resolv.conf: a mount namespace of its own gives it the pod's.
    let resolv = r.scratch.dir_for("resolv", 0, 0)?.join("resolv.conf");
    fs::write(
        &resolv,
        format!("nameserver {}\noptions attempts:1 timeout:2\n", r.srv.ip4),
    )?;
    let script = format!(
        "mount --bind {} /etc/resolv.conf && exec setpriv --reuid={APP} --regid={APP} \
         --clear-groups getent ahostsv4 svc.mesh.test",
        resolv.display()
    );
    let out = cmd::run(
        &r.cli.place(0, 0),
        "unshare",
        &["--mount", "--propagation", "private", "sh", "-c", &script],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().next().is_some_and(|l| l.starts_with(PROXIED)),
        "getent: {text}"
    );
    Ok(())
}
