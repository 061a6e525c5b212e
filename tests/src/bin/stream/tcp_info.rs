//! What the kernel says about our TCP: bytes it carried, memory it holds.
use std::{net::TcpStream, os::fd::AsRawFd};

/// Payload bytes TCP carried on this socket (`tcpi_bytes_acked + tcpi_bytes_received`): 0
/// when every byte both ways skipped the TCP/IP stack.
pub fn via_tcp(s: &TcpStream) -> u64 {
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
pub fn tcp_mem_pages() -> u64 {
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
