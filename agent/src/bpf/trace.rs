//! The trace lease in `MS_TRACE_CTL`: while a `meshsteer trace` holds it, the datapath writes
//! one record per decision to the `MS_TRACE` ring buffer. One trace at a time, as a ring
//! buffer has a single reader; a trace that dies without giving the lease back costs the
//! datapath nothing once it runs out ([`LEASE_NS`]).
use std::path::Path;

use anyhow::{Context, Result, bail};
use aya::maps::{Array, MapData};
use meshsteer_common::maps::{
    names,
    trace::{LEASE_NS, TraceCtl},
};

use super::pins::Pins;
use crate::sys::clock::monotonic_ns;

/// The lease state in the pins (tests: is tracing off after a trace stopped?).
pub fn current_lease(pins: &Pins) -> Result<TraceCtl> {
    let ctl: Array<MapData, TraceCtl> = pins.open_map(names::TRACE_CTL)?.try_into()?;
    Ok(ctl.get(&0, 0)?)
}

/// This process's lease on tracing; given back on drop.
pub struct Lease {
    ctl: Array<MapData, TraceCtl>,
    pid: u32,
    /// When it was taken: older records in the ring are a previous trace's leftovers.
    pub since_ns: u64,
}

impl Lease {
    pub fn acquire(pins: &Pins) -> Result<Self> {
        let ctl: Array<MapData, TraceCtl> = pins.open_map(names::TRACE_CTL)?.try_into()?;
        let pid = std::process::id();
        let now = monotonic_ns();
        let held = ctl.get(&0, 0).context("reading MS_TRACE_CTL")?;
        if let Some(other) = other_holder(&held, now, pid, pid_alive) {
            bail!(
                "another `meshsteer trace` (pid {other}) is running: one trace at a time, as \
                 the ring buffer has a single reader"
            );
        }
        let mut lease = Self {
            ctl,
            pid,
            since_ns: now,
        };
        lease.renew()?;
        Ok(lease)
    }

    pub fn renew(&mut self) -> Result<()> {
        let ctl = TraceCtl {
            deadline_ns: monotonic_ns() + LEASE_NS,
            owner_pid: self.pid,
            _pad: 0,
        };
        self.ctl
            .set(0, ctl, 0)
            .context("renewing the trace lease in MS_TRACE_CTL")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Only our own lease: a trace that took over after ours expired keeps its own.
        if self.ctl.get(&0, 0).is_ok_and(|c| c.owner_pid == self.pid) {
            let _ = self.ctl.set(0, TraceCtl::default(), 0);
        }
    }
}

/// The pid of another live trace holding an unexpired lease, if any.
fn other_holder(held: &TraceCtl, now_ns: u64, me: u32, alive: impl Fn(u32) -> bool) -> Option<u32> {
    let live = held.deadline_ns > now_ns && held.owner_pid != me && alive(held.owner_pid);
    live.then_some(held.owner_pid)
}

fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_holders() {
        let held = TraceCtl {
            deadline_ns: 100,
            owner_pid: 7,
            _pad: 0,
        };
        assert_eq!(other_holder(&held, 50, 1, |_| true), Some(7));
        assert_eq!(other_holder(&held, 50, 7, |_| true), None, "our own");
        assert_eq!(other_holder(&held, 150, 1, |_| true), None, "expired");
        assert_eq!(other_holder(&held, 50, 1, |_| false), None, "holder died");
        assert_eq!(other_holder(&TraceCtl::default(), 50, 1, |_| true), None);
    }
}
