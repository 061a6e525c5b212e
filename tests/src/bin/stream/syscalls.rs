//! libc calls: results as `io::Result`, and the sendfile(2) and splice(2) senders.
use std::{
    fs::File,
    io::{self, Write},
    net::TcpStream,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    thread,
};

pub fn check(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// All of `data` through sendfile(2), from an in-memory file.
pub fn sendfile(s: &TcpStream, data: &[u8]) -> io::Result<()> {
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
pub fn splice(s: &TcpStream, data: Vec<u8>) -> io::Result<()> {
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
