//! An inotify instance on one directory (the pod-spec directory). The `inotify` crates in the
//! ecosystem wrap the same two syscalls with more than we need; these are a few lines.
use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use tokio::io::unix::AsyncFd;

pub struct DirWatch {
    fd: AsyncFd<OwnedFd>,
}

impl DirWatch {
    /// Watches `dir` for entries created, written, moved or removed, and for the directory
    /// itself going away. Must run inside the tokio runtime.
    pub fn new(dir: &Path) -> io::Result<Self> {
        let path = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
        let mask = libc::IN_CLOSE_WRITE
            | libc::IN_MOVED_TO
            | libc::IN_MOVED_FROM
            | libc::IN_DELETE
            | libc::IN_CREATE
            | libc::IN_ATTRIB
            | libc::IN_DELETE_SELF
            | libc::IN_MOVE_SELF;
        // SAFETY: a plain syscall; a non-negative result is a new fd we own.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            fd: super::async_fd::readable(fd)?,
        })
    }

    /// Waits until something happened in the directory and drains the events: callers
    /// rescan the directory, so what the events say does not matter.
    pub async fn changed(&self) -> io::Result<()> {
        let mut guard = self.fd.readable().await?;
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into our own buffer from our own non-blocking inotify fd.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
        }
        guard.clear_ready();
        Ok(())
    }
}
