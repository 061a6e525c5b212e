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
    /// rescan the directory, so what the events say does not matter, except whether the
    /// watch is gone (the directory removed, moved or unmounted): then this watch reports
    /// nothing more, and the caller needs a new one.
    pub async fn changed(&self) -> io::Result<Drained> {
        let mut guard = self.fd.readable().await?;
        let mut buf = [0u8; 4096];
        let mut drained = Drained::default();
        loop {
            // SAFETY: reading into our own buffer from our own non-blocking inotify fd.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            let Ok(n) = usize::try_from(n) else { break };
            if n == 0 {
                break;
            }
            drained.watch_lost |= masks(&buf[..n]).any(|m| m & WATCH_GONE != 0);
        }
        guard.clear_ready();
        Ok(drained)
    }
}

/// What [`DirWatch::changed`] drained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// The watch ended: nothing more will be reported through it.
    pub watch_lost: bool,
}

/// Events after which a watch reports nothing more: `IN_IGNORED` follows every way a watch
/// ends; the directory's own removal or move leaves it watching an inode nobody uses.
const WATCH_GONE: u32 = libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF;

/// The masks of the `struct inotify_event`s in `buf` (each a 16-byte header, then `len`
/// bytes of name).
fn masks(buf: &[u8]) -> impl Iterator<Item = u32> + '_ {
    const HEADER: usize = 16;
    let mut at = 0;
    std::iter::from_fn(move || {
        let header = buf.get(at..at + HEADER)?;
        let field =
            |i: usize| u32::from_ne_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (mask, len) = (field(4), field(12));
        at += HEADER + len as usize;
        Some(mask)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(mask: u32, name_len: u32) -> Vec<u8> {
        let mut e = Vec::new();
        for field in [1u32, mask, 0, name_len] {
            e.extend(field.to_ne_bytes());
        }
        e.extend(vec![0u8; name_len as usize]);
        e
    }

    #[test]
    fn masks_walk_events_with_their_names() {
        let mut buf = event(libc::IN_CREATE, 16);
        buf.extend(event(libc::IN_IGNORED, 0));
        buf.extend(event(libc::IN_DELETE, 32));
        let m: Vec<u32> = masks(&buf).collect();
        assert_eq!(m, [libc::IN_CREATE, libc::IN_IGNORED, libc::IN_DELETE]);
    }

    /// The directory removed under the watch: the drain says so (the pods directory then
    /// gets a new watch, or polling).
    #[tokio::test]
    async fn a_removed_directory_ends_the_watch() {
        let dir = std::env::temp_dir().join(format!("ms-inotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let watch = DirWatch::new(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), "x").unwrap();
        let first = watch.changed().await.unwrap();
        assert!(!first.watch_lost);
        std::fs::remove_dir_all(&dir).unwrap();
        let mut lost = false;
        for _ in 0..10 {
            lost |= watch.changed().await.unwrap().watch_lost;
            if lost {
                break;
            }
        }
        assert!(lost);
    }
}
