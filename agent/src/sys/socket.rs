//! What a socket is, asked of the socket itself: whether it is a listening TCP socket and on
//! which port (`getsockopt`, `getsockname`), and its network namespace (`SIOCGSKNS`). libc has
//! the constants but no wrappers.
use std::{
    io, mem,
    os::fd::{AsRawFd, OwnedFd},
};

fn int_option(fd: &impl AsRawFd, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of the size `len` says.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// `(family, port)` when `fd` is a TCP socket listening on an IPv4 or IPv6 address; `None` for
/// any other socket.
pub fn tcp_listening(fd: &impl AsRawFd) -> io::Result<Option<(u32, u16)>> {
    let family = int_option(fd, libc::SO_DOMAIN)?;
    if family != libc::AF_INET && family != libc::AF_INET6 {
        return Ok(None);
    }
    if int_option(fd, libc::SO_PROTOCOL)? != libc::IPPROTO_TCP
        || int_option(fd, libc::SO_ACCEPTCONN)? == 0
    {
        return Ok(None);
    }
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut addr: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `addr` and `len` are valid for writes of the size `len` says.
    let r = unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut addr).cast(), &raw mut len) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // sin_port and sin6_port sit at the same offset, in network byte order.
    // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
    let sin: &libc::sockaddr_in = unsafe { &*(&raw const addr).cast() };
    Ok(Some((family as u32, u16::from_be(sin.sin_port))))
}

/// `SIOCGSKNS`.
const SIOCGSKNS: libc::c_ulong = 0x894c;

/// The network namespace the socket `fd` belongs to (Linux 4.9).
pub fn netns_of(fd: &impl AsRawFd) -> io::Result<OwnedFd> {
    super::ns::ioctl_new_fd(fd, SIOCGSKNS)
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, TcpStream, UdpSocket},
        os::unix::fs::MetadataExt,
    };

    use super::*;

    #[test]
    fn tells_tcp_listeners_and_their_ports_from_other_sockets() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(
            tcp_listening(&l).unwrap(),
            Some((libc::AF_INET as u32, port))
        );
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(tcp_listening(&c).unwrap(), None);
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(tcp_listening(&u).unwrap(), None);
        let own = std::fs::metadata("/proc/self/ns/net").unwrap();
        let ns = std::fs::File::from(netns_of(&l).unwrap())
            .metadata()
            .unwrap();
        assert_eq!((ns.dev(), ns.ino()), (own.dev(), own.ino()));
    }
}
