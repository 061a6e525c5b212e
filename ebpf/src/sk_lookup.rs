//! sk_lookup, attached to each enrolled pod's network namespace: a TCP connection arriving
//! from outside the pod is handed to the proxy's inbound listener when ISTIO_INBOUND would
//! REDIRECT it, without NAT: the proxy's accepted socket keeps the original destination as
//! its local address.
//!
//! The program runs for every local address of the namespace (link-local, secondary, added
//! later), as PREROUTING does, because it does not look the pod up by address. It cannot ask
//! which namespace it runs in, so it is never attached itself: each pod's namespace runs a
//! trampoline (the agent's `bpf/trampoline.rs`) that writes the pod's slot to
//! `MS_SK_LOOKUP_SLOT` and tail-calls this program, and `MS_SK_LOOKUP_PODS` maps the slot to
//! the pod. Loaded once, whatever the number of pods.
use aya_ebpf::{macros::sk_lookup, programs::SkLookupContext};
use meshsteer_common::{
    inbound::{Incoming, decide},
    maps::{ListenerKey, counter, pod_flags, trace::action},
};

use crate::{
    ctx::{Ends, SkLookupCtx},
    maps::{LISTENERS, SK_LOOKUP_PODS, SK_LOOKUP_SLOT},
    pod::{MapTables, count, pod_config},
    sockaddr::AF_INET6,
    trace::{self, Arrival},
};

const IPPROTO_TCP: u32 = 6;
const SK_DROP: u32 = 0;
const SK_PASS: u32 = 1;

#[sk_lookup]
pub fn ms_sk_lookup(ctx: SkLookupContext) -> u32 {
    // UDP lookups (DNS, anything) leave at the first field read.
    if ctx.protocol() != IPPROTO_TCP {
        return SK_PASS;
    }
    let (family, arrival) = (ctx.family(), arrival(&ctx));
    // The trampoline's slot (0, no pod, if this program ever ran without one).
    let Some(&slot) = SK_LOOKUP_SLOT.get(0) else {
        return SK_PASS;
    };
    let Some(&pod_cgroup) = SK_LOOKUP_PODS.get(slot) else {
        return SK_PASS;
    };
    let Some(cfg) = pod_config(pod_cgroup) else {
        return SK_PASS;
    };
    if cfg.flags & pod_flags::REFUSED != 0 {
        // Fail closed, as a pod whose istio-init failed: nothing reaches the app.
        count(pod_cgroup, counter::REFUSED_INBOUND);
        return SK_DROP;
    }
    let incoming = Incoming {
        remote: arrival.remote,
        local: arrival.local,
        local_port: arrival.local_port,
    };
    let rule = decide(cfg, &MapTables::new(cfg), &incoming);
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
#[inline(always)]
fn arrival(ctx: &SkLookupContext) -> Arrival {
    let ((local, local_port_be), (remote, remote_port_be)) = ctx.ends();
    Arrival {
        local,
        remote,
        local_port: u16::from_be(local_port_be),
        remote_port: u16::from_be(remote_port_be),
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
