//! Sending a signal to another process by pid.
use std::io;

pub fn send(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill() takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
