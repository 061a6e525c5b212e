//! Each pod's own copy of the sk_lookup program. sk_lookup cannot ask which network namespace
//! it runs in, and looking the pod up by the connection's local address misses every address
//! the agent was not told of (link-local, secondary, added later), which PREROUTING captures.
//! So each pod's namespace gets a copy loaded with the pod's cgroup id (`SK_LOOKUP_POD`): the
//! same object, sharing every pinned map, its link pinned per pod (`netns.rs`).
use std::{
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
};

use anyhow::{Context, Result};
use aya::{EbpfLoader, programs::SkLookup};
use meshsteer_common::{
    globals::{self, NetnsOffsets, OwnerOffsets},
    maps::names,
};

use super::{object::OBJECT, pins::Pins};

/// Loads the copies; cheap to keep (paths and offsets only).
#[derive(Clone)]
pub struct SkLookupLoader {
    map_paths: Vec<(&'static str, PathBuf)>,
    owner: OwnerOffsets,
    netns: NetnsOffsets,
}

impl SkLookupLoader {
    /// Checks that this kernel takes the program (the copy for no pod, never attached).
    pub fn new(pins: &Pins, owner: OwnerOffsets, netns: NetnsOffsets) -> Result<Self> {
        let loader = Self {
            map_paths: names::PINNED.iter().map(|n| (*n, pins.map(n))).collect(),
            owner,
            netns,
        };
        loader.for_pod(0).context("loading sk_lookup (Linux 5.9)")?;
        Ok(loader)
    }

    /// The copy that serves `pod_cgroup`: only connections into its namespace ever run it.
    pub fn for_pod(&self, pod_cgroup: u64) -> Result<OwnedFd> {
        let mut loader = EbpfLoader::new();
        for (name, path) in &self.map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        loader
            .override_global(globals::OWNER_OFFSETS, &self.owner, true)
            .override_global(globals::NETNS_OFFSETS, &self.netns, true)
            .override_global(globals::SK_LOOKUP_POD, &pod_cgroup, true);
        let mut bpf = loader
            .load(OBJECT)
            .context("loading the eBPF object for the pod's sk_lookup")?;
        let p: &mut SkLookup = bpf
            .program_mut("ms_sk_lookup")
            .context("program ms_sk_lookup missing from the object")?
            .try_into()?;
        p.load().context("loading the pod's sk_lookup")?;
        // The fd outlives the object: the link made from it holds the program.
        Ok(p.fd()?.as_fd().try_clone_to_owned()?)
    }
}
