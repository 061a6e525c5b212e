//! Connect-time steering, shared by `connect4` and `connect6`: find the socket's pod and
//! owner, run the decision model, and on a redirect remember where the connection was going.
//! UDP (DNS capture) has its own bookkeeping in `dns.rs`, on the same decision.
use aya_ebpf::programs::SockAddrContext;
use meshsteer_common::{
    Addr,
    maps::{PodConfig, SockState, counter, node_counter, pod_flags, sock_flags},
    outbound::{Connection, PodTables, Proto, Verdict, decide},
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
pub const SOCK_DGRAM: u32 = 2;
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

/// A connection's decision, with what was looked up to make it.
pub struct Decided {
    /// The socket's state, if it had one (made at its creation).
    pub state: Option<&'static mut SockState>,
    pub pod_cgroup: u64,
    pub uid: u32,
    pub gid: u32,
    pub cfg: &'static PodConfig,
    pub verdict: Verdict,
}

/// Runs the decision model for the socket's pod, or says why there is nothing to decide:
/// `Err(Pass)` outside enrolled pods (and for UDP of pods without DNS capture), `Err(Deny)`
/// for a TCP connect() of a refused pod.
#[inline(always)]
pub fn decide_for(
    ctx: &SockAddrContext,
    proto: Proto,
    src: Addr,
    dst: Addr,
    dport: u16,
) -> Result<Decided, Steer> {
    let sk = ctx.sock();
    // Owner and pod as recorded at socket creation; sockets older than the agent fall back to
    // the connecting task (counted: that is where iptables' creator-based match could differ).
    let state = sock_state(sk);
    let (pod_cgroup, uid, gid, cfg) = match &state {
        Some(s) if s.pod_cgroup != 0 => {
            let Some(cfg) = pod_config(s.pod_cgroup) else {
                return Err(Steer::Pass);
            };
            (s.pod_cgroup, s.uid, s.gid, cfg)
        }
        _ => {
            // The walk's lookup gives the config too.
            let Some((pod, cfg)) = pod_of_current_task() else {
                return Err(Steer::Pass);
            };
            count_node(node_counter::OWNER_FROM_TASK);
            let (uid, gid) = current_owner();
            (pod, uid, gid, cfg)
        }
    };
    let tcp = matches!(proto, Proto::Tcp);
    if cfg.flags & pod_flags::REFUSED != 0 {
        if !tcp {
            return Err(Steer::Pass);
        }
        // Fail closed: the pod's capture could not be applied, so none of its TCP leaves.
        count(pod_cgroup, counter::REFUSED_CONNECT);
        return Err(Steer::Deny);
    }
    if !tcp && cfg.flags & pod_flags::DNS_CAPTURE == 0 {
        return Err(Steer::Pass);
    }
    let tables = MapTables::new(cfg);
    let conn = Connection {
        proto,
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
    Ok(Decided {
        state,
        pod_cgroup,
        uid,
        gid,
        cfg,
        verdict,
    })
}

/// Decides a TCP connect() from `src` (bound source, unspecified if none) to `dst:dport`.
#[inline(always)]
pub fn steer(ctx: &SockAddrContext, v6_socket: bool, src: Addr, dst: Addr, dport: u16) -> Steer {
    let d = match decide_for(ctx, Proto::Tcp, src, dst, dport) {
        Ok(d) => d,
        Err(s) => return s,
    };
    if !d.verdict.is_redirect() {
        return Steer::Pass;
    }
    if orig_dst::over_budget(d.pod_cgroup) {
        // The pod holds its budget of live redirected connections: this one fails rather
        // than take another pod's room (or go uncaptured).
        count(d.pod_cgroup, counter::ORIG_DST_OVER_BUDGET);
        return Steer::Deny;
    }
    // The state decide_for read, else (a socket made before its pod was enrolled) a new one.
    let Some(state) = d.state.or_else(|| sock_state_or_create(ctx.sock())) else {
        return Steer::Pass;
    };
    if state.pod_cgroup == 0 {
        *state = SockState {
            pod_cgroup: d.pod_cgroup,
            uid: d.uid,
            gid: d.gid,
            ..Default::default()
        };
    }
    state.flags |= sock_flags::REDIRECTED;
    state.flags &= !sock_flags::PUBLISHED;
    state.orig_addr = dst;
    state.orig_port_be = dport.to_be();
    if src.is_unspecified() {
        let tables = MapTables::new(d.cfg);
        if let Some(src) = source_for(d.cfg, &tables, &dst) {
            bind(ctx, v6_socket, &src);
        }
    }
    Steer::Redirect(Redirect {
        addr: dst.localhost_like(),
        port: d.verdict.redirect_port,
    })
}

/// The source iptables' routing would have picked for the original destination, so the proxy
/// sees the same peer address: the pod address itself for a pod address, the pod's primary
/// address for anything off-pod, and none for loopback (127.0.0.1 either way).
#[inline(never)]
pub fn source_for(cfg: &PodConfig, t: &MapTables, dst: &Addr) -> Option<Addr> {
    if dst.is_loopback() {
        return None;
    }
    let src = if t.is_pod_address(dst) {
        *dst
    } else if dst.is_ipv4() {
        cfg.primary_v4
    } else {
        cfg.primary_v6
    };
    (!src.is_unspecified()).then_some(src)
}

/// Binds the socket to `src` before its connect() goes on.
#[inline(never)]
pub fn bind(ctx: &SockAddrContext, v6_socket: bool, src: &Addr) {
    // Port 0: IP_BIND_ADDRESS_NO_PORT behaviour, the port is still picked at connect().
    // A failure (socket already bound to a port) leaves routing's choice: nothing to undo.
    if v6_socket {
        let _ = ctx.bind(&mut SockaddrIn6::new(src, 0));
    } else if let Some(v4) = src.be_u32() {
        let _ = ctx.bind(&mut SockaddrIn::new(v4, 0));
    }
}
