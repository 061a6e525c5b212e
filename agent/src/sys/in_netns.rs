//! setns(2) into a pod's network namespace for the length of one call, on the calling thread.
//!
//! setns moves the calling thread alone: the closure runs inside, and the thread goes back to
//! the namespace it came from before anything else of the agent runs on it, also when the
//! closure panics. A thread that cannot go back aborts the agent (its pinned capture stays, and
//! the next agent takes over): no code of the agent ever runs in a pod's namespace unasked.
//! A restart enters 1,000 pods' namespaces: a new thread per call cost a tenth of its CPU, and
//! one long-lived thread handed each call left the agent idle a fifth of the time, waiting.
use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    panic::{self, AssertUnwindSafe},
};

/// Runs `f` inside the network namespace `ns` refers to (setns(2) with `CLONE_NEWNET`, which
/// needs CAP_SYS_ADMIN) and returns what it returned; `Err` when the thread could not enter
/// it, or `f` panicked. What `f` makes there keeps it: a socket belongs to the namespace it
/// was created in, wherever it is used later.
pub fn in_netns<T>(ns: &impl AsFd, f: impl FnOnce() -> T) -> io::Result<T> {
    let home = File::open("/proc/thread-self/ns/net")?;
    setns(ns.as_fd())?;
    let _home = GoHome(home);
    panic::catch_unwind(AssertUnwindSafe(f))
        .map_err(|_| io::Error::other("the call inside the network namespace panicked"))
}

/// Takes the thread back to its own network namespace when dropped.
struct GoHome(File);

impl Drop for GoHome {
    fn drop(&mut self) {
        if let Err(e) = setns(self.0.as_fd()) {
            // Whatever ran next on this thread would run in the pod's namespace.
            eprintln!("meshsteer: cannot return to the agent's network namespace: {e}; aborting");
            std::process::abort();
        }
    }
}

fn setns(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns on an fd borrowed for the call; it changes this thread's network
    // namespace only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! setns needs CAP_SYS_ADMIN, as the agent does: run as root (`cargo xtask test`).
    use std::{fs, os::unix::fs::MetadataExt, thread};

    use super::*;

    fn here() -> u64 {
        fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
    }

    /// A network namespace of its own, made by a thread that ends at once.
    fn new_netns() -> File {
        thread::spawn(|| {
            // SAFETY: moves this short-lived thread alone into a new network namespace.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
            File::open("/proc/thread-self/ns/net").unwrap()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn runs_inside_the_namespace_and_comes_home_after() {
        let home = here();
        let ns = new_netns();
        let want = ns.metadata().unwrap().ino();
        for _ in 0..3 {
            assert_eq!(in_netns(&ns, here).unwrap(), want);
            assert_eq!(here(), home, "the thread stayed in the pod's namespace");
        }
    }

    #[test]
    fn a_file_that_is_no_namespace_is_an_error_and_the_thread_stays_home() {
        let home = here();
        let not_ns = File::open("/proc/self/status").unwrap();
        assert!(in_netns(&not_ns, || ()).is_err());
        assert_eq!(here(), home);
    }

    #[test]
    fn a_panic_inside_is_an_error_and_the_thread_comes_home() {
        let home = here();
        let ns = new_netns();
        let e = in_netns(&ns, || panic!("inside")).unwrap_err();
        assert!(e.to_string().contains("panicked"), "{e}");
        assert_eq!(here(), home, "the thread stayed in the pod's namespace");
    }
}
