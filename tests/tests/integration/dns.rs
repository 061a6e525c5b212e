//! DNS capture, differentially: two identical pods whose resolv.conf lists the same
//! nameservers, one with istio-iptables' rules for `--redirect-dns` (nat ISTIO_OUTPUT_DNS and
//! the raw table's conntrack zones, our generator), one enrolled with meshsteer. UDP and TCP
//! queries from the app and from the proxy: which responder answers (the proxy's DNS listener
//! on 15053, or the server asked), the source the app sees answers come from, getpeername,
//! and the source the responder saw must be identical; `meshsteer explain --udp` must agree
//! with the datapath.
use meshsteer::inspect::INJECTOR_DEFAULT_ARGS;
use meshsteer_tests::{
    Pair, Pod, Testbed,
    dns::{self, NOT_DNS, PROXY_DNS, PROXY_TAG, WORLD_TAG},
};
use serde_json::Value;

const APP: (u32, u32) = (1000, 1000);
const PROXY: (u32, u32) = (1337, 1337);
const NS4: &str = "10.200.0.1";
const OTHER4: &str = "10.201.0.1";
const NS6: &str = "fd00:200::1";
const OTHER6: &str = "fd00:201::1";

/// One probe run: `mode` is `udp` (the UDP client) or `connect` (TCP).
struct Case {
    owner: (u32, u32),
    mode: &'static str,
    args: Vec<String>,
}

impl Case {
    fn label(&self) -> String {
        format!("{:?} {} {}", self.owner, self.mode, self.args.join(" "))
    }
    /// The bound source IP, if any (for `explain --src`).
    fn src(&self) -> Option<String> {
        let i = self.args.iter().position(|a| a == "--bind")?;
        let b = &self.args[i + 1];
        // `IP`, `IP:PORT` or `[IP6]:PORT`.
        Some(match b.rsplit_once(':') {
            Some((ip, port)) if port.parse::<u16>().is_ok() && !ip.ends_with(':') => {
                ip.trim_matches(['[', ']']).to_string()
            }
            _ => b.clone(),
        })
    }
}

fn udp(owner: (u32, u32), args: &[&str]) -> Case {
    Case {
        owner,
        mode: "udp",
        args: args.iter().map(ToString::to_string).collect(),
    }
}

fn tcp(owner: (u32, u32), dst: &str) -> Case {
    Case {
        owner,
        mode: "connect",
        args: vec![dst.to_string()],
    }
}

fn addr(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// The app's and the proxy's queries to `ns` (a nameserver of the pod's) and `other` (a
/// server that is not), UDP and TCP, from sockets of every kind the tests know.
fn cases(ns: &str, other: &str, self_ip: &str, other_captured: bool) -> Vec<Case> {
    let (ns53, other53, ns_not) = (addr(ns, 53), addr(other, 53), addr(ns, NOT_DNS));
    let fixed = if ns.contains(':') {
        format!("[{self_ip}]:5300")
    } else {
        format!("{self_ip}:5300")
    };
    let mut c = Vec::new();
    for owner in [APP, PROXY] {
        for dst in [&ns53, &other53, &ns_not] {
            c.push(udp(owner, &[dst]));
            c.push(udp(owner, &["--connect", dst]));
        }
        c.push(tcp(owner, &ns53));
        c.push(tcp(owner, &other53));
    }
    // An AF_INET6 socket reaching an IPv4 server through a mapped address.
    if !ns.contains(':') {
        c.push(udp(APP, &["--v6", &ns53]));
        c.push(udp(APP, &["--v6", "--connect", &ns53]));
    }
    // Bound sources: the pod's IP, and a fixed port with SO_REUSEADDR.
    c.push(udp(APP, &["--bind", self_ip, "--connect", &ns53]));
    c.push(udp(APP, &["--bind", &fixed, "--reuse", &ns53]));
    // One socket, one destination after another: DNS, not DNS, DNS again.
    c.push(udp(APP, &[&ns53, &ns_not, &ns53]));
    c.push(udp(APP, &["--connect", &ns53, &ns_not, &ns53]));
    // And a server that is not captured in between. (Two captured servers from one socket
    // are `two_nameservers_from_one_socket`'s.)
    if !other_captured {
        c.push(udp(APP, &[&ns53, &other53, &ns53]));
        c.push(udp(APP, &["--connect", &ns53, &other53, &ns53]));
    }
    c
}

/// Runs every case in both pods; the mismatches (iptables vs meshsteer, explain vs the
/// datapath), and how many times each responder port answered (under iptables).
fn differential(
    bed: &Testbed,
    pair: &Pair,
    cases: &[Case],
    ignore: &[&str],
) -> anyhow::Result<(Vec<String>, std::collections::BTreeMap<String, usize>)> {
    let mut mismatches = Vec::new();
    let mut landed = std::collections::BTreeMap::new();
    for case in cases {
        let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
        let want = dns::probe(&pair.ipt, case.owner, case.mode, &args)?;
        let got = dns::probe(&pair.ebpf, case.owner, case.mode, &args)?;
        if without(&want, ignore) != without(&got, ignore) {
            mismatches.push(format!(
                "{}\n  iptables:  {want}\n  meshsteer: {got}",
                case.label()
            ));
        }
        for r in results(&want) {
            let port = r.get("landed").or_else(|| r.get("listener"));
            *landed
                .entry(port.map_or("error".into(), ToString::to_string))
                .or_default() += 1;
        }
        check_explain(bed, &pair.ebpf, case, &got, &mut mismatches)?;
    }
    Ok((mismatches, landed))
}

/// `v` without the fields `keys` (at any depth).
fn without(v: &Value, keys: &[&str]) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !keys.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), without(v, keys)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|v| without(v, keys)).collect()),
        other => other.clone(),
    }
}

/// The UDP client's answers, or the TCP probe's one.
fn results(v: &Value) -> Vec<&Value> {
    match v["results"].as_array() {
        Some(a) => a.iter().collect(),
        None => vec![v],
    }
}

/// Where `explain` says each query lands vs the responder that answered it.
fn check_explain(
    bed: &Testbed,
    pod: &Pod,
    case: &Case,
    got: &Value,
    out: &mut Vec<String>,
) -> anyhow::Result<()> {
    let udp = case.mode == "udp";
    let src = case.src();
    for r in results(got) {
        let (landed, dst) = if udp {
            (r["landed"].as_u64(), r["dst"].as_str().map(String::from))
        } else {
            (r["listener"].as_u64(), case.args.first().cloned())
        };
        // Unanswered: nothing to compare (the differential compared the errors).
        let (Some(landed), Some(dst)) = (landed, dst) else {
            continue;
        };
        let said = dns::explain_port(&bed.agent, pod, case.owner, src.as_deref(), &dst, udp)?;
        if said != Some(landed) {
            out.push(format!(
                "{} to {dst}\n  explain:  {said:?}\n  datapath: {landed}",
                case.label()
            ));
        }
    }
    Ok(())
}

fn assert_identical(
    bed: &Testbed,
    pair: &Pair,
    cases: &[Case],
    must_land: &[u16],
) -> anyhow::Result<()> {
    assert_identical_but(bed, pair, cases, must_land, &[])
}

/// [`assert_identical`], the fields `ignore` aside.
fn assert_identical_but(
    bed: &Testbed,
    pair: &Pair,
    cases: &[Case],
    must_land: &[u16],
    ignore: &[&str],
) -> anyhow::Result<()> {
    let (mismatches, landed) = differential(bed, pair, cases, ignore)?;
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
    // The cases must reach the proxy's DNS listener and the servers, or they prove little.
    for port in must_land {
        assert!(
            landed.contains_key(&port.to_string()),
            "nothing landed on {port}: {landed:?}"
        );
    }
    assert!(
        !landed.contains_key("error"),
        "some queries went unanswered: {landed:?}"
    );
    Ok(())
}

/// A testbed with the world's DNS responders (held by the returned guard).
fn bed() -> anyhow::Result<(Testbed, Vec<meshsteer_tests::cmd::Proc>)> {
    let bed = Testbed::new()?;
    let world = dns::start_world(&bed.node)?;
    Ok((bed, world))
}

fn ips(list: &[&str]) -> Vec<std::net::IpAddr> {
    list.iter().map(|a| a.parse().expect("IP")).collect()
}

#[test]
fn redirect_dns() -> anyhow::Result<()> {
    let (mut bed, _world) = bed()?;
    let args = format!("{INJECTOR_DEFAULT_ARGS} --redirect-dns");
    let pair = dns::pair(&mut bed, &args, &ips(&[NS4]))?;
    assert_identical(
        &bed,
        &pair,
        &cases(NS4, OTHER4, "SELF4", false),
        &[PROXY_DNS, 53, NOT_DNS],
    )
}

/// An IPv6 nameserver: the pod's ip6tables rules capture it; an IPv4 server is no
/// nameserver of this pod's, so nothing IPv4 is captured.
#[test]
fn redirect_dns_ipv6() -> anyhow::Result<()> {
    let (mut bed, _world) = bed()?;
    let args = format!("{INJECTOR_DEFAULT_ARGS} --redirect-dns");
    let pair = dns::pair(&mut bed, &args, &ips(&[NS6]))?;
    let mut c = cases(NS6, OTHER6, "SELF6", false);
    c.push(udp(APP, &[&addr(NS4, 53)]));
    c.push(udp(APP, &["--v6", "--connect", &addr(NS4, 53)]));
    assert_identical(&bed, &pair, &c, &[PROXY_DNS, 53, NOT_DNS])
}

/// `--capture-all-dns`: DNS to any server goes to the proxy, IPv4 and IPv6.
#[test]
fn capture_all_dns() -> anyhow::Result<()> {
    let (mut bed, _world) = bed()?;
    let args = format!("{INJECTOR_DEFAULT_ARGS} --redirect-dns --capture-all-dns");
    let pair = dns::pair(&mut bed, &args, &ips(&[NS4]))?;
    let mut c = cases(NS4, OTHER4, "SELF4", true);
    c.extend(cases(NS6, OTHER6, "SELF6", true));
    assert_identical(&bed, &pair, &c, &[PROXY_DNS, 53, NOT_DNS])
}

/// `-o 53`: port 53 is excluded before any DNS rule, TCP and UDP, app and proxy alike.
#[test]
fn excluded_port_53() -> anyhow::Result<()> {
    let (mut bed, _world) = bed()?;
    let args = format!("{INJECTOR_DEFAULT_ARGS} -o 53 --redirect-dns");
    let pair = dns::pair(&mut bed, &args, &ips(&[NS4, NS6]))?;
    let c = vec![
        udp(APP, &[&addr(NS4, 53)]),
        udp(APP, &["--connect", &addr(NS4, 53)]),
        udp(APP, &["--connect", &addr(NS6, 53)]),
        tcp(APP, &addr(NS4, 53)),
        tcp(APP, &addr(NS6, 53)),
    ];
    assert_identical(&bed, &pair, &c, &[53])
}

/// Both of the pod's nameservers from one socket, one after the other, unconnected and
/// re-connected: each answer comes from the server asked, from the proxy's listener. The
/// source port the proxy sees for the second server differs (see
/// `a_second_nameserver_from_one_socket_reaches_the_proxy_from_another_port_under_iptables`).
#[test]
fn two_nameservers_from_one_socket() -> anyhow::Result<()> {
    let (mut bed, _world) = bed()?;
    let args = format!("{INJECTOR_DEFAULT_ARGS} --redirect-dns");
    let pair = dns::pair(&mut bed, &args, &ips(&[NS4, OTHER4, NS6, OTHER6]))?;
    let (a, b) = (addr(NS4, 53), addr(OTHER4, 53));
    let (a6, b6) = (addr(NS6, 53), addr(OTHER6, 53));
    let c = vec![
        udp(APP, &[&a, &b, &a]),
        udp(APP, &["--connect", &a, &b, &a]),
        udp(APP, &[&a6, &b6, &a6]),
        udp(APP, &["--connect", &a6, &b6]),
        udp(APP, &["--v6", &a, &b]),
    ];
    assert_identical_but(&bed, &pair, &c, &[PROXY_DNS], &["saw_own_port"])
}

/// A documented difference: a socket that sent DNS to one nameserver sends to a second.
/// Under iptables both queries are REDIRECTed to the proxy's 127.0.0.1:15053, and their reply
/// tuples would be the same (15053 -> app:port), so conntrack's NAT gives the second query
/// another source port: the proxy sees the app from a port that is not the app's. meshsteer
/// rewrites only the destination, on the socket: the proxy sees the app's own port both
/// times. The app sees the same either way (each answer from the server it asked).
#[test]
fn a_second_nameserver_from_one_socket_reaches_the_proxy_from_another_port_under_iptables()
-> anyhow::Result<()> {
    let (mut bed, _world) = bed()?;
    let args = format!("{INJECTOR_DEFAULT_ARGS} --redirect-dns");
    let pair = dns::pair(&mut bed, &args, &ips(&[NS4, OTHER4]))?;
    let (a, b) = (addr(NS4, 53), addr(OTHER4, 53));
    let own_port = |pod: &Pod| -> anyhow::Result<Vec<Value>> {
        let v = dns::probe(pod, APP, "udp", &[&a, &b])?;
        Ok(results(&v)
            .iter()
            .map(|r| {
                assert_eq!(r["tag"], PROXY_TAG, "{v}");
                r["saw_own_port"].clone()
            })
            .collect())
    };
    assert_eq!(own_port(&pair.ipt)?, [true, false], "iptables");
    assert_eq!(own_port(&pair.ebpf)?, [true, true], "meshsteer");
    Ok(())
}

/// The proxy's upstream socket (uid 1337, bound to pod-IP:5300 with SO_REUSEADDR, connected
/// to the nameserver) queries the real server; then the app's socket, bound to the same
/// pod-IP:5300, queries the same nameserver, unconnected or connected: the same 4-tuple as
/// the proxy's (what istio's conntrack zones keep apart). Then the proxy again. Under
/// meshsteer every answer reaches the socket that asked, from the right responder.
///
/// Under iptables they do not (asserted, to document it): the zones keep the two flows'
/// conntrack entries apart, but the app's answer is un-NATed to come from the nameserver,
/// and the socket lookup that follows prefers the proxy's socket, connected to exactly that
/// address, over the app's unconnected one: the proxy reads the app's answer and the app
/// times out. (With the app's socket connected too, the two sockets tie, and the kernel gave
/// the proxy's second answer to the app; not asserted, a tie-break.)
#[test]
fn proxy_upstream_4_tuple_reused_by_the_app() -> anyhow::Result<()> {
    let (mut bed, _world) = bed()?;
    let args = format!("{INJECTOR_DEFAULT_ARGS} --redirect-dns");
    let pair = dns::pair(&mut bed, &args, &ips(&[NS4, NS6]))?;
    let mut wrong = Vec::new();
    for (bind, server) in [
        ("SELF4:5300", addr(NS4, 53)),
        ("[SELF6]:5300", addr(NS6, 53)),
    ] {
        for app_connect in [false, true] {
            let mut a = vec![bind, server.as_str()];
            if app_connect {
                a.push("--app-connect");
            }
            let got = dns::probe(&pair.ebpf, (0, 0), "udp-reuse", &a)?;
            if let Err(e) = reuse_correct(&got, &server) {
                wrong.push(format!("meshsteer, {a:?}: {e}\n  {got}"));
            }
            let want = dns::probe(&pair.ipt, (0, 0), "udp-reuse", &a)?;
            if !app_connect {
                let stolen =
                    want["app"]["error"] == "timeout" && want["proxy_after"]["query"] == "app";
                assert!(
                    stolen,
                    "iptables no longer gives the app's answer to the proxy: {want}"
                );
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}

/// Each of the three queries answered by the right responder, from the server asked.
fn reuse_correct(v: &Value, server: &str) -> Result<(), String> {
    for (step, tag, query) in [
        ("proxy_before", WORLD_TAG, "proxy-1"),
        ("app", PROXY_TAG, "app"),
        ("proxy_after", WORLD_TAG, "proxy-2"),
    ] {
        let r = &v[step];
        if r["tag"] != tag || r["query"] != query || r["reply_from"] != server {
            return Err(format!(
                "{step} wants {tag} answering {query} from {server}"
            ));
        }
    }
    Ok(())
}

/// A documented difference: one unconnected socket sends to two nameservers before reading
/// either answer. iptables' conntrack un-NATs each answer from the proxy's DNS listener to
/// the server its query went to; meshsteer reports every answer from the proxy as coming from
/// the server that socket most recently sent DNS to (the datapath keeps one server per
/// socket). Both answers reach the app, from the proxy's listener.
#[test]
fn parallel_queries_to_two_nameservers_report_the_last_server() -> anyhow::Result<()> {
    let (mut bed, _world) = bed()?;
    let args = format!("{INJECTOR_DEFAULT_ARGS} --redirect-dns");
    let pair = dns::pair(&mut bed, &args, &ips(&[NS4, OTHER4]))?;
    let (a, b) = (addr(NS4, 53), addr(OTHER4, 53));
    let dsts = ["--parallel", a.as_str(), b.as_str()];
    let by_query = |v: &Value| -> Vec<(String, String, String)> {
        let mut out: Vec<_> = results(v)
            .iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or("?").to_string();
                (s("query"), s("tag"), s("reply_from"))
            })
            .collect();
        out.sort();
        out
    };
    let want = by_query(&dns::probe(&pair.ipt, APP, "udp", &dsts)?);
    let got = by_query(&dns::probe(&pair.ebpf, APP, "udp", &dsts)?);
    let tagged = |q: &str, from: &str| (q.to_string(), PROXY_TAG.to_string(), from.to_string());
    assert_eq!(want, vec![tagged("q0", &a), tagged("q1", &b)], "iptables");
    assert_eq!(got, vec![tagged("q0", &b), tagged("q1", &b)], "meshsteer");
    Ok(())
}

/// Nameservers on the pod's own loopback (a node-local cache, systemd-resolved's
/// 127.0.0.53, `::1`), and a resolver on the pod's own IP that is not a nameserver of its:
/// the app's DNS to a loopback nameserver goes to the proxy; the proxy's reaches the local
/// resolver; TCP 53 to the pod's own IP escapes R10 and is captured as any TCP (the app's) or
/// returns at R11 (the proxy uid's: R9 leaves port 53 alone), or goes to inbound, 15006 (a
/// proxy gid's R9 has no such exception, and 127.0.0.53 is not R9's 127.0.0.1).
#[test]
fn nameservers_on_the_pods_own_addresses() -> anyhow::Result<()> {
    let (mut bed, _world) = bed()?;
    let args = format!("{INJECTOR_DEFAULT_ARGS} --redirect-dns");
    let mut pair = dns::pair(&mut bed, &args, &ips(&["127.0.0.53", "::1"]))?;
    for pod in [&mut pair.ipt, &mut pair.ebpf] {
        let addrs = [
            "127.0.0.53:53".to_string(),
            "[::1]:53".to_string(),
            format!("{}:53", pod.ip4),
            format!("[{}]:53", pod.ip6),
        ];
        for mode in ["udp-serve", "listen"] {
            let mut a = vec![mode, "--tag", "local"];
            a.extend(addrs.iter().map(String::as_str));
            let p = meshsteer_tests::cmd::Proc::spawn_ready(
                &pod.place(0, 0),
                meshsteer_tests::topology::probe_bin(),
                &a,
            )?;
            pod.keep(p);
        }
    }
    let mut c = Vec::new();
    for owner in [APP, PROXY, (1000, 1337)] {
        for dst in ["127.0.0.53:53", "[::1]:53", "SELF4:53", "[SELF6]:53"] {
            c.push(udp(owner, &[dst]));
            c.push(udp(owner, &["--connect", dst]));
            c.push(tcp(owner, dst));
        }
    }
    assert_identical(&bed, &pair, &c, &[PROXY_DNS, 53])
}

/// sendto() with an address on a UDP socket connect()ed elsewhere, still connected or
/// disconnected (connect(AF_UNSPEC)): DNS after a non-DNS peer, non-DNS after a captured
/// nameserver. A connected socket drops answers from anyone but its peer, so some of these go
/// unanswered: the same ones under both. (IPv6 after a disconnect: see
/// `ipv6_sendto_after_disconnect_follows_the_kernels_stale_peer`.)
#[test]
fn sendto_on_a_connected_or_disconnected_socket() -> anyhow::Result<()> {
    let (mut bed, _world) = bed()?;
    let args = format!("{INJECTOR_DEFAULT_ARGS} --redirect-dns");
    let pair = dns::pair(&mut bed, &args, &ips(&[NS4, NS6]))?;
    let mut c = sendto_cases(
        NS4,
        OTHER4,
        &[&["--connect-first"], &["--connect-first", "--disconnect"]],
    );
    c.extend(sendto_cases(NS6, OTHER6, &[&["--connect-first"]]));
    let (mismatches, landed) = differential(&bed, &pair, &c, &[])?;
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    assert!(landed.contains_key(&PROXY_DNS.to_string()), "{landed:?}");
    Ok(())
}

/// A documented difference, from a kernel quirk: connect(AF_UNSPEC) on an IPv6 UDP socket
/// leaves its old peer address in place (`sk_v6_daddr`; IPv4 clears `inet_daddr`), and the
/// socket lookup then takes datagrams only from that address (any port). Under iptables the
/// kernel's peer was the address the app named, so after a disconnect the app still gets
/// answers from that host (a nameserver's 53 after its 5353 and back), and not from another.
/// Under meshsteer a captured connect() makes the kernel's peer [::1]:15053: after the
/// disconnect, a non-DNS answer from the nameserver (the socket's old peer was ::1), or the
/// proxy's answer after a connect() to the nameserver's 5353 (the old peer is the
/// nameserver), is dropped. The datapath sees neither the lookup nor the stale address.
#[test]
fn ipv6_sendto_after_disconnect_follows_the_kernels_stale_peer() -> anyhow::Result<()> {
    let (mut bed, _world) = bed()?;
    let args = format!("{INJECTOR_DEFAULT_ARGS} --redirect-dns");
    let pair = dns::pair(&mut bed, &args, &ips(&[NS4, NS6]))?;
    let flags: &[&[&str]] = &[&["--connect-first", "--disconnect"]];
    let answered = |pod: &Pod| -> anyhow::Result<Vec<(String, bool)>> {
        let mut out = Vec::new();
        for case in sendto_cases(NS6, OTHER6, flags) {
            let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
            let v = dns::probe(pod, case.owner, case.mode, &args)?;
            // The query after the disconnect; the first and last are plain connected ones.
            let second = &results(&v)[1];
            let first = results(&v)[0]["dst"].as_str().unwrap_or("?").to_string();
            out.push((first, second.get("error").is_none()));
        }
        Ok(out)
    };
    let (ns53, ns_not) = (addr(NS6, 53), addr(NS6, NOT_DNS));
    let (other53, row) = (addr(OTHER6, 53), |d: &str, ok| (d.to_string(), ok));
    // Connected first to: the nameserver's 53, then its 5353; its 5353, then its 53; its 53,
    // then another server's; another server's, then the nameserver's 53.
    assert_eq!(
        answered(&pair.ipt)?,
        [
            row(&ns53, true),
            row(&ns_not, true),
            row(&ns53, false),
            row(&other53, false)
        ],
        "iptables"
    );
    assert_eq!(
        answered(&pair.ebpf)?,
        [
            row(&ns53, false),
            row(&ns_not, false),
            row(&ns53, false),
            row(&other53, false)
        ],
        "meshsteer"
    );
    Ok(())
}

/// The app connect()s to the first of two destinations and sendto()s the second, then the
/// first again, for each pair of a nameserver's 53, its 5353 and another server's 53.
fn sendto_cases(ns: &str, other: &str, flag_sets: &[&[&str]]) -> Vec<Case> {
    let (ns53, ns_not, other53) = (addr(ns, 53), addr(ns, NOT_DNS), addr(other, 53));
    let mut c = Vec::new();
    for order in [
        [&ns53, &ns_not],
        [&ns_not, &ns53],
        [&ns53, &other53],
        [&other53, &ns53],
    ] {
        for flags in flag_sets {
            // Some answers never come: waiting less for them keeps the area short.
            let mut a: Vec<&str> = vec!["--timeout-ms", "600"];
            a.extend(flags.iter());
            a.extend(order.iter().map(|s| s.as_str()));
            a.push(order[0]);
            c.push(udp(APP, &a));
        }
    }
    c
}
