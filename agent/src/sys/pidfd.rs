//! Taking a copy of another process's fd (`pidfd_getfd`, Linux 5.6): how the agent gets
//! hold of proxy listeners opened before it ran. libc has no wrappers for these syscalls.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// A process, held by a pidfd: its fds can be copied while it lives.
pub struct Pidfd(OwnedFd);

impl Pidfd {
    pub fn open(pid: i32) -> io::Result<Self> {
        // SAFETY: a raw syscall with plain integer arguments; a non-negative result is a new fd.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if pidfd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `pidfd` is a fresh fd that nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(pidfd as i32) }))
    }

    /// A duplicate of the process's `fd`, owned by this process.
    pub fn getfd(&self, fd: i32) -> io::Result<OwnedFd> {
        // SAFETY: a raw syscall with a pidfd we own and plain integers.
        let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.0.as_raw_fd(), fd, 0) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `dup` is a fresh fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(dup as i32) })
    }
}
