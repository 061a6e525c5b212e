//! How often the programs of the pinned links ran, from the kernel's own run statistics: the
//! benchmark's proof of what meshsteer costs the sockets it does not capture, and of what each
//! program costs the sockets it does.
use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::AsFd,
};

use anyhow::{Context, Result};

use super::{migrate::files_under, pins::Pins};
use crate::sys::bpf::{self as bpf_sys, ProgRuns};

/// The summed run count and run time of every distinct program behind a link pinned in
/// `pins` (cgroup programs, each pod's sk_lookup, sk_msg). Counted only while run statistics
/// are on ([`bpf_sys::enable_run_stats`]).
pub fn pinned_program_runs(pins: &Pins) -> Result<ProgRuns> {
    let mut total = ProgRuns::default();
    for runs in pinned_program_runs_by_name(pins)?.values() {
        total.run_cnt += runs.run_cnt;
        total.run_time_ns += runs.run_time_ns;
    }
    Ok(total)
}

/// As [`pinned_program_runs`], per program name (the kernel's, at most 15 bytes): the copies
/// of a program (each pod's sk_lookup) add up under one name.
pub fn pinned_program_runs_by_name(pins: &Pins) -> Result<BTreeMap<String, ProgRuns>> {
    let links = pins.root.join("links");
    let mut ids = BTreeSet::new();
    for pin in files_under(&links)? {
        let link = bpf_sys::obj_get(&pin).with_context(|| format!("opening {}", pin.display()))?;
        ids.insert(bpf_sys::link_prog_id(link.as_fd())?);
    }
    let mut by_name: BTreeMap<String, ProgRuns> = BTreeMap::new();
    for id in ids {
        let (name, runs) = bpf_sys::prog_name_runs(id).with_context(|| format!("program {id}"))?;
        let total = by_name.entry(name).or_default();
        total.run_cnt += runs.run_cnt;
        total.run_time_ns += runs.run_time_ns;
    }
    Ok(by_name)
}
