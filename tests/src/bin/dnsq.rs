//! `mst-dnsq SERVER:PORT NAME [--tcp] [--connect]`: one DNS A query, as a strict resolver makes
//! it. Over UDP it takes only a reply whose source is the server it asked and whose id is its
//! query's (glibc, musl and dig all drop anything else), waiting up to 2 s; over TCP the reply
//! is length-prefixed on the connection. Prints JSON: `{"answer": "a.b.c.d", "from": "ip:port"}`,
//! or `{"error": "..."}` (and exits 1).
//!
//! Written by hand, with no DNS library: the test needs exactly the checks above and the
//! wire format of one question and one A answer.
use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    process::ExitCode,
    time::{Duration, Instant},
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(server), Some(name)) = (args.first(), args.get(1)) else {
        eprintln!("usage: mst-dnsq SERVER:PORT NAME [--tcp] [--connect]");
        return ExitCode::from(2);
    };
    let tcp = args.iter().any(|a| a == "--tcp");
    let connect = args.iter().any(|a| a == "--connect");
    let result = server
        .parse::<SocketAddr>()
        .map_err(|e| format!("bad server {server:?}: {e}"))
        .and_then(|server| {
            let id = (std::process::id() as u16) ^ 0x5a5a;
            let query = query(id, name)?;
            if tcp {
                ask_tcp(server, &query, id)
            } else {
                ask_udp(server, &query, id, connect)
            }
        });
    match result {
        Ok((answer, from)) => {
            println!("{{\"answer\": \"{answer}\", \"from\": \"{from}\"}}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{{\"error\": {:?}}}", e);
            ExitCode::from(1)
        }
    }
}

/// A recursive A query for `name` with id `id`.
fn query(id: u16, name: &str) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend(id.to_be_bytes());
    q.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("bad name {name:?}"));
        }
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    Ok(q)
}

fn ask_udp(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    connect: bool,
) -> Result<(Ipv4Addr, SocketAddr), String> {
    let any: SocketAddr = match server.ip() {
        IpAddr::V4(_) => "0.0.0.0:0".parse().unwrap_or(server),
        IpAddr::V6(_) => "[::]:0".parse().unwrap_or(server),
    };
    let sock = UdpSocket::bind(any).map_err(|e| format!("bind: {e}"))?;
    if connect {
        sock.connect(server).map_err(|e| format!("connect: {e}"))?;
        let peer = sock.peer_addr().map_err(|e| format!("getpeername: {e}"))?;
        if peer != server {
            return Err(format!("getpeername says {peer}, not {server}"));
        }
        sock.send(query).map_err(|e| format!("send: {e}"))?;
    } else {
        sock.send_to(query, server)
            .map_err(|e| format!("sendto: {e}"))?;
    }
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timeout: no reply from the server asked".into());
        }
        sock.set_read_timeout(Some(left))
            .map_err(|e| format!("timeout: {e}"))?;
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(format!("recvfrom: {e}")),
        };
        // A strict resolver's checks: from the server asked, answering our id.
        if from != server || n < 2 || u16::from_be_bytes([buf[0], buf[1]]) != id {
            eprintln!("dropped a reply from {from}");
            continue;
        }
        return Ok((answer(&buf[..n])?, from));
    }
}

fn ask_tcp(server: SocketAddr, query: &[u8], id: u16) -> Result<(Ipv4Addr, SocketAddr), String> {
    let mut s =
        TcpStream::connect_timeout(&server, TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| format!("timeout: {e}"))?;
    let peer = s.peer_addr().map_err(|e| format!("getpeername: {e}"))?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend(query);
    s.write_all(&framed).map_err(|e| format!("send: {e}"))?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).map_err(|e| format!("read: {e}"))?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut msg).map_err(|e| format!("read: {e}"))?;
    if msg.len() < 2 || u16::from_be_bytes([msg[0], msg[1]]) != id {
        return Err("reply with another id".into());
    }
    Ok((answer(&msg)?, peer))
}

/// The first A record of the answer section.
fn answer(msg: &[u8]) -> Result<Ipv4Addr, String> {
    let short = || "short reply".to_string();
    let count = |i: usize| -> Result<usize, String> {
        Ok(usize::from(u16::from_be_bytes([
            *msg.get(i).ok_or_else(short)?,
            *msg.get(i + 1).ok_or_else(short)?,
        ])))
    };
    let rcode = msg.get(3).ok_or_else(short)? & 0x0f;
    if rcode != 0 {
        return Err(format!("rcode {rcode}"));
    }
    let (questions, answers) = (count(4)?, count(6)?);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(msg, at)? + 4;
    }
    for _ in 0..answers {
        at = skip_name(msg, at)?;
        let rtype = count(at)?;
        let rdlen = count(at + 8)?;
        let data = at + 10;
        if rtype == 1 && rdlen == 4 {
            let b = msg.get(data..data + 4).ok_or_else(short)?;
            return Ok(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
        }
        at = data + rdlen;
    }
    Err("no A record in the reply".into())
}

/// The offset after the name at `at` (labels, or a compression pointer).
fn skip_name(msg: &[u8], mut at: usize) -> Result<usize, String> {
    // At most 128 labels: a name is at most 255 bytes.
    for _ in 0..128 {
        let len = *msg.get(at).ok_or("short reply")?;
        if len == 0 {
            return Ok(at + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Ok(at + 2);
        }
        at += 1 + usize::from(len);
    }
    Err("name too long".into())
}
