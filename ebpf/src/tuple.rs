//! Connection keys: a socket's view of its connection (local, remote) plus the network
//! namespace cookie, so equal tuples in two pods never meet. A redirected connection's
//! original destination is published under the view of the proxy's accepted socket; an
//! accelerated socket is stored under its own view and finds its peer under the mirror.
use meshsteer_common::maps::TupleKey;

use crate::ctx::{End, Ends, NetnsCookie};

/// `proxy` is where the connection was redirected to, `app` the side that connected.
#[inline(always)]
pub const fn key(netns_cookie: u64, proxy: End, app: End) -> TupleKey {
    TupleKey {
        netns_cookie,
        local: proxy.0,
        remote: app.0,
        local_port_be: proxy.1,
        remote_port_be: app.1,
        _pad: 0,
    }
}

/// The socket's own view of its connection (sockops, sk_msg).
#[inline(always)]
pub fn own_view<C: Ends + NetnsCookie>(ctx: &C) -> TupleKey {
    let netns_cookie = ctx.netns_cookie();
    let (local, remote) = ctx.ends();
    key(netns_cookie, local, remote)
}

/// The same connection as the other end sees it (same network namespace).
#[inline(always)]
pub const fn mirrored(k: &TupleKey) -> TupleKey {
    key(
        k.netns_cookie,
        (k.remote, k.remote_port_be),
        (k.local, k.local_port_be),
    )
}
