//! `mst-stream run`: one scenario against a server, reported as one JSON line.

mod closing;
mod slow;
mod stress;
mod throughput;
mod transfers;

use std::{
    io::{self, Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpStream},
};

use serde_json::Value;
use socket2::{Domain, SockAddr, Socket, Type};

use crate::blocking::{OPEN, SHUT, drain};
use crate::opts::Opts;
use crate::payload::{Digest, Pattern};
use crate::report::{Conn, Report};
use crate::tcp_info::via_tcp;

pub fn run(scenario: &str, dst: SocketAddr, o: &Opts) -> Value {
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
pub struct Client {
    pub dst: SocketAddr,
    pub bind: Option<IpAddr>,
    v6: bool,
}

impl Client {
    pub fn connect(&self) -> io::Result<TcpStream> {
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
    pub fn request(&self, line: &str) -> io::Result<TcpStream> {
        let mut s = self.connect()?;
        s.write_all(format!("{line}\n").as_bytes())?;
        Ok(s)
    }
    /// Sends `data` (written by `send`), shuts down writing, and checks the server's digest.
    pub fn sink_with(
        &self,
        data: &[u8],
        send: impl FnOnce(&mut TcpStream) -> io::Result<()>,
    ) -> io::Result<Conn> {
        self.sink_request("sink", data, send)
    }
    /// [`Client::sink_with`] with another sink request (`sleep_sink MS`).
    pub fn sink_request(
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
    pub fn receive(&self, request: &str, n: u64, seed: u64) -> io::Result<Conn> {
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
    /// The server's EAGAIN on reads before its own shutdown, over every connection so far.
    pub fn server_stats(&self, r: &mut Report) {
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
}
