//! Capacities. CIDR tries have no per-pod cap (unlike Merbridge's 20): a node's pods share them.

/// Pods on one node (Kubernetes' default max is 110; large nodes run a few hundred).
pub const PODS: u32 = 4 * 1024;
/// sk_lookup slots (`MS_SK_LOOKUP_PODS`): one per pod with inbound capture; slot 0 is never
/// given out.
pub const SK_LOOKUP_SLOTS: u32 = PODS + 1;
pub const PORTS: u32 = 64 * 1024;
pub const CIDRS: u32 = 256 * 1024;
pub const LOCAL_ADDRS: u32 = 64 * 1024;
/// Nameservers one pod's DNS capture may name (Kubernetes allows 3, glibc reads 3): with
/// [`DNS_SERVERS`] sized for every pod's full share, no pod can crowd out another's.
pub const NAMESERVERS_PER_POD: u32 = 8;
pub const DNS_SERVERS: u32 = PODS * NAMESERVERS_PER_POD;
/// Live redirected connections, shared out as per-pod budgets (`MS_POD_LIVE`).
pub const ORIG_DST_BUDGETED: u32 = 128 * 1024;
/// What concurrent connect()s of one pod may take beyond its budget: the datapath checks and
/// counts with two atomic steps, so a pod's count can pass its budget by the connect()s in
/// flight between them (fewer than this on any node).
pub const ORIG_DST_SLACK: u32 = 8 * 1024;
/// Live redirected connections on the node (`MS_ORIG_DST`, preallocated).
pub const ORIG_DST: u32 = ORIG_DST_BUDGETED + ORIG_DST_SLACK;
/// Accelerated sockets on the node (two per connection).
pub const SOCKS: u32 = 64 * 1024;
