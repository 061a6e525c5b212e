//! Registering an fd-owning value with tokio's reactor, for the three fds the agent polls:
//! inotify, the eBPF log ring and the trace ring buffer.
use std::{io, os::fd::AsRawFd};

use tokio::io::{Interest, unix::AsyncFd};

/// Polls `inner` for readability. `inner` must own the fd it exposes (an `OwnedFd`, aya's
/// ring buffers and log reader do), so the fd stays open for as long as it is registered.
pub fn readable<T: AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: the AsyncFd owns `inner`, which owns the fd: it stays open until the AsyncFd,
    // and with it the registration, is dropped.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}
