//! Map keys and values, one file per map or group of maps that share a key. Every struct is
//! `#[repr(C)]` with explicit padding fields so its size has no hidden holes: the kernel
//! compares keys byte for byte.
//!
//! Only the counter indices know the decision model, and only its leaf [`crate::rules`].

pub mod accel;
mod addr_sets;
pub mod capacity;
mod dns;
mod listeners;
mod live;
pub mod names;
mod orig_dst;
mod pod;
mod ports;
mod sock_state;
mod stats;
pub mod trace;

pub use addr_sets::{CidrKey, LocalKey};
pub use dns::{DnsServerKey, DnsSock, dns_flags};
pub use listeners::ListenerKey;
pub use live::PodLive;
pub use orig_dst::{OrigDst, TupleKey};
pub use pod::{DNS_PORT, DNS_PROXY_PORT, MAX_PROXY_IDS, PodConfig, pod_flags};
pub use ports::{PortKey, PortSet};
pub use sock_state::{SockState, sock_flags};
pub use stats::{PodCounters, counter, node_counter};

/// Bumped whenever a pinned map's key/value layout changes; pins live under a directory named
/// after it, so an agent never adopts maps it would misread.
/// 2: per-pod counters grew to 48 (socket-level acceleration).
/// 3: `MS_ORIG_DST` is a plain hash map (a live entry is never evicted) whose entries each pod
/// holds within a budget counted in the new `MS_POD_LIVE`; layout 2's LRU map is adopted as
/// `MS_ORIG_DST_V2` and drained (see the agent's `bpf/migrate.rs`).
/// 4: inbound capture follows the pod's network namespace, not an address list: each pod's
/// sk_lookup link runs a copy of the program loaded for a slot of the new `MS_SK_LOOKUP_PODS`
/// (slot → pod), so `MS_INBOUND_ADDRS` is gone; the new `MS_POD_NETNS` and `MS_SOCK_NETNS`
/// keep the inbound listener in the pod's namespace.
/// 5: DNS capture: the new `MS_DNS_SERVERS` (each pod's nameservers) and `MS_DNS_SOCK` (a UDP
/// socket's redirected servers), and the cgroup sendmsg/recvmsg programs; every layout-4 map is
/// carried as it is.
/// 6: the cgroup programs are attached to each enrolled pod's cgroup, not to the cgroup root
/// (nothing runs for the sockets of other pods and of the host): their links are pinned per
/// pod under `links/cgroup/<pod cgroup id>/`. Every layout-5 map is carried as it is; layout
/// 5's root links run the new programs until every pod has its own, then go.
/// 7: one sk_lookup program for every pod, loaded once: each pod's namespace runs a
/// trampoline of a few instructions that writes its slot to the new per-CPU
/// `MS_SK_LOOKUP_SLOT` and tail-calls the program in the new `MS_SK_LOOKUP_PROG` (a copy of
/// the whole program per pod cost 10 to 20 ms to load). Every layout-6 map is carried as it is;
/// each pod's link is swapped to a trampoline when the pod is enrolled again.
/// 8: `MS_SOCK_NETNS` is gone: sockops reads a listener's network namespace from the socket
/// itself, so sock_create no longer gives each proxy socket a second socket storage. The new
/// `MS_ACCEL_PENDING_COUNT` lets accepts skip the `MS_ACCEL_PENDING` lookup on a node where
/// no connection waits there. Every other layout-7 map is carried as it is.
pub const LAYOUT_VERSION: u32 = 8;

/// Depth of the cgroup ancestor walk that maps a socket's cgroup to its pod
/// (`kubepods.slice/kubepods-burstable.slice/…-pod<uid>.slice/cri-…scope` is depth 4).
pub const MAX_CGROUP_DEPTH: i32 = 16;

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<crate::Addr>(), 16);
        assert_eq!(
            size_of::<PodConfig>(),
            4 + 4 + 2 + 2 + 2 + 1 + 1 + 16 + 16 + 32
        );
        assert_eq!(size_of::<PortKey>(), 8);
        assert_eq!(size_of::<CidrKey>(), 20);
        assert_eq!(size_of::<LocalKey>(), 20);
        assert_eq!(size_of::<DnsServerKey>(), 20);
        assert_eq!(size_of::<DnsSock>(), 4 + 2 + 2 + 16 + 16);
        assert_eq!(size_of::<SockState>(), 8 + 4 + 4 + 4 + 2 + 2 + 16);
        assert_eq!(size_of::<TupleKey>(), 8 + 16 + 16 + 2 + 2 + 4);
        assert_eq!(size_of::<OrigDst>(), 32);
        assert_eq!(size_of::<ListenerKey>(), 16);
        assert_eq!(size_of::<PodLive>(), 16);
        assert_eq!(size_of::<trace::TraceCtl>(), 16);
        assert_eq!(size_of::<accel::AccelConfig>(), 6 * 4);
        assert_eq!(size_of::<accel::AccelState>(), 16);
        assert_eq!(size_of::<PodCounters>(), 8 * counter::COUNT);
        const { assert!(counter::ACCEL_HALF_CLOSE < counter::COUNT) };
        assert_eq!(
            size_of::<trace::TraceEvent>(),
            8 + 8 + 16 + 16 + 4 + 4 + 2 + 2 + 2 + 1 + 1 + 1 + 7
        );
        const { assert!(node_counter::TRACE_DROPPED < node_counter::COUNT) };
        assert!(counter::inbound(crate::rules::InRule::Captured) < counter::IN_NO_LISTENER);
    }
}
