//! What kind of namespace an nsfs file is (`NS_GET_NSTYPE`, Linux 4.11): libc has the
//! constants but no wrapper.
use std::{io, os::fd::AsRawFd};

/// `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// The `CLONE_NEW*` flag of the namespace `ns` refers to.
pub fn ns_type(ns: &impl AsRawFd) -> io::Result<i32> {
    // SAFETY: an ioctl without an argument on an fd the caller keeps open.
    let r = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_NSTYPE) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}
