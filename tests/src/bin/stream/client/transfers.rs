//! Byte-exact transfers: every size, writev, many at once, echoes, MSG_WAITALL, sendfile
//! and splice.
use std::{
    io::{self, IoSlice, Read, Write},
    net::Shutdown,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

use super::Client;
use crate::blocking::{OPEN, drain};
use crate::payload::Pattern;
use crate::report::{Conn, Report};
use crate::syscalls::{check, sendfile, splice};
use crate::tcp_info::via_tcp;

/// Sizes every transfer size check runs through: around page, segment and 64 KiB edges, up
/// to 16 MiB.
pub const SIZES: [u64; 14] = [
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
    /// 1 B to `max`: each size written in one write(), and received in one server write.
    pub fn sizes(&self, r: &mut Report, max: u64) {
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
    pub fn writev(&self, total: u64) -> io::Result<Conn> {
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
    pub fn concurrent(&self, r: &mut Report, conns: u64, size: u64) {
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
    pub fn echo(&self, seed: u64, size: u64) -> io::Result<Conn> {
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
    pub fn waitall(&self, r: &mut Report, n: u64, parts: u64) {
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
    /// sendfile(2) or splice(2) both ways: ours into the socket, the server's out of it.
    pub fn zero_copy(&self, r: &mut Report, how: &str, size: u64) {
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
}
