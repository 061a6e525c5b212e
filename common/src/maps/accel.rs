//! Socket-level acceleration: established sockets of a pod with [`pod_flags::ACCELERATE`] go
//! into the `MS_SOCKS` sockhash under a [`TupleKey`] (the socket's own view: local, remote),
//! and the sk_msg program hands each send to the peer found under the mirrored key.
//!
//! [`pod_flags::ACCELERATE`]: super::pod_flags::ACCELERATE
//! [`TupleKey`]: super::TupleKey

/// `MS_ACCEL_CFG[0]`: node-wide settings the agent writes at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AccelConfig {
    /// [`cfg_flags`].
    pub flags: u32,
    /// Unread redirected bytes a peer may hold before its writer falls back to the normal
    /// path (where TCP's own buffers push back).
    pub max_backlog: u32,
    /// Kernel struct offsets, from the kernel's BTF: `struct sk_msg::sk_redir`,
    /// `struct sock::sk_user_data`, `struct sk_psock::msg_tot_len`. With them the sk_msg
    /// program reads how many redirected bytes the peer has not read yet.
    pub off_msg_sk_redir: u32,
    pub off_sock_user_data: u32,
    pub off_psock_msg_tot_len: u32,
    pub _pad: u32,
}
plain_data!(AccelConfig);

pub mod cfg_flags {
    /// The offsets are valid: the peer's backlog can be bounded, so sockets may be
    /// accelerated. Without it, no socket is.
    pub const CAPABLE: u32 = 1 << 0;
}

/// `MS_ACCEL_STATE`: socket-local storage of every socket put into `MS_SOCKS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AccelState {
    /// The pod charged for the socket's counters.
    pub pod_cgroup: u64,
    /// [`state_flags`].
    pub flags: u32,
    pub _pad: u32,
}
plain_data!(AccelState);

pub mod state_flags {
    /// At least one send was redirected to the peer.
    pub const REDIRECTED: u32 = 1 << 0;
    /// Sends take the normal path for the rest of the connection. One-way: once a byte
    /// went through TCP, a later redirected byte could overtake it in the peer's queue.
    pub const NORMAL_PATH: u32 = 1 << 1;
}

/// `sk_user_data` low bits (include/net/sock.h): the pointer is a psock when
/// `SK_USER_DATA_PSOCK` is set; the mask strips the flags.
pub const SK_USER_DATA_PSOCK: u64 = 1 << 2;
pub const SK_USER_DATA_PTRMASK: u64 = !0b111;
