//! `MS_LISTENERS`: the proxies' inbound listeners.

/// `MS_LISTENERS` key: the proxy's inbound listener of a pod, per socket family. The pod is
/// the one `MS_SK_LOOKUP_PODS` gives for the slot of the namespace's sk_lookup trampoline.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerKey {
    pub pod_cgroup: u64,
    /// AF_INET or AF_INET6.
    pub family: u32,
    pub _pad: u32,
}
plain_data!(ListenerKey);
