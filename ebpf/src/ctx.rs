//! Every access to a hook's context, as small safe accessors, so the hook files read as logic
//! and what the verifier demands of each access is written down once, here.
//!
//! Why they are safe: aya hands each program the context the kernel passed it, valid for the
//! whole run, and each trait is implemented only for the context whose fields it touches (a
//! field the program type may not access fails verification at load, never at run time). A
//! [`Sock`] is only made from a ctx's `sk` field, NULL-checked where the kernel may leave it
//! NULL (or from cgroup/sock_create's ctx, the socket itself), so it is always a socket the
//! verifier knows.
//!
//! Widths: most of these fields are only readable as whole 4-byte words. Where LLVM could
//! narrow, widen or merge an access (an address's words, sk_msg's fields, the stores of a
//! getsockopt answer), it is volatile.
use core::{ffi::c_void, mem::size_of, ptr};

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_ANY, bpf_sock, sockaddr},
    btf_maps::SockHash,
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_bind, bpf_get_netns_cookie},
    },
    programs::{
        SkLookupContext, SkMsgContext, SockAddrContext, SockContext, SockOpsContext, SockoptContext,
    },
};
use meshsteer_common::Addr;

use crate::sockaddr::{AF_INET6, KernelSockaddr};

/// Accessors that read one field of the ctx behind `self.$ctx`, plainly.
macro_rules! field_reads {
    ($ctx:ident: $($name:ident -> $ty:ty = $field:ident;)+) => {$(
        #[inline(always)]
        fn $name(&self) -> $ty {
            // SAFETY: a field of this ctx (module doc).
            unsafe { (*self.$ctx).$field }
        }
    )+};
}

/// One end of a connection: its address and its port in network byte order.
pub type End = (Addr, u16);

/// The connection a ctx is about, as its socket sees it: `(local, remote)`.
pub trait Ends {
    fn ends(&self) -> (End, End);
}

/// Contexts whose programs may call `bpf_get_netns_cookie`.
pub trait NetnsCookie: EbpfContext {
    /// The socket's network namespace: tells apart pods whose connections have equal tuples.
    #[inline(always)]
    fn netns_cookie(&self) -> u64 {
        // SAFETY: the helper only reads the ctx it is given, this program's own.
        unsafe { bpf_get_netns_cookie(self.as_ptr()) }
    }
}

impl NetnsCookie for SockOpsContext {}
impl NetnsCookie for SkMsgContext {}
impl NetnsCookie for SockoptContext {}

/// A socket from a hook's ctx (`struct bpf_sock`), never NULL.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct Sock(*mut bpf_sock);

impl Sock {
    /// For the helpers that take a socket (`bpf_sk_storage_get`).
    #[inline(always)]
    pub fn as_ptr(self) -> *mut c_void {
        self.0.cast()
    }

    /// The kernel address of the socket (its `struct sock`), as a plain number for
    /// `bpf_probe_read_kernel` of fields the ctx does not expose. The verifier allows no
    /// arithmetic on a socket pointer, so its value is copied out of this stack slot by a
    /// kernel read, which yields a number (the agent loads with CAP_PERFMON, which lets a
    /// helper see a pointer's value).
    #[inline(always)]
    pub fn kernel_addr(self) -> Option<u64> {
        let p = self.0;
        // SAFETY: reads the 8 bytes of `p` itself, on this program's stack.
        unsafe { bpf_probe_read_kernel((&raw const p).cast::<u64>()).ok() }
    }

    #[inline(always)]
    pub fn sock_type(self) -> u32 {
        // SAFETY: a verified socket (module doc).
        unsafe { (*self.0).type_ }
    }

    /// IPPROTO_* (a SOCK_DGRAM socket may be UDP, UDP-Lite or an ICMP ping socket).
    #[inline(always)]
    pub fn protocol(self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.0).protocol }
    }

    /// The bound IPv4 source (0 if unbound), network byte order.
    #[inline(always)]
    pub fn src_ip4(self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.0).src_ip4 }
    }

    /// The bound IPv6 source (`::` if unbound).
    #[inline(always)]
    pub fn src_ip6(self) -> [u32; 4] {
        // SAFETY: as above.
        unsafe { words(&raw const (*self.0).src_ip6) }
    }
}

impl Ends for Sock {
    /// `src_port` is in host order, `dst_port` in network order.
    #[inline(always)]
    fn ends(&self) -> (End, End) {
        let sk = self.0;
        // SAFETY: as above.
        unsafe {
            ends_at(
                (*sk).family,
                (&raw const (*sk).src_ip4, &raw const (*sk).src_ip6),
                (&raw const (*sk).dst_ip4, &raw const (*sk).dst_ip6),
                (((*sk).src_port as u16).to_be(), (*sk).dst_port),
            )
        }
    }
}

/// cgroup/sock_create, whose ctx is the new socket itself.
pub trait SockCtx {
    fn sock(&self) -> Sock;
}

impl SockCtx for SockContext {
    #[inline(always)]
    fn sock(&self) -> Sock {
        Sock(self.sock)
    }
}

/// cgroup/connect4/6 and getpeername4/6 (`struct bpf_sock_addr`). Plain 4-byte accesses,
/// except `user_ip6`: one volatile word at a time.
pub trait SockAddrCtx {
    /// The socket the hook runs for (always set in these hooks).
    fn sock(&self) -> Sock;
    fn sock_type(&self) -> u32;
    /// IPPROTO_*.
    fn protocol(&self) -> u32;
    fn user_ip4(&self) -> u32;
    fn set_user_ip4(&self, ip_be: u32);
    fn user_ip6(&self) -> [u32; 4];
    fn set_user_ip6(&self, words: [u32; 4]);
    fn user_port_be(&self) -> u16;
    fn set_user_port_be(&self, port_be: u16);
    /// `bpf_bind()` of the hook's socket to `sa` (port 0: the port is still picked at
    /// connect(), as with IP_BIND_ADDRESS_NO_PORT). 0 or a negative errno.
    fn bind<T: KernelSockaddr>(&self, sa: &mut T) -> i64;
    /// sendmsg4: the datagram's source (0: routing picks it), network byte order.
    fn msg_src_ip4(&self) -> u32;
    fn set_msg_src_ip4(&self, ip_be: u32);
    /// sendmsg6: the same, for IPv6.
    fn msg_src_ip6(&self) -> [u32; 4];
    fn set_msg_src_ip6(&self, words: [u32; 4]);
}

impl SockAddrCtx for SockAddrContext {
    #[inline(always)]
    fn sock(&self) -> Sock {
        // SAFETY: a field of this ctx; the verifier knows it as a non-NULL socket here.
        Sock(unsafe { (*self.sock_addr).__bindgen_anon_1.sk })
    }

    field_reads!(sock_addr:
        sock_type -> u32 = type_;
        protocol -> u32 = protocol;
        user_ip4 -> u32 = user_ip4;
        msg_src_ip4 -> u32 = msg_src_ip4;
    );

    #[inline(always)]
    fn set_msg_src_ip4(&self, ip_be: u32) {
        // SAFETY: a field of this ctx, writable in sendmsg4.
        unsafe { (*self.sock_addr).msg_src_ip4 = ip_be };
    }

    #[inline(always)]
    fn msg_src_ip6(&self) -> [u32; 4] {
        // SAFETY: a field of this ctx.
        unsafe { words(&raw const (*self.sock_addr).msg_src_ip6) }
    }

    #[inline(always)]
    fn set_msg_src_ip6(&self, w: [u32; 4]) {
        // SAFETY: a field of this ctx, writable in sendmsg6.
        unsafe { write_words(&raw mut (*self.sock_addr).msg_src_ip6, w) }
    }

    #[inline(always)]
    fn set_user_ip4(&self, ip_be: u32) {
        // SAFETY: a field of this ctx, writable in these hooks.
        unsafe { (*self.sock_addr).user_ip4 = ip_be };
    }

    #[inline(always)]
    fn user_ip6(&self) -> [u32; 4] {
        // SAFETY: a field of this ctx.
        unsafe { words(&raw const (*self.sock_addr).user_ip6) }
    }

    #[inline(always)]
    fn set_user_ip6(&self, w: [u32; 4]) {
        // SAFETY: a field of this ctx, writable in these hooks.
        unsafe { write_words(&raw mut (*self.sock_addr).user_ip6, w) }
    }

    #[inline(always)]
    fn user_port_be(&self) -> u16 {
        // SAFETY: a field of this ctx.
        unsafe { (*self.sock_addr).user_port as u16 }
    }

    #[inline(always)]
    fn set_user_port_be(&self, port_be: u16) {
        // SAFETY: a field of this ctx, writable in these hooks.
        unsafe { (*self.sock_addr).user_port = u32::from(port_be) };
    }

    #[inline(always)]
    fn bind<T: KernelSockaddr>(&self, sa: &mut T) -> i64 {
        let len = size_of::<T>() as i32;
        let ctx = self.as_ptr().cast();
        // SAFETY: `sa` outlives the call and `len` is its size.
        unsafe { bpf_bind(ctx, ptr::from_mut(sa).cast::<sockaddr>(), len) }
    }
}

/// sockops (`struct bpf_sock_ops`), beyond what aya's context offers.
pub trait SockOpsCtx {
    /// The callback's socket (NULL for some callbacks).
    fn sock(&self) -> Option<Sock>;
    /// Puts the callback's socket into `map` under `key`, replacing any socket there.
    fn store_in<K, const M: usize, const F: usize>(
        &self,
        map: &SockHash<K, M, F>,
        key: &mut K,
    ) -> Result<(), i32>;
}

impl SockOpsCtx for SockOpsContext {
    #[inline(always)]
    fn sock(&self) -> Option<Sock> {
        // SAFETY: a field of this ctx, a plain pointer, checked here.
        let sk = unsafe { (*self.ops).__bindgen_anon_2.sk };
        (!sk.is_null()).then_some(Sock(sk))
    }

    #[inline(always)]
    fn store_in<K, const M: usize, const F: usize>(
        &self,
        map: &SockHash<K, M, F>,
        key: &mut K,
    ) -> Result<(), i32> {
        // SAFETY: the ctx is the bpf_sock_ops the helper expects, valid for the whole run.
        let ops = unsafe { &mut *self.ops };
        map.update(key, ops, BPF_ANY.into())
    }
}

impl Ends for SockOpsContext {
    #[inline(always)]
    fn ends(&self) -> (End, End) {
        let o = self.ops;
        let ports = view_ports(self.local_port(), self.remote_port());
        // SAFETY: fields of this ctx.
        unsafe {
            ends_at(
                self.family(),
                (&raw const (*o).local_ip4, &raw const (*o).local_ip6),
                (&raw const (*o).remote_ip4, &raw const (*o).remote_ip6),
                ports,
            )
        }
    }
}

/// sk_msg (`struct sk_msg_md`): every field read volatile, as a whole 4-byte word (the only
/// width the verifier accepts for them).
pub trait SkMsgCtx {
    /// The sending socket.
    fn sock(&self) -> Option<Sock>;
}

impl SkMsgCtx for SkMsgContext {
    #[inline(always)]
    fn sock(&self) -> Option<Sock> {
        // SAFETY: a field of this ctx, a plain pointer, checked here.
        let sk = unsafe { (*self.msg).__bindgen_anon_3.sk };
        (!sk.is_null()).then_some(Sock(sk))
    }
}

impl Ends for SkMsgContext {
    #[inline(always)]
    fn ends(&self) -> (End, End) {
        let m = self.msg;
        // SAFETY: fields of this ctx.
        unsafe {
            let family = ptr::read_volatile(&raw const (*m).family);
            let ports = view_ports(
                ptr::read_volatile(&raw const (*m).local_port),
                ptr::read_volatile(&raw const (*m).remote_port),
            );
            ends_at(
                family,
                (&raw const (*m).local_ip4, &raw const (*m).local_ip6),
                (&raw const (*m).remote_ip4, &raw const (*m).remote_ip6),
                ports,
            )
        }
    }
}

/// sk_lookup (`struct bpf_sk_lookup`).
pub trait SkLookupCtx {
    fn protocol(&self) -> u32;
    fn family(&self) -> u32;
}

impl SkLookupCtx for SkLookupContext {
    field_reads!(lookup:
        protocol -> u32 = protocol;
        family -> u32 = family;
    );
}

impl Ends for SkLookupContext {
    /// `local_port` is in host order, `remote_port` in network order.
    #[inline(always)]
    fn ends(&self) -> (End, End) {
        let l = self.lookup;
        // SAFETY: fields of this ctx.
        unsafe {
            ends_at(
                (*l).family,
                (&raw const (*l).local_ip4, &raw const (*l).local_ip6),
                (&raw const (*l).remote_ip4, &raw const (*l).remote_ip6),
                (((*l).local_port as u16).to_be(), (*l).remote_port),
            )
        }
    }
}

/// cgroup/getsockopt (`struct bpf_sockopt`).
pub trait SockoptCtx {
    /// The socket asked about (getsockopt programs always run on a full socket).
    fn sock(&self) -> Sock;
    fn level(&self) -> i32;
    fn optname(&self) -> i32;
    fn optlen(&self) -> i32;
    /// What the kernel's own getsockopt returned (0: it answered).
    fn retval(&self) -> i32;
    fn set_optlen(&self, len: i32);
    /// Answers the call with `value` (optval, optlen = its size, retval 0) and reports
    /// success, if optval can hold it.
    fn reply<T>(&self, value: T) -> bool;
    /// Makes the call fail with `errno` (Linux 5.19: any error, not only the kernel's own).
    fn fail(&self, errno: i32);
}

impl SockoptCtx for SockoptContext {
    #[inline(always)]
    fn sock(&self) -> Sock {
        // SAFETY: a field of this ctx, never NULL here.
        Sock(unsafe { (*self.sockopt).__bindgen_anon_1.sk })
    }

    field_reads!(sockopt:
        level -> i32 = level;
        optname -> i32 = optname;
        optlen -> i32 = optlen;
        retval -> i32 = retval;
    );

    #[inline(always)]
    fn set_optlen(&self, len: i32) {
        // SAFETY: a field of this ctx, writable in getsockopt programs.
        unsafe { ptr::write_volatile(&raw mut (*self.sockopt).optlen, len) };
    }

    #[inline(always)]
    fn fail(&self, errno: i32) {
        // SAFETY: a field of this ctx, writable in getsockopt programs.
        unsafe { ptr::write_volatile(&raw mut (*self.sockopt).retval, -errno) };
    }

    #[inline(always)]
    fn reply<T>(&self, value: T) -> bool {
        let so = self.sockopt;
        let len = size_of::<T>();
        // SAFETY: fields of this ctx.
        let (start, end) = unsafe {
            (
                (*so).__bindgen_anon_2.optval,
                (*so).__bindgen_anon_3.optval_end,
            )
        };
        if (start as usize) + len > end as usize {
            return false;
        }
        // SAFETY: [start, start + len) was just checked against optval_end; optlen and retval
        // are writable. Two separate stores: merged into one 8-byte store, the verifier
        // rejects them.
        unsafe {
            ptr::write_unaligned(start.cast::<T>(), value);
            ptr::write_volatile(&raw mut (*so).optlen, len as i32);
            ptr::write_volatile(&raw mut (*so).retval, 0);
        }
        true
    }
}

/// A pair of `(ip4, ip6)` address fields of a ctx or socket.
type IpFields = (*const u32, *const [u32; 4]);

/// Both ends from their address fields and their ports (network byte order).
///
/// # Safety
/// The address fields must be the hook's ctx's (or a verified socket's).
#[inline(always)]
unsafe fn ends_at(
    family: u32,
    local: IpFields,
    remote: IpFields,
    ports_be: (u16, u16),
) -> (End, End) {
    // SAFETY: caller's contract.
    let (l, r) = unsafe {
        (
            addr(family, local.0, local.1),
            addr(family, remote.0, remote.1),
        )
    };
    ((l, ports_be.0), (r, ports_be.1))
}

/// sockops and sk_msg share their port conventions: `local_port` in host order, `remote_port`
/// the network-order port in its upper half.
#[inline(always)]
const fn view_ports(local_port: u32, remote_port: u32) -> (u16, u16) {
    ((local_port as u16).to_be(), (remote_port >> 16) as u16)
}

/// An address from a `(family, ip4, ip6)` field triple. Both fields are always read and the
/// family picks a value afterwards: branching first lets LLVM merge the two branches' loads
/// into one load through a chosen pointer, which the verifier rejects ("dereference of
/// modified ctx ptr").
///
/// # Safety
/// Both pointers must point into the hook's ctx (or a socket the verifier knows).
#[inline(always)]
unsafe fn addr(family: u32, ip4: *const u32, ip6: *const [u32; 4]) -> Addr {
    // SAFETY: caller's contract.
    let (v4, v6) = unsafe { (ptr::read_volatile(ip4), words(ip6)) };
    if family == AF_INET6 as u32 {
        Addr::from_be_words(v6)
    } else {
        Addr::from_be_u32(v4)
    }
}

/// Reads an IPv6 address field one 4-byte word at a time (the only width the verifier
/// accepts for these fields).
///
/// # Safety
/// `p` must point into the hook's ctx or a verified socket.
#[inline(always)]
unsafe fn words(p: *const [u32; 4]) -> [u32; 4] {
    // SAFETY: caller's contract; the four words are in bounds.
    unsafe {
        [
            ptr::read_volatile(&raw const (*p)[0]),
            ptr::read_volatile(&raw const (*p)[1]),
            ptr::read_volatile(&raw const (*p)[2]),
            ptr::read_volatile(&raw const (*p)[3]),
        ]
    }
}

/// Stores an IPv6 address's four words into a ctx field one 4-byte word at a time: the
/// verifier rejects wider stores, and LLVM would otherwise merge them.
///
/// # Safety
/// `p` points at a writable `[u32; 4]` field of the program's ctx.
#[inline(always)]
unsafe fn write_words(p: *mut [u32; 4], w: [u32; 4]) {
    // SAFETY: caller's contract; the four words are in bounds.
    unsafe {
        ptr::write_volatile(&raw mut (*p)[0], w[0]);
        ptr::write_volatile(&raw mut (*p)[1], w[1]);
        ptr::write_volatile(&raw mut (*p)[2], w[2]);
        ptr::write_volatile(&raw mut (*p)[3], w[3]);
    }
}
