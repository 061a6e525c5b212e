//! sk_lookup, attached to each enrolled pod's network namespace: a TCP connection arriving
//! from outside the pod is handed to the proxy's inbound listener when ISTIO_INBOUND would
//! REDIRECT it, without NAT: the proxy's accepted socket keeps the original destination as
//! its local address.
use aya_ebpf::{macros::sk_lookup, programs::SkLookupContext};
use meshsteer_common::{
    inbound::decide,
    maps::{ListenerKey, counter},
};

use crate::{
    maps::{INBOUND_ADDRS, LISTENERS},
    pod::{MapTables, count, pod_config},
    sockaddr::AF_INET6,
    tuple,
};

const IPPROTO_TCP: u32 = 6;
const SK_DROP: u32 = 0;
const SK_PASS: u32 = 1;

#[sk_lookup]
pub fn ms_sk_lookup(ctx: SkLookupContext) -> u32 {
    let l = ctx.lookup;
    // SAFETY: fields of the hook's ctx, read in place.
    let (protocol, family, local, remote, local_port) = unsafe {
        let family = (*l).family;
        (
            (*l).protocol,
            family,
            tuple::addr(family, &raw const (*l).local_ip4, &raw const (*l).local_ip6),
            tuple::addr(
                family,
                &raw const (*l).remote_ip4,
                &raw const (*l).remote_ip6,
            ),
            (*l).local_port as u16,
        )
    };
    if protocol != IPPROTO_TCP {
        return SK_PASS;
    }
    let Some(pod_cgroup) = INBOUND_ADDRS.get_ptr(local) else {
        return SK_PASS;
    };
    // SAFETY: plain value copied out of the map.
    let pod_cgroup = unsafe { *pod_cgroup };
    let Some(cfg) = pod_config(pod_cgroup) else {
        return SK_PASS;
    };
    let rule = decide(cfg, &MapTables::new(cfg), &remote, local_port);
    count(pod_cgroup, counter::inbound(rule));
    if !rule.steers() {
        return SK_PASS;
    }
    // The listener of the connection's own family; an IPv4 arrival may also be taken by a
    // dual-stack IPv6 listener.
    let mut key = ListenerKey {
        pod_cgroup,
        family,
        _pad: 0,
    };
    if LISTENERS.redirect_sk_lookup(&ctx, key, 0).is_ok() {
        return SK_PASS;
    }
    if family != u32::from(AF_INET6) {
        key.family = u32::from(AF_INET6);
        if LISTENERS.redirect_sk_lookup(&ctx, key, 0).is_ok() {
            return SK_PASS;
        }
    }
    // No listener: like REDIRECT to a closed port. SK_DROP makes the TCP lookup fail with
    // ECONNREFUSED, so the SYN is answered with a RST; it never reaches the app directly.
    count(pod_cgroup, counter::IN_NO_LISTENER);
    SK_DROP
}
