//! `MS_LISTENERS`: the proxies' inbound listeners.

/// `MS_LISTENERS` key: the proxy's inbound listener of a pod, per socket family. sk_lookup
/// finds the pod from the connection's local address (`MS_INBOUND_ADDRS`: address → pod
/// cgroup id), as it cannot ask for its network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerKey {
    pub pod_cgroup: u64,
    /// AF_INET or AF_INET6.
    pub family: u32,
    pub _pad: u32,
}
plain_data!(ListenerKey);
