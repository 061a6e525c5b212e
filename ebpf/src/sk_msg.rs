//! sk_msg (attached to `MS_SOCKS`): each send of an accelerated socket goes straight into its
//! peer's receive queue (`bpf_msg_redirect_hash` with `BPF_F_INGRESS`), skipping TCP/IP.
//!
//! Two rules keep the byte stream intact:
//! - **One way.** A socket that sent one byte through TCP never redirects again
//!   (`NORMAL_PATH`): the peer reads its redirected queue before its TCP queue, so a later
//!   redirected byte would overtake the TCP ones still in flight. Redirected bytes, queued at
//!   once, can never be overtaken by later TCP bytes.
//! - **Bounded.** The kernel queues redirected bytes at the peer with no limit but the
//!   node's TCP memory. After each redirect the program reads how many bytes the peer has not
//!   read yet (`sk_psock::msg_tot_len`, through offsets the agent took from the kernel's BTF);
//!   past `max_backlog` the connection takes the normal path, where TCP's buffers make the
//!   writer wait for the reader.
use aya_ebpf::{
    bindings::{BPF_F_INGRESS, sk_action::SK_PASS, sk_msg_md},
    helpers::bpf_probe_read_kernel,
    macros::sk_msg,
    programs::SkMsgContext,
};
use meshsteer_common::maps::{
    accel::{AccelConfig, AccelState, SK_USER_DATA_PSOCK, SK_USER_DATA_PTRMASK, state_flags},
    counter,
};

use crate::{
    ctx::SkMsgCtx,
    maps::{ACCEL_CFG, ACCEL_STATE, SOCKS},
    pod::{count, sk_storage},
    tuple::{mirrored, own_view},
};

#[sk_msg]
pub fn ms_sk_msg(ctx: SkMsgContext) -> u32 {
    steer(&ctx);
    // With a peer chosen by bpf_msg_redirect_hash, SK_PASS redirects; without, the send takes
    // the normal path.
    SK_PASS
}

#[inline(always)]
fn steer(ctx: &SkMsgContext) {
    let Some(sk) = ctx.sock() else { return };
    let Some(state) = sk_storage(&ACCEL_STATE, sk, 0) else {
        return;
    };
    if state.flags & state_flags::NORMAL_PATH != 0 {
        return;
    }
    let Some(cfg) = ACCEL_CFG.get(0) else {
        return leave(state, counter::ACCEL_UNSUPPORTED);
    };
    let mut peer = mirrored(&own_view(ctx));
    if SOCKS.redirect_msg(ctx, &mut peer, BPF_F_INGRESS.into()) != i64::from(SK_PASS) {
        // No peer: never there (first send), or it closed since. Either way, from now on TCP.
        let reason = if state.flags & state_flags::REDIRECTED == 0 {
            counter::ACCEL_NO_PEER
        } else {
            0
        };
        return leave(state, reason);
    }
    state.flags |= state_flags::REDIRECTED;
    let size = u64::from(ctx.size());
    match peer_backlog(ctx.msg, cfg) {
        Some(queued) if u64::from(queued) + size <= u64::from(cfg.max_backlog) => {}
        // This send is the last one redirected: the backlog stays under the limit plus one
        // send (at most a few hundred KiB: the kernel hands over one sk_msg at a time).
        Some(_) => leave(state, counter::ACCEL_BACKPRESSURE),
        None => leave(state, counter::ACCEL_UNSUPPORTED),
    }
}

/// The rest of the connection takes the normal path; `reason` (a counter, 0: none) says why.
#[inline(never)]
fn leave(state: &mut AccelState, reason: usize) {
    state.flags |= state_flags::NORMAL_PATH;
    if reason != 0 {
        count(state.pod_cgroup, reason);
    }
}

/// Bytes the peer chosen by the redirect has not read yet: `msg->sk_redir`'s psock's
/// `msg_tot_len`. None if the kernel structures are not what the agent's offsets describe.
#[inline(never)]
fn peer_backlog(msg: *mut sk_msg_md, cfg: &AccelConfig) -> Option<u32> {
    // The ctx is the kernel's `struct sk_msg`; its `sk_redir` was just set by the redirect.
    let base = msg.cast::<u8>();
    // SAFETY: bpf_probe_read_kernel checks every read; a bad offset yields an error, not a fault.
    unsafe {
        let peer: u64 =
            bpf_probe_read_kernel(base.add(cfg.off_msg_sk_redir as usize).cast()).ok()?;
        if peer == 0 {
            return None;
        }
        let user_data: u64 =
            bpf_probe_read_kernel((peer + u64::from(cfg.off_sock_user_data)) as *const u64).ok()?;
        if user_data & SK_USER_DATA_PSOCK == 0 {
            return None;
        }
        let psock = user_data & SK_USER_DATA_PTRMASK;
        bpf_probe_read_kernel((psock + u64::from(cfg.off_psock_msg_tot_len)) as *const u32).ok()
    }
}
