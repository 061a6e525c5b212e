//! `mst-probe`: the test pods' client and server.
//!
//! - `mst-probe listen [--tag NAME] ADDR:PORT...`: accepts on every address given; for each
//!   connection it answers one JSON line saying where the connection landed (listener port,
//!   local and peer address, SO_ORIGINAL_DST if the kernel or meshsteer has one, and NAME
//!   when given: which of several same-port listeners took it) and closes.
//! - `mst-probe late LISTEN DST DELAY_MS [dual]`: a proxy slower than its client: listens on
//!   LISTEN (`dual`: an IPv6 listener that takes IPv4 too),
//!   lets a client connect to DST, send and close, and only DELAY_MS later accepts, reads and
//!   reports what it learnt (as `listen` does, plus the payload).
//! - `mst-probe hold LISTEN DST COUNT HOLD_MS`: a pod holding many connections: listens on
//!   LISTEN without accepting, opens COUNT connections to DST and keeps them; then accepts
//!   the ones that arrived and asks each for SO_ORIGINAL_DST; prints what it held, the connect
//!   errors and how many answers were DST; keeps everything open HOLD_MS more.
//! - `mst-probe connect DST [--bind IP] [--v6] [--create-as UID:GID [--real UID:GID
//!   [--fs-only]] [--connect-as UID:GID]]`: connects as the process's uid/gid (or, started as
//!   root, creates the socket as one owner and connects as another: a socket handed over; with
//!   `--real`, the creator's real ids differ from its effective and fs ids, as after seteuid,
//!   or only its fs ids do, as after setfsuid) and prints the server's line, or
//!   `{"error": ...}`, plus what getpeername() says.
//! - `udp-serve`, `udp`, `udp-reuse`: UDP responders and clients, for DNS capture (see
//!   `probe/udp.rs`).
#[path = "probe/udp.rs"]
mod udp;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd},
    thread,
};

use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("listen") => listen(&args[1..]),
        Some("connect") => connect(&args[1..]),
        Some("churn") => churn(&args[1..]),
        Some("sockopts") => sockopts(&args[1..]),
        Some("late") => late(&args[1..]),
        Some("hold") => hold(&args[1..]),
        Some("udp-serve") => udp::serve(&args[1..]),
        Some("udp") => udp::client(&args[1..]),
        Some("udp-reuse") => udp::reuse(&args[1..]),
        _ => {
            eprintln!(
                "usage: mst-probe listen ADDR:PORT... | connect DST [--bind IP] [--v6] [--create-as UID:GID]"
            );
            std::process::exit(2);
        }
    }
}

fn listen(args: &[String]) {
    let (tag, addrs) = match args {
        [flag, tag, rest @ ..] if flag == "--tag" => (Some(tag.clone()), rest),
        _ => (None, args),
    };
    let mut threads = Vec::new();
    for a in addrs {
        let addr: SocketAddr = a.parse().expect("listen address");
        let l = bind_listener(addr);
        let tag = tag.clone();
        threads.push(thread::spawn(move || serve(l, addr.port(), tag)));
    }
    // Tell the harness every listener is up.
    println!("ready");
    std::io::stdout().flush().ok();
    for t in threads {
        let _ = t.join();
    }
}

/// IPv6 listeners are v6-only so IPv4 (and IPv4-mapped) traffic lands on the IPv4 ones.
fn bind_listener(addr: SocketAddr) -> TcpListener {
    bind_listener_with(addr, true)
}

/// With `v6_only` false, an IPv6 listener takes IPv4 traffic too (as IPv4-mapped addresses),
/// as a dual-stack proxy's `[::]` listener does.
fn bind_listener_with(addr: SocketAddr, v6_only: bool) -> TcpListener {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket syscalls on a fresh fd we own.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let one: libc::c_int = 1;
        let p = (&raw const one).cast();
        let len = size_of::<libc::c_int>() as u32;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, p, len);
        if addr.is_ipv6() {
            let v6_only = libc::c_int::from(v6_only);
            let v = (&raw const v6_only).cast();
            libc::setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, v, len);
        }
        let (sa, sl) = sockaddr(&addr);
        assert!(
            libc::bind(fd, (&raw const sa).cast(), sl) == 0,
            "bind {addr}: {}",
            std::io::Error::last_os_error()
        );
        assert!(
            libc::listen(fd, 512) == 0,
            "listen: {}",
            std::io::Error::last_os_error()
        );
        TcpListener::from_raw_fd(fd)
    }
}

fn serve(l: TcpListener, port: u16, tag: Option<String>) {
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        let mut report = json!({
            "listener": port,
            "local": s.local_addr().ok().map(|a| a.to_string()),
            "peer_ip": s.peer_addr().ok().map(|a| a.ip().to_string()),
            "orig_dst": original_dst(&s).map(|a| a.to_string()),
        });
        if let Some(tag) = &tag {
            report["tag"] = json!(tag);
        }
        let _ = writeln!(s, "{report}");
    }
}

/// `getsockopt(SOL_IP, SO_ORIGINAL_DST)` (or the IPv6 variant) as a proxy asks it: like
/// Envoy, the IPv4 question for IPv4 traffic on a dual-stack socket too.
fn original_dst(s: &TcpStream) -> Option<SocketAddr> {
    original_dst_or_errno(s).ok()
}

/// [`original_dst`], or the errno it failed with (-1: no address to report).
fn original_dst_or_errno(s: &TcpStream) -> Result<SocketAddr, i32> {
    let v6 = match s.local_addr().map_err(|_| -1)?.ip() {
        IpAddr::V6(ip) => ip.to_ipv4_mapped().is_none(),
        IpAddr::V4(_) => false,
    };
    // SAFETY: the buffer is a zeroed sockaddr_storage and len its size.
    unsafe {
        let mut ss: libc::sockaddr_storage = zeroed();
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let level = if v6 { libc::SOL_IPV6 } else { libc::SOL_IP };
        let r = libc::getsockopt(s.as_raw_fd(), level, 80, (&raw mut ss).cast(), &mut len);
        if r != 0 {
            return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1));
        }
        from_storage(&ss).ok_or(-1)
    }
}

fn late(args: &[String]) {
    let listen: SocketAddr = args[0].parse().expect("listen address");
    let dst: SocketAddr = args[1].parse().expect("destination");
    let delay: u64 = args[2].parse().expect("delay in ms");
    let l = bind_listener_with(listen, args.get(3).map(String::as_str) != Some("dual"));
    let sent = TcpStream::connect(dst).and_then(|mut s| s.write_all(b"hello"));
    if let Err(e) = sent {
        println!("{}", json!({ "error": e.kind().to_string() }));
        return;
    }
    // The client's socket is closed now (dropped above): only the accept queue holds the
    // connection when the proxy finally takes it.
    thread::sleep(std::time::Duration::from_millis(delay));
    let (s, _) = l.accept().expect("accept");
    let mut payload = String::new();
    let _ = std::io::Read::read_to_string(&mut &s, &mut payload);
    // Asked once: the datapath counts every question.
    let orig = original_dst_or_errno(&s);
    let mut report = json!({
        "listener": listen.port(),
        "orig_dst": orig.ok().map(|a| a.to_string()),
        "payload": payload,
    });
    if let Err(errno) = orig {
        report["orig_dst_errno"] = json!(errno);
    }
    println!("{report}");
}

fn hold(args: &[String]) {
    let listen: SocketAddr = args[0].parse().expect("listen address");
    let dst: SocketAddr = args[1].parse().expect("destination");
    let count: usize = args[2].parse().expect("count");
    let hold_ms: u64 = args[3].parse().expect("hold ms");
    let l = bind_listener_with(listen, true);
    let mut held = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..count {
        match TcpStream::connect(dst) {
            Ok(s) => held.push(s),
            Err(e) => *errors.entry(e.kind().to_string()).or_default() += 1,
        }
    }
    l.set_nonblocking(true).expect("nonblocking listener");
    let mut accepted = Vec::new();
    let (mut learnt, mut wrong) = (0, 0);
    while let Ok((s, _)) = l.accept() {
        match original_dst(&s) {
            Some(a) if a == dst => learnt += 1,
            _ => wrong += 1,
        }
        accepted.push(s);
    }
    let report = json!({
        "held": held.len(), "errors": errors, "accepted": accepted.len(),
        "learnt": learnt, "wrong": wrong,
    });
    println!("{report}");
    std::io::stdout().flush().ok();
    thread::sleep(std::time::Duration::from_millis(hold_ms));
}

/// `churn DST COUNT THREADS`: COUNT short connections (connect, read the server's line until
/// it closes, close), spread over THREADS threads. The server closes first, so the client
/// never sits in TIME_WAIT and ports do not run out.
fn churn(args: &[String]) {
    let dst: SocketAddr = args[0].parse().expect("destination");
    let count: u64 = args[1].parse().expect("count");
    let threads: u64 = args[2].parse().expect("threads");
    let start = std::time::Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let n = count / threads + u64::from(t < count % threads);
            thread::spawn(move || {
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                for _ in 0..n {
                    let r = TcpStream::connect(dst)
                        .and_then(|s| std::io::Read::read_to_end(&mut &s, &mut Vec::new()));
                    if let Err(e) = r {
                        *errors.entry(e.kind().to_string()).or_default() += 1;
                    }
                }
                errors
            })
        })
        .collect();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for w in workers {
        for (k, v) in w.join().unwrap_or_default() {
            *errors.entry(k).or_default() += v;
        }
    }
    let failed: u64 = errors.values().sum();
    let secs = start.elapsed().as_secs_f64();
    let per_sec = count as f64 / secs;
    println!(
        "{}",
        json!({ "count": count, "failed": failed, "errors": errors, "secs": secs, "per_sec": per_sec })
    );
}

/// `sockopts DST`: connects, then reads socket options the way applications do and prints
/// what came back (return code, length, value bytes). One buffer is larger than a page, the
/// case where cgroup/getsockopt programs must hand the kernel's answer back untouched.
fn sockopts(args: &[String]) {
    let dst: SocketAddr = args[0].parse().expect("destination");
    let s = TcpStream::connect(dst).expect("connect");
    let fd = s.as_raw_fd();
    let ask = |level: i32, name: i32, size: usize| {
        let mut buf = vec![0u8; size];
        let mut len = size as libc::socklen_t;
        // SAFETY: buf has len bytes.
        let r = unsafe { libc::getsockopt(fd, level, name, buf.as_mut_ptr().cast(), &mut len) };
        let errno = if r < 0 {
            std::io::Error::last_os_error().raw_os_error()
        } else {
            None
        };
        buf.truncate(len as usize);
        json!({ "ret": r, "errno": errno, "len": len, "head": &buf[..buf.len().min(8)] })
    };
    let out = json!({
        "so_rcvbuf": ask(libc::SOL_SOCKET, libc::SO_RCVBUF, 4),
        "so_type": ask(libc::SOL_SOCKET, libc::SO_TYPE, 4),
        "ip_tos": ask(libc::SOL_IP, libc::IP_TOS, 4),
        "tcp_nodelay": ask(libc::IPPROTO_TCP, libc::TCP_NODELAY, 4),
        "tcp_maxseg": ask(libc::IPPROTO_TCP, libc::TCP_MAXSEG, 4),
        "tcp_congestion": ask(libc::IPPROTO_TCP, libc::TCP_CONGESTION, 16),
        // Larger than a page: the kernel fills sizeof(struct tcp_info) and says so in len.
        "tcp_info_len": ask(libc::IPPROTO_TCP, libc::TCP_INFO, 8192)["len"],
    });
    println!("{out}");
}

fn connect(args: &[String]) {
    let dst: SocketAddr = args
        .first()
        .expect("destination")
        .parse()
        .expect("destination address");
    let mut bind: Option<IpAddr> = None;
    let mut v6 = dst.is_ipv6();
    let mut create_as: Option<(u32, u32)> = None;
    let mut connect_as: Option<(u32, u32)> = None;
    let mut real: Option<(u32, u32)> = None;
    let mut fs_only = false;
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bind" => bind = Some(it.next().expect("--bind IP").parse().expect("bind IP")),
            "--v6" => v6 = true,
            "--create-as" => create_as = Some(ids(it.next())),
            "--connect-as" => connect_as = Some(ids(it.next())),
            "--real" => real = Some(ids(it.next())),
            "--fs-only" => fs_only = true,
            other => panic!("unknown option {other}"),
        }
    }
    let creator = create_as.map(|ids| Creator { ids, real, fs_only });
    let out = match do_connect(dst, bind, v6, creator, connect_as) {
        Ok(v) => v,
        Err(e) => json!({ "error": e.kind().to_string() }),
    };
    println!("{out}");
}

fn ids(arg: Option<&String>) -> (u32, u32) {
    let (u, g) = arg.and_then(|a| a.split_once(':')).expect("UID:GID");
    (u.parse().expect("uid"), g.parse().expect("gid"))
}

/// Who creates the socket: iptables' owner match sees `ids` (the fsuid/fsgid). With `real`,
/// the creator's real ids differ: it ran seteuid (effective and fs ids are `ids`), or with
/// `fs_only`, setfsuid (effective ids stay root's).
struct Creator {
    ids: (u32, u32),
    real: Option<(u32, u32)>,
    fs_only: bool,
}

impl Creator {
    /// Takes on the creator's credentials, keeping saved uid 0 to switch again afterwards.
    ///
    /// # Safety
    /// Plain syscalls on this process's own credentials.
    unsafe fn become_it(&self) -> std::io::Result<()> {
        let (u, g) = self.ids;
        let (ru, rg) = self.real.unwrap_or(self.ids);
        // SAFETY: see the function's contract.
        unsafe {
            if self.fs_only {
                check(libc::setresgid(rg, 0, 0))?;
                libc::setfsgid(g);
                check(libc::setresuid(ru, 0, 0))?;
                libc::setfsuid(u);
            } else {
                check(libc::setresgid(rg, g, 0))?;
                check(libc::setresuid(ru, u, 0))?;
            }
        }
        Ok(())
    }
}

fn do_connect(
    dst: SocketAddr,
    bind: Option<IpAddr>,
    v6: bool,
    creator: Option<Creator>,
    connect_as: Option<(u32, u32)>,
) -> std::io::Result<serde_json::Value> {
    // An AF_INET6 socket reaches IPv4 destinations through IPv4-mapped addresses.
    let dst = match (v6, dst) {
        (true, SocketAddr::V4(a)) => SocketAddr::new(IpAddr::V6(a.ip().to_ipv6_mapped()), a.port()),
        _ => dst,
    };
    // SAFETY: plain syscalls on our own credentials.
    let fd = unsafe {
        if let Some(c) = &creator {
            // The socket's owner is whoever creates it (iptables' owner match looks there).
            c.become_it()?;
        }
        let domain = if dst.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let fd = check(libc::socket(domain, libc::SOCK_STREAM, 0))?;
        if let Some((u, g)) = connect_as.filter(|_| creator.is_some()) {
            check(libc::setresuid(0, 0, 0))?;
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setresgid(g, g, g))?;
            check(libc::setresuid(u, u, u))?;
        }
        fd
    };
    // SAFETY: fd is ours.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    if let Some(ip) = bind {
        let ip = match (dst.is_ipv6(), ip) {
            (true, IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
            _ => ip,
        };
        let (sa, sl) = sockaddr(&SocketAddr::new(ip, 0));
        // SAFETY: valid sockaddr of length sl.
        check(unsafe { libc::bind(fd, (&raw const sa).cast(), sl) })?;
    }
    let (sa, sl) = sockaddr(&dst);
    // SAFETY: valid sockaddr of length sl.
    check(unsafe { libc::connect(fd, (&raw const sa).cast(), sl) })?;
    let peer = stream.peer_addr()?.to_string();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let mut v: serde_json::Value =
        serde_json::from_str(line.trim()).map_err(std::io::Error::other)?;
    v["getpeername"] = peer.into();
    Ok(v)
}

fn check(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn sockaddr(a: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed sockaddr_storage is valid; we fill the family-specific prefix.
    unsafe {
        let mut ss: libc::sockaddr_storage = zeroed();
        match a {
            SocketAddr::V4(v4) => {
                let sin = (&raw mut ss).cast::<libc::sockaddr_in>();
                (*sin).sin_family = libc::AF_INET as u16;
                (*sin).sin_port = v4.port().to_be();
                (*sin).sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
                (ss, size_of::<libc::sockaddr_in>() as u32)
            }
            SocketAddr::V6(v6) => {
                let sin6 = (&raw mut ss).cast::<libc::sockaddr_in6>();
                (*sin6).sin6_family = libc::AF_INET6 as u16;
                (*sin6).sin6_port = v6.port().to_be();
                (*sin6).sin6_addr.s6_addr = v6.ip().octets();
                // A link-local destination needs its interface.
                (*sin6).sin6_scope_id = v6.scope_id();
                (ss, size_of::<libc::sockaddr_in6>() as u32)
            }
        }
    }
}

fn from_storage(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: the family field tells which sockaddr the storage holds.
    unsafe {
        match ss.ss_family as i32 {
            libc::AF_INET => {
                let sin = &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddr::new(ip.into(), u16::from_be(sin.sin_port)))
            }
            libc::AF_INET6 => {
                let sin6 = &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
                Some(SocketAddr::new(ip, u16::from_be(sin6.sin6_port)))
            }
            _ => None,
        }
    }
}
