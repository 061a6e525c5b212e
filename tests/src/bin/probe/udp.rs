//! `mst-probe`'s UDP modes, for DNS capture: a responder that says who it is and whom it saw,
//! and clients that report where their datagrams landed and what the app was told.
//!
//! - `udp-serve [--tag NAME] ADDR:PORT...`: one socket per address (bound to it exactly, so
//!   its answers leave from that address); answers each datagram with one JSON object: its
//!   own address (`responder`, `landed`: the port), NAME, the source it saw (`saw`), and the
//!   query it answers.
//! - `udp [--connect] [--bind IP|IP:PORT] [--reuse] [--v6] [--parallel] [--timeout-ms MS] DST...`: one socket,
//!   each DST in turn (connect()+send+recv, or sendto+recvfrom); with `--parallel`, sends to
//!   every DST first, then takes the answers in whatever order they come; with
//!   `--connect-first`, connect()s to the first DST only and sendto()s the others on the
//!   connected socket (`--disconnect`: after connect(AF_UNSPEC)).
//! - `udp-reuse BIND_IP:PORT SERVER [--app-connect]`: as root, the proxy's upstream socket
//!   (uid 1337, SO_REUSEADDR, bound to BIND, connected to SERVER) queries, then the app's
//!   (uid 1000, bound to the same BIND) queries SERVER, then the proxy again.
//!
//! A reply that does not come within the timeout is a result, `{"error": "timeout"}`.
use std::{
    mem::{size_of, zeroed},
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd},
    thread,
    time::Duration,
};

use serde_json::{Value, json};

use super::{Creator, check, from_storage, sockaddr};

/// Long enough for a loaded CI machine, short enough that a lost datagram costs little
/// (`--timeout-ms` for cases where some answers are expected never to come).
const TIMEOUT: Duration = Duration::from_millis(1500);

pub fn serve(args: &[String]) {
    let (tag, addrs) = match args {
        [flag, tag, rest @ ..] if flag == "--tag" => (Some(tag.clone()), rest),
        _ => (None, args),
    };
    let mut threads = Vec::new();
    for a in addrs {
        let addr: SocketAddr = a.parse().expect("listen address");
        let s = socket(addr.is_ipv6(), false).expect("udp socket");
        bind(&s, addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let tag = tag.clone();
        threads.push(thread::spawn(move || answer(&s, addr, tag.as_deref())));
    }
    println!("ready");
    std::io::Write::flush(&mut std::io::stdout()).ok();
    for t in threads {
        let _ = t.join();
    }
}

fn answer(s: &UdpSocket, local: SocketAddr, tag: Option<&str>) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, peer)) = s.recv_from(&mut buf) else {
            continue;
        };
        let reply = json!({
            "landed": local.port(),
            "responder": local.to_string(),
            "tag": tag,
            "saw": peer.ip().to_string(),
            "saw_port": peer.port(),
            "query": String::from_utf8_lossy(&buf[..n]),
        });
        let _ = s.send_to(reply.to_string().as_bytes(), peer);
    }
}

/// A UDP socket of the family (`v6`: AF_INET6, IPv4 through mapped addresses), SO_REUSEADDR
/// with `reuse`. IPv6 responders are v6-only, so that IPv4 lands on the IPv4 ones.
fn socket(v6: bool, reuse: bool) -> std::io::Result<UdpSocket> {
    let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: a fresh fd we own.
    let s = unsafe { UdpSocket::from_raw_fd(check(libc::socket(domain, libc::SOCK_DGRAM, 0))?) };
    let one: libc::c_int = 1;
    let len = size_of::<libc::c_int>() as libc::socklen_t;
    if reuse {
        // SAFETY: an int option on our fd.
        check(unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&raw const one).cast(),
                len,
            )
        })?;
    }
    Ok(s)
}

fn bind(s: &UdpSocket, addr: SocketAddr) -> std::io::Result<()> {
    let (sa, sl) = sockaddr(&addr);
    // SAFETY: valid sockaddr of length sl.
    check(unsafe { libc::bind(s.as_raw_fd(), (&raw const sa).cast(), sl) }).map(drop)
}

/// An IPv4 address as the IPv6 socket needs it (mapped).
fn for_socket(a: SocketAddr, v6: bool) -> SocketAddr {
    match (v6, a) {
        (true, SocketAddr::V4(v4)) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        _ => a,
    }
}

/// What getpeername() says, with IPv4-mapped addresses shown as IPv4 (as the app would
/// compare them).
fn peer_name(s: &UdpSocket) -> Option<String> {
    // SAFETY: a zeroed sockaddr_storage and its size.
    unsafe {
        let mut ss: libc::sockaddr_storage = zeroed();
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getpeername(s.as_raw_fd(), (&raw mut ss).cast(), &mut len) != 0 {
            return None;
        }
        from_storage(&ss).map(|a| a.to_string())
    }
}

fn unmapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(ip) => ip
            .to_ipv4_mapped()
            .map_or(a, |v4| SocketAddr::new(v4.into(), a.port())),
        IpAddr::V4(_) => a,
    }
}

/// Waits for one answer on `s`: the responder's report, plus where the app saw it come from
/// and whether the responder saw this socket's own port.
fn receive(s: &UdpSocket) -> Value {
    let mut buf = [0u8; 1500];
    match s.recv_from(&mut buf) {
        Ok((n, from)) => {
            let mut v: Value = serde_json::from_slice(&buf[..n])
                .unwrap_or_else(|_| json!({ "garbage": String::from_utf8_lossy(&buf[..n]) }));
            let own = s.local_addr().map(|a| a.port()).ok();
            v["reply_from"] = unmapped(from).to_string().into();
            v["saw_own_port"] = (v["saw_port"].as_u64() == own.map(u64::from)).into();
            if let Some(o) = v.as_object_mut() {
                o.remove("saw_port");
            }
            v
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            json!({ "error": "timeout" })
        }
        Err(e) => json!({ "error": e.kind().to_string() }),
    }
}

/// One query from `s` to `dst` (connect()ed first with `connect`), and its answer.
fn query(s: &UdpSocket, dst: SocketAddr, connect: bool, q: &str) -> Value {
    query_peer(s, dst, connect, connect, q)
}

/// [`query`], reporting getpeername afterwards with `peer` (on a socket connected before, or
/// disconnected).
fn query_peer(s: &UdpSocket, dst: SocketAddr, connect: bool, peer: bool, q: &str) -> Value {
    let v6 = s.local_addr().is_ok_and(|a| a.is_ipv6());
    let to = for_socket(dst, v6);
    let sent = if connect {
        s.connect(to).and_then(|()| s.send(q.as_bytes()))
    } else {
        s.send_to(q.as_bytes(), to)
    };
    let mut v = match sent {
        Ok(_) => receive(s),
        Err(e) => json!({ "error": e.kind().to_string() }),
    };
    v["dst"] = dst.to_string().into();
    if peer {
        v["getpeername"] = peer_name(s).into();
    }
    v
}

/// connect(AF_UNSPEC): the socket is no longer connected.
fn disconnect(s: &UdpSocket) -> std::io::Result<()> {
    // SAFETY: a zeroed sockaddr with family AF_UNSPEC, its size.
    unsafe {
        let mut sa: libc::sockaddr = zeroed();
        sa.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        let len = size_of::<libc::sockaddr>() as libc::socklen_t;
        check(libc::connect(s.as_raw_fd(), &raw const sa, len)).map(drop)
    }
}

/// `--bind IP` or `--bind IP:PORT`.
fn bind_addr(a: &str) -> SocketAddr {
    a.parse()
        .or_else(|_| a.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 0)))
        .expect("--bind IP or IP:PORT")
}

pub fn client(args: &[String]) {
    let (mut connect, mut reuse, mut v6, mut parallel) = (false, false, false, false);
    let (mut connect_first, mut then_disconnect) = (false, false);
    let mut timeout = TIMEOUT;
    let mut bind_to = None;
    let mut dsts: Vec<SocketAddr> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--connect" => connect = true,
            "--reuse" => reuse = true,
            "--v6" => v6 = true,
            "--parallel" => parallel = true,
            "--connect-first" => connect_first = true,
            "--disconnect" => then_disconnect = true,
            "--timeout-ms" => {
                let ms = it
                    .next()
                    .expect("--timeout-ms MS")
                    .parse()
                    .expect("milliseconds");
                timeout = Duration::from_millis(ms);
            }
            "--bind" => bind_to = Some(bind_addr(it.next().expect("--bind ADDR"))),
            d => dsts.push(d.parse().expect("destination")),
        }
    }
    let v6 = v6 || dsts.first().is_some_and(SocketAddr::is_ipv6);
    let opened =
        open(v6, reuse, bind_to).and_then(|s| s.set_read_timeout(Some(timeout)).map(|()| s));
    let out = match opened {
        Err(e) => json!({ "error": e.kind().to_string() }),
        Ok(s) if parallel => {
            for (i, d) in dsts.iter().enumerate() {
                let _ = s.send_to(format!("q{i}").as_bytes(), for_socket(*d, v6));
            }
            json!({ "results": dsts.iter().map(|_| receive(&s)).collect::<Vec<_>>() })
        }
        Ok(s) if connect_first => {
            // The first destination connect()ed, the others sendto() on the socket still
            // connected (or, with `--disconnect`, no longer).
            let mut results = vec![query(&s, dsts[0], true, "q0")];
            if then_disconnect && let Err(e) = disconnect(&s) {
                results.push(json!({ "error": format!("disconnect: {e}") }));
            }
            for (i, d) in dsts.iter().enumerate().skip(1) {
                results.push(query_peer(&s, *d, false, true, &format!("q{i}")));
            }
            json!({ "results": results })
        }
        Ok(s) => {
            let results: Vec<Value> = dsts
                .iter()
                .enumerate()
                .map(|(i, d)| query(&s, *d, connect, &format!("q{i}")))
                .collect();
            json!({ "results": results })
        }
    };
    println!("{out}");
}

fn open(v6: bool, reuse: bool, bind_to: Option<SocketAddr>) -> std::io::Result<UdpSocket> {
    let s = socket(v6, reuse)?;
    if let Some(b) = bind_to {
        bind(&s, for_socket(b, v6))?;
    }
    s.set_read_timeout(Some(TIMEOUT))?;
    Ok(s)
}

/// Runs `f` as `uid:gid` (effective and fs ids; iptables' owner match and meshsteer see the
/// socket's creator), then returns to root.
fn as_owner<T>(ids: (u32, u32), f: impl FnOnce() -> T) -> std::io::Result<T> {
    let who = Creator {
        ids,
        real: None,
        fs_only: false,
    };
    // SAFETY: credential syscalls on this process; saved uid 0 lets us return.
    unsafe { who.become_it()? };
    let out = f();
    // SAFETY: as above.
    unsafe {
        check(libc::setresuid(0, 0, 0))?;
        check(libc::setresgid(0, 0, 0))?;
    }
    Ok(out)
}

pub fn reuse(args: &[String]) {
    let bind_to: SocketAddr = args[0].parse().expect("BIND_IP:PORT");
    let server: SocketAddr = args[1].parse().expect("SERVER");
    let app_connect = args.get(2).map(String::as_str) == Some("--app-connect");
    let v6 = server.is_ipv6();
    let run = || -> std::io::Result<Value> {
        let proxy = as_owner((1337, 1337), || open(v6, true, Some(bind_to)))??;
        let first = as_owner((1337, 1337), || query(&proxy, server, true, "proxy-1"))?;
        let app = as_owner((1000, 1000), || open(v6, true, Some(bind_to)))??;
        let app_got = as_owner((1000, 1000), || query(&app, server, app_connect, "app"))?;
        let again = as_owner((1337, 1337), || query(&proxy, server, true, "proxy-2"))?;
        Ok(json!({ "proxy_before": first, "app": app_got, "proxy_after": again }))
    };
    let out = run().unwrap_or_else(|e| json!({ "error": e.to_string() }));
    println!("{out}");
}
