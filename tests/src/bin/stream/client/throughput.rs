//! Throughput for the benchmark: bulk transfers and request/response round trips.
use std::{
    io::{self, Read, Write},
    net::Shutdown,
    time::{Duration, Instant},
};

use super::Client;
use crate::blocking::{SHUT, drain};
use crate::payload::Pattern;
use crate::report::Report;

impl Client {
    /// Measurement: one connection writing `chunk`-byte buffers for `secs` seconds into a
    /// discarding server (`gbit_per_s`, from the bytes the server counted).
    pub fn bulk(&self, r: &mut Report, secs: u64, chunk: u64) {
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
    pub fn round_trips(&self, r: &mut Report, secs: u64, size: u64) {
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
}
