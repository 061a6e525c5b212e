//! `meshsteer explain`: the datapath's decision function run on a pod's settings: those the
//! running agent has in effect (from its status file, whatever the pod's source), else those
//! of its spec file.
use std::{
    collections::BTreeSet,
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use meshsteer_common::{
    Addr,
    inbound::{self, Incoming},
    outbound::{Connection, Proto, Verdict, decide},
};

use super::args::ExplainArgs;
use crate::{
    spec::{plan::Plan, pod::PodSpec},
    telemetry::status::{AgentStatus, PodStatus},
};

/// Where the settings explained came from.
#[derive(Debug)]
enum Origin {
    /// The running agent's status file: the settings in effect.
    Agent,
    SpecFile(PathBuf),
}

impl Origin {
    fn describe(&self) -> String {
        match self {
            Self::Agent => "agent".into(),
            Self::SpecFile(p) => p.display().to_string(),
        }
    }
}

pub fn run(a: &ExplainArgs) -> Result<()> {
    let (spec, from, local_addrs) = find(a)?;
    // The other addresses of the pod's namespace the agent has as local, as it has them.
    let (plan, _) = Plan::new(&spec, 1)?.with_netns_addrs(&local_addrs, u32::MAX);
    if a.inbound {
        return inbound(a, &spec, &plan, &from);
    }
    let conn = Connection {
        proto: if a.udp { Proto::Udp } else { Proto::Tcp },
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
            "from": from.describe(),
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
fn inbound(a: &ExplainArgs, spec: &PodSpec, plan: &Plan, from: &Origin) -> Result<()> {
    let Some(src) = a.src else {
        bail!("--inbound needs --src <remote address>")
    };
    let incoming = Incoming {
        remote: Addr::from(src),
        local: Addr::from(a.dst.ip()),
        local_port: a.dst.port(),
    };
    let rule = inbound::decide(&plan.config, plan, &incoming);
    let port = if rule.steers() {
        plan.config.inbound_port
    } else {
        a.dst.port()
    };
    let lands = format!("listener on port {port} (local address {})", a.dst);
    if a.json {
        let out = serde_json::json!({
            "pod": spec.name,
            "from": from.describe(),
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

/// The pod's settings: the running agent's, if it has the pod enrolled; else its spec file's.
/// No agent running, or one that does not know the pod, is not an error while a spec file
/// names it.
fn find(a: &ExplainArgs) -> Result<(PodSpec, Origin, BTreeSet<IpAddr>)> {
    let known = AgentStatus::read(&a.status.status_file)
        .ok()
        .and_then(|doc| doc.pods.into_iter().find(|p| p.name == a.pod));
    if let Some(p) = &known
        && let Some(spec) = enrolled(p)
    {
        return Ok((spec, Origin::Agent, p.local_addrs.iter().copied().collect()));
    }
    match find_spec(&a.pods_dir, &a.pod) {
        Ok((spec, path)) => Ok((spec, Origin::SpecFile(path), BTreeSet::new())),
        Err(e) => match known {
            // Known but not enrolled (waiting or refused): say so rather than "no such pod".
            Some(p) => bail!(
                "pod {:?} has no capture in effect ({}), and {e:#}",
                a.pod,
                p.state
            ),
            None => Err(e.context(format!(
                "the agent's status ({}) does not name it either",
                a.status.status_file.display()
            ))),
        },
    }
}

/// The spec equivalent of what the agent has in effect for an enrolled pod.
fn enrolled(p: &PodStatus) -> Option<PodSpec> {
    Some(PodSpec {
        name: p.name.clone(),
        cgroup: p.cgroup.clone().unwrap_or_default(),
        netns: None,
        ips: p.ips.clone(),
        args: None,
        capture: Some(p.capture.clone()?),
        accelerate: p.accelerate,
        nameservers: Some(p.nameservers.clone()),
        resolv_conf: None,
        kube_nameservers: None,
    })
}

fn find_spec(dir: &Path, name: &str) -> Result<(PodSpec, PathBuf)> {
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for e in entries.flatten() {
        let path = e.path();
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        if let Ok(spec) = PodSpec::parse(&text, &path)
            && spec.name == name
        {
            return Ok((spec, path));
        }
    }
    bail!("no pod named {name:?} in {}", dir.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cmd::args::StatusFileArgs,
        source::change::SourceKey,
        spec::istio::Capture,
        telemetry::status::{AgentStatus, PodState},
    };

    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn args(dir: &Path, pod: &str) -> ExplainArgs {
        ExplainArgs {
            pod: pod.into(),
            uid: 1000,
            gid: None,
            src: None,
            dst: "10.0.0.9:80".parse().unwrap(),
            pods_dir: dir.join("pods"),
            status: StatusFileArgs {
                status_file: dir.join("status.json"),
            },
            inbound: false,
            udp: false,
            json: true,
        }
    }

    fn pod(name: &str, state: PodState, capture: Option<Capture>) -> PodStatus {
        PodStatus {
            name: name.into(),
            source: SourceKey::Kube {
                namespace: "ns".into(),
                name: name.rsplit('/').next().unwrap().into(),
            },
            state,
            cgroup: Some("/sys/fs/cgroup/kubepods/podx".into()),
            cgroup_id: capture.as_ref().map(|_| 7),
            pod_id: capture.as_ref().map(|_| 1),
            ips: capture
                .as_ref()
                .map(|_| vec!["10.0.0.5".parse().unwrap()])
                .unwrap_or_default(),
            local_addrs: vec![],
            nameservers: vec![],
            nameservers_from: None,
            capture,
            accelerate: None,
            usage: None,
            fail_closed: false,
            warnings: vec![],
            enrolled_by: None,
            options: None,
            counters: None,
        }
    }

    #[test]
    fn pods_of_any_source_are_explained_from_the_agents_state_else_their_spec_file() {
        let dir = Scratch(std::env::temp_dir().join(format!("ms-explain-{}", std::process::id())));
        fs::create_dir_all(dir.0.join("pods")).unwrap();
        let mut excluding = Capture::from_args(crate::spec::istio::INJECTOR_DEFAULT_ARGS).unwrap();
        excluding.exclude_outbound_ports = vec![80];
        AgentStatus {
            pid: 1,
            metrics_addr: None,
            budget: None,
            pods: vec![
                pod("ns/web", PodState::Ready, Some(excluding.clone())),
                pod("ns/new", PodState::Waiting("no cgroup yet".into()), None),
                pod("ns/filed", PodState::Error("bad".into()), None),
            ],
        }
        .write(&dir.0.join("status.json"))
        .unwrap();
        fs::write(
            dir.0.join("pods/filed.yaml"),
            "name: ns/filed\ncgroup: /x\nips: [10.0.0.6]\n",
        )
        .unwrap();

        // A Kubernetes pod, known only to the agent: its settings in effect.
        let (spec, from, _) = find(&args(&dir.0, "ns/web")).unwrap();
        assert!(matches!(from, Origin::Agent));
        assert_eq!(spec.capture().unwrap(), excluding);
        assert_eq!(spec.ips, ["10.0.0.5".parse::<std::net::IpAddr>().unwrap()]);

        // Not enrolled but filed: its spec file.
        let (spec, from, _) = find(&args(&dir.0, "ns/filed")).unwrap();
        assert!(matches!(from, Origin::SpecFile(p) if p.ends_with("filed.yaml")));
        assert_eq!(spec.ips, ["10.0.0.6".parse::<std::net::IpAddr>().unwrap()]);

        // Known, neither enrolled nor filed: why not.
        let e = format!("{:#}", find(&args(&dir.0, "ns/new")).unwrap_err());
        assert!(
            e.starts_with("pod \"ns/new\" has no capture in effect (waiting: no cgroup yet)"),
            "{e}"
        );
        let e = format!("{:#}", find(&args(&dir.0, "ns/none")).unwrap_err());
        assert!(e.contains("does not name it either"), "{e}");
    }
}
