//! cgroup/sock_create: remember, for each TCP socket of an enrolled pod (and each UDP socket
//! of a pod with DNS capture), the pod and the creator's uid/gid. iptables' owner match looks
//! at the socket's creator, not at whichever task later calls connect() (sockets get handed
//! over), so the owner is fixed here.
use aya_ebpf::{macros::cgroup_sock, programs::SockContext};
use meshsteer_common::maps::{SockState, pod_flags, sock_flags};

use crate::{
    capture::{SOCK_DGRAM, SOCK_STREAM},
    ctx::SockCtx,
    dns::IPPROTO_UDP,
    owner::current_owner,
    pod::{pod_of_current_task, sock_state_or_create},
};

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    let sk = ctx.sock();
    let udp = sk.sock_type() == SOCK_DGRAM && sk.protocol() == IPPROTO_UDP;
    if (sk.sock_type() == SOCK_STREAM || udp)
        && let Some((pod_cgroup, cfg)) = pod_of_current_task()
        && (!udp || cfg.flags & pod_flags::DNS_CAPTURE != 0)
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
