//! Steady connection attempts while something changes underneath (a proxy restarting, the
//! agent killed): `mst-probe connect` run back to back from one place until stopped.
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
};

use anyhow::Result;
use serde_json::Value;

use crate::cmd::{self, Place};
use crate::topology::probe_bin;

pub struct ConnectLoop {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Vec<Value>>>,
}

impl ConnectLoop {
    /// Starts connecting to `dst` from `place`, one connection after another.
    pub fn start(place: &Place<'_>, dst: &str) -> Self {
        // The thread outlives the borrow: it gets its own copy of the place.
        let netns: Option<PathBuf> = place.netns.map(Into::into);
        let cgroup: Option<PathBuf> = place.cgroup.map(Into::into);
        let (uid, gid, dst) = (place.uid, place.gid, dst.to_string());
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = thread::spawn(move || -> Result<Vec<Value>> {
            let place = Place {
                netns: netns.as_deref(),
                cgroup: cgroup.as_deref(),
                uid,
                gid,
            };
            let mut seen = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                let out = cmd::run(&place, probe_bin(), &["connect", &dst])?;
                seen.push(serde_json::from_slice(&out.stdout)?);
            }
            Ok(seen)
        });
        Self { stop, thread }
    }

    /// Stops after the connection in flight; what every connection met, in order.
    pub fn stop(self) -> Result<Vec<Value>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("connect loop thread")
    }
}
