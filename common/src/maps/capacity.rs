//! Capacities. CIDR tries have no per-pod cap (unlike Merbridge's 20): a node's pods share them.

/// Pods on one node (Kubernetes' default max is 110; large nodes run a few hundred).
pub const PODS: u32 = 4 * 1024;
pub const PORTS: u32 = 64 * 1024;
pub const CIDRS: u32 = 256 * 1024;
pub const LOCAL_ADDRS: u32 = 64 * 1024;
/// Live redirected connections on the node.
pub const ORIG_DST: u32 = 128 * 1024;
/// Accelerated sockets on the node (two per connection).
pub const SOCKS: u32 = 64 * 1024;
