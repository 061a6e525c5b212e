//! `meshsteer trace`: capture decisions streamed through the `MS_TRACE` ring buffer while a
//! trace holds the lease in `MS_TRACE_CTL`. With no lease, the datapath's only cost is one
//! array lookup per decision.

use crate::Addr;

/// Size of the `MS_TRACE` ring buffer (a power-of-2 multiple of the page size).
pub const RING_BYTES: usize = 256 * 1024;
/// How long a lease lasts unless renewed: a `meshsteer trace` that dies without releasing
/// it stops costing the datapath anything within this time.
pub const LEASE_NS: u64 = 3_000_000_000;

/// `MS_TRACE_CTL[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TraceCtl {
    /// Events are emitted while `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) is below this;
    /// 0: tracing is off.
    pub deadline_ns: u64,
    /// The `meshsteer trace` process holding the lease.
    pub owner_pid: u32,
    pub _pad: u32,
}
plain_data!(TraceCtl);

/// [`TraceEvent::direction`].
pub mod direction {
    pub const OUTBOUND: u8 = 0;
    pub const INBOUND: u8 = 1;
}

/// [`TraceEvent::proto`]: IANA protocol numbers.
pub mod proto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// [`TraceEvent::action`]: where the connection landed.
pub mod action {
    /// Untouched: it goes where it was going.
    pub const PASSED: u8 = 0;
    /// Outbound: connect() rewritten to the family's localhost at `landed_port`.
    pub const REDIRECTED: u8 = 1;
    /// Inbound: handed to the proxy's listener on `landed_port`.
    pub const STEERED: u8 = 2;
    /// Inbound: to be steered, but the proxy has no listener: refused with a RST.
    pub const REFUSED: u8 = 3;
}

/// One capture decision (`MS_TRACE` record).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TraceEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    /// The pod-level cgroup id.
    pub pod_cgroup: u64,
    /// Outbound: the socket's bound source (unspecified if none). Inbound: the peer.
    pub src: Addr,
    /// Outbound: the original destination. Inbound: the pod address it arrived at.
    pub dst: Addr,
    /// Outbound: the socket owner. Inbound: 0.
    pub uid: u32,
    pub gid: u32,
    /// Host byte order; `src_port` is 0 for outbound (not chosen yet at connect()).
    pub src_port: u16,
    pub dst_port: u16,
    /// The port it landed on ([`action`]), or 0 when refused.
    pub landed_port: u16,
    /// [`direction`].
    pub direction: u8,
    /// [`crate::rules::Rule`] or [`crate::rules::InRule`], as `u8`.
    pub rule: u8,
    /// [`action`].
    pub action: u8,
    /// Outbound: [`proto::TCP`] or [`proto::UDP`] (DNS capture). Inbound: TCP.
    pub proto: u8,
    pub _pad: [u8; 6],
}
plain_data!(TraceEvent);
