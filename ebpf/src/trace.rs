//! `meshsteer trace`: one `MS_TRACE` ring-buffer record per capture decision, only while a
//! trace holds the lease in `MS_TRACE_CTL`. Off, a decision pays one array lookup
//! ([`enabled`]). On, the record is built out of line and written in place in the ring, so
//! the callers' frames (the connect path is close to the 512-byte BPF stack) do not grow.
use core::ptr;

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use meshsteer_common::{
    Addr,
    inbound::InRule,
    maps::{
        node_counter,
        trace::{action, direction, proto},
    },
    outbound::{Connection, Proto, Rule},
};

use crate::{
    maps::{TRACE, TRACE_CTL},
    pod::count_node,
};

/// A connection arriving at a pod, as sk_lookup sees it.
pub struct Arrival {
    pub remote: Addr,
    pub local: Addr,
    /// Host byte order.
    pub remote_port: u16,
    pub local_port: u16,
}

/// Whether a `meshsteer trace` holds an unexpired lease.
#[inline(always)]
pub fn enabled() -> bool {
    let Some(ctl) = TRACE_CTL.get_ptr(0) else {
        return false;
    };
    // SAFETY: a pointer to the array's value, valid for the whole program run.
    let deadline = unsafe { ptr::read_volatile(&raw const (*ctl).deadline_ns) };
    // SAFETY: plain helper call.
    deadline != 0 && unsafe { bpf_ktime_get_ns() } < deadline
}

/// An outbound decision; `redirect_port` is 0 when the connection was left alone.
#[inline(never)]
pub fn outbound(pod_cgroup: u64, c: &Connection, rule: Rule, redirect_port: u16) {
    let (act, landed_port) = if redirect_port != 0 {
        (action::REDIRECTED, redirect_port)
    } else {
        (action::PASSED, c.dport)
    };
    let fields = Fields {
        uid: c.uid,
        gid: c.gid,
        ports: [0, c.dport, landed_port],
        direction: direction::OUTBOUND,
        rule: rule as u8,
        action: act,
        proto: match c.proto {
            Proto::Tcp => proto::TCP,
            Proto::Udp => proto::UDP,
        },
    };
    emit(pod_cgroup, &c.src, &c.dst, fields);
}

/// An inbound decision; `landed_port` is where `act` took the connection (0 when refused).
#[inline(never)]
pub fn inbound(pod_cgroup: u64, a: &Arrival, rule: InRule, act: u8, landed_port: u16) {
    let fields = Fields {
        uid: 0,
        gid: 0,
        ports: [a.remote_port, a.local_port, landed_port],
        direction: direction::INBOUND,
        rule: rule as u8,
        action: act,
        proto: proto::TCP,
    };
    emit(pod_cgroup, &a.remote, &a.local, fields);
}

/// A record's scalar fields, as [`meshsteer_common::maps::trace::TraceEvent`] names them.
struct Fields {
    uid: u32,
    gid: u32,
    /// Source, destination, landed.
    ports: [u16; 3],
    direction: u8,
    rule: u8,
    action: u8,
    proto: u8,
}

/// Reserves a record, writes it in place and submits it. A full ring (the reader is too
/// slow) loses the record and counts it.
#[inline(always)]
fn emit(pod_cgroup: u64, src: &Addr, dst: &Addr, f: Fields) {
    let Some(mut entry) = TRACE.reserve(0) else {
        count_node(node_counter::TRACE_DROPPED);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points at a reserved record of `TraceEvent`'s size, ours until submitted;
    // every field is written before that (no stale ring bytes reach the reader).
    unsafe {
        (*e).ktime_ns = bpf_ktime_get_ns();
        (*e).pod_cgroup = pod_cgroup;
        (*e).src = *src;
        (*e).dst = *dst;
        (*e).uid = f.uid;
        (*e).gid = f.gid;
        (*e).src_port = f.ports[0];
        (*e).dst_port = f.ports[1];
        (*e).landed_port = f.ports[2];
        (*e).direction = f.direction;
        (*e).rule = f.rule;
        (*e).action = f.action;
        (*e).proto = f.proto;
        (*e)._pad = [0; 6];
    }
    entry.submit(0);
}
