//! `meshsteer explain`: the datapath's decision function run on a pod's spec.
use std::{fs, net::SocketAddr, path::Path};

use anyhow::{Context, Result, bail};
use meshsteer_common::{
    Addr,
    outbound::{Connection, Verdict, decide},
};

use super::args::ExplainArgs;
use crate::spec::{plan::Plan, pod::PodSpec};

pub fn run(a: &ExplainArgs) -> Result<()> {
    let spec = find_spec(&a.pods_dir, &a.pod)?;
    let plan = Plan::new(&spec, 1)?;
    if a.inbound {
        return inbound(a, &spec, &plan);
    }
    let conn = Connection {
        uid: a.uid,
        gid: a.gid.unwrap_or(a.uid),
        src: a.src.map_or(Addr::UNSPECIFIED_V6, Addr::from),
        dst: Addr::from(a.dst.ip()),
        dport: a.dst.port(),
    };
    let v = decide(&plan.config, &plan, &conn);
    let lands = landing(&v, &a.dst);
    if a.json {
        let out = serde_json::json!({
            "pod": spec.name,
            "lands": lands.to_string(),
            "redirected": v.is_redirect(),
            "rule": v.rule.name(),
            "because": v.rule.describe(),
        });
        println!("{out}");
    } else {
        println!("{} -> {lands}", a.dst);
        println!("  rule: {} ({})", v.rule.name(), v.rule.describe());
    }
    Ok(())
}

/// ISTIO_INBOUND: which listener an arriving connection is handed to (no NAT: the proxy's
/// listener sees the original destination as its local address).
fn inbound(a: &ExplainArgs, spec: &PodSpec, plan: &Plan) -> Result<()> {
    let Some(src) = a.src else {
        bail!("--inbound needs --src <remote address>")
    };
    let rule =
        meshsteer_common::inbound::decide(&plan.config, plan, &Addr::from(src), a.dst.port());
    let port = if rule.steers() {
        plan.config.inbound_port
    } else {
        a.dst.port()
    };
    let lands = format!("listener on port {port} (local address {})", a.dst);
    if a.json {
        let out = serde_json::json!({
            "pod": spec.name,
            "listener_port": port,
            "steered": rule.steers(),
            "rule": rule.name(),
            "because": rule.describe(),
        });
        println!("{out}");
    } else {
        println!("{src} -> {} lands on the {lands}", a.dst);
        println!("  rule: {} ({})", rule.name(), rule.describe());
    }
    Ok(())
}

/// Where the connection ends up: REDIRECT in OUTPUT sends it to the family's localhost.
pub fn landing(v: &Verdict, dst: &SocketAddr) -> SocketAddr {
    if v.is_redirect() {
        let local = Addr::from(dst.ip()).localhost_like();
        SocketAddr::new(local.into(), v.redirect_port)
    } else {
        *dst
    }
}

fn find_spec(dir: &Path, name: &str) -> Result<PodSpec> {
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for e in entries.flatten() {
        let path = e.path();
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        if let Ok(spec) = PodSpec::parse(&text, &path)
            && spec.name == name
        {
            return Ok(spec);
        }
    }
    bail!("no pod named {name:?} in {}", dir.display())
}
