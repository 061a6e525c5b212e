//! Taking a copy of another process's fd (`pidfd_getfd`, Linux 5.6): how the agent gets
//! hold of proxy listeners opened before it ran. libc has no wrappers for these syscalls.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// A duplicate of `fd` of process `pid`, owned by this process.
pub fn pidfd_getfd(pid: i32, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: a raw syscall with plain integer arguments; a non-negative result is a new fd.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `pidfd` is a fresh fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: as above, with a pidfd we own.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` is a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(dup as i32) })
}
