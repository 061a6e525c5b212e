//! The outbound probe matrix: identities × sources × destinations, run in a pod, with results
//! normalised so two pods (different addresses, same rules) can be compared.
use anyhow::Result;
use serde_json::Value;

use crate::{Agent, Pod};

pub const APP: (u32, u32) = (1000, 1000);
pub const PROXY: (u32, u32) = (1337, 1337);

#[derive(Clone, Debug)]
pub struct Case {
    /// The socket's creator (owner as iptables sees it).
    pub owner: (u32, u32),
    /// Who calls connect(), if not the creator (a handed-over socket).
    pub connector: Option<(u32, u32)>,
    /// The creator's real uid/gid, when they differ from `owner` (its fs ids): after seteuid,
    /// or with `fs_only` after setfsuid.
    pub real: Option<(u32, u32)>,
    pub fs_only: bool,
    pub bind: Option<&'static str>,
    /// `SELF4`/`SELF6` stand for the pod's own addresses.
    pub dst: &'static str,
    /// An AF_INET6 socket (IPv4 destinations become IPv4-mapped).
    pub v6_socket: bool,
}

impl Case {
    pub fn label(&self) -> String {
        format!(
            "owner={:?} real={:?} fs_only={} connector={:?} bind={:?} dst={} v6sock={}",
            self.owner,
            self.real,
            self.fs_only,
            self.connector,
            self.bind,
            self.dst,
            self.v6_socket
        )
    }
}

/// Destinations off the pod: the node's "world" addresses (see `topology::WORLD_*`).
const REMOTE: &[&str] = &[
    "10.200.0.1:80",
    "10.201.0.1:80",
    "10.200.0.1:3306",
    "10.201.0.1:9000",
    "10.200.0.1:15008",
    "[fd00:200::1]:80",
    "[fd00:201::1]:80",
    "[fd00:201::1]:9000",
];
/// Destinations on the pod itself.
const LOCAL: &[&str] = &[
    "SELF4:80",
    "SELF4:15008",
    "SELF4:3306",
    "127.0.0.1:80",
    "127.0.0.5:80",
    "127.0.0.1:15001",
    "0.0.0.0:80",
    "[SELF6]:80",
    "[SELF6]:15008",
    "[::1]:80",
];

/// Every combination the differential tests run.
pub fn outbound_cases() -> Vec<Case> {
    let owners = [APP, PROXY, (1000, 1337), (1337, 1000)];
    let mut cases = Vec::new();
    for &owner in &owners {
        for &dst in REMOTE.iter().chain(LOCAL) {
            cases.push(Case {
                owner,
                connector: None,
                real: None,
                fs_only: false,
                bind: None,
                dst,
                v6_socket: false,
            });
        }
        for &dst in LOCAL
            .iter()
            .filter(|d| d.starts_with("SELF4") || d.starts_with("127."))
        {
            cases.push(Case {
                owner,
                connector: None,
                real: None,
                fs_only: false,
                bind: Some("127.0.0.6"),
                dst,
                v6_socket: false,
            });
        }
        for &dst in LOCAL
            .iter()
            .filter(|d| d.contains("SELF6") || d.contains("::1"))
        {
            cases.push(Case {
                owner,
                connector: None,
                real: None,
                fs_only: false,
                bind: Some("::6"),
                dst,
                v6_socket: false,
            });
        }
        // IPv4-mapped destinations on AF_INET6 sockets.
        for dst in [
            "10.200.0.1:80",
            "10.201.0.1:9000",
            "SELF4:80",
            "127.0.0.1:80",
            "127.0.0.5:80",
        ] {
            cases.push(Case {
                owner,
                connector: None,
                real: None,
                fs_only: false,
                bind: None,
                dst,
                v6_socket: true,
            });
        }
    }
    // Handed-over sockets: the creator's identity must decide, not the connector's.
    for (owner, connector) in [(PROXY, APP), (APP, PROXY)] {
        for dst in ["10.200.0.1:80", "SELF4:80", "[fd00:200::1]:80"] {
            cases.push(Case {
                owner,
                connector: Some(connector),
                real: None,
                fs_only: false,
                bind: None,
                dst,
                v6_socket: false,
            });
        }
    }
    // A creator whose real ids are not the ones the owner match sees: a proxy started as
    // another user that took the proxy's ids with seteuid or setfsuid, and the reverse.
    for (owner, real) in [(PROXY, APP), (APP, PROXY)] {
        for fs_only in [false, true] {
            for dst in [
                "10.200.0.1:80",
                "SELF4:80",
                "127.0.0.1:80",
                "[fd00:200::1]:80",
            ] {
                cases.push(Case {
                    owner,
                    connector: None,
                    real: Some(real),
                    fs_only,
                    bind: None,
                    dst,
                    v6_socket: false,
                });
            }
        }
    }
    cases
}

/// Runs one case in `pod`; the result is normalised (pod addresses → `SELF4`/`SELF6`).
pub fn run(pod: &Pod, case: &Case) -> Result<Value> {
    let dst = case
        .dst
        .replace("SELF4", &pod.ip4)
        .replace("SELF6", &pod.ip6);
    let mut extra: Vec<String> = Vec::new();
    if let Some(b) = case.bind {
        extra.extend(["--bind".into(), b.into()]);
    }
    if case.v6_socket {
        extra.push("--v6".into());
    }
    // The pod's ids as the host sees them (they differ in a user-namespaced pod).
    let ids = |(u, g): (u32, u32)| format!("{}:{}", u + pod.ids_base, g + pod.ids_base);
    let (uid, gid) = if case.connector.is_some() || case.real.is_some() {
        extra.extend(["--create-as".into(), ids(case.owner)]);
        if let Some(c) = case.connector {
            extra.extend(["--connect-as".into(), ids(c)]);
        }
        if let Some(r) = case.real {
            extra.extend(["--real".into(), ids(r)]);
        }
        if case.fs_only {
            extra.push("--fs-only".into());
        }
        (0, 0)
    } else {
        case.owner
    };
    let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    let v = pod.probe(uid, gid, &dst, &refs)?;
    Ok(normalise(v, pod))
}

fn normalise(v: Value, pod: &Pod) -> Value {
    match v {
        Value::String(s) => Value::String(
            s.replace(&format!("::ffff:{}", pod.ip4), "::ffff:SELF4")
                .replace(&pod.ip4, "SELF4")
                .replace(&pod.ip6, "SELF6"),
        ),
        Value::Object(m) => {
            Value::Object(m.into_iter().map(|(k, v)| (k, normalise(v, pod))).collect())
        }
        other => other,
    }
}

/// Where `meshsteer explain` says the case lands: (port, redirected).
pub fn explain(agent: &Agent, pod: &Pod, case: &Case) -> Result<Value> {
    let dst = case
        .dst
        .replace("SELF4", &pod.ip4)
        .replace("SELF6", &pod.ip6);
    let dst = if case.v6_socket && !dst.starts_with('[') {
        let (ip, port) = dst.rsplit_once(':').unwrap_or_default();
        format!("[::ffff:{ip}]:{port}")
    } else {
        dst
    };
    let (uid, gid) = (case.owner.0.to_string(), case.owner.1.to_string());
    let name = format!("test/{}", pod.name);
    let mut args = vec![
        "explain", "--json", "--pod", &name, "--uid", &uid, "--gid", &gid, "--dst", &dst,
    ];
    if let Some(b) = case.bind {
        args.extend(["--src", b]);
    }
    Ok(serde_json::from_slice(&agent.cli(&args)?)?)
}
