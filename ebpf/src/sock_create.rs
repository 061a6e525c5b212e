//! cgroup/sock_create: remember, for each TCP socket of an enrolled pod, the pod and the
//! creator's uid/gid. iptables' owner match looks at the socket's creator, not at whichever
//! task later calls connect() (sockets get handed over), so the owner is fixed here.
use aya_ebpf::{macros::cgroup_sock, programs::SockContext};
use meshsteer_common::maps::{SockState, sock_flags};

use crate::{
    capture::SOCK_STREAM,
    ctx::SockCtx,
    owner::current_owner,
    pod::{pod_of_current_task, sock_state_or_create},
};

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    let sk = ctx.sock();
    if sk.sock_type() == SOCK_STREAM
        && let Some(pod_cgroup) = pod_of_current_task()
        && let Some(state) = sock_state_or_create(sk)
    {
        let (uid, gid) = current_owner();
        *state = SockState {
            pod_cgroup,
            uid,
            gid,
            flags: sock_flags::OWNER_KNOWN,
            ..Default::default()
        };
    }
    // 1: let the socket be created.
    1
}
