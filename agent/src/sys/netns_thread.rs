//! setns(2) into a pod's network namespace, confined to one thread of the agent's.
//!
//! setns moves the calling thread alone, so the agent keeps a thread for it: each call enters
//! the namespace there, runs its closure, and goes back to the agent's own namespace before
//! it takes the next. A thread that cannot go back ends there, so no other code of the agent
//! ever runs in a pod's namespace; the next call starts a fresh one. Spawning a thread per
//! call instead cost a tenth of a 1,000-pod restart (issue 16, goal 4).
use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    panic::{self, AssertUnwindSafe},
    sync::{
        Mutex,
        mpsc::{Receiver, Sender, sync_channel},
    },
    thread,
};

use tracing::error;

/// A closure for the thread, told whether it stands in the namespace it was sent with.
type Job = Box<dyn FnOnce(io::Result<()>) + Send>;

/// The thread's queue: `None` until the first call, or after the thread ended.
static THREAD: Mutex<Option<Sender<(OwnedFd, Job)>>> = Mutex::new(None);

/// Runs `f` on the agent's namespace thread, inside the network namespace `ns` refers to
/// (setns(2) with `CLONE_NEWNET`, which needs CAP_SYS_ADMIN), and returns what it returned;
/// `Err` when the thread could not enter it, or `f` panicked. What `f` makes there keeps
/// it: a socket belongs to the namespace it was created in, wherever it is used later.
pub fn in_netns<T: Send + 'static>(
    ns: &impl AsFd,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = sync_channel(1);
    let job: Job = Box::new(move |entered| {
        let _ = tx.send(entered.map(|()| f()));
    });
    let ns = ns.as_fd().try_clone_to_owned()?;
    send((ns, job))?;
    rx.recv().unwrap_or_else(|_| {
        Err(io::Error::other(
            "no answer from the agent's namespace thread: the call panicked, or the thread \
             could not return to the agent's namespace",
        ))
    })
}

/// Queues `job` on the thread, starting one if none runs (or the last one ended).
fn send(job: (OwnedFd, Job)) -> io::Result<()> {
    let mut thread = THREAD.lock().unwrap_or_else(|p| p.into_inner());
    let job = match thread.as_ref() {
        Some(t) => match t.send(job) {
            Ok(()) => return Ok(()),
            // It ended: its queue hands the job back.
            Err(e) => e.0,
        },
        None => job,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    // Before the spawn: the new thread inherits the namespace of this (agent) thread.
    let home = File::open("/proc/thread-self/ns/net")?;
    thread::Builder::new()
        .name("meshsteer-netns".into())
        .spawn(move || serve(&home, &rx))?;
    tx.send(job)
        .map_err(|_| io::Error::other("the agent's namespace thread ended at its start"))?;
    *thread = Some(tx);
    Ok(())
}

/// The thread: each job inside its namespace, then home again; ends where it cannot go home.
fn serve(home: &File, jobs: &Receiver<(OwnedFd, Job)>) {
    for (ns, job) in jobs {
        if let Err(e) = setns(ns.as_fd()) {
            // Failed: still at home.
            job(Err(e));
            continue;
        }
        // A panic ends the job, not the thread: jobs queued behind it still run. Its
        // caller hears no answer.
        let _ = panic::catch_unwind(AssertUnwindSafe(|| job(Ok(()))));
        if let Err(e) = setns(home.as_fd()) {
            error!(error = %e, "cannot return to the agent's network namespace; ending the thread");
            return;
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
    use std::{fs, os::unix::fs::MetadataExt, time::Duration};

    use super::*;

    fn ino(path: &str) -> u64 {
        fs::metadata(path).unwrap().ino()
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

    /// The namespace the agent's namespace thread stands in, once it is idle at home.
    fn thread_comes_home(home: u64) -> bool {
        for _ in 0..500 {
            for task in fs::read_dir("/proc/self/task").unwrap().flatten() {
                let comm = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
                if comm.trim() == "meshsteer-netns"
                    && fs::metadata(task.path().join("ns/net")).is_ok_and(|m| m.ino() == home)
                {
                    return true;
                }
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn runs_inside_the_namespace_and_goes_home_after() {
        let home = ino("/proc/self/ns/net");
        let ns = new_netns();
        let want = ns.metadata().unwrap().ino();
        for _ in 0..3 {
            let inside = in_netns(&ns, || ino("/proc/thread-self/ns/net")).unwrap();
            assert_eq!(inside, want);
            assert!(
                thread_comes_home(home),
                "the thread stayed in the pod's namespace"
            );
        }
    }

    #[test]
    fn a_file_that_is_no_namespace_is_an_error_and_the_thread_lives_on() {
        let not_ns = File::open("/proc/self/status").unwrap();
        assert!(in_netns(&not_ns, || ()).is_err());
        let ns = new_netns();
        assert!(in_netns(&ns, || ()).is_ok());
    }

    #[test]
    fn a_panic_inside_is_an_error_and_the_thread_goes_home_and_lives_on() {
        let home = ino("/proc/self/ns/net");
        let ns = new_netns();
        let e = in_netns(&ns, || panic!("inside")).unwrap_err();
        assert!(e.to_string().contains("panicked"), "{e}");
        assert!(
            thread_comes_home(home),
            "the thread stayed in the pod's namespace"
        );
        let want = ns.metadata().unwrap().ino();
        assert_eq!(
            in_netns(&ns, || ino("/proc/thread-self/ns/net")).unwrap(),
            want
        );
    }
}
