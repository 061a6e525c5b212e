//! `mst-stream serve`: one thread per connection, each answering one request line.
use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicU64, Ordering},
    thread,
    time::Duration,
};

use socket2::{Domain, Socket, Type};

use crate::blocking::{OPEN, SHUT, drain, read_line};
use crate::payload::{Digest, Pattern};
use crate::syscalls::{check, sendfile, splice};

/// The server's EAGAIN count on reads before its own shutdown, over every connection (`stats`).
static SERVER_EAGAIN: AtomicU64 = AtomicU64::new(0);

pub fn serve(addrs: &[String]) {
    let listeners: Vec<TcpListener> = addrs
        .iter()
        .map(|a| listener(a.parse().expect("listen address")).expect("listen"))
        .collect();
    println!("ready");
    let _ = io::stdout().flush();
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            thread::spawn(move || {
                for s in l.incoming().flatten() {
                    thread::spawn(move || {
                        if let Err(e) = handle(s) {
                            eprintln!("mst-stream serve: {e}");
                        }
                    });
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

pub fn listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

pub fn handle(mut s: TcpStream) -> io::Result<()> {
    let line = read_line(&mut s)?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| -> io::Result<u64> {
        words
            .get(i)
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad request {line:?}")))
    };
    match words.first().copied() {
        Some("sink") => sink_reply(&mut s),
        Some("sleep_sink") => {
            thread::sleep(Duration::from_millis(num(1)?));
            sink_reply(&mut s)
        }
        Some("sleep_sink_et") => {
            thread::sleep(Duration::from_millis(num(1)?));
            sink_edge_triggered(&mut s)
        }
        Some("source") => {
            let data = Pattern::bytes(num(2)?, num(1)? as usize);
            let pause = Duration::from_millis(num(4).unwrap_or(0));
            for chunk in data.chunks(num(3)?.max(1) as usize) {
                s.write_all(chunk)?;
                thread::sleep(pause);
            }
            finish(&mut s)
        }
        Some("sendfile") => {
            sendfile(&s, &Pattern::bytes(num(2)?, num(1)? as usize))?;
            finish(&mut s)
        }
        Some("splice") => {
            splice(&s, Pattern::bytes(num(2)?, num(1)? as usize))?;
            finish(&mut s)
        }
        Some("echo") => {
            // Round trips of small messages: answer each at once.
            s.set_nodelay(true)?;
            let mut out = s.try_clone()?;
            let e = drain(&mut s, &OPEN, |d| out.write_all(d).expect("echo write"))?;
            SERVER_EAGAIN.fetch_add(e.before_shutdown, Ordering::SeqCst);
            s.shutdown(Shutdown::Write)
        }
        Some("stats") => writeln!(s, "{}", SERVER_EAGAIN.load(Ordering::SeqCst)),
        Some("discard") => {
            let mut count = 0u64;
            drain(&mut s, &OPEN, |b| count += b.len() as u64)?;
            writeln!(s, "{count}")
        }
        Some("abort_after") => {
            let mut buf = vec![0u8; num(1)? as usize];
            s.read_exact(&mut buf)?;
            Socket::from(s).set_linger(Some(Duration::ZERO))
        }
        _ => Err(io::Error::other(format!("unknown request {line:?}"))),
    }
}

pub fn sink_reply(s: &mut TcpStream) -> io::Result<()> {
    let mut d = Digest::new();
    let e = drain(s, &OPEN, |b| d.update(b))?;
    SERVER_EAGAIN.fetch_add(e.before_shutdown, Ordering::SeqCst);
    writeln!(s, "{} {:016x} {}", d.count, d.hash, e.before_shutdown)?;
    s.shutdown(Shutdown::Write)
}

/// [`sink_reply`] as event-driven servers read (nginx, for one): non-blocking, edge-triggered
/// epoll, and a read shorter than the buffer taken to mean the socket is empty until the next
/// event. A socket with bytes left and no event for 3 s ends the read: the answer then says
/// how much arrived.
pub fn sink_edge_triggered(s: &mut TcpStream) -> io::Result<()> {
    s.set_nonblocking(true)?;
    // SAFETY: plain epoll syscalls on fds we own; `ev` outlives the calls.
    let ep = unsafe { OwnedFd::from_raw_fd(check(libc::epoll_create1(0) as isize)? as i32) };
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
        u64: 0,
    };
    let (epfd, fd) = (ep.as_raw_fd(), s.as_raw_fd());
    // SAFETY: as above.
    let added = unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    check(added as isize)?;
    let (mut d, mut buf) = (Digest::new(), vec![0u8; 100_000]);
    'events: loop {
        loop {
            match s.read(&mut buf) {
                Ok(0) => break 'events,
                Ok(n) => {
                    d.update(&buf[..n]);
                    if n < buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // SAFETY: as above; one event fits.
        let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), &mut ev, 1, 3000) };
        if check(n as isize)? == 0 {
            break;
        }
    }
    s.set_nonblocking(false)?;
    writeln!(s, "{} {:016x} 0", d.count, d.hash)?;
    s.shutdown(Shutdown::Write)
}

/// Done sending: shut down writing, then wait for the peer to close.
pub fn finish(s: &mut TcpStream) -> io::Result<()> {
    s.shutdown(Shutdown::Write)?;
    drain(s, &SHUT, |_| {}).map(drop)
}
