//! Our own generator of the rules `istio-iptables` installs in REDIRECT mode (istio 1.25+
//! rule text and order: the nat table, and with `--redirect-dns` the nat `ISTIO_OUTPUT_DNS`
//! chain and the raw table's conntrack zones), for the differential tests: one pod gets these,
//! its twin gets meshsteer, and the landing tables must match.
use std::{fmt::Write as _, net::IpAddr};

use meshsteer::inspect::{Capture, Cidr, Ports, Ranges};

use crate::cmd::{self, Place};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn localhost(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }
    fn passthrough(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.6/32",
            Family::V6 => "::6/128",
        }
    }
    fn owns(self, c: &Cidr) -> bool {
        c.addr.is_ipv4() == (self == Family::V4)
    }
    fn owns_ip(self, ip: &IpAddr) -> bool {
        ip.is_ipv4() == (self == Family::V4)
    }
    /// A nameserver as a one-address CIDR, as istio-iptables writes it (`s+"/32"`).
    fn host(self, ip: &IpAddr) -> String {
        match self {
            Family::V4 => format!("{ip}/32"),
            Family::V6 => format!("{ip}/128"),
        }
    }
}

/// The proxy's DNS listener (istio's `IstioAgentDNSListenerPort`).
pub const DNS_PROXY_PORT: u16 = 15053;

/// The `iptables-restore --noflush` input for one family, without nameservers (so
/// `--redirect-dns` alone captures nothing, as istio-iptables with none).
pub fn restore(c: &Capture, f: Family) -> String {
    restore_dns(c, f, &[])
}

/// Whether istio-iptables writes DNS rules at all: `--redirect-dns` with no nameserver (of
/// either family) and no `--capture-all-dns` is switched off with a warning (run.go's Run).
fn redirect_dns(c: &Capture, nameservers: &[IpAddr]) -> bool {
    c.redirect_dns && (c.capture_all_dns || !nameservers.is_empty())
}

/// [`restore`] for a pod whose resolv.conf lists `nameservers` (both families: each family's
/// rules take its own).
pub fn restore_dns(c: &Capture, f: Family, nameservers: &[IpAddr]) -> String {
    let dns = redirect_dns(c, nameservers);
    let servers: Vec<&IpAddr> = nameservers.iter().filter(|s| f.owns_ip(s)).collect();
    // SetupDNSRedir jumps to nat's ISTIO_OUTPUT_DNS only in a family it has rules for.
    let nat_dns = dns && (c.capture_all_dns || !servers.is_empty());
    let mut r = String::from(
        "* nat\n-N ISTIO_INBOUND\n-N ISTIO_REDIRECT\n-N ISTIO_IN_REDIRECT\n-N ISTIO_OUTPUT\n",
    );
    if nat_dns {
        r.push_str("-N ISTIO_OUTPUT_DNS\n");
    }
    let mut add = |rule: String| {
        let _ = writeln!(r, "-A {rule}");
    };
    add(format!(
        "ISTIO_INBOUND -p tcp --dport {} -j RETURN",
        c.tunnel_port
    ));
    add(format!(
        "ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        c.proxy_port
    ));
    add(format!(
        "ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        c.inbound_port
    ));
    match &c.include_inbound_ports {
        Ports::All => {
            add("PREROUTING -p tcp -j ISTIO_INBOUND".into());
            for p in &c.exclude_inbound_ports {
                add(format!("ISTIO_INBOUND -p tcp --dport {p} -j RETURN"));
            }
            add("ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT".into());
        }
        Ports::List(list) if !list.is_empty() => {
            add("PREROUTING -p tcp -j ISTIO_INBOUND".into());
            for p in list {
                add(format!(
                    "ISTIO_INBOUND -p tcp --dport {p} -j ISTIO_IN_REDIRECT"
                ));
            }
        }
        Ports::List(_) => {}
    }
    add("OUTPUT -j ISTIO_OUTPUT".into());
    for p in &c.exclude_outbound_ports {
        add(format!("ISTIO_OUTPUT -p tcp --dport {p} -j RETURN"));
        add(format!("ISTIO_OUTPUT -p udp --dport {p} -j RETURN"));
    }
    add(format!(
        "ISTIO_OUTPUT -o lo -s {} -j RETURN",
        f.passthrough()
    ));
    let loopback_included =
        matches!(&c.include_outbound_cidrs, Ranges::List(l) if l.iter().any(Cidr::is_loopback));
    let owners = c
        .proxy_uids
        .iter()
        .map(|u| ("uid", *u))
        .chain(c.gids().iter().map(|g| ("gid", *g)));
    for (kind, id) in owners.clone() {
        // With DNS capture, a uid's R9 leaves TCP 53 alone (the proxy's DNS goes straight
        // out, not through inbound); a gid's does not (run.go has no such branch for gids).
        let r9_ports = if dns && kind == "uid" {
            format!("-m multiport ! --dports 53,{}", c.tunnel_port)
        } else {
            format!("! --dport {}", c.tunnel_port)
        };
        add(format!(
            "ISTIO_OUTPUT -o lo ! -d {} -p tcp {r9_ports} -m owner --{kind}-owner {id} -j ISTIO_IN_REDIRECT",
            f.localhost(),
        ));
        if !loopback_included {
            // With DNS capture, the app's TCP DNS to a server on the pod's own addresses
            // goes on to ISTIO_OUTPUT_DNS.
            let proto = if dns { "-p tcp ! --dport 53 " } else { "" };
            add(format!(
                "ISTIO_OUTPUT -o lo {proto}-m owner ! --{kind}-owner {id} -j RETURN"
            ));
        }
        add(format!(
            "ISTIO_OUTPUT -m owner --{kind}-owner {id} -j RETURN"
        ));
    }
    if nat_dns {
        add("ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS".into());
        for proto in ["tcp", "udp"] {
            // UDP's target option is `--to-port` in run.go, TCP's `--to-ports`: one option.
            let to = if proto == "tcp" {
                "--to-ports"
            } else {
                "--to-port"
            };
            if c.capture_all_dns {
                add(format!(
                    "ISTIO_OUTPUT_DNS -p {proto} --dport 53 -j REDIRECT {to} {DNS_PROXY_PORT}"
                ));
            } else {
                for s in &servers {
                    add(format!(
                        "ISTIO_OUTPUT_DNS -p {proto} --dport 53 -d {} -j REDIRECT {to} {DNS_PROXY_PORT}",
                        f.host(s)
                    ));
                }
            }
        }
    }
    add(format!("ISTIO_OUTPUT -d {} -j RETURN", f.localhost()));
    for cidr in c.exclude_outbound_cidrs.iter().filter(|x| f.owns(x)) {
        add(format!("ISTIO_OUTPUT -d {cidr} -j RETURN"));
    }
    for p in &c.include_outbound_ports {
        add(format!("ISTIO_OUTPUT -p tcp --dport {p} -j ISTIO_REDIRECT"));
    }
    match &c.include_outbound_cidrs {
        Ranges::All => add("ISTIO_OUTPUT -j ISTIO_REDIRECT".into()),
        Ranges::List(list) => {
            for cidr in list.iter().filter(|x| f.owns(x)) {
                add(format!("ISTIO_OUTPUT -d {cidr} -j ISTIO_REDIRECT"));
            }
        }
    }
    r.push_str("COMMIT\n");
    if dns {
        r.push_str(&raw_zones(c, f, &servers, owners));
    }
    r
}

/// addDNSConntrackZones: the proxy's upstream queries (and their answers) in conntrack zone 1,
/// the app's queries to the proxy (and its answers) in zone 2, so that an app socket and a
/// proxy socket with the same 4-tuple never share a conntrack entry.
fn raw_zones<'a>(
    c: &Capture,
    f: Family,
    servers: &[&IpAddr],
    owners: impl Iterator<Item = (&'a str, u32)>,
) -> String {
    let inbound = c.capture_all_dns || !servers.is_empty();
    let mut r = String::from("* raw\n-N ISTIO_OUTPUT_DNS\n");
    if inbound {
        r.push_str("-N ISTIO_INBOUND\n");
    }
    let mut add = |rule: String| {
        let _ = writeln!(r, "-A {rule}");
    };
    add("OUTPUT -j ISTIO_OUTPUT_DNS".into());
    for (kind, id) in owners {
        add(format!(
            "ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --{kind}-owner {id} -j CT --zone 1"
        ));
        add(format!(
            "ISTIO_OUTPUT_DNS -p udp --sport {DNS_PROXY_PORT} -m owner --{kind}-owner {id} -j CT --zone 2"
        ));
    }
    if inbound {
        add("PREROUTING -j ISTIO_INBOUND".into());
    }
    if c.capture_all_dns {
        add("ISTIO_OUTPUT_DNS -p udp --dport 53 -j CT --zone 2".into());
        add("ISTIO_INBOUND -p udp --sport 53 -j CT --zone 1".into());
    } else {
        for s in servers {
            let s = f.host(s);
            add(format!(
                "ISTIO_OUTPUT_DNS -p udp --dport 53 -d {s} -j CT --zone 2"
            ));
            add(format!(
                "ISTIO_INBOUND -p udp --sport 53 -s {s} -j CT --zone 1"
            ));
        }
    }
    r.push_str("COMMIT\n");
    r
}

/// Installs the rules for both families inside a namespace, and `::6/128` on its `lo` (as
/// istio-init does in a pod it writes ip6tables rules for: Envoy's IPv6 passthrough source).
pub fn install(netns: &std::path::Path, c: &Capture) -> anyhow::Result<()> {
    install_in(netns, None, c)
}

/// [`install`] for a pod whose resolv.conf lists `nameservers`.
pub fn install_dns(
    netns: &std::path::Path,
    c: &Capture,
    nameservers: &[IpAddr],
) -> anyhow::Result<()> {
    install_as(netns, None, c, nameservers)
}

/// [`install`] in a user-namespaced pod's network namespace: as istio-init does, from inside
/// the pod's user namespace (that of `holder`), where xt_owner reads `--uid-owner`; it refuses
/// owner rules written from any other.
pub fn install_in(netns: &std::path::Path, holder: Option<u32>, c: &Capture) -> anyhow::Result<()> {
    install_as(netns, holder, c, &[])
}

fn install_as(
    netns: &std::path::Path,
    holder: Option<u32>,
    c: &Capture,
    nameservers: &[IpAddr],
) -> anyhow::Result<()> {
    let place = Place {
        netns: Some(netns),
        ..Default::default()
    };
    let target = holder.map(|pid| pid.to_string());
    for (tool, f) in [
        ("iptables-restore", Family::V4),
        ("ip6tables-restore", Family::V6),
    ] {
        let text = restore_dns(c, f, nameservers);
        let mut child = match &target {
            None => cmd::command(&place, tool, &["--noflush"])?,
            Some(pid) => cmd::command(
                &Place::default(),
                "nsenter",
                &["--target", pid, "--user", "--net", tool, "--noflush"],
            )?,
        }
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), text.as_bytes())?;
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "{tool} failed: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // istio-init adds it once per pod; `replace`, because the twin may be installed again in
    // the same pod (the benchmark's CIDR scaling re-installs it at each size).
    let add = ["-6", "addr", "replace", "::6/128", "dev", "lo"];
    match &target {
        None => cmd::run(&place, "ip", &add)?,
        Some(pid) => {
            let mut args = vec!["--target", pid, "--user", "--net", "ip"];
            args.extend(add);
            cmd::run(&Place::default(), "nsenter", &args)?
        }
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_match_istio() {
        let c = Capture::from_args(meshsteer::inspect::INJECTOR_DEFAULT_ARGS).unwrap();
        let v4 = restore(&c, Family::V4);
        let expected = "\
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
";
        assert!(v4.ends_with(expected), "{v4}");
        assert!(v4.contains("-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN\n"));
        assert!(restore(&c, Family::V6).contains("-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN\n"));
    }

    /// istio's testdata/dns-uid-gid.golden (uids 3,4, gids 1,2, one nameserver per family,
    /// `--redirect-dns`), IPv4 and IPv6. The golden's nat ISTIO_OUTPUT_DNS also has
    /// `-p udp --dport 53 -m owner --uid-owner N -j RETURN` per owner, which run.go's
    /// SetupDNSRedir no longer writes: dead rules in any case, as R11 returned the proxy's
    /// traffic of every protocol before the jump. They are left out here.
    #[test]
    fn dns_rules_match_istio_golden() {
        let c = Capture::from_args("-p 15001 -z 15006 -u 3,4 -g 1,2 -m REDIRECT --redirect-dns")
            .unwrap();
        let v6: IpAddr = "::127.0.0.53".parse().unwrap();
        let servers = ["127.0.0.53".parse().unwrap(), v6];
        for (f, local, passthrough, ns) in [
            (
                Family::V4,
                "127.0.0.1/32",
                "127.0.0.6/32",
                "127.0.0.53/32".to_string(),
            ),
            (Family::V6, "::1/128", "::6/128", format!("{v6}/128")),
        ] {
            let owner = |kind: &str, id: u32, r9: &str| {
                format!(
                    "-A ISTIO_OUTPUT -o lo ! -d {local} -p tcp {r9} -m owner --{kind}-owner {id} -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --{kind}-owner {id} -j RETURN
-A ISTIO_OUTPUT -m owner --{kind}-owner {id} -j RETURN
"
                )
            };
            let uid_r9 = "-m multiport ! --dports 53,15008";
            let gid_r9 = "! --dport 15008";
            let zones = |kind: &str, id: u32| {
                format!(
                    "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --{kind}-owner {id} -j CT --zone 1
-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --{kind}-owner {id} -j CT --zone 2
"
                )
            };
            let expected = format!(
                "* nat
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-N ISTIO_OUTPUT_DNS
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s {passthrough} -j RETURN
{}{}{}{}-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS
-A ISTIO_OUTPUT_DNS -p tcp --dport 53 -d {ns} -j REDIRECT --to-ports 15053
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d {ns} -j REDIRECT --to-port 15053
-A ISTIO_OUTPUT -d {local} -j RETURN
COMMIT
* raw
-N ISTIO_OUTPUT_DNS
-N ISTIO_INBOUND
-A OUTPUT -j ISTIO_OUTPUT_DNS
{}{}{}{}-A PREROUTING -j ISTIO_INBOUND
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d {ns} -j CT --zone 2
-A ISTIO_INBOUND -p udp --sport 53 -s {ns} -j CT --zone 1
COMMIT
",
                owner("uid", 3, uid_r9),
                owner("uid", 4, uid_r9),
                owner("gid", 1, gid_r9),
                owner("gid", 2, gid_r9),
                zones("uid", 3),
                zones("uid", 4),
                zones("gid", 1),
                zones("gid", 2),
            );
            assert_eq!(restore_dns(&c, f, &servers), expected);
        }
    }

    /// `--capture-all-dns`: no `-d`, every family jumps; `--redirect-dns` with no nameserver
    /// (and no capture-all) writes nothing of DNS, R9/R10 included.
    #[test]
    fn capture_all_dns_and_no_nameserver() {
        let all = Capture::from_args("-u 1337 -i '*' --redirect-dns --capture-all-dns").unwrap();
        let v4: IpAddr = "10.0.0.10".parse().unwrap();
        for f in [Family::V4, Family::V6] {
            let r = restore_dns(&all, f, &[v4]);
            for rule in [
                "-A ISTIO_OUTPUT_DNS -p tcp --dport 53 -j REDIRECT --to-ports 15053\n",
                "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j REDIRECT --to-port 15053\n",
                "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j CT --zone 2\n",
                "-A ISTIO_INBOUND -p udp --sport 53 -j CT --zone 1\n",
                "-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS\n",
            ] {
                assert!(r.contains(rule), "{rule} missing from\n{r}");
            }
            assert!(!r.contains("-d 10.0.0.10"), "{r}");
        }
        // Only an IPv4 nameserver: IPv6 gets the raw owner zones but no nat jump.
        let some = Capture::from_args("-u 1337 -i '*' --redirect-dns").unwrap();
        let v6 = restore_dns(&some, Family::V6, &[v4]);
        assert!(!v6.contains("ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS"), "{v6}");
        assert!(v6.contains("-A OUTPUT -j ISTIO_OUTPUT_DNS\n"), "{v6}");
        assert!(!v6.contains("PREROUTING"), "{v6}");
        let none = restore_dns(&some, Family::V4, &[]);
        assert_eq!(
            none,
            restore_dns(
                &Capture::from_args("-u 1337 -i '*'").unwrap(),
                Family::V4,
                &[]
            )
        );
    }
}
