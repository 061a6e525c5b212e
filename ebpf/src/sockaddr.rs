//! Kernel ABI socket addresses, for `bpf_bind` and the SO_ORIGINAL_DST answer.
use meshsteer_common::Addr;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// `struct sockaddr_in`.
#[repr(C)]
pub struct SockaddrIn {
    pub family: u16,
    pub port_be: u16,
    pub addr_be: u32,
    pub zero: [u8; 8],
}

/// `struct sockaddr_in6`.
#[repr(C)]
pub struct SockaddrIn6 {
    pub family: u16,
    pub port_be: u16,
    pub flowinfo: u32,
    pub addr: [u32; 4],
    pub scope_id: u32,
}

impl SockaddrIn {
    pub const fn new(v4_be: u32, port_be: u16) -> Self {
        Self {
            family: AF_INET,
            port_be,
            addr_be: v4_be,
            zero: [0; 8],
        }
    }
}

impl SockaddrIn6 {
    /// IPv4 addresses come out IPv4-mapped, as an AF_INET6 socket sees them.
    pub const fn new(addr: &Addr, port_be: u16) -> Self {
        Self {
            family: AF_INET6,
            port_be,
            flowinfo: 0,
            addr: addr.be_words(),
            scope_id: 0,
        }
    }
}

/// The kernel ABI socket addresses above, the only types `bpf_bind` is given.
pub trait KernelSockaddr {}
impl KernelSockaddr for SockaddrIn {}
impl KernelSockaddr for SockaddrIn6 {}
