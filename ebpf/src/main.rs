//! meshsteer's kernel side. One BPF object; one file per hook:
//!
//! | file              | hook                   | job                                             |
//! |-------------------|------------------------|-------------------------------------------------|
//! | `sock_create.rs`  | cgroup/sock_create     | record a socket's pod and owner at creation     |
//! | `connect4.rs`     | cgroup/connect4        | outbound capture (ISTIO_OUTPUT), IPv4           |
//! | `connect6.rs`     | cgroup/connect6        | the same for AF_INET6 sockets (and v4-mapped)   |
//! | `sockops.rs`      | sockops                | publish/free a redirected connection's tuple;   |
//! |                   |                        | register the proxy's inbound listener;          |
//! |                   |                        | accelerated pods' sockets → `MS_SOCKS`          |
//! | `sk_lookup.rs`    | sk_lookup (per netns)  | inbound capture (ISTIO_INBOUND), no NAT         |
//! | `getsockopt.rs`   | cgroup/getsockopt      | answer SO_ORIGINAL_DST for the proxy            |
//! | `getpeername4.rs` | cgroup/getpeername4    | the app sees the original peer, IPv4            |
//! | `getpeername6.rs` | cgroup/getpeername6    | the same for AF_INET6 sockets                   |
//! | `sendmsg4.rs`     | cgroup/sendmsg4        | DNS capture of sendto()/sendmsg(), IPv4         |
//! | `sendmsg6.rs`     | cgroup/sendmsg6        | the same for IPv6                               |
//! | `recvmsg4.rs`     | cgroup/recvmsg4        | the proxy's DNS replies come from the server    |
//! | `recvmsg6.rs`     | cgroup/recvmsg6        | the same for AF_INET6 sockets                   |
//! | `sk_msg.rs`       | sk_msg (on `MS_SOCKS`) | socket-level acceleration: send → peer's queue  |
//!
//! Shared pieces: `ctx.rs` (every access to a hook's context, as safe accessors), `tuple.rs`
//! (connection keys), `maps.rs` (every map), `pod.rs` (socket → pod → config, counters),
//! `capture.rs` (the connect-time steering both connect hooks use), `dns.rs` (DNS capture's
//! UDP steering and reply translation), `trace.rs` (decision records for `meshsteer trace`),
//! `accel.rs` (sockops' half of acceleration), `orig_dst.rs` (original destinations and each
//! pod's budget of them), `atomic.rs` (atomic adds to shared map values), `netns.rs` (a
//! socket's network namespace, for the inbound listener check), `sockaddr.rs`.
#![no_std]
#![no_main]
// `atomic_xadd`: the BPF target has no atomic read-modify-write types (see `atomic.rs`).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod accel;
mod atomic;
mod capture;
mod connect4;
mod connect6;
mod ctx;
mod dns;
mod getpeername4;
mod getpeername6;
mod getsockopt;
mod maps;
mod netns;
mod orig_dst;
mod owner;
mod pod;
mod recvmsg4;
mod recvmsg6;
mod sendmsg4;
mod sendmsg6;
mod sk_lookup;
mod sk_msg;
mod sock_create;
mod sockaddr;
mod sockops;
mod trace;
mod tuple;

/// GPL-compatible: the kernel refuses GPL-only helpers (sk_storage, sock_ops callback flags)
/// to non-GPL programs. Dual licensing keeps the programs usable under MIT elsewhere.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects code that could get here.
    loop {}
}
