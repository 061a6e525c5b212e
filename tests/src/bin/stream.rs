//! `mst-stream`: byte-stream checks for socket-level acceleration, run inside test pods.
//!
//! - `mst-stream serve ADDR...`: serves every address (IPv6 ones dual-stack, so IPv4-mapped
//!   peers land there too). Each connection starts with one request line:
//!   - `sink`: read to EOF, answer `<bytes> <fnv64 hex> <eagain>`, close;
//!   - `sleep_sink MS`: the same after not reading for MS milliseconds (a slow reader);
//!   - `sleep_sink_et MS`: the same, read as edge-triggered event loops read;
//!   - `source N SEED CHUNK [PAUSE_MS]`: send N pattern bytes in writes of CHUNK (PAUSE_MS
//!     apart), shut down writing, read to EOF;
//!   - `sendfile N SEED` / `splice N SEED`: the same through sendfile(2) / splice(2);
//!   - `echo`: send back everything until EOF, then shut down writing;
//!   - `abort_after N`: read N bytes, then reset the connection (SO_LINGER 0);
//!   - `stats`: answer the EAGAIN count of every read so far that came before the server's
//!     own shutdown;
//!   - `discard`: read to EOF, answer the byte count (bulk throughput, no checksum cost).
//!
//!   Reads are blocking: a read that fails with EAGAIN is a broken blocking contract and is
//!   counted (`eagain`), then retried. EAGAIN on reads after our own shutdown(SHUT_WR) is
//!   counted apart (`eagain_after_shutdown`): see the README's acceleration section.
//! - `mst-stream run SCENARIO DST [--bind IP] [--v6] [--timeout S] [ARGS]`: runs one
//!   scenario against a server and prints one JSON line: `failures` (empty when every byte
//!   arrived exactly), `eagain` seen by either side, and per connection whether its payload
//!   skipped TCP (`bypass_conns`), went all through it (`tcp_conns`) or partly (`mixed_conns`),
//!   from `tcpi_bytes_acked + tcpi_bytes_received` beyond the SYN and FINs.
use std::{
    fs::File,
    io::{self, IoSlice, Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use socket2::{Domain, SockAddr, Socket, Type};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("run") if args.len() >= 3 => {
            let opts = Opts::parse(&args[3..]);
            watchdog(opts.timeout);
            let dst = args[2].parse().expect("destination IP:PORT");
            println!("{}", run(&args[1], dst, &opts));
        }
        _ => {
            eprintln!("usage: mst-stream serve ADDR... | run SCENARIO DST [options]");
            std::process::exit(2);
        }
    }
}

/// Ends the process with a failure report if the scenario outlives its time: a stalled or
/// deadlocked transfer fails the test instead of hanging it.
fn watchdog(secs: u64) {
    thread::spawn(move || {
        thread::sleep(Duration::from_secs(secs));
        println!(
            "{}",
            json!({ "failures": [format!("timed out after {secs} s")] })
        );
        std::process::exit(3);
    });
}

// ---------------------------------------------------------------------------------------
// Data: a seeded byte pattern, and a digest of what arrived.

/// xorshift64*: every byte of a transfer is known to both ends from (seed, offset).
struct Pattern(u64);

impl Pattern {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = (self.next() >> 56) as u8;
        }
    }

    fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        Self::new(seed).fill(&mut v);
        v
    }
}

/// FNV-1a over a byte stream, and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Digest {
    count: u64,
    hash: u64,
}

impl Digest {
    fn new() -> Self {
        Self {
            count: 0,
            hash: 0xcbf2_9ce4_8422_2325,
        }
    }

    fn update(&mut self, data: &[u8]) {
        for b in data {
            self.hash = (self.hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.count += data.len() as u64;
    }

    fn of(data: &[u8]) -> Self {
        let mut d = Self::new();
        d.update(data);
        d
    }
}

/// EAGAIN from reads of a blocking socket, split by whether our side had already shut down
/// writing (the wakeup that follows when the peer acknowledges our FIN is the case the README
/// documents for accelerated sockets) or not.
#[derive(Clone, Copy, Debug, Default)]
struct Eagain {
    before_shutdown: u64,
    after_shutdown: u64,
}

/// Reads to EOF into `sink`. EAGAIN on this blocking socket is counted (by `shut`: set once our
/// side has shut down writing), then the read is retried.
fn drain(s: &mut TcpStream, shut: &AtomicBool, mut sink: impl FnMut(&[u8])) -> io::Result<Eagain> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut e = Eagain::default();
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(e),
            Ok(n) => sink(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                if shut.load(Ordering::SeqCst) {
                    e.after_shutdown += 1;
                } else {
                    e.before_shutdown += 1;
                }
                if e.before_shutdown + e.after_shutdown > 10_000 {
                    return Err(io::Error::other("EAGAIN without end on a blocking socket"));
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

/// `shut` flags for reads before and after our own shutdown(SHUT_WR).
static OPEN: AtomicBool = AtomicBool::new(false);
static SHUT: AtomicBool = AtomicBool::new(true);

/// The server's EAGAIN count on reads before its own shutdown, over every connection (`stats`).
static SERVER_EAGAIN: AtomicU64 = AtomicU64::new(0);

/// One request line (read byte by byte: nothing after it may be consumed).
fn read_line(s: &mut TcpStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b)? == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).map_err(io::Error::other)
}

// ---------------------------------------------------------------------------------------
// Server.

fn serve(addrs: &[String]) {
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

fn listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

fn handle(mut s: TcpStream) -> io::Result<()> {
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

fn sink_reply(s: &mut TcpStream) -> io::Result<()> {
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
fn sink_edge_triggered(s: &mut TcpStream) -> io::Result<()> {
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
fn finish(s: &mut TcpStream) -> io::Result<()> {
    s.shutdown(Shutdown::Write)?;
    drain(s, &SHUT, |_| {}).map(drop)
}

fn check(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// All of `data` through sendfile(2), from an in-memory file.
fn sendfile(s: &TcpStream, data: &[u8]) -> io::Result<()> {
    // SAFETY: a fresh memfd, owned by the File.
    let mut f = unsafe {
        let fd = libc::memfd_create(c"mst-stream".as_ptr(), 0);
        check(fd as isize)?;
        File::from_raw_fd(fd)
    };
    f.write_all(data)?;
    let mut off: libc::off_t = 0;
    while (off as usize) < data.len() {
        let left = data.len() - off as usize;
        // SAFETY: both fds are open; off is ours.
        check(unsafe { libc::sendfile(s.as_raw_fd(), f.as_raw_fd(), &mut off, left) })?;
    }
    Ok(())
}

/// All of `data` through splice(2) from a pipe another thread fills.
fn splice(s: &TcpStream, data: Vec<u8>) -> io::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for both ends.
    check(unsafe { libc::pipe(fds.as_mut_ptr()) } as isize)?;
    // SAFETY: the pipe's fds, each owned once.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    let len = data.len();
    let writer = thread::spawn(move || {
        let mut wr = wr;
        wr.write_all(&data)
    });
    let mut moved = 0;
    while moved < len {
        // SAFETY: open fds; null offsets (a pipe and a socket).
        let n = unsafe {
            libc::splice(
                rd.as_raw_fd(),
                std::ptr::null_mut(),
                s.as_raw_fd(),
                std::ptr::null_mut(),
                len - moved,
                libc::SPLICE_F_MOVE,
            )
        };
        moved += check(n)?;
    }
    writer.join().map_err(|_| io::Error::other("pipe writer"))?
}

// ---------------------------------------------------------------------------------------
// Client.

struct Opts {
    bind: Option<IpAddr>,
    v6: bool,
    timeout: u64,
    /// Scenario arguments, in order.
    rest: Vec<u64>,
}

impl Opts {
    fn parse(args: &[String]) -> Self {
        let mut o = Self {
            bind: None,
            v6: false,
            timeout: 120,
            rest: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--bind" => o.bind = it.next().and_then(|v| v.parse().ok()),
                "--v6" => o.v6 = true,
                "--timeout" => o.timeout = it.next().and_then(|v| v.parse().ok()).unwrap_or(120),
                n => o.rest.push(n.parse().expect("numeric scenario argument")),
            }
        }
        o
    }

    fn arg(&self, i: usize, default: u64) -> u64 {
        self.rest.get(i).copied().unwrap_or(default)
    }
}

/// What a scenario found, summed over its connections.
#[derive(Default)]
struct Report {
    failures: Vec<String>,
    /// EAGAIN on blocking reads, both sides, except ...
    eagain: u64,
    /// ... on our reads after our own shutdown(SHUT_WR) (see [`Eagain`]): counted, reads
    /// retried, not a failure by itself.
    eagain_after_shutdown: u64,
    conns: u64,
    /// Connections whose payload went all through TCP, all around it, or partly (a backlog
    /// past the limit sent the rest through TCP).
    tcp_conns: u64,
    bypass_conns: u64,
    mixed_conns: u64,
    extra: serde_json::Map<String, Value>,
}

impl Report {
    fn fail(&mut self, what: impl std::fmt::Display) {
        if self.failures.len() < 20 {
            self.failures.push(what.to_string());
        }
    }

    /// Records a connection's outcome; `Err` is a failure named `what`.
    fn conn(&mut self, what: &str, r: io::Result<Conn>) {
        self.conns += 1;
        match r {
            Ok(c) => {
                self.eagain += c.eagain.before_shutdown + c.server_eagain;
                self.eagain_after_shutdown += c.eagain.after_shutdown;
                if c.eagain.before_shutdown + c.server_eagain > 0 {
                    self.fail(format!(
                        "{what}: EAGAIN on blocking reads: {} ours, {} the server's",
                        c.eagain.before_shutdown, c.server_eagain
                    ));
                }
                // A connection all through TCP has carried its payload plus 2 or 3 of control.
                if c.via_tcp <= CONTROL_ONLY {
                    self.bypass_conns += 1;
                } else if c.via_tcp >= c.payload {
                    self.tcp_conns += 1;
                } else {
                    self.mixed_conns += 1;
                }
            }
            Err(e) => self.fail(format!("{what}: {e}")),
        }
    }

    fn merge(&mut self, other: Report) {
        for f in other.failures {
            self.fail(f);
        }
        self.eagain += other.eagain;
        self.eagain_after_shutdown += other.eagain_after_shutdown;
        self.conns += other.conns;
        self.tcp_conns += other.tcp_conns;
        self.bypass_conns += other.bypass_conns;
        self.mixed_conns += other.mixed_conns;
    }

    fn json(self) -> Value {
        let mut v = json!({
            "failures": self.failures,
            "eagain": self.eagain,
            "eagain_after_shutdown": self.eagain_after_shutdown,
            "conns": self.conns,
            "tcp_conns": self.tcp_conns,
            "bypass_conns": self.bypass_conns,
            "mixed_conns": self.mixed_conns,
        });
        v.as_object_mut().expect("object").extend(self.extra);
        v
    }
}

/// One connection's outcome: EAGAIN seen by our reads and by the server's (before its own
/// shutdown), and the bytes TCP carried.
struct Conn {
    eagain: Eagain,
    server_eagain: u64,
    via_tcp: u64,
    /// Bytes the connection carried, both ways (request line included).
    payload: u64,
}

/// `via_tcp` of a connection whose payload skipped TCP: sequence space taken by the SYN and
/// the two FINs. Every request line is at least 5 bytes, so a connection that sent anything
/// through TCP is above it.
const CONTROL_ONLY: u64 = 3;

fn run(scenario: &str, dst: SocketAddr, o: &Opts) -> Value {
    let c = Client {
        dst,
        bind: o.bind,
        v6: o.v6,
    };
    let mut r = Report::default();
    match scenario {
        "sizes" => c.sizes(&mut r, o.arg(0, 16 << 20)),
        "writev" => r.conn("writev", c.writev(o.arg(0, 8 << 20))),
        "concurrent" => c.concurrent(&mut r, o.arg(0, 64), o.arg(1, 1 << 20)),
        "halfclose" => c.halfclose(&mut r, o.arg(0, 500), o.arg(1, 1000)),
        "abort" => c.abort(&mut r),
        "slow" => c.slow(&mut r, o.arg(0, 64 << 20), o.arg(1, 1500), o.arg(2, 0)),
        "sendfile" => c.zero_copy(&mut r, "sendfile", o.arg(0, 8 << 20)),
        "splice" => c.zero_copy(&mut r, "splice", o.arg(0, 8 << 20)),
        "stress" => c.stress(&mut r, o.arg(0, 5), o.arg(1, 1), o.arg(2, 8)),
        "waitall" => c.waitall(&mut r, o.arg(0, 100_000), o.arg(1, 4)),
        "bulk" => c.bulk(&mut r, o.arg(0, 2), o.arg(1, 128 << 10)),
        "rr" => c.round_trips(&mut r, o.arg(0, 2), o.arg(1, 64)),
        "stats" => c.server_stats(&mut r),
        other => r.fail(format!("unknown scenario {other}")),
    }
    r.json()
}

#[derive(Clone, Copy)]
struct Client {
    dst: SocketAddr,
    bind: Option<IpAddr>,
    v6: bool,
}

/// Sizes every transfer size check runs through: around page, segment and 64 KiB edges, up
/// to 16 MiB.
const SIZES: [u64; 14] = [
    1,
    2,
    3,
    100,
    1448,
    4096,
    4097,
    65535,
    65536,
    65537,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
];

impl Client {
    fn connect(&self) -> io::Result<TcpStream> {
        // An AF_INET6 socket reaches IPv4 peers through IPv4-mapped addresses.
        let dst = match (self.v6, self.dst) {
            (true, SocketAddr::V4(a)) => SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port()),
            _ => self.dst,
        };
        let s = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
        if let Some(ip) = self.bind {
            s.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
        }
        s.connect(&dst.into())?;
        Ok(s.into())
    }

    fn request(&self, line: &str) -> io::Result<TcpStream> {
        let mut s = self.connect()?;
        s.write_all(format!("{line}\n").as_bytes())?;
        Ok(s)
    }

    /// Sends `data` (written by `send`), shuts down writing, and checks the server's digest.
    fn sink_with(
        &self,
        data: &[u8],
        send: impl FnOnce(&mut TcpStream) -> io::Result<()>,
    ) -> io::Result<Conn> {
        self.sink_request("sink", data, send)
    }

    /// [`Client::sink_with`] with another sink request (`sleep_sink MS`).
    fn sink_request(
        &self,
        request: &str,
        data: &[u8],
        send: impl FnOnce(&mut TcpStream) -> io::Result<()>,
    ) -> io::Result<Conn> {
        let mut s = self.request(request)?;
        send(&mut s)?;
        s.shutdown(Shutdown::Write)?;
        let mut reply = Vec::new();
        let eagain = drain(&mut s, &SHUT, |b| reply.extend_from_slice(b))?;
        let text = String::from_utf8_lossy(&reply);
        let f: Vec<&str> = text.split_whitespace().collect();
        let want = Digest::of(data);
        let count = f.first().and_then(|c| c.parse().ok());
        let hash = f.get(1).and_then(|h| u64::from_str_radix(h, 16).ok());
        if (count, hash) != (Some(want.count), Some(want.hash)) {
            return Err(io::Error::other(format!(
                "server got {text:?}, sent {} bytes with digest {:016x}",
                want.count, want.hash
            )));
        }
        let server_eagain: u64 = f.get(2).and_then(|e| e.parse().ok()).unwrap_or(0);
        Ok(Conn {
            eagain,
            server_eagain,
            via_tcp: via_tcp(&s),
            payload: (request.len() + 1 + data.len() + reply.len()) as u64,
        })
    }

    /// Asks the server for `n` pattern bytes (`request` names how it sends them) and checks
    /// every byte.
    fn receive(&self, request: &str, n: u64, seed: u64) -> io::Result<Conn> {
        let mut s = self.request(request)?;
        let mut expect = Pattern::new(seed);
        let mut want = vec![0u8; 64 * 1024];
        let (mut got, mut bad) = (0u64, None);
        let eagain = drain(&mut s, &OPEN, |b| {
            expect.fill(&mut want[..b.len()]);
            if bad.is_none() && want[..b.len()] != *b {
                bad = Some(got);
            }
            got += b.len() as u64;
        })?;
        let via = via_tcp(&s);
        drop(s);
        match bad {
            Some(at) => Err(io::Error::other(format!("byte mismatch near offset {at}"))),
            None if got != n => Err(io::Error::other(format!("got {got} of {n} bytes"))),
            None => Ok(Conn {
                eagain,
                server_eagain: 0,
                via_tcp: via,
                payload: request.len() as u64 + 1 + got,
            }),
        }
    }

    /// 1 B to `max`: each size written in one write(), and received in one server write.
    fn sizes(&self, r: &mut Report, max: u64) {
        for (i, &n) in SIZES.iter().filter(|n| **n <= max).enumerate() {
            let data = Pattern::bytes(i as u64, n as usize);
            r.conn(
                &format!("send {n}"),
                self.sink_with(&data, |s| s.write_all(&data)),
            );
            r.conn(
                &format!("receive {n}"),
                self.receive(&format!("source {n} {i} {n}"), n, i as u64),
            );
        }
    }

    /// writev() with iovecs of mixed sizes, partial writes resumed.
    fn writev(&self, total: u64) -> io::Result<Conn> {
        const PARTS: [usize; 8] = [1, 7, 512, 4096, 65536, 3, 100_000, 1448];
        let data = Pattern::bytes(99, total as usize);
        self.sink_with(&data, |s| {
            let mut rest = &data[..];
            while !rest.is_empty() {
                let mut slices = Vec::new();
                let mut at = 0;
                for p in PARTS.iter().cycle().take(64) {
                    let end = (at + p).min(rest.len());
                    slices.push(IoSlice::new(&rest[at..end]));
                    at = end;
                    if at == rest.len() {
                        break;
                    }
                }
                let n = s.write_vectored(&slices)?;
                rest = &rest[n..];
            }
            Ok(())
        })
    }

    /// `conns` echo connections at once, each writing `size` bytes in seeded chunks while
    /// reading the echo.
    fn concurrent(&self, r: &mut Report, conns: u64, size: u64) {
        let results: Vec<_> = (0..conns)
            .map(|i| {
                let c = *self;
                thread::spawn(move || c.echo(i, size))
            })
            .collect();
        for (i, t) in results.into_iter().enumerate() {
            let res = t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("thread panicked")));
            r.conn(&format!("echo {i}"), res);
        }
    }

    fn echo(&self, seed: u64, size: u64) -> io::Result<Conn> {
        let mut s = self.request("echo")?;
        let data = Arc::new(Pattern::bytes(seed, size as usize));
        let mut w = s.try_clone()?;
        let sent = Arc::clone(&data);
        let shut = Arc::new(AtomicBool::new(false));
        let shut_w = Arc::clone(&shut);
        let writer = thread::spawn(move || -> io::Result<()> {
            let mut rng = Pattern::new(seed ^ 0xabcd);
            let mut rest = &sent[..];
            while !rest.is_empty() {
                let n = (1 + rng.next() % 200_000).min(rest.len() as u64) as usize;
                w.write_all(&rest[..n])?;
                rest = &rest[n..];
            }
            shut_w.store(true, Ordering::SeqCst);
            w.shutdown(Shutdown::Write)
        });
        let mut back = Vec::with_capacity(size as usize);
        let eagain = drain(&mut s, &shut, |b| back.extend_from_slice(b))?;
        writer
            .join()
            .map_err(|_| io::Error::other("writer panicked"))??;
        if back != *data {
            return Err(io::Error::other(format!(
                "echo differs: {} of {} bytes back",
                back.len(),
                data.len()
            )));
        }
        Ok(Conn {
            eagain,
            server_eagain: 0,
            via_tcp: via_tcp(&s),
            payload: 5 + 2 * size,
        })
    }

    /// recv(MSG_WAITALL) of `n` bytes the server sends in `parts` writes, 20 ms apart. TCP
    /// returns all `n` at once; what the call returned is reported (`waitall_returned`), and
    /// the rest is read on to check every byte.
    fn waitall(&self, r: &mut Report, n: u64, parts: u64) {
        let request = format!("source {n} 11 {} 20", n.div_ceil(parts));
        let res = (|| -> io::Result<Conn> {
            let mut s = self.request(&request)?;
            let mut buf = vec![0u8; n as usize];
            // SAFETY: buf has n bytes.
            let got = unsafe {
                libc::recv(
                    s.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_WAITALL,
                )
            };
            let got = check(got)?;
            r.extra.insert("waitall_returned".into(), got.into());
            s.read_exact(&mut buf[got..])?;
            if buf != Pattern::bytes(11, n as usize) {
                return Err(io::Error::other("MSG_WAITALL bytes differ"));
            }
            let e = drain(&mut s, &OPEN, |_| {})?;
            Ok(Conn {
                eagain: e,
                server_eagain: 0,
                via_tcp: via_tcp(&s),
                payload: request.len() as u64 + 1 + n,
            })
        })();
        r.conn("MSG_WAITALL", res);
    }

    /// Measurement: one connection writing `chunk`-byte buffers for `secs` seconds into a
    /// discarding server (`gbit_per_s`, from the bytes the server counted).
    fn bulk(&self, r: &mut Report, secs: u64, chunk: u64) {
        let res = (|| -> io::Result<(u64, f64)> {
            let mut s = self.request("discard")?;
            let buf = Pattern::bytes(1, chunk as usize);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(secs) {
                s.write_all(&buf)?;
            }
            s.shutdown(Shutdown::Write)?;
            let mut reply = Vec::new();
            let e = drain(&mut s, &SHUT, |b| reply.extend_from_slice(b))?;
            r.eagain_after_shutdown += e.after_shutdown;
            let bytes = String::from_utf8_lossy(&reply).trim().parse();
            Ok((
                bytes.map_err(io::Error::other)?,
                start.elapsed().as_secs_f64(),
            ))
        })();
        match res {
            Ok((bytes, t)) => {
                r.extra
                    .insert("gbit_per_s".into(), (bytes as f64 * 8.0 / t / 1e9).into());
            }
            Err(e) => r.fail(format!("bulk: {e}")),
        }
    }

    /// Measurement: request/response round trips of `size` bytes on one echo connection for
    /// `secs` seconds (`round_trips`, `per_s`).
    fn round_trips(&self, r: &mut Report, secs: u64, size: u64) {
        let res = (|| -> io::Result<(u64, f64)> {
            let mut s = self.request("echo")?;
            s.set_nodelay(true)?;
            let out = Pattern::bytes(2, size as usize);
            let mut back = vec![0u8; size as usize];
            let (start, mut n) = (Instant::now(), 0u64);
            while start.elapsed() < Duration::from_secs(secs) {
                s.write_all(&out)?;
                s.read_exact(&mut back)?;
                n += 1;
            }
            if back != out {
                return Err(io::Error::other("echo differs"));
            }
            s.shutdown(Shutdown::Write)?;
            Ok((n, start.elapsed().as_secs_f64()))
        })();
        match res {
            Ok((n, t)) => {
                r.extra.insert("round_trips".into(), n.into());
                r.extra.insert("per_s".into(), (n as f64 / t).into());
            }
            Err(e) => r.fail(format!("round trips: {e}")),
        }
    }

    /// The server's EAGAIN on reads before its own shutdown, over every connection so far.
    fn server_stats(&self, r: &mut Report) {
        let res = (|| -> io::Result<u64> {
            let mut s = self.request("stats")?;
            let mut line = String::new();
            s.read_to_string(&mut line)?;
            line.trim().parse().map_err(io::Error::other)
        })();
        match res {
            Ok(n) => {
                r.extra.insert("server_eagain_total".into(), n.into());
            }
            Err(e) => r.fail(format!("stats: {e}")),
        }
    }

    /// `rounds` short transfers, each ended by shutdown(SHUT_WR), alternating direction: every
    /// blocking read right after the peer's half-close must give the data, then 0.
    fn halfclose(&self, r: &mut Report, rounds: u64, size: u64) {
        for i in 0..rounds {
            let data = Pattern::bytes(i, size as usize);
            r.conn(
                &format!("half-close send #{i}"),
                self.sink_with(&data, |s| s.write_all(&data)),
            );
            r.conn(
                &format!("half-close receive #{i}"),
                self.receive(&format!("source {size} {i} {size}"), size, i),
            );
        }
    }

    /// Resets from either side: the other side gets an error or EOF promptly (the watchdog
    /// fails a hang), never bytes that were not sent, and the server keeps serving.
    fn abort(&self, r: &mut Report) {
        // The server resets after 64 KiB; writing on must fail, not block.
        let outcome = (|| -> io::Result<String> {
            let mut s = self.request("abort_after 65536")?;
            let chunk = vec![7u8; 64 * 1024];
            for _ in 0..1024 {
                if let Err(e) = s.write_all(&chunk) {
                    return Ok(format!("write: {:?}", e.kind()));
                }
            }
            let mut b = [0u8; 16];
            Ok(format!("read after 64 MiB: {:?}", s.read(&mut b)))
        })();
        match outcome {
            Ok(o) if o.starts_with("write: ") => {
                r.extra.insert("server_reset".into(), o.into());
            }
            Ok(o) => r.fail(format!("server reset unnoticed: {o}")),
            Err(e) => r.fail(format!("server reset: {e}")),
        }
        // We reset mid-transfer; the server must survive it.
        let reset = (|| -> io::Result<()> {
            let mut s = self.request("sink")?;
            s.write_all(&vec![1u8; 100_000])?;
            Socket::from(s).set_linger(Some(Duration::ZERO))
        })();
        if let Err(e) = reset {
            r.fail(format!("client reset: {e}"));
        }
        let data = Pattern::bytes(5, 4096);
        r.conn(
            "after resets",
            self.sink_with(&data, |s| s.write_all(&data)),
        );
    }

    /// A reader that sleeps `sleep_ms` before reading `size` bytes: how much the writer got
    /// the kernel to accept meanwhile (bounded by socket buffers, or the writer never blocks),
    /// and that everything still arrives.
    /// `edge_triggered` (not 0): the server reads as [`sink_edge_triggered`] does.
    fn slow(&self, r: &mut Report, size: u64, sleep_ms: u64, edge_triggered: u64) {
        let data = Arc::new(Pattern::bytes(42, size as usize));
        let written = Arc::new(AtomicU64::new(0));
        let mem_before = tcp_mem_pages();
        let sampled = Arc::new(Mutex::new((0u64, 0u64)));
        let (w, s2, d) = (
            Arc::clone(&written),
            Arc::clone(&sampled),
            Arc::clone(&data),
        );
        let start = Instant::now();
        let sampler = thread::spawn(move || {
            // Just before the reader wakes up.
            thread::sleep(Duration::from_millis(sleep_ms.saturating_sub(200)));
            *s2.lock().expect("lock") = (w.load(Ordering::SeqCst), tcp_mem_pages());
        });
        let request = match edge_triggered {
            0 => format!("sleep_sink {sleep_ms}"),
            _ => format!("sleep_sink_et {sleep_ms}"),
        };
        let res = self.sink_request(&request, &data, |s| {
            for chunk in d.chunks(64 * 1024) {
                s.write_all(chunk)?;
                written.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
            Ok(())
        });
        let _ = sampler.join();
        let (asleep, mem) = *sampled.lock().expect("lock");
        r.extra.insert("written_while_asleep".into(), asleep.into());
        r.extra.insert(
            "tcp_mem_growth_bytes".into(),
            (mem.saturating_sub(mem_before) * 4096).into(),
        );
        r.extra
            .insert("secs".into(), start.elapsed().as_secs_f64().into());
        r.conn("slow reader", res);
    }

    /// sendfile(2) or splice(2) both ways: ours into the socket, the server's out of it.
    fn zero_copy(&self, r: &mut Report, how: &str, size: u64) {
        let data = Pattern::bytes(7, size as usize);
        let sent = self.sink_with(&data, |s| match how {
            "sendfile" => sendfile(s, &data),
            _ => splice(s, data.clone()),
        });
        r.conn(&format!("{how} send"), sent);
        r.conn(
            &format!("{how} receive"),
            self.receive(&format!("{how} {size} 8"), size, 8),
        );
    }

    /// `secs` seconds of random work on `threads` threads: transfers of random sizes both
    /// ways and echoes, checked byte for byte, and connections closed or reset midway.
    fn stress(&self, r: &mut Report, secs: u64, seed: u64, threads: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let c = *self;
                thread::spawn(move || c.stress_worker(seed * 1000 + t, deadline))
            })
            .collect();
        let mut ops = 0;
        for w in workers {
            match w.join() {
                Ok((rep, n)) => {
                    r.merge(rep);
                    ops += n;
                }
                Err(_) => r.fail("stress worker panicked"),
            }
        }
        r.extra.insert("ops".into(), ops.into());
    }

    fn stress_worker(&self, seed: u64, deadline: Instant) -> (Report, u64) {
        let mut rng = Pattern::new(seed);
        let mut r = Report::default();
        let mut ops = 0;
        while Instant::now() < deadline {
            ops += 1;
            // Log-uniform sizes: 1 B to 4 MiB.
            let size = (1u64 << (rng.next() % 23)) + rng.next() % 1024;
            let s = rng.next();
            match rng.next() % 5 {
                0 => {
                    let data = Pattern::bytes(s, size as usize);
                    r.conn("stress send", self.sink_with(&data, |c| c.write_all(&data)));
                }
                1 => r.conn(
                    "stress receive",
                    self.receive(&format!("source {size} {s} {}", 1 + s % 300_000), size, s),
                ),
                2 => r.conn("stress echo", self.echo(s, size.min(1 << 20))),
                3 => {
                    // Close midway without reading: the server sees EOF early.
                    if let Ok(mut c) = self.request("sink") {
                        let _ = c.write_all(&vec![3u8; size as usize / 2]);
                    }
                }
                _ => {
                    // Reset midway.
                    if let Ok(mut c) = self.request("sink") {
                        let _ = c.write_all(&vec![4u8; size as usize / 2]);
                        let _ = Socket::from(c).set_linger(Some(Duration::ZERO));
                    }
                }
            }
        }
        (r, ops)
    }
}

/// Payload bytes TCP carried on this socket (`tcpi_bytes_acked + tcpi_bytes_received`): 0
/// when every byte both ways skipped the TCP/IP stack.
fn via_tcp(s: &TcpStream) -> u64 {
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: info has len bytes.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    // struct tcp_info: tcpi_bytes_acked at 120, tcpi_bytes_received at 128 (Linux 4.1+).
    if r != 0 || len < 136 {
        return u64::MAX;
    }
    let at = |o: usize| u64::from_ne_bytes(info[o..o + 8].try_into().unwrap_or_default());
    at(120) + at(128)
}

/// The node's TCP memory in pages (`/proc/net/sockstat`, `TCP: ... mem N`).
fn tcp_mem_pages() -> u64 {
    std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("TCP:"))?;
            let mut it = line.split_whitespace();
            it.find(|w| *w == "mem")?;
            it.next()?.parse().ok()
        })
        .unwrap_or(0)
}
