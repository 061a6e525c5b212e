//! The outbound capture decision: Istio's `ISTIO_OUTPUT` nat chain, rule by rule, in its order.
//!
//! This is the only implementation. `connect4`/`connect6` call [`decide`] with map-backed
//! [`PodTables`]; `meshsteer explain` calls it with the parsed pod config. R-numbers follow the
//! project's rule map (README): R8 passthrough source, R9 proxy → local, R10 app → local,
//! R11 proxy owner, R12 localhost.

use crate::{
    Addr,
    maps::{MAX_PROXY_IDS, PodConfig, PortSet, pod_flags},
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

/// A TCP connect() as ISTIO_OUTPUT sees its first packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The socket owner (creator's uid and primary gid).
    pub uid: u32,
    pub gid: u32,
    /// The source the socket is bound to, or unspecified.
    pub src: Addr,
    pub dst: Addr,
    /// Host byte order.
    pub dport: u16,
}

/// Which of the owner rules an id list produces: istio emits R9, R10, R11 for each uid, then
/// for each gid; the first id whose rule matches wins, exactly as in the chain.
#[inline(always)]
fn owner_rules(
    ids: &[u32; MAX_PROXY_IDS],
    n: u8,
    owner: u32,
    to_local: bool,
    r9_applies: bool,
    r10_present: bool,
    inbound_port: u16,
) -> Option<Verdict> {
    let mut i = 0;
    while i < MAX_PROXY_IDS {
        if i >= n as usize {
            break;
        }
        let is_proxy = owner == ids[i];
        if to_local && r9_applies && is_proxy {
            return Some(Verdict::redirect(Rule::ProxyToLocal, inbound_port));
        }
        if to_local && r10_present && !is_proxy {
            return Some(Verdict::pass(Rule::AppToLocal));
        }
        if is_proxy {
            return Some(Verdict::pass(Rule::ProxyOwner));
        }
        i += 1;
    }
    None
}

/// ISTIO_OUTPUT for one TCP connection of an enrolled pod.
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
    if t.port_in(PortSet::OutExclude, c.dport) {
        return Verdict::pass(Rule::ExcludedPort);
    }
    // `-o lo`: the destination is local to the pod's network namespace.
    let to_local = dst.is_loopback() || t.is_pod_address(&dst);
    if to_local && c.src.eq_const(&dst.passthrough_like()) {
        return Verdict::pass(Rule::Passthrough);
    }
    let localhost = dst.localhost_like();
    let r9_applies = !dst.eq_const(&localhost) && c.dport != cfg.tunnel_port;
    // istio drops R10 for every id when `-i` names a loopback range.
    let r10_present = cfg.flags & pod_flags::OUT_INCLUDES_LOOPBACK == 0;
    let by_uid = owner_rules(
        &cfg.uids,
        cfg.n_uids,
        c.uid,
        to_local,
        r9_applies,
        r10_present,
        cfg.inbound_port,
    );
    if let Some(v) = by_uid {
        return v;
    }
    let by_gid = owner_rules(
        &cfg.gids,
        cfg.n_gids,
        c.gid,
        to_local,
        r9_applies,
        r10_present,
        cfg.inbound_port,
    );
    if let Some(v) = by_gid {
        return v;
    }
    if dst.eq_const(&localhost) {
        return Verdict::pass(Rule::Localhost);
    }
    if t.cidr_excluded(&dst) {
        return Verdict::pass(Rule::ExcludedCidr);
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
    }

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
}
