//! What enrolling a pod writes into the maps, computed up front from its spec.
use std::{collections::BTreeSet, net::IpAddr};

use meshsteer_common::{
    Addr,
    maps::{
        CidrKey, DnsServerKey, LocalKey, MAX_PROXY_IDS, PodConfig, PortKey, PortSet, pod_flags,
    },
    outbound::PodTables,
};

use super::{
    istio::{Capture, Cidr, Ports, Ranges},
    pod::{PodSpec, SpecError},
    resolv::MAX_NAMESERVERS,
};

/// Everything enrolling a pod writes, computed up front so a bad spec never half-enrolls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub config: PodConfig,
    pub ports: BTreeSet<PortKey>,
    pub cidr_exclude: Vec<(CidrKey, u32)>,
    pub cidr_include: Vec<(CidrKey, u32)>,
    pub local: Vec<LocalKey>,
    /// `MS_DNS_SERVERS`: the nameservers `--redirect-dns` captures (see
    /// [`Plan::with_nameservers`]).
    pub dns: Vec<DnsServerKey>,
    /// Kept for `explain`: the same sets in matchable form.
    capture: Capture,
    ips: Vec<IpAddr>,
    /// The other addresses of the pod's network namespace in `local` (see
    /// [`Plan::with_netns_addrs`]).
    netns_addrs: Vec<IpAddr>,
}

impl Plan {
    /// Turns socket-level acceleration on or off for the pod.
    pub fn set_accelerate(&mut self, on: bool) {
        if on {
            self.config.flags |= pod_flags::ACCELERATE;
        } else {
            self.config.flags &= !pod_flags::ACCELERATE;
        }
    }

    /// The settings the plan was made from, for the status file and `explain`.
    pub fn capture(&self) -> &Capture {
        &self.capture
    }

    /// The pod's addresses the plan was made for.
    pub fn ips(&self) -> &[IpAddr] {
        &self.ips
    }

    pub fn accelerates(&self) -> bool {
        self.config.flags & pod_flags::ACCELERATE != 0
    }

    /// A pod enrolled fail closed ([`pod_flags::REFUSED`]): no sets, its connect()s fail, and
    /// connections to `ips` (mapped for inbound when they are free) are refused.
    pub fn refused(ips: &[IpAddr]) -> Self {
        Self {
            config: PodConfig {
                flags: pod_flags::REFUSED,
                ..PodConfig::default()
            },
            ports: BTreeSet::new(),
            cidr_exclude: vec![],
            cidr_include: vec![],
            local: vec![],
            dns: vec![],
            capture: Capture::default(),
            ips: ips.to_vec(),
            netns_addrs: vec![],
        }
    }

    pub fn is_refused(&self) -> bool {
        self.config.flags & pod_flags::REFUSED != 0
    }

    pub fn new(spec: &PodSpec, pod_id: u32) -> Result<Self, SpecError> {
        let c = spec.capture()?;
        // istio-iptables would write `--to-ports 0`, which iptables refuses: istio-init fails.
        for (option, port) in [("-p", c.proxy_port), ("-z", c.inbound_port)] {
            if port == 0 {
                return Err(SpecError::PortZero(option));
            }
        }
        let (uids, gids) = (ids(&c.proxy_uids)?, ids(c.gids())?);
        if spec.nameservers.is_some() && spec.resolv_conf.is_some() {
            return Err(SpecError::BothNameserverSources);
        }
        let mut flags = 0;
        // As istio-init: ip6tables rules only for an IPv6-only pod, or with `--dual-stack`.
        if c.ipv6_rules(&spec.ips) {
            flags |= pod_flags::IPV6;
        }
        let (cidr_include, include_loopback) = match &c.include_outbound_cidrs {
            Ranges::All => {
                flags |= pod_flags::OUT_INCLUDE_ALL_V4 | pod_flags::OUT_INCLUDE_ALL_V6;
                (vec![], false)
            }
            Ranges::List(list) => (cidr_keys(pod_id, list), list.iter().any(Cidr::is_loopback)),
        };
        if include_loopback {
            flags |= pod_flags::OUT_INCLUDES_LOOPBACK;
        }
        let cidr_exclude = cidr_keys(pod_id, &c.exclude_outbound_cidrs);
        let mut ports = BTreeSet::new();
        let mut add = |set: PortSet, list: &[u16], flag: u32, flags: &mut u32| {
            for p in list {
                ports.insert(PortKey::new(pod_id, set, *p));
            }
            if !list.is_empty() {
                *flags |= flag;
            }
        };
        add(
            PortSet::OutExclude,
            &c.exclude_outbound_ports,
            pod_flags::HAS_OUT_EXCLUDE_PORTS,
            &mut flags,
        );
        add(
            PortSet::OutInclude,
            &c.include_outbound_ports,
            pod_flags::HAS_OUT_INCLUDE_PORTS,
            &mut flags,
        );
        match &c.include_inbound_ports {
            Ports::All => {
                flags |= pod_flags::IN_CAPTURE | pod_flags::IN_ALL_PORTS;
                add(
                    PortSet::InExclude,
                    &c.exclude_inbound_ports,
                    pod_flags::HAS_IN_EXCLUDE_PORTS,
                    &mut flags,
                );
            }
            Ports::List(list) => {
                if !list.is_empty() {
                    flags |= pod_flags::IN_CAPTURE;
                }
                add(
                    PortSet::InInclude,
                    list,
                    pod_flags::HAS_IN_INCLUDE_PORTS,
                    &mut flags,
                );
            }
        }
        if !cidr_exclude.is_empty() {
            flags |= pod_flags::HAS_CIDR_EXCLUDE;
        }
        if !cidr_include.is_empty() {
            flags |= pod_flags::HAS_CIDR_INCLUDE;
        }
        let local: Vec<LocalKey> = spec
            .ips
            .iter()
            .map(|ip| LocalKey {
                pod_id,
                addr: Addr::from(*ip),
            })
            .collect();
        if !local.is_empty() {
            flags |= pod_flags::HAS_LOCAL_ADDRS;
        }
        let first = |v4: bool| {
            spec.ips
                .iter()
                .find(|ip| ip.is_ipv4() == v4)
                .map_or(Addr::UNSPECIFIED_V6, |ip| Addr::from(*ip))
        };
        let config = PodConfig {
            pod_id,
            flags,
            proxy_port: c.proxy_port,
            inbound_port: c.inbound_port,
            tunnel_port: c.tunnel_port,
            n_uids: uids.1,
            n_gids: gids.1,
            uids: uids.0,
            gids: gids.0,
            primary_v4: first(true),
            primary_v6: first(false),
        };
        Self {
            config,
            ports,
            cidr_exclude,
            cidr_include,
            local,
            dns: vec![],
            capture: c,
            ips: spec.ips.clone(),
            netns_addrs: vec![],
        }
        .with_nameservers(spec.nameservers.as_deref().unwrap_or_default())
    }

    /// The plan with `servers` as the pod's nameservers (its resolv.conf's, in file order).
    /// As istio-iptables: `--redirect-dns` with neither a nameserver nor `--capture-all-dns`
    /// captures no DNS at all (not even its port-53 exceptions to R9 and R10).
    pub fn with_nameservers(mut self, servers: &[IpAddr]) -> Result<Self, SpecError> {
        if servers.len() > MAX_NAMESERVERS {
            return Err(SpecError::TooManyNameservers(servers.len()));
        }
        let flags = &mut self.config.flags;
        *flags &=
            !(pod_flags::DNS_CAPTURE | pod_flags::DNS_CAPTURE_ALL | pod_flags::HAS_DNS_SERVERS);
        self.dns.clear();
        let c = &self.capture;
        if !c.redirect_dns || (servers.is_empty() && !c.capture_all_dns) {
            return Ok(self);
        }
        *flags |= pod_flags::DNS_CAPTURE;
        if c.capture_all_dns {
            *flags |= pod_flags::DNS_CAPTURE_ALL;
        }
        let pod_id = self.config.pod_id;
        for ip in servers {
            let key = DnsServerKey {
                pod_id,
                addr: Addr::from(*ip),
            };
            if !self.dns.contains(&key) {
                self.dns.push(key);
            }
        }
        if !self.dns.is_empty() {
            *flags |= pod_flags::HAS_DNS_SERVERS;
        }
        Ok(self)
    }

    /// The nameservers the plan captures DNS to (empty without DNS capture).
    pub fn nameservers(&self) -> Vec<IpAddr> {
        self.dns.iter().map(|k| IpAddr::from(k.addr)).collect()
    }

    /// Whether DNS capture is in effect (see [`Plan::with_nameservers`]).
    pub fn captures_dns(&self) -> bool {
        self.config.flags & pod_flags::DNS_CAPTURE != 0
    }

    /// The plan with the addresses of the pod's network namespace (`found`, all of them,
    /// as the kernel lists them) as local too, besides `ips`: iptables' `-o lo` matches every
    /// one. At most `limit` addresses in all: those beyond it, in address order, are
    /// returned, not in the plan (the datapath treats them as remote).
    pub fn with_netns_addrs(&self, found: &BTreeSet<IpAddr>, limit: u32) -> (Self, Vec<IpAddr>) {
        let mut plan = self.clone();
        let pod_id = plan.config.pod_id;
        let key = |ip: &IpAddr| LocalKey {
            pod_id,
            addr: Addr::from(*ip),
        };
        plan.local = plan.ips.iter().map(key).collect();
        plan.netns_addrs.clear();
        let mut over = vec![];
        for ip in found.iter().filter(|ip| !plan.ips.contains(ip)) {
            if plan.local.len() < limit as usize {
                plan.local.push(key(ip));
                plan.netns_addrs.push(*ip);
            } else {
                over.push(*ip);
            }
        }
        if plan.local.is_empty() {
            plan.config.flags &= !pod_flags::HAS_LOCAL_ADDRS;
        } else {
            plan.config.flags |= pod_flags::HAS_LOCAL_ADDRS;
        }
        (plan, over)
    }

    /// The addresses of the pod's network namespace besides `ips` that the plan treats as
    /// local.
    pub fn netns_addrs(&self) -> &[IpAddr] {
        &self.netns_addrs
    }
}

fn ids(list: &[u32]) -> Result<([u32; MAX_PROXY_IDS], u8), SpecError> {
    if list.is_empty() {
        return Err(SpecError::NoIds);
    }
    if list.len() > MAX_PROXY_IDS {
        return Err(SpecError::TooManyIds(list.len()));
    }
    let mut out = [0; MAX_PROXY_IDS];
    out[..list.len()].copy_from_slice(list);
    Ok((out, list.len() as u8))
}

fn cidr_keys(pod_id: u32, list: &[Cidr]) -> Vec<(CidrKey, u32)> {
    list.iter()
        .map(|c| {
            let addr = Addr::from(c.addr);
            (
                CidrKey::new(pod_id, addr),
                CidrKey::prefix_len(&addr, c.len),
            )
        })
        .collect()
}

/// The plan's sets as the decision model sees them: `explain` runs the datapath's own
/// decision function on these.
impl PodTables for Plan {
    fn port_in(&self, set: PortSet, port: u16) -> bool {
        self.ports
            .contains(&PortKey::new(self.config.pod_id, set, port))
    }
    fn cidr_excluded(&self, addr: &Addr) -> bool {
        self.capture
            .exclude_outbound_cidrs
            .iter()
            .any(|c| c.contains(IpAddr::from(*addr)))
    }
    fn cidr_included(&self, addr: &Addr) -> bool {
        match &self.capture.include_outbound_cidrs {
            Ranges::All => true,
            Ranges::List(l) => l.iter().any(|c| c.contains(IpAddr::from(*addr))),
        }
    }
    fn is_pod_address(&self, addr: &Addr) -> bool {
        self.local.iter().any(|k| k.addr == *addr)
    }
    fn is_dns_server(&self, addr: &Addr) -> bool {
        self.dns.iter().any(|k| k.addr == *addr)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn spec(yaml: &str) -> PodSpec {
        PodSpec::parse(yaml, Path::new("p.yaml")).unwrap()
    }

    #[test]
    fn default_spec_plans_istio_defaults() {
        let s = spec("name: default/a\ncgroup: /sys/fs/cgroup/x\nips: [10.0.0.5, fd00::5]\n");
        let p = Plan::new(&s, 7).unwrap();
        let f = p.config.flags;
        assert_ne!(f & pod_flags::OUT_INCLUDE_ALL_V4, 0);
        // Dual-stack addresses without `--dual-stack`: istio-init writes no IPv6 rules.
        assert_eq!(f & pod_flags::IPV6, 0);
        assert_ne!(f & pod_flags::IN_ALL_PORTS, 0);
        assert_eq!(p.ports.len(), 3);
        assert!(
            p.ports
                .contains(&PortKey::new(7, PortSet::InExclude, 15021))
        );
        assert_eq!(p.config.primary_v4, Addr::v4([10, 0, 0, 5]));
        assert_eq!(p.local.len(), 2);
    }

    #[test]
    fn ipv6_rules_only_for_ipv6_only_pods_or_dual_stack() {
        let v6 =
            |yaml: &str| Plan::new(&spec(yaml), 1).unwrap().config.flags & pod_flags::IPV6 != 0;
        assert!(!v6("name: a\ncgroup: /x\nips: [10.0.0.5, fd00::5]\n"));
        assert!(!v6("name: a\ncgroup: /x\nips: [fd00::5, 10.0.0.5]\n"));
        assert!(v6("name: a\ncgroup: /x\nips: [fd00::5]\n"));
        assert!(v6(
            "name: a\ncgroup: /x\nips: [10.0.0.5, fd00::5]\nargs: \"-i '*' --dual-stack\"\n"
        ));
        assert!(v6(
            "name: a\ncgroup: /x\nips: [10.0.0.5, fd00::5]\ncapture: {dualStack: true}\n"
        ));
        assert!(!v6(
            "name: a\ncgroup: /x\nips: [10.0.0.5]\nargs: --dual-stack\n"
        ));
    }

    #[test]
    fn structured_capture_and_args_are_exclusive() {
        let s = spec("name: a\ncgroup: /x\nargs: \"-p 1\"\ncapture: {proxyPort: 2}\n");
        assert!(matches!(Plan::new(&s, 1), Err(SpecError::BothForms)));
        let s = spec(
            "name: a\ncgroup: /x\ncapture: {proxyPort: 2, includeOutboundCidrs: '*', excludeOutboundCidrs: [10.0.0.0/8]}\n",
        );
        let p = Plan::new(&s, 1).unwrap();
        assert_eq!(p.config.proxy_port, 2);
        assert_eq!(p.cidr_exclude.len(), 1);
        assert_eq!(p.cidr_exclude[0].1, 32 + 96 + 8);
    }

    #[test]
    fn json_specs_parse() {
        let s = PodSpec::parse(
            r#"{"name":"a","cgroup":"/x","args":"-i '*'"}"#,
            Path::new("a.json"),
        )
        .unwrap();
        assert_eq!(s.args.as_deref(), Some("-i '*'"));
    }

    #[test]
    fn accelerate_is_optional_and_sets_the_flag() {
        let s = spec("name: a\ncgroup: /x\n");
        assert_eq!(s.accelerate, None);
        let mut p = Plan::new(&s, 1).unwrap();
        assert!(!p.accelerates());
        p.set_accelerate(true);
        assert_ne!(p.config.flags & pod_flags::ACCELERATE, 0);
        let s = spec("name: a\ncgroup: /x\naccelerate: false\n");
        assert_eq!(s.accelerate, Some(false));
        assert!(
            PodSpec::parse(
                "name: a\ncgroup: /x\naccelerate: maybe\n",
                Path::new("p.yaml")
            )
            .is_err()
        );
    }

    #[test]
    fn proxy_ports_cannot_be_zero() {
        for args in ["-p 0", "-z 0"] {
            let s = spec(&format!("name: a\ncgroup: /x\nargs: \"{args}\"\n"));
            let e = Plan::new(&s, 1).unwrap_err();
            assert!(matches!(e, SpecError::PortZero(_)), "{e}");
            assert!(e.to_string().contains("port 0"), "{e}");
        }
    }

    #[test]
    fn dns_capture_needs_a_nameserver_or_capture_all() {
        let p = |yaml: &str| Plan::new(&spec(yaml), 3).unwrap();
        let none = p("name: a\ncgroup: /x\nargs: --redirect-dns\n");
        assert!(!none.captures_dns());
        let listed = p(
            "name: a\ncgroup: /x\nargs: --redirect-dns\nnameservers: [10.96.0.10, fd00::a, 10.96.0.10]\n",
        );
        assert!(listed.captures_dns());
        assert_eq!(listed.dns.len(), 2);
        assert_eq!(listed.dns[0].pod_id, 3);
        assert_ne!(listed.config.flags & pod_flags::HAS_DNS_SERVERS, 0);
        assert_eq!(listed.config.flags & pod_flags::DNS_CAPTURE_ALL, 0);
        let all = p("name: a\ncgroup: /x\nargs: --redirect-dns --capture-all-dns\n");
        assert!(all.captures_dns());
        assert_ne!(all.config.flags & pod_flags::DNS_CAPTURE_ALL, 0);
        assert_eq!(all.config.flags & pod_flags::HAS_DNS_SERVERS, 0);
        // Nameservers without --redirect-dns capture nothing; the list is the spec's only.
        let off = p("name: a\ncgroup: /x\nnameservers: [10.96.0.10]\n");
        assert!(!off.captures_dns() && off.dns.is_empty());
        // A later list replaces the first whole.
        let moved = listed
            .with_nameservers(&["10.96.0.11".parse().unwrap()])
            .unwrap();
        assert_eq!(
            moved.nameservers(),
            vec!["10.96.0.11".parse::<IpAddr>().unwrap()]
        );
        let gone = moved.with_nameservers(&[]).unwrap();
        assert!(!gone.captures_dns());
        assert_eq!(gone.config.flags & pod_flags::HAS_DNS_SERVERS, 0);
    }

    #[test]
    fn nameserver_sources_are_exclusive_and_bounded() {
        let s = spec("name: a\ncgroup: /x\nnameservers: [10.0.0.1]\nresolvConf: /r\n");
        assert!(matches!(
            Plan::new(&s, 1),
            Err(SpecError::BothNameserverSources)
        ));
        let many: Vec<String> = (1..=9).map(|i| format!("10.0.0.{i}")).collect();
        let s = spec(&format!(
            "name: a\ncgroup: /x\nargs: --redirect-dns\nnameservers: [{}]\n",
            many.join(", ")
        ));
        let e = Plan::new(&s, 1).unwrap_err();
        assert!(matches!(e, SpecError::TooManyNameservers(9)), "{e}");
    }

    #[test]
    fn rejects_too_many_ids() {
        let s = spec("name: a\ncgroup: /x\nargs: \"-u 1,2,3,4,5\"\n");
        assert!(matches!(Plan::new(&s, 1), Err(SpecError::TooManyIds(5))));
    }
}
