//! The inbound capture decision: Istio's `PREROUTING -p tcp -j ISTIO_INBOUND` chain for a TCP
//! connection arriving at a pod. As with [`crate::outbound`], `sk_lookup` and
//! `meshsteer explain` run this one function.
pub use crate::rules::InRule;
use crate::{
    Addr,
    maps::{MAX_PROXY_IDS, PodConfig, PortSet, pod_flags},
    tables::PodTables,
};

/// A TCP connection arriving at any address of the pod's network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Incoming {
    pub remote: Addr,
    /// The pod's address it is for.
    pub local: Addr,
    /// The pod's port it is for.
    pub local_port: u16,
}

impl Incoming {
    /// Made inside the pod, so PREROUTING never sees it: from loopback, from Envoy's IPv6
    /// inbound-passthrough source `::6`, from one of the pod's addresses, or from the very
    /// address it goes to (an address the spec may not list). `::6` is an address of the
    /// pod's `lo` (istio-init adds it, and so does the agent) but not a loopback address, so
    /// it is named here: without it the proxy's passthrough to the app (R8) would come back
    /// to the proxy. The kernel cannot say so itself: for a connection to a pod address over
    /// `lo`, the lookup's ingress interface is the one that owns the address, as for one from
    /// outside. From outside, a pod address as the source is a martian (dropped before the
    /// lookup), and a connection from a spoofed `::6` never completes: its SYN-ACK goes to
    /// the pod's own `lo`.
    #[inline(always)]
    pub fn from_inside<T: PodTables>(&self, t: &T) -> bool {
        self.remote.is_loopback()
            || self.remote.eq_const(&Addr::PASSTHROUGH_V6)
            || self.remote == self.local
            || t.is_pod_address(&self.remote)
    }
}

/// ISTIO_INBOUND for the connection `c`.
#[inline(always)]
pub fn decide<T: PodTables>(cfg: &PodConfig, t: &T, c: &Incoming) -> InRule {
    if cfg.flags & pod_flags::IN_CAPTURE == 0 {
        return InRule::NotCaptured;
    }
    if !c.remote.is_ipv4() && cfg.flags & pod_flags::IPV6 == 0 {
        return InRule::NoIpv6Rules;
    }
    if c.from_inside(t) {
        return InRule::FromPod;
    }
    let local_port = c.local_port;
    if local_port == cfg.tunnel_port {
        return InRule::TunnelPort;
    }
    if local_port == cfg.inbound_port {
        return InRule::InboundPort;
    }
    if cfg.flags & pod_flags::IN_ALL_PORTS != 0 {
        if t.port_in(PortSet::InExclude, local_port) {
            return InRule::ExcludedPort;
        }
        return InRule::Captured;
    }
    if t.port_in(PortSet::InInclude, local_port) {
        InRule::Captured
    } else {
        InRule::NotListed
    }
}

/// Whether a socket created by `uid`/`gid` may become the pod's inbound listener: only the
/// proxy's (an id of `-u` or `-g`). Under iptables REDIRECT only a listener in the pod's own
/// namespace gets the traffic, and only the proxy runs one there on the inbound port; here the
/// listener is registered by socket, so the owner is checked instead of trusted.
#[inline(always)]
pub fn may_listen(cfg: &PodConfig, uid: u32, gid: u32) -> bool {
    listed(&cfg.uids, cfg.n_uids, uid) || listed(&cfg.gids, cfg.n_gids, gid)
}

#[inline(always)]
fn listed(ids: &[u32; MAX_PROXY_IDS], n: u8, id: u32) -> bool {
    let mut i = 0;
    while i < MAX_PROXY_IDS && i < n as usize {
        if ids[i] == id {
            return true;
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    struct T;
    const POD: Addr = Addr::v4([10, 0, 0, 5]);
    impl PodTables for T {
        fn port_in(&self, set: PortSet, port: u16) -> bool {
            matches!(
                (set, port),
                (PortSet::InExclude, 15090) | (PortSet::InInclude, 8080)
            )
        }
        fn cidr_excluded(&self, _: &Addr) -> bool {
            false
        }
        fn cidr_included(&self, _: &Addr) -> bool {
            false
        }
        fn is_pod_address(&self, a: &Addr) -> bool {
            *a == POD
        }
        fn is_dns_server(&self, _: &Addr) -> bool {
            false
        }
    }

    fn cfg(flags: u32) -> PodConfig {
        PodConfig {
            flags,
            inbound_port: 15006,
            tunnel_port: 15008,
            ..Default::default()
        }
    }

    fn from(remote: Addr, local_port: u16) -> Incoming {
        Incoming {
            remote,
            local: POD,
            local_port,
        }
    }

    #[test]
    fn istio_inbound_chain() {
        let all = cfg(pod_flags::IN_CAPTURE | pod_flags::IN_ALL_PORTS);
        let peer = Addr::v4([10, 0, 0, 9]);
        assert_eq!(decide(&all, &T, &from(peer, 80)), InRule::Captured);
        assert_eq!(decide(&all, &T, &from(peer, 15090)), InRule::ExcludedPort);
        assert_eq!(decide(&all, &T, &from(peer, 15008)), InRule::TunnelPort);
        assert_eq!(decide(&all, &T, &from(peer, 15006)), InRule::InboundPort);
        assert_eq!(decide(&all, &T, &from(POD, 80)), InRule::FromPod);
        assert_eq!(
            decide(&all, &T, &from(Addr::PASSTHROUGH_V4, 80)),
            InRule::FromPod
        );
        assert_eq!(
            decide(&all, &T, &from(Addr::LOCALHOST_V6, 80)),
            InRule::NoIpv6Rules
        );
        let list = cfg(pod_flags::IN_CAPTURE);
        assert_eq!(decide(&list, &T, &from(peer, 8080)), InRule::Captured);
        assert_eq!(decide(&list, &T, &from(peer, 80)), InRule::NotListed);
        assert_eq!(decide(&cfg(0), &T, &from(peer, 80)), InRule::NotCaptured);
    }

    #[test]
    fn the_ipv6_passthrough_source_is_from_inside() {
        // Envoy's inbound passthrough: bound to ::6 on the pod's lo, to the app at the pod's
        // IPv6 address. Under iptables it is locally generated (R8 lets it through): the app
        // gets it, not the inbound port.
        let all = cfg(pod_flags::IN_CAPTURE | pod_flags::IN_ALL_PORTS | pod_flags::IPV6);
        let pod6 = Addr::from_bytes([0xfd, 0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
        let passthrough = Incoming {
            remote: Addr::PASSTHROUGH_V6,
            local: pod6,
            local_port: 80,
        };
        assert!(!Addr::PASSTHROUGH_V6.is_loopback());
        assert_eq!(decide(&all, &T, &passthrough), InRule::FromPod);
        let peer = Incoming {
            remote: Addr::from_bytes([0xfd, 0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]),
            ..passthrough
        };
        assert_eq!(decide(&all, &T, &peer), InRule::Captured);
    }

    #[test]
    fn an_unlisted_address_to_itself_is_from_inside() {
        // A secondary address the spec does not list, connecting to itself.
        let all = cfg(pod_flags::IN_CAPTURE | pod_flags::IN_ALL_PORTS);
        let secondary = Addr::v4([10, 0, 0, 250]);
        let to_itself = Incoming {
            remote: secondary,
            local: secondary,
            local_port: 80,
        };
        assert_eq!(decide(&all, &T, &to_itself), InRule::FromPod);
        let from_it = Incoming {
            local: POD,
            ..to_itself
        };
        assert_eq!(decide(&all, &T, &from_it), InRule::Captured);
    }

    #[test]
    fn only_the_proxy_may_listen() {
        let cfg = PodConfig {
            n_uids: 2,
            n_gids: 1,
            uids: [1337, 2000, 0, 0],
            gids: [1338, 0, 0, 0],
            ..Default::default()
        };
        assert!(may_listen(&cfg, 1337, 1000));
        assert!(may_listen(&cfg, 2000, 1000));
        assert!(may_listen(&cfg, 1000, 1338), "by gid");
        assert!(!may_listen(&cfg, 1000, 1000));
        // Unused slots (0) are not ids: root is no proxy unless listed.
        assert!(!may_listen(&cfg, 0, 0));
    }
}
