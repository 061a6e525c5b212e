//! `MS_SOCK_STATE`: what a socket carries from its creation to its close.
use crate::Addr;

/// `MS_SOCK_STATE`: socket-local storage, created at socket creation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockState {
    /// Pod-level cgroup id of the socket's cgroup at creation (0: not in an enrolled pod then).
    pub pod_cgroup: u64,
    /// Owner as iptables' owner match sees it: the creator's uid/gid (primary group only).
    pub uid: u32,
    pub gid: u32,
    /// [`sock_flags`].
    pub flags: u32,
    /// Original destination port (network byte order), valid with `REDIRECTED`.
    pub orig_port_be: u16,
    pub _pad: u16,
    /// Original destination, valid with `REDIRECTED`.
    pub orig_addr: Addr,
}
plain_data!(SockState);

pub mod sock_flags {
    /// uid/gid were recorded at creation (else: the socket predates the agent).
    pub const OWNER_KNOWN: u32 = 1 << 0;
    /// connect() was steered to the proxy; `orig_*` hold where it was going.
    pub const REDIRECTED: u32 = 1 << 1;
    /// The original destination was published in `MS_ORIG_DST`.
    pub const PUBLISHED: u32 = 1 << 2;
    /// A proxy's accepted socket that owns its connection's `MS_ORIG_DST` entry.
    pub const ORIG_OWNER: u32 = 1 << 3;
}
