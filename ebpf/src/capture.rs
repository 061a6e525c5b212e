//! Connect-time steering, shared by `connect4` and `connect6`: find the socket's pod and
//! owner, run the decision model, and on a redirect remember where the connection was going.
use core::{ffi::c_void, mem::size_of, ptr};

use aya_ebpf::{
    EbpfContext,
    bindings::{bpf_sock, bpf_sock_addr, sockaddr},
    helpers::generated::bpf_bind,
    programs::SockAddrContext,
};
use meshsteer_common::{
    Addr,
    maps::{PodConfig, node_counter, sock_flags},
    outbound::{Connection, PodTables, decide},
};

use crate::{
    pod::{
        MapTables, count, count_node, current_owner, pod_config, pod_of_current_task, sock_state,
        sock_state_or_create,
    },
    sockaddr::{SockaddrIn, SockaddrIn6},
    trace,
};

pub const SOCK_STREAM: u32 = 1;
/// cgroup/connect* programs return 1 to let connect() proceed.
pub const ALLOW: i32 = 1;

/// Where connect() should go instead.
pub struct Redirect {
    pub addr: Addr,
    pub port: u16,
}

/// Writes an IPv6 `user_ip6` one 4-byte word at a time: the verifier rejects wider stores
/// into that ctx field, and LLVM would otherwise merge them.
#[inline(always)]
pub fn set_user_ip6(sa: *mut bpf_sock_addr, addr: &Addr) {
    let w = addr.be_words();
    // SAFETY: `sa` is the hook's ctx; the four words are in bounds.
    unsafe {
        ptr::write_volatile(&raw mut (*sa).user_ip6[0], w[0]);
        ptr::write_volatile(&raw mut (*sa).user_ip6[1], w[1]);
        ptr::write_volatile(&raw mut (*sa).user_ip6[2], w[2]);
        ptr::write_volatile(&raw mut (*sa).user_ip6[3], w[3]);
    }
}

/// The socket the hook runs for.
#[inline(always)]
pub fn socket(ctx: &SockAddrContext) -> *mut bpf_sock {
    // SAFETY: `sk` is always set for cgroup/connect and getpeername hooks.
    unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk }
}

/// Decides a TCP connect() from `src` (bound source, unspecified if none) to `dst:dport`.
#[inline(always)]
pub fn steer(
    ctx: &SockAddrContext,
    v6_socket: bool,
    src: Addr,
    dst: Addr,
    dport: u16,
) -> Option<Redirect> {
    let sk = socket(ctx).cast::<c_void>();
    // Owner and pod as recorded at socket creation; sockets older than the agent fall back to
    // the connecting task (counted: that is where iptables' creator-based match could differ).
    let (pod_cgroup, uid, gid) = match sock_state(sk) {
        Some(s) if s.pod_cgroup != 0 => (s.pod_cgroup, s.uid, s.gid),
        _ => {
            let pod = pod_of_current_task()?;
            count_node(node_counter::OWNER_FROM_TASK);
            let (uid, gid) = current_owner();
            (pod, uid, gid)
        }
    };
    let cfg = pod_config(pod_cgroup)?;
    let tables = MapTables::new(cfg);
    let conn = Connection {
        uid,
        gid,
        src,
        dst,
        dport,
    };
    let verdict = decide(cfg, &tables, &conn);
    count(pod_cgroup, verdict.rule as usize);
    if trace::enabled() {
        trace::outbound(pod_cgroup, &conn, verdict.rule, verdict.redirect_port);
    }
    if !verdict.is_redirect() {
        return None;
    }
    let state = sock_state_or_create(sk)?;
    if state.pod_cgroup == 0 {
        *state = meshsteer_common::maps::SockState {
            pod_cgroup,
            uid,
            gid,
            ..Default::default()
        };
    }
    state.flags |= sock_flags::REDIRECTED;
    state.flags &= !sock_flags::PUBLISHED;
    state.orig_addr = dst;
    state.orig_port_be = dport.to_be();
    if src.is_unspecified() {
        bind_source(ctx, v6_socket, cfg, &tables, &dst);
    }
    Some(Redirect {
        addr: dst.localhost_like(),
        port: verdict.redirect_port,
    })
}

/// Binds the source iptables' routing would have picked for the original destination, so the
/// proxy sees the same peer address: the pod address itself for a pod address, the pod's
/// primary address for anything off-pod, and nothing for loopback (127.0.0.1 either way).
#[inline(never)]
fn bind_source(ctx: &SockAddrContext, v6_socket: bool, cfg: &PodConfig, t: &MapTables, dst: &Addr) {
    if dst.is_loopback() {
        return;
    }
    let src = if t.is_pod_address(dst) {
        *dst
    } else if dst.is_ipv4() {
        cfg.primary_v4
    } else {
        cfg.primary_v6
    };
    if src.is_unspecified() {
        return;
    }
    let ctx_ptr = ctx.as_ptr().cast::<bpf_sock_addr>();
    // Port 0: IP_BIND_ADDRESS_NO_PORT behaviour, the port is still picked at connect().
    // A failure (socket already bound to a port) leaves routing's choice: nothing to undo.
    if v6_socket {
        let mut sa = SockaddrIn6::new(&src, 0);
        let len = size_of::<SockaddrIn6>() as i32;
        // SAFETY: `sa` outlives the call and `len` is its size.
        let _ = unsafe { bpf_bind(ctx_ptr, ptr::from_mut(&mut sa).cast::<sockaddr>(), len) };
    } else if let Some(v4) = src.be_u32() {
        let mut sa = SockaddrIn::new(v4, 0);
        let len = size_of::<SockaddrIn>() as i32;
        // SAFETY: as above.
        let _ = unsafe { bpf_bind(ctx_ptr, ptr::from_mut(&mut sa).cast::<sockaddr>(), len) };
    }
}
