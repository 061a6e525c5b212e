//! Our own generator of the nat rules `istio-iptables` installs in REDIRECT mode (istio 1.25+
//! rule text and order), for the differential tests: one pod gets these, its twin gets
//! meshsteer, and the landing tables must match.
use std::fmt::Write as _;

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
}

/// The `iptables-restore --noflush` input for one family.
pub fn restore(c: &Capture, f: Family) -> String {
    let mut r = String::from(
        "* nat\n-N ISTIO_INBOUND\n-N ISTIO_REDIRECT\n-N ISTIO_IN_REDIRECT\n-N ISTIO_OUTPUT\n",
    );
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
    for (kind, id) in owners {
        add(format!(
            "ISTIO_OUTPUT -o lo ! -d {} -p tcp ! --dport {} -m owner --{kind}-owner {id} -j ISTIO_IN_REDIRECT",
            f.localhost(),
            c.tunnel_port
        ));
        if !loopback_included {
            add(format!(
                "ISTIO_OUTPUT -o lo -m owner ! --{kind}-owner {id} -j RETURN"
            ));
        }
        add(format!(
            "ISTIO_OUTPUT -m owner --{kind}-owner {id} -j RETURN"
        ));
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
    r
}

/// Installs the rules for both families inside a namespace, and `::6/128` on its `lo` (as
/// istio-init does in a pod it writes ip6tables rules for: Envoy's IPv6 passthrough source).
pub fn install(netns: &std::path::Path, c: &Capture) -> anyhow::Result<()> {
    install_in(netns, None, c)
}

/// [`install`] in a user-namespaced pod's network namespace: as istio-init does, from inside
/// the pod's user namespace (that of `holder`), where xt_owner reads `--uid-owner`; it refuses
/// owner rules written from any other.
pub fn install_in(netns: &std::path::Path, holder: Option<u32>, c: &Capture) -> anyhow::Result<()> {
    let place = Place {
        netns: Some(netns),
        ..Default::default()
    };
    let target = holder.map(|pid| pid.to_string());
    for (tool, f) in [
        ("iptables-restore", Family::V4),
        ("ip6tables-restore", Family::V6),
    ] {
        let text = restore(c, f);
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
}
