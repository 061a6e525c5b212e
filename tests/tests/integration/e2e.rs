//! End to end with real programs: an app (curl, uid 1000) in an enrolled pod makes HTTP
//! requests to nginx in another pod; meshsteer steers them into the pod's sidecar, a real
//! HAProxy running as uid 1337, which forwards each IPv4 one to its original destination
//! (`server s 0.0.0.0:0`: the address `getsockopt(SO_ORIGINAL_DST)` gives it, which meshsteer
//! answers). IPv6 requests are captured the same way, but HAProxy cannot forward them to an
//! original destination (see the IPv6 test).
//!
//! nginx echoes how each request reached it, so the test sees that the request really went
//! through the proxy (the header only HAProxy adds), to the address the app asked for (HAProxy
//! had no other way to learn it), from the client pod's address. The proxy's own traffic
//! (uid 1337) is exempt and reaches nginx directly.
use anyhow::Context;
use meshsteer_tests::{
    Agent, Node, Pod, Testbed, World,
    apps::{self, Scratch},
};

/// The sidecar's identity and outbound port under Istio's default rules.
const PROXY_UID: u32 = 1337;
const PROXY_PORT: u16 = 15001;
/// The app's identity: anything but the proxy's.
const APP_UID: u32 = 1000;
/// nginx runs unprivileged, as Debian's www-data.
const WWW_DATA: u32 = 33;

/// The topology both tests use. Field order is drop order: the pods go first (killing nginx and
/// HAProxy), then the scratch directory with their configs, the agent, and the node.
struct Mesh {
    /// Enrolled with Istio's default rules; runs HAProxy as its sidecar.
    cli: Pod,
    /// Not enrolled; runs nginx on port 80.
    srv: Pod,
    scratch: Scratch,
    _agent: Agent,
    _node: Node,
}

impl Mesh {
    fn new() -> anyhow::Result<Self> {
        let Testbed { mut node, agent } = Testbed::start(World::Absent, &[])?;
        let scratch = Scratch::new("e2e")?;
        let mut srv = node.add_pod("srv")?;
        let mut cli = node.add_pod("cli")?;
        srv.keep(apps::start_nginx(&srv, &scratch, WWW_DATA, WWW_DATA)?);
        agent.enrol(&cli, meshsteer::inspect::INJECTOR_DEFAULT_ARGS)?;
        cli.keep(apps::start_haproxy(
            &cli, &scratch, PROXY_UID, PROXY_UID, PROXY_PORT,
        )?);
        Ok(Self {
            cli,
            srv,
            scratch,
            _agent: agent,
            _node: node,
        })
    }

    /// GET `url` from the client pod as `uid`: the response body. A failure says how many
    /// connections HAProxy took: thousands mean it forwarded the request back into itself.
    fn get(&self, uid: u32, url: &str) -> anyhow::Result<String> {
        apps::http_get(&self.cli, uid, uid, url).with_context(|| {
            format!(
                "GET {url} as uid {uid}; HAProxy sessions: outbound {:?}, outbound6 {:?}",
                self.sessions("outbound", "FRONTEND").ok(),
                self.sessions("outbound6", "FRONTEND").ok()
            )
        })
    }

    /// Sessions HAProxy counted on `proxy`/`server`.
    fn sessions(&self, proxy: &str, server: &str) -> anyhow::Result<u64> {
        apps::haproxy_sessions(&apps::haproxy_stats_socket(&self.scratch), proxy, server)
    }
}

#[test]
fn ipv4_request_goes_through_haproxy_to_its_original_destination() -> anyhow::Result<()> {
    let mesh = Mesh::new()?;
    let url = format!("http://{}:80/", mesh.srv.ip4);

    // The app's request: captured into HAProxy, which learned the original destination and
    // connected there itself (from the client pod's address).
    let body = mesh.get(APP_UID, &url)?;
    assert_eq!(
        body,
        format!(
            "via=haproxy-outbound orig={}:80 peer={}\n",
            mesh.srv.ip4, mesh.cli.ip4
        )
    );

    // The proxy's own identity is exempt: straight to nginx, no proxy header.
    let body = mesh.get(PROXY_UID, &url)?;
    assert_eq!(body, format!("via= orig= peer={}\n", mesh.cli.ip4));

    // HAProxy saw exactly the one captured request and forwarded it once: no retry, no loop
    // back into itself (which a wrong original destination of 127.0.0.1:15001 would cause).
    assert_eq!(mesh.sessions("outbound", "FRONTEND")?, 1);
    assert_eq!(mesh.sessions("orig", "s")?, 1);
    assert_eq!(mesh.sessions("outbound6", "FRONTEND")?, 0);
    Ok(())
}

/// HAProxy cannot forward IPv6 to an original destination (it never asks for
/// `IP6T_SO_ORIGINAL_DST`; see [`apps::start_haproxy`]), so here its IPv6 frontend answers by
/// itself: the test shows the app's IPv6 request is captured into the real proxy with the
/// pod's own source address, and the proxy's own IPv6 traffic still goes straight to nginx.
/// meshsteer's IPv6 original-destination answer itself is covered by the probe matrix
/// (`outbound.rs`).
#[test]
fn ipv6_request_is_captured_into_haproxy() -> anyhow::Result<()> {
    let mesh = Mesh::new()?;
    let url = format!("http://[{}]:80/", mesh.srv.ip6);

    let body = mesh.get(APP_UID, &url)?;
    assert_eq!(
        body,
        format!("via=haproxy-outbound6 peer={}\n", mesh.cli.ip6)
    );

    let body = mesh.get(PROXY_UID, &url)?;
    assert_eq!(body, format!("via= orig= peer={}\n", mesh.cli.ip6));

    assert_eq!(mesh.sessions("outbound6", "FRONTEND")?, 1);
    assert_eq!(mesh.sessions("outbound", "FRONTEND")?, 0);
    Ok(())
}

/// Through both sidecars with meshsteer alone: the client app's request is captured into the
/// client pod's HAProxy (outbound, 15001), which connects to the server pod's address; there
/// sk_lookup hands the connection to the server pod's HAProxy (inbound, 15006), which passes
/// it to nginx from 127.0.0.6. nginx sees both proxies' marks and the passthrough source.
#[test]
fn request_traverses_both_sidecars() -> anyhow::Result<()> {
    let mut mesh = Mesh::new()?;
    let agent = &mesh._agent;
    agent.enrol(&mesh.srv, meshsteer::inspect::INJECTOR_DEFAULT_ARGS)?;
    let inbound =
        apps::start_haproxy_inbound(&mesh.srv, &mesh.scratch, PROXY_UID, PROXY_UID, 15006)?;
    mesh.srv.keep(inbound);
    let url = format!("http://{}:80/both", mesh.srv.ip4);
    let body = mesh.get(APP_UID, &url)?;
    assert_eq!(
        body,
        "out=haproxy-outbound in=haproxy-inbound peer=127.0.0.6\n"
    );
    Ok(())
}
