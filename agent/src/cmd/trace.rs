//! `meshsteer trace`: live capture decisions, one line each, like a tiny tcpdump for capture.
//!
//! While a trace holds the lease in `MS_TRACE_CTL`, the datapath writes one record per
//! decision to the `MS_TRACE` ring buffer. This command takes the lease, renews it every
//! second, prints the records, and gives the lease back when it stops (SIGINT, SIGTERM, or its
//! output closed). A trace that dies without giving it back costs the datapath nothing once the
//! lease runs out ([`LEASE_NS`]). One trace at a time: a ring buffer has a single reader.
use std::{
    collections::HashMap,
    fs,
    io::{self, Write},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use jiff::Timestamp;
use meshsteer_common::{
    Addr,
    inbound::InRule,
    maps::{
        names, node_counter,
        trace::{TraceEvent, action, direction, proto},
    },
    outbound::Rule,
};
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};

use super::args::TraceArgs;
use crate::{
    bpf::{counters::Counters, pins::Pins, trace::Lease},
    sys::{
        async_fd,
        bytes::read_pod,
        clock::{monotonic_ns, realtime_ns},
    },
    telemetry::status::AgentStatus,
};

/// How often the lease is renewed (well within [`LEASE_NS`]).
const RENEW: Duration = Duration::from_secs(1);

pub async fn run(args: TraceArgs) -> Result<()> {
    let pins = Pins::new(&args.pins.bpffs_dir);
    let ring = RingBuf::try_from(pins.open_map(names::TRACE)?)
        .context("MS_TRACE is not a ring buffer: is the agent as recent as this command?")?;
    let mut ring = async_fd::readable(ring).context("polling the trace ring buffer")?;
    let counters = Counters::from_pins(&pins)?;
    let dropped_before = counters.node(node_counter::TRACE_DROPPED);
    let mut printer = Printer::new(&args);
    // Before the lease: a SIGTERM that comes as soon as the lease shows (a supervisor, or a
    // test, seeing the trace start) must stop the trace cleanly and give the lease back, not
    // kill it with the lease still held.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut lease = Lease::acquire(&pins)?;
    printer.since_ns = lease.since_ns;
    eprintln!(
        "meshsteer trace: capture decisions{}; Ctrl-C to stop",
        args.pod
            .as_ref()
            .map(|p| format!(" of {p}"))
            .unwrap_or_default()
    );
    if let Some(note) = args
        .pod
        .as_deref()
        .and_then(|p| unknown_pod(AgentStatus::read(&args.status.status_file).ok().as_ref(), p))
    {
        eprintln!("meshsteer trace: {note}");
    }
    let mut renew = tokio::time::interval(RENEW);
    let result = loop {
        let step = tokio::select! {
            _ = renew.tick() => lease.renew().and_then(|()| printer.drain(ring.get_mut())),
            guard = ring.readable_mut() => match guard {
                Ok(mut guard) => {
                    let r = printer.drain(guard.get_inner_mut());
                    guard.clear_ready();
                    r
                }
                Err(e) => Err(e).context("waiting for trace records"),
            },
            _ = term.recv() => break Ok(()),
            _ = int.recv() => break Ok(()),
        };
        match step {
            Ok(Flow::Continue) => {}
            Ok(Flow::OutputClosed) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    drop(lease);
    let dropped = counters
        .node(node_counter::TRACE_DROPPED)
        .saturating_sub(dropped_before);
    if dropped > 0 {
        eprintln!("meshsteer trace: {dropped} records lost (ring buffer full)");
    }
    result
}

/// Why `--pod` may never show anything: the agent does not know a pod of that name (yet);
/// names are as in `meshsteer status`, `namespace/name` for Kubernetes pods.
fn unknown_pod(doc: Option<&AgentStatus>, pod: &str) -> Option<String> {
    let Some(doc) = doc else {
        return Some(format!(
            "no agent status to find {pod:?} in; decisions show once the agent enrols it"
        ));
    };
    match doc.pods.iter().find(|p| p.name == pod) {
        Some(p) if p.cgroup_id.is_some() => None,
        Some(p) => Some(format!("{pod:?} is not enrolled yet ({})", p.state)),
        None => Some(format!(
            "the agent knows no pod named {pod:?} (yet); names are as in `meshsteer status`"
        )),
    }
}

/// Whether the printer wants more.
enum Flow {
    Continue,
    OutputClosed,
}

/// Turns records into lines on stdout.
struct Printer {
    pod: Option<String>,
    json: bool,
    names: PodNames,
    since_ns: u64,
    /// Wall clock minus monotonic clock, to date records.
    wall_offset_ns: i128,
}

impl Printer {
    fn new(args: &TraceArgs) -> Self {
        Self {
            pod: args.pod.clone(),
            json: args.json,
            names: PodNames::new(&args.status.status_file),
            since_ns: 0,
            wall_offset_ns: i128::from(realtime_ns()) - i128::from(monotonic_ns()),
        }
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Result<Flow> {
        let mut out = io::stdout().lock();
        while let Some(item) = ring.next() {
            let Some(ev) = parse(&item) else {
                continue;
            };
            drop(item);
            if ev.ktime_ns < self.since_ns {
                continue;
            }
            let pod = self
                .names
                .get(ev.pod_cgroup)
                .unwrap_or_else(|| format!("cgroup:{}", ev.pod_cgroup));
            if self.pod.as_ref().is_some_and(|p| *p != pod) {
                continue;
            }
            let unix_ns = i128::from(ev.ktime_ns) + self.wall_offset_ns;
            let Some(d) = Decision::new(&ev, pod, rfc3339(unix_ns)) else {
                continue;
            };
            let line = if self.json {
                serde_json::to_string(&d)?
            } else {
                d.to_string()
            };
            if writeln!(out, "{line}").is_err() {
                return Ok(Flow::OutputClosed);
            }
        }
        if out.flush().is_err() {
            return Ok(Flow::OutputClosed);
        }
        Ok(Flow::Continue)
    }
}

fn parse(bytes: &[u8]) -> Option<TraceEvent> {
    read_pod(bytes)
}

/// Pod names by pod cgroup id, from the agent's status file (re-read when it changed and an
/// unknown id shows up).
struct PodNames {
    status_file: PathBuf,
    names: HashMap<u64, String>,
    read_at: Option<SystemTime>,
}

impl PodNames {
    fn new(status_file: &Path) -> Self {
        Self {
            status_file: status_file.to_path_buf(),
            names: HashMap::new(),
            read_at: None,
        }
    }

    fn get(&mut self, cgroup_id: u64) -> Option<String> {
        if !self.names.contains_key(&cgroup_id) {
            self.refresh();
        }
        self.names.get(&cgroup_id).cloned()
    }

    fn refresh(&mut self) {
        let mtime = fs::metadata(&self.status_file)
            .and_then(|m| m.modified())
            .ok();
        if mtime.is_none() || mtime == self.read_at {
            return;
        }
        self.read_at = mtime;
        let Ok(doc) = AgentStatus::read(&self.status_file) else {
            return;
        };
        self.names = doc
            .pods
            .iter()
            .filter_map(|p| Some((p.cgroup_id?, p.name.clone())))
            .collect();
    }
}

/// One decision, as printed.
#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
struct Decision {
    time: String,
    pod: String,
    cgroup_id: u64,
    direction: &'static str,
    /// `tcp`, or `udp` (DNS capture).
    proto: &'static str,
    /// The socket owner (outbound only).
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gid: Option<u32>,
    /// Outbound: the bound source address, if any. Inbound: the peer.
    src: Option<String>,
    dst: SocketAddr,
    rule: &'static str,
    action: &'static str,
    /// Where it went: the proxy's port, or its own destination (None: refused).
    landed: Option<SocketAddr>,
}

impl Decision {
    fn new(ev: &TraceEvent, pod: String, time: String) -> Option<Self> {
        let dst = socket(ev.dst, ev.dst_port);
        let proto = match ev.proto {
            proto::UDP => "udp",
            _ => "tcp",
        };
        let (direction, rule, uid, gid, src) = match ev.direction {
            direction::OUTBOUND => (
                "outbound",
                Rule::from_u8(ev.rule)?.name(),
                Some(ev.uid),
                Some(ev.gid),
                (!ev.src.is_unspecified()).then(|| ev.src.to_string()),
            ),
            direction::INBOUND => (
                "inbound",
                InRule::from_u8(ev.rule)?.name(),
                None,
                None,
                Some(socket(ev.src, ev.src_port).to_string()),
            ),
            _ => return None,
        };
        let (action, landed) = match ev.action {
            action::PASSED => ("passed", Some(dst)),
            action::REDIRECTED => (
                "redirected",
                Some(socket(ev.dst.localhost_like(), ev.landed_port)),
            ),
            action::STEERED => ("steered", Some(socket(ev.dst, ev.landed_port))),
            action::REFUSED => ("refused", None),
            _ => return None,
        };
        Some(Self {
            time,
            pod,
            cgroup_id: ev.pod_cgroup,
            direction,
            proto,
            uid,
            gid,
            src,
            dst,
            rule,
            action,
            landed,
        })
    }
}

impl std::fmt::Display for Decision {
    /// `12:00:01.123456 default/web-0 outbound uid=1000 gid=1000 * -> 10.96.0.10:80
    /// included_cidr redirected -> 127.0.0.1:15001`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let clock = self
            .time
            .split_once('T')
            .map_or(self.time.as_str(), |(_, t)| t.trim_end_matches('Z'));
        write!(f, "{clock} {} {}", self.pod, self.direction)?;
        if self.proto != "tcp" {
            write!(f, " {}", self.proto)?;
        }
        if let (Some(uid), Some(gid)) = (self.uid, self.gid) {
            write!(f, " uid={uid} gid={gid}")?;
        }
        let src = self.src.as_deref().unwrap_or("*");
        write!(f, " {src} -> {} {} {}", self.dst, self.rule, self.action)?;
        match self.landed {
            Some(to) if self.action != "passed" => write!(f, " -> {to}"),
            Some(_) => Ok(()),
            None => write!(f, " (no proxy listener: RST)"),
        }
    }
}

fn socket(addr: Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::from(addr), port)
}

/// `2024-05-01T12:00:01.123456Z` (UTC, microseconds, truncated) for nanoseconds since the
/// Unix epoch. Out of range (before 1970, or past 9999) is clamped: a record is never dropped
/// for its date.
fn rfc3339(unix_ns: i128) -> String {
    let ts = Timestamp::from_nanosecond(unix_ns.max(0)).unwrap_or(Timestamp::MAX);
    format!("{ts:.6}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> TraceEvent {
        TraceEvent {
            ktime_ns: 0,
            pod_cgroup: 42,
            src: Addr::UNSPECIFIED_V6,
            dst: Addr::v4([10, 96, 0, 10]),
            uid: 1000,
            gid: 1000,
            dst_port: 80,
            landed_port: 15001,
            direction: direction::OUTBOUND,
            rule: Rule::IncludedCidr as u8,
            action: action::REDIRECTED,
            ..Default::default()
        }
    }

    fn decision(ev: &TraceEvent) -> Decision {
        Decision::new(
            ev,
            "default/web-0".into(),
            rfc3339(1_714_564_801_123_456_789),
        )
        .expect("valid event")
    }

    #[test]
    fn outbound_redirect() {
        let d = decision(&event());
        assert_eq!(d.time, "2024-05-01T12:00:01.123456Z");
        assert_eq!(
            d.to_string(),
            "12:00:01.123456 default/web-0 outbound uid=1000 gid=1000 * -> 10.96.0.10:80 \
             included_cidr redirected -> 127.0.0.1:15001"
        );
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["landed"], "127.0.0.1:15001");
        assert_eq!(json["src"], serde_json::Value::Null);
        assert_eq!(json["cgroupId"], 42);
    }

    #[test]
    fn dns_redirect_says_udp() {
        let mut ev = event();
        ev.proto = proto::UDP;
        ev.dst_port = 53;
        ev.landed_port = 15053;
        ev.rule = Rule::DnsRedirect as u8;
        let d = decision(&ev);
        assert_eq!(
            d.to_string(),
            "12:00:01.123456 default/web-0 outbound udp uid=1000 gid=1000 * -> 10.96.0.10:53 \
             dns_redirect redirected -> 127.0.0.1:15053"
        );
        assert_eq!(serde_json::to_value(&d).unwrap()["proto"], "udp");
    }

    #[test]
    fn inbound_steered_passed_refused() {
        let mut ev = event();
        ev.direction = direction::INBOUND;
        ev.src = Addr::v4([10, 88, 0, 11]);
        ev.src_port = 40000;
        ev.dst = Addr::v4([10, 88, 0, 10]);
        ev.dst_port = 8080;
        ev.rule = InRule::Captured as u8;
        ev.action = action::STEERED;
        ev.landed_port = 15006;
        let d = decision(&ev);
        assert_eq!(d.uid, None);
        assert!(
            d.to_string().ends_with(
                "inbound 10.88.0.11:40000 -> 10.88.0.10:8080 captured steered -> 10.88.0.10:15006"
            ),
            "{d}"
        );
        ev.action = action::REFUSED;
        ev.landed_port = 0;
        assert_eq!(decision(&ev).landed, None);
        ev.rule = InRule::ExcludedPort as u8;
        ev.action = action::PASSED;
        ev.landed_port = 8080;
        let d = decision(&ev);
        assert_eq!(d.landed, Some("10.88.0.10:8080".parse().unwrap()));
        assert!(d.to_string().ends_with("excluded_port passed"), "{d}");
    }

    #[test]
    fn malformed_records_are_skipped() {
        let mut ev = event();
        ev.rule = 200;
        assert!(Decision::new(&ev, String::new(), String::new()).is_none());
        let mut ev = event();
        ev.direction = 9;
        assert!(Decision::new(&ev, String::new(), String::new()).is_none());
        assert!(parse(&[0u8; 8]).is_none());
    }

    #[test]
    fn an_unknown_pod_is_pointed_out() {
        use crate::{
            source::change::SourceKey,
            telemetry::status::{PodState, PodStatus},
        };
        let status = |state: PodState, cgroup_id: Option<u64>| PodStatus {
            name: "ns/web".into(),
            source: SourceKey::Kube {
                namespace: "ns".into(),
                name: "web".into(),
            },
            state,
            cgroup: None,
            cgroup_id,
            pod_id: None,
            capture: None,
            ips: vec![],
            local_addrs: vec![],
            nameservers: vec![],
            nameservers_from: None,
            accelerate: None,
            usage: None,
            fail_closed: false,
            warnings: vec![],
            enrolled_by: None,
            options: None,
            counters: None,
        };
        let doc = |pod| AgentStatus {
            pid: 1,
            metrics_addr: None,
            budget: None,
            pods: vec![pod],
        };
        let ready = doc(status(PodState::Ready, Some(7)));
        assert_eq!(unknown_pod(Some(&ready), "ns/web"), None);
        let note = unknown_pod(Some(&ready), "web").unwrap();
        assert!(note.contains("knows no pod named \"web\""), "{note}");
        let waiting = doc(status(PodState::Waiting("no cgroup".into()), None));
        let note = unknown_pod(Some(&waiting), "ns/web").unwrap();
        assert!(
            note.contains("not enrolled yet (waiting: no cgroup)"),
            "{note}"
        );
        assert!(unknown_pod(None, "ns/web").is_some());
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            rfc3339(86_399_999_999_999),
            "1970-01-01T23:59:59.999999Z",
            "truncated, not rounded"
        );
        assert_eq!(rfc3339(-1), "1970-01-01T00:00:00.000000Z");
    }
}
