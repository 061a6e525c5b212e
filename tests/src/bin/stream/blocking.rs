//! Blocking reads that count EAGAIN (a broken blocking contract) instead of failing on it.
use std::{
    io::{self, Read},
    net::TcpStream,
    sync::atomic::{AtomicBool, Ordering},
};

/// EAGAIN from reads of a blocking socket, split by whether our side had already shut down
/// writing (the wakeup that follows when the peer acknowledges our FIN is the case the README
/// documents for accelerated sockets) or not.
#[derive(Clone, Copy, Debug, Default)]
pub struct Eagain {
    pub before_shutdown: u64,
    pub after_shutdown: u64,
}

/// Reads to EOF into `sink`. EAGAIN on this blocking socket is counted (by `shut`: set once our
/// side has shut down writing), then the read is retried.
pub fn drain(
    s: &mut TcpStream,
    shut: &AtomicBool,
    mut sink: impl FnMut(&[u8]),
) -> io::Result<Eagain> {
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
pub static OPEN: AtomicBool = AtomicBool::new(false);
pub static SHUT: AtomicBool = AtomicBool::new(true);

/// One request line (read byte by byte: nothing after it may be consumed).
pub fn read_line(s: &mut TcpStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b)? == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).map_err(io::Error::other)
}
