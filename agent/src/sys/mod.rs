//! The only place allowed `unsafe`: thin, typed wrappers over the syscalls that neither std,
//! tokio nor aya offer (bpf commands aya keeps private, inotify, pidfd, mount, raw clocks,
//! socket options).
#![allow(unsafe_code)]

pub mod async_fd;
pub mod bpf;
pub mod bytes;
pub mod clock;
pub mod in_netns;
pub mod inotify;
pub mod mount;
pub mod ns;
pub mod openat2;
pub mod pidfd;
pub mod signal;
pub mod socket;
