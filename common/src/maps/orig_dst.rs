//! `MS_ORIG_DST`: redirected connections' original destinations.
use crate::Addr;

/// `MS_ORIG_DST` key: a redirected connection as the proxy's accepted socket sees it,
/// within one network namespace (the cookie keeps pods with equal tuples apart).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TupleKey {
    pub netns_cookie: u64,
    /// The proxy side (where the connection was redirected to).
    pub local: Addr,
    /// The application side.
    pub remote: Addr,
    /// Network byte order.
    pub local_port_be: u16,
    pub remote_port_be: u16,
    pub _pad: u32,
}
plain_data!(TupleKey);

/// `MS_ORIG_DST` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OrigDst {
    pub addr: Addr,
    pub port_be: u16,
    /// 1 once the proxy's accepted socket owns the entry: it frees it at its close, so a
    /// proxy that accepts after the app has closed still learns the destination (conntrack
    /// keeps its entry that long too). Until then the app's socket frees it.
    pub claimed: u16,
    pub _pad: u32,
    /// The app's pod, for counting on the proxy's side.
    pub pod_cgroup: u64,
}
plain_data!(OrigDst);
