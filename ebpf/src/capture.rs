//! Connect-time steering, shared by `connect4` and `connect6`: find the socket's pod and
//! owner, run the decision model, and on a redirect remember where the connection was going.
use aya_ebpf::programs::SockAddrContext;
use meshsteer_common::{
    Addr,
    maps::{PodConfig, SockState, counter, node_counter, pod_flags, sock_flags},
    outbound::{Connection, PodTables, decide},
};

use crate::{
    ctx::SockAddrCtx,
    orig_dst,
    owner::current_owner,
    pod::{
        MapTables, count, count_node, pod_config, pod_of_current_task, sock_state,
        sock_state_or_create,
    },
    sockaddr::{SockaddrIn, SockaddrIn6},
    trace,
};

pub const SOCK_STREAM: u32 = 1;
/// cgroup/connect* programs return 1 to let connect() proceed.
pub const ALLOW: i32 = 1;
/// ... and 0 to fail it with EPERM.
pub const DENY: i32 = 0;

/// Where connect() should go instead.
pub struct Redirect {
    pub addr: Addr,
    pub port: u16,
}

/// What becomes of a connect().
pub enum Steer {
    /// It goes where it was going.
    Pass,
    /// To the proxy instead.
    Redirect(Redirect),
    /// It fails (EPERM): the pod is enrolled refused, fail closed.
    Deny,
}

impl Steer {
    /// The connect hook's return value; a redirect is applied by the hook first.
    pub const fn verdict(&self) -> i32 {
        match self {
            Self::Deny => DENY,
            Self::Pass | Self::Redirect(_) => ALLOW,
        }
    }
}

/// Decides a TCP connect() from `src` (bound source, unspecified if none) to `dst:dport`.
#[inline(always)]
pub fn steer(ctx: &SockAddrContext, v6_socket: bool, src: Addr, dst: Addr, dport: u16) -> Steer {
    let sk = ctx.sock();
    // Owner and pod as recorded at socket creation; sockets older than the agent fall back to
    // the connecting task (counted: that is where iptables' creator-based match could differ).
    let (pod_cgroup, uid, gid) = match sock_state(sk) {
        Some(s) if s.pod_cgroup != 0 => (s.pod_cgroup, s.uid, s.gid),
        _ => {
            let Some(pod) = pod_of_current_task() else {
                return Steer::Pass;
            };
            count_node(node_counter::OWNER_FROM_TASK);
            let (uid, gid) = current_owner();
            (pod, uid, gid)
        }
    };
    let Some(cfg) = pod_config(pod_cgroup) else {
        return Steer::Pass;
    };
    if cfg.flags & pod_flags::REFUSED != 0 {
        // Fail closed: the pod's capture could not be applied, so none of its TCP leaves.
        count(pod_cgroup, counter::REFUSED_CONNECT);
        return Steer::Deny;
    }
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
        return Steer::Pass;
    }
    if orig_dst::over_budget(pod_cgroup) {
        // The pod holds its budget of live redirected connections: this one fails rather
        // than take another pod's room (or go uncaptured).
        count(pod_cgroup, counter::ORIG_DST_OVER_BUDGET);
        return Steer::Deny;
    }
    let Some(state) = sock_state_or_create(sk) else {
        return Steer::Pass;
    };
    if state.pod_cgroup == 0 {
        *state = SockState {
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
    Steer::Redirect(Redirect {
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
    // Port 0: IP_BIND_ADDRESS_NO_PORT behaviour, the port is still picked at connect().
    // A failure (socket already bound to a port) leaves routing's choice: nothing to undo.
    if v6_socket {
        let _ = ctx.bind(&mut SockaddrIn6::new(&src, 0));
    } else if let Some(v4) = src.be_u32() {
        let _ = ctx.bind(&mut SockaddrIn::new(v4, 0));
    }
}
