//! The outbound capture decision: Istio's `ISTIO_OUTPUT` nat chain, rule by rule, in its order,
//! for TCP connections and, with DNS capture, for UDP datagrams (its `ISTIO_OUTPUT_DNS` rules).
//!
//! This is the only implementation. `connect4`/`connect6` call [`decide`] with map-backed
//! [`PodTables`]; `meshsteer explain` calls it with the parsed pod config. R-numbers follow the
//! project's rule map (README): R8 passthrough source, R9 proxy → local, R10 app → local,
//! R11 proxy owner, R12 localhost.

use crate::{
    Addr,
    maps::{DNS_PORT, DNS_PROXY_PORT, MAX_PROXY_IDS, PodConfig, PortSet, pod_flags},
};
pub use crate::{rules::Rule, tables::PodTables};

/// Where a connection goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub rule: Rule,
    /// The port it is redirected to on the family's localhost, or 0 when untouched.
    pub redirect_port: u16,
}

impl Verdict {
    const fn pass(rule: Rule) -> Self {
        Self {
            rule,
            redirect_port: 0,
        }
    }
    const fn redirect(rule: Rule, port: u16) -> Self {
        Self {
            rule,
            redirect_port: port,
        }
    }
    pub const fn is_redirect(&self) -> bool {
        self.redirect_port != 0
    }
}

/// The transport of a [`Connection`]: istio's rules match some by `-p tcp` or `-p udp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// A TCP connect(), or a UDP connect() or sendto(), as ISTIO_OUTPUT sees its first packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    pub proto: Proto,
    /// The socket owner (creator's uid and primary gid).
    pub uid: u32,
    pub gid: u32,
    /// The source the socket is bound to, or unspecified.
    pub src: Addr,
    pub dst: Addr,
    /// Host byte order.
    pub dport: u16,
}

/// What the owner rules of one id list look at, besides the owner.
#[derive(Clone, Copy)]
struct OwnerMatch {
    /// `-o lo`: the destination is local to the pod's network namespace.
    to_local: bool,
    /// R10's other matches: present at all (no loopback `-i`), and with DNS capture TCP only,
    /// `! --dport 53`.
    r10: bool,
    inbound_port: u16,
}

/// Which of the owner rules an id list produces: istio emits R9, R10, R11 for each uid, then
/// for each gid; the first id whose rule matches wins, exactly as in the chain. `r9_applies`:
/// R9's matches besides `-o lo` and the owner.
#[inline(always)]
fn owner_rules(
    ids: &[u32; MAX_PROXY_IDS],
    n: u8,
    owner: u32,
    r9_applies: bool,
    m: OwnerMatch,
) -> Option<Verdict> {
    let mut i = 0;
    while i < MAX_PROXY_IDS {
        if i >= n as usize {
            break;
        }
        let is_proxy = owner == ids[i];
        if m.to_local && r9_applies && is_proxy {
            return Some(Verdict::redirect(Rule::ProxyToLocal, m.inbound_port));
        }
        if m.to_local && m.r10 && !is_proxy {
            return Some(Verdict::pass(Rule::AppToLocal));
        }
        if is_proxy {
            return Some(Verdict::pass(Rule::ProxyOwner));
        }
        i += 1;
    }
    None
}

/// ISTIO_OUTPUT for one connection of an enrolled pod.
#[inline(always)]
pub fn decide<T: PodTables>(cfg: &PodConfig, t: &T, c: &Connection) -> Verdict {
    // connect() to 0.0.0.0/:: means this host: the kernel sends it to loopback.
    let dst = if c.dst.is_unspecified() {
        c.dst.localhost_like()
    } else {
        c.dst
    };
    let v4 = dst.is_ipv4();
    if !v4 && cfg.flags & pod_flags::IPV6 == 0 {
        return Verdict::pass(Rule::NoIpv6Rules);
    }
    // `-o`: `-p tcp --dport P -j RETURN` and `-p udp --dport P -j RETURN`.
    if t.port_in(PortSet::OutExclude, c.dport) {
        return Verdict::pass(Rule::ExcludedPort);
    }
    // `-o lo`: the destination is local to the pod's network namespace.
    let to_local = dst.is_loopback() || t.is_pod_address(&dst);
    if to_local && c.src.eq_const(&dst.passthrough_like()) {
        return Verdict::pass(Rule::Passthrough);
    }
    let tcp = matches!(c.proto, Proto::Tcp);
    let dns = cfg.flags & pod_flags::DNS_CAPTURE != 0;
    let localhost = dst.localhost_like();
    // R9: `-p tcp ! -d <localhost> ! --dport <tunnel>`.
    let r9 = tcp && !dst.eq_const(&localhost) && c.dport != cfg.tunnel_port;
    // istio drops R10 for every id when `-i` names a loopback range; with DNS capture R10 is
    // `-p tcp ! --dport 53`, so an app's DNS to a nameserver on the pod is captured.
    let r10 =
        cfg.flags & pod_flags::OUT_INCLUDES_LOOPBACK == 0 && (!dns || (tcp && c.dport != DNS_PORT));
    let m = OwnerMatch {
        to_local,
        r10,
        inbound_port: cfg.inbound_port,
    };
    // A uid's R9 with DNS capture is `! --dports 53,<tunnel>`; a gid's keeps `! --dport
    // <tunnel>` (istio's own asymmetry).
    let r9_uid = r9 && !(dns && c.dport == DNS_PORT);
    if let Some(v) = owner_rules(&cfg.uids, cfg.n_uids, c.uid, r9_uid, m) {
        return v;
    }
    if let Some(v) = owner_rules(&cfg.gids, cfg.n_gids, c.gid, r9, m) {
        return v;
    }
    // `-j ISTIO_OUTPUT_DNS`, written for a family only when it has nameservers or with
    // `--capture-all-dns`; either way only a nameserver of that family matches.
    if dns
        && c.dport == DNS_PORT
        && (cfg.flags & pod_flags::DNS_CAPTURE_ALL != 0 || t.is_dns_server(&dst))
    {
        return Verdict::redirect(Rule::DnsRedirect, DNS_PROXY_PORT);
    }
    if dst.eq_const(&localhost) {
        return Verdict::pass(Rule::Localhost);
    }
    if t.cidr_excluded(&dst) {
        return Verdict::pass(Rule::ExcludedCidr);
    }
    // `-q` is `-p tcp`, and ISTIO_REDIRECT, which `-i` jumps to, is `-p tcp -j REDIRECT`.
    if !tcp {
        return Verdict::pass(Rule::UdpNotRedirected);
    }
    if t.port_in(PortSet::OutInclude, c.dport) {
        return Verdict::redirect(Rule::IncludedPort, cfg.proxy_port);
    }
    let include_all = if v4 {
        pod_flags::OUT_INCLUDE_ALL_V4
    } else {
        pod_flags::OUT_INCLUDE_ALL_V6
    };
    if cfg.flags & include_all != 0 || t.cidr_included(&dst) {
        return Verdict::redirect(Rule::IncludedCidr, cfg.proxy_port);
    }
    Verdict::pass(Rule::NotIncluded)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tables for one pod with a fixed address, no port sets and `-x 10.9.0.0/16`.
    struct Fixed;
    const POD_IP: Addr = Addr::v4([10, 1, 0, 5]);

    impl PodTables for Fixed {
        fn port_in(&self, set: PortSet, port: u16) -> bool {
            matches!(
                (set, port),
                (PortSet::OutExclude, 3306) | (PortSet::OutInclude, 9000)
            )
        }
        fn cidr_excluded(&self, a: &Addr) -> bool {
            matches!(a.ipv4_octets(), Some([10, 9, _, _]))
        }
        fn cidr_included(&self, a: &Addr) -> bool {
            matches!(a.ipv4_octets(), Some([10, 7, _, _]))
        }
        fn is_pod_address(&self, a: &Addr) -> bool {
            *a == POD_IP
        }
        fn is_dns_server(&self, a: &Addr) -> bool {
            *a == NAMESERVER || *a == LOCAL_NAMESERVER
        }
    }

    /// The pod's resolv.conf: one remote nameserver and one on the pod's loopback.
    const NAMESERVER: Addr = Addr::v4([10, 96, 0, 10]);
    const LOCAL_NAMESERVER: Addr = Addr::v4([127, 0, 0, 53]);

    fn default_cfg() -> PodConfig {
        PodConfig {
            pod_id: 1,
            flags: pod_flags::OUT_INCLUDE_ALL_V4 | pod_flags::OUT_INCLUDE_ALL_V6,
            proxy_port: 15001,
            inbound_port: 15006,
            tunnel_port: 15008,
            n_uids: 1,
            n_gids: 1,
            uids: [1337, 0, 0, 0],
            gids: [1337, 0, 0, 0],
            primary_v4: POD_IP,
            primary_v6: Addr::UNSPECIFIED_V6,
        }
    }

    fn conn(uid: u32, dst: Addr, dport: u16) -> Connection {
        Connection {
            proto: Proto::Tcp,
            uid,
            gid: uid,
            src: Addr::UNSPECIFIED_V6,
            dst,
            dport,
        }
    }

    fn rule(cfg: &PodConfig, c: Connection) -> (Rule, u16) {
        let v = decide(cfg, &Fixed, &c);
        assert_eq!(v.is_redirect(), v.rule.redirects(), "{v:?}");
        (v.rule, v.redirect_port)
    }

    #[test]
    fn istio_default_rule_set() {
        let cfg = default_cfg();
        let remote = Addr::v4([10, 96, 0, 10]);
        assert_eq!(
            rule(&cfg, conn(1000, remote, 80)),
            (Rule::IncludedCidr, 15001)
        );
        assert_eq!(rule(&cfg, conn(1337, remote, 80)), (Rule::ProxyOwner, 0));
        assert_eq!(
            rule(&cfg, conn(1337, POD_IP, 80)),
            (Rule::ProxyToLocal, 15006)
        );
        assert_eq!(rule(&cfg, conn(1337, POD_IP, 15008)), (Rule::ProxyOwner, 0));
        assert_eq!(
            rule(&cfg, conn(1337, Addr::LOCALHOST_V4, 80)),
            (Rule::ProxyOwner, 0)
        );
        assert_eq!(
            rule(&cfg, conn(1337, Addr::v4([127, 0, 0, 9]), 80)),
            (Rule::ProxyToLocal, 15006)
        );
        assert_eq!(rule(&cfg, conn(1000, POD_IP, 80)), (Rule::AppToLocal, 0));
        assert_eq!(
            rule(&cfg, conn(1000, Addr::LOCALHOST_V4, 80)),
            (Rule::AppToLocal, 0)
        );
        assert_eq!(
            rule(&cfg, conn(1000, Addr::v4([0, 0, 0, 0]), 80)),
            (Rule::AppToLocal, 0)
        );
        assert_eq!(
            rule(&cfg, conn(1000, remote, 3306)),
            (Rule::ExcludedPort, 0)
        );
        assert_eq!(
            rule(&cfg, conn(1000, Addr::v4([10, 9, 1, 1]), 80)),
            (Rule::ExcludedCidr, 0)
        );
        let mut passthrough = conn(1337, POD_IP, 80);
        passthrough.src = Addr::PASSTHROUGH_V4;
        assert_eq!(rule(&cfg, passthrough), (Rule::Passthrough, 0));
    }

    #[test]
    fn gid_rules_follow_uid_rules() {
        let cfg = default_cfg();
        // uid 1000 but primary gid 1337: R10 for the uid fires first on local targets...
        let mut c = conn(1000, POD_IP, 80);
        c.gid = 1337;
        assert_eq!(rule(&cfg, c), (Rule::AppToLocal, 0));
        // ...and R11 for the gid on remote ones.
        c.dst = Addr::v4([10, 96, 0, 10]);
        assert_eq!(rule(&cfg, c), (Rule::ProxyOwner, 0));
    }

    #[test]
    fn second_uid_never_reaches_r9() {
        // `-u 1337,2000`: R10 of uid 1337 returns uid 2000's local traffic before its own R9.
        let mut cfg = default_cfg();
        cfg.n_uids = 2;
        cfg.uids[1] = 2000;
        assert_eq!(rule(&cfg, conn(2000, POD_IP, 80)), (Rule::AppToLocal, 0));
        assert_eq!(
            rule(&cfg, conn(2000, Addr::v4([1, 1, 1, 1]), 80)),
            (Rule::ProxyOwner, 0)
        );
    }

    #[test]
    fn include_list_and_ports() {
        let mut cfg = default_cfg();
        cfg.flags &= !pod_flags::OUT_INCLUDE_ALL_V4;
        assert_eq!(
            rule(&cfg, conn(1000, Addr::v4([10, 7, 1, 1]), 80)),
            (Rule::IncludedCidr, 15001)
        );
        assert_eq!(
            rule(&cfg, conn(1000, Addr::v4([10, 8, 1, 1]), 80)),
            (Rule::NotIncluded, 0)
        );
        assert_eq!(
            rule(&cfg, conn(1000, Addr::v4([10, 8, 1, 1]), 9000)),
            (Rule::IncludedPort, 15001)
        );
        // R12 and -x come before -q.
        assert_eq!(
            rule(&cfg, conn(1000, Addr::v4([10, 9, 1, 1]), 9000)),
            (Rule::ExcludedCidr, 0)
        );
    }

    #[test]
    fn loopback_include_drops_r10() {
        let mut cfg = default_cfg();
        cfg.flags = pod_flags::OUT_INCLUDES_LOOPBACK;
        assert_eq!(rule(&cfg, conn(1000, POD_IP, 80)), (Rule::NotIncluded, 0));
        assert_eq!(
            rule(&cfg, conn(1000, Addr::LOCALHOST_V4, 80)),
            (Rule::Localhost, 0)
        );
    }

    #[test]
    fn ipv6_needs_pod_ipv6() {
        let mut cfg = default_cfg();
        let v6 = Addr::from_bytes([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
        cfg.flags &= !pod_flags::IPV6;
        assert_eq!(rule(&cfg, conn(1000, v6, 80)), (Rule::NoIpv6Rules, 0));
        cfg.flags |= pod_flags::IPV6;
        assert_eq!(rule(&cfg, conn(1000, v6, 80)), (Rule::IncludedCidr, 15001));
        assert_eq!(
            rule(&cfg, conn(1000, Addr::LOCALHOST_V6, 80)),
            (Rule::AppToLocal, 0)
        );
        assert_eq!(
            rule(&cfg, conn(1337, Addr::UNSPECIFIED_V6, 80)),
            (Rule::ProxyOwner, 0)
        );
    }

    fn udp(uid: u32, dst: Addr, dport: u16) -> Connection {
        Connection {
            proto: Proto::Udp,
            ..conn(uid, dst, dport)
        }
    }

    fn dns_cfg(extra: u32) -> PodConfig {
        let mut cfg = default_cfg();
        cfg.flags |= pod_flags::DNS_CAPTURE | pod_flags::HAS_DNS_SERVERS | extra;
        cfg
    }

    #[test]
    fn udp_is_never_redirected_without_dns_capture() {
        let cfg = default_cfg();
        assert_eq!(
            rule(&cfg, udp(1000, NAMESERVER, 53)),
            (Rule::UdpNotRedirected, 0)
        );
        assert_eq!(rule(&cfg, udp(1000, POD_IP, 53)), (Rule::AppToLocal, 0));
        assert_eq!(rule(&cfg, udp(1337, NAMESERVER, 53)), (Rule::ProxyOwner, 0));
        // TCP 53 is ordinary outbound traffic.
        assert_eq!(
            rule(&cfg, conn(1000, NAMESERVER, 53)),
            (Rule::IncludedCidr, 15001)
        );
    }

    #[test]
    fn redirect_dns_captures_the_pods_nameservers() {
        let cfg = dns_cfg(0);
        let dns = (Rule::DnsRedirect, DNS_PROXY_PORT);
        assert_eq!(rule(&cfg, udp(1000, NAMESERVER, 53)), dns);
        assert_eq!(rule(&cfg, conn(1000, NAMESERVER, 53)), dns);
        // Another server's DNS, and the nameserver's other ports, are not DNS capture's.
        let other = Addr::v4([10, 200, 0, 1]);
        assert_eq!(
            rule(&cfg, udp(1000, other, 53)),
            (Rule::UdpNotRedirected, 0)
        );
        assert_eq!(
            rule(&cfg, conn(1000, other, 53)),
            (Rule::IncludedCidr, 15001)
        );
        assert_eq!(
            rule(&cfg, udp(1000, NAMESERVER, 5353)),
            (Rule::UdpNotRedirected, 0)
        );
        // The proxy's own queries go out (R11, by uid or gid).
        assert_eq!(rule(&cfg, udp(1337, NAMESERVER, 53)), (Rule::ProxyOwner, 0));
        let mut by_gid = udp(1000, NAMESERVER, 53);
        by_gid.gid = 1337;
        assert_eq!(rule(&cfg, by_gid), (Rule::ProxyOwner, 0));
        assert_eq!(
            rule(&cfg, conn(1337, NAMESERVER, 53)),
            (Rule::ProxyOwner, 0)
        );
        // A nameserver on the pod: R10 is `-p tcp ! --dport 53`, so the app's DNS to it is
        // captured over both transports; R12 comes after the DNS jump.
        assert_eq!(rule(&cfg, udp(1000, LOCAL_NAMESERVER, 53)), dns);
        assert_eq!(rule(&cfg, conn(1000, LOCAL_NAMESERVER, 53)), dns);
        assert_eq!(
            rule(&cfg, conn(1000, LOCAL_NAMESERVER, 80)),
            (Rule::AppToLocal, 0)
        );
        // UDP the app sends itself: R10 is TCP only now.
        assert_eq!(
            rule(&cfg, udp(1000, POD_IP, 9999)),
            (Rule::UdpNotRedirected, 0)
        );
        assert_eq!(
            rule(&cfg, udp(1000, Addr::LOCALHOST_V4, 9999)),
            (Rule::Localhost, 0)
        );
    }

    #[test]
    fn redirect_dns_exempts_port_53_from_the_uids_r9_only() {
        let cfg = dns_cfg(0);
        // The proxy's TCP 53 to its own pod: not through inbound.
        assert_eq!(rule(&cfg, conn(1337, POD_IP, 53)), (Rule::ProxyOwner, 0));
        assert_eq!(
            rule(&cfg, conn(1337, POD_IP, 80)),
            (Rule::ProxyToLocal, 15006)
        );
        // A gid's R9 keeps `! --dport <tunnel>` only: uid 1000 with gid 1337 goes inbound.
        let mut c = conn(1000, POD_IP, 53);
        c.gid = 1337;
        assert_eq!(rule(&cfg, c), (Rule::ProxyToLocal, 15006));
    }

    #[test]
    fn capture_all_dns_and_exclusions() {
        let cfg = dns_cfg(pod_flags::DNS_CAPTURE_ALL);
        let dns = (Rule::DnsRedirect, DNS_PROXY_PORT);
        assert_eq!(rule(&cfg, udp(1000, Addr::v4([10, 200, 0, 1]), 53)), dns);
        assert_eq!(rule(&cfg, udp(1000, Addr::LOCALHOST_V4, 53)), dns);
        // `-o` excludes UDP too, before everything else; R8 matches every protocol.
        let mut excluded = dns_cfg(pod_flags::DNS_CAPTURE_ALL);
        excluded.flags |= pod_flags::HAS_OUT_EXCLUDE_PORTS;
        assert_eq!(
            rule(&excluded, udp(1000, NAMESERVER, 3306)),
            (Rule::ExcludedPort, 0)
        );
        let mut passthrough = udp(1000, LOCAL_NAMESERVER, 53);
        passthrough.src = Addr::PASSTHROUGH_V4;
        assert_eq!(rule(&cfg, passthrough), (Rule::Passthrough, 0));
        // `-x` comes after the DNS jump.
        assert_eq!(rule(&cfg, udp(1000, Addr::v4([10, 9, 0, 1]), 53)), dns);
        // No IPv6 rules at all for a pod without IPv6.
        let v6 = Addr::from_bytes([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 53]);
        assert_eq!(rule(&cfg, udp(1000, v6, 53)), (Rule::NoIpv6Rules, 0));
    }
}
