//! sk_lookup, attached to each enrolled pod's network namespace: a TCP connection arriving
//! from outside the pod is handed to the proxy's inbound listener when ISTIO_INBOUND would
//! REDIRECT it, without NAT: the proxy's accepted socket keeps the original destination as
//! its local address.
use aya_ebpf::{bindings::bpf_sk_lookup, macros::sk_lookup, programs::SkLookupContext};
use meshsteer_common::{
    inbound::decide,
    maps::{ListenerKey, counter, trace::action},
};

use crate::{
    maps::{INBOUND_ADDRS, LISTENERS},
    pod::{MapTables, count, pod_config},
    sockaddr::AF_INET6,
    trace::{self, Arrival},
    tuple,
};

const IPPROTO_TCP: u32 = 6;
const SK_DROP: u32 = 0;
const SK_PASS: u32 = 1;

#[sk_lookup]
pub fn ms_sk_lookup(ctx: SkLookupContext) -> u32 {
    let l = ctx.lookup;
    // SAFETY: fields of the hook's ctx, read in place.
    let (protocol, family, arrival) = unsafe { ((*l).protocol, (*l).family, arrival(l)) };
    if protocol != IPPROTO_TCP {
        return SK_PASS;
    }
    let Some(pod_cgroup) = INBOUND_ADDRS.get_ptr(arrival.local) else {
        return SK_PASS;
    };
    // SAFETY: plain value copied out of the map.
    let pod_cgroup = unsafe { *pod_cgroup };
    let Some(cfg) = pod_config(pod_cgroup) else {
        return SK_PASS;
    };
    let rule = decide(
        cfg,
        &MapTables::new(cfg),
        &arrival.remote,
        arrival.local_port,
    );
    count(pod_cgroup, counter::inbound(rule));
    let act = if rule.steers() {
        to_listener(&ctx, pod_cgroup, family)
    } else {
        action::PASSED
    };
    if trace::enabled() {
        let landed_port = match act {
            action::STEERED => cfg.inbound_port,
            action::PASSED => arrival.local_port,
            _ => 0,
        };
        trace::inbound(pod_cgroup, &arrival, rule, act, landed_port);
    }
    if act == action::REFUSED {
        // No listener: like REDIRECT to a closed port. SK_DROP makes the TCP lookup fail with
        // ECONNREFUSED, so the SYN is answered with a RST; it never reaches the app directly.
        count(pod_cgroup, counter::IN_NO_LISTENER);
        return SK_DROP;
    }
    SK_PASS
}

/// The connection's addresses and ports.
///
/// # Safety
/// `l` must be the hook's ctx.
#[inline(always)]
unsafe fn arrival(l: *const bpf_sk_lookup) -> Arrival {
    // SAFETY: caller's contract; ctx fields read in place.
    unsafe {
        let family = (*l).family;
        Arrival {
            local: tuple::addr(family, &raw const (*l).local_ip4, &raw const (*l).local_ip6),
            remote: tuple::addr(
                family,
                &raw const (*l).remote_ip4,
                &raw const (*l).remote_ip6,
            ),
            local_port: (*l).local_port as u16,
            remote_port: u16::from_be((*l).remote_port),
        }
    }
}

/// Hands the connection to the pod's proxy listener of its own family; an IPv4 arrival may
/// also be taken by a dual-stack IPv6 listener. `STEERED`, or `REFUSED` when there is none.
#[inline(always)]
fn to_listener(ctx: &SkLookupContext, pod_cgroup: u64, family: u32) -> u8 {
    let mut key = ListenerKey {
        pod_cgroup,
        family,
        _pad: 0,
    };
    if LISTENERS.redirect_sk_lookup(ctx, key, 0).is_ok() {
        return action::STEERED;
    }
    if family != u32::from(AF_INET6) {
        key.family = u32::from(AF_INET6);
        if LISTENERS.redirect_sk_lookup(ctx, key, 0).is_ok() {
            return action::STEERED;
        }
    }
    action::REFUSED
}
