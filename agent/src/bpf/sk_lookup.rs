//! Which pod each sk_lookup slot serves, and each pod's trampoline. sk_lookup cannot ask
//! which network namespace it runs in, and looking the pod up by the connection's local
//! address misses every address the agent was not told of (link-local, secondary, added
//! later), which PREROUTING captures. So each pod's namespace runs a trampoline for a slot
//! ([`super::trampoline`]), `MS_SK_LOOKUP_PODS` maps the slot to the pod, and the one shared
//! program (loaded with the object, [`super::load`]) decides. A trampoline costs a fraction of
//! a millisecond to load, once per slot and build: it is pinned with this build's programs
//! ([`super::prog_pins`]), and those of the first slots are loaded ahead, off the enrolment
//! path ([`super::preload`]).
use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsFd, OwnedFd},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, Map, MapData},
    programs::SkLookup,
};
use meshsteer_common::maps::{capacity, names};

use super::{
    pins::Pins,
    preload::{self, Preloader},
    prog_pins::{Prog, ProgPins},
    trampoline,
};
use crate::sys::bpf as bpf_sys;

/// The slots: which pod each serves.
pub struct SkLookups {
    /// `MS_SK_LOOKUP_PODS`.
    map: Array<MapData, u64>,
    /// Slot → pod cgroup id, as in the map (a previous agent's too).
    owners: BTreeMap<u32, u64>,
    /// The same, pod cgroup id → slot: looked up for each of 1,000 pods in a restart.
    slots: BTreeMap<u64, u32>,
    /// `MS_SK_LOOKUP_SLOT` and `MS_SK_LOOKUP_PROG`, which every trampoline names.
    slot_map: OwnedFd,
    prog_array: OwnedFd,
    /// Where this build's trampolines are pinned, by slot.
    progs: ProgPins,
    /// Slots 1 to this keep their trampolines pinned while free ([`preload`]).
    pool: u32,
    /// Loads the pool's trampolines; stopped on drop.
    _preload: Preloader,
}

impl SkLookups {
    /// The slots as pinned (a previous agent's pods keep theirs), with the trampolines of the
    /// first [`preload::pool_size`]`(max_pods)` loading in the background.
    pub fn new(pins: &Pins, progs: ProgPins, max_pods: u32) -> Result<Self> {
        let map: Array<MapData, u64> = pins.open_map(names::SK_LOOKUP_PODS)?.try_into()?;
        let open = |name| {
            bpf_sys::obj_get(&pins.map(name))
                .with_context(|| format!("opening {}", pins.map(name).display()))
        };
        let mut owners = BTreeMap::new();
        for slot in 1..capacity::SK_LOOKUP_SLOTS {
            match map.get(&slot, 0) {
                Ok(0) => {}
                Ok(pod) => {
                    owners.insert(slot, pod);
                }
                Err(e) => return Err(e).context("reading MS_SK_LOOKUP_PODS"),
            }
        }
        let slots = owners.iter().map(|(s, c)| (*c, *s)).collect();
        let (slot_map, prog_array) = (open(names::SK_LOOKUP_SLOT)?, open(names::SK_LOOKUP_PROG)?);
        let pool = preload::pool_size(max_pods);
        let preload = Preloader::start(progs.clone(), &slot_map, &prog_array, pool)?;
        Ok(Self {
            map,
            owners,
            slots,
            slot_map,
            prog_array,
            progs,
            pool,
            _preload: preload,
        })
    }

    /// The trampoline of `cgroup_id`'s slot (this build's, pinned, or loaded now): the slot it
    /// has (since it was adopted or assigned), or a free one, now mapped to it.
    pub fn program_for(&mut self, cgroup_id: u64) -> Result<Prog> {
        let slot = match self.slot_of(cgroup_id) {
            Some(slot) => slot,
            None => {
                let Some(slot) = self.free_slots().next() else {
                    bail!(
                        "every sk_lookup slot is taken ({} pods with inbound capture)",
                        capacity::SK_LOOKUP_SLOTS - 1
                    );
                };
                self.map
                    .set(slot, cgroup_id, 0)
                    .context("writing MS_SK_LOOKUP_PODS")?;
                self.owners.insert(slot, cgroup_id);
                self.slots.insert(cgroup_id, slot);
                slot
            }
        };
        let (slots, array) = (self.slot_map.as_fd(), self.prog_array.as_fd());
        self.progs
            .trampoline(slot, || trampoline::load(slot, slots, array))
    }

    /// `cgroup_id`'s slot is free again (its link is gone), and its trampoline's pin goes
    /// unless the slot is in the pool. Every slot mapped to it, should a previous agent have
    /// left more than one.
    pub fn release(&mut self, cgroup_id: u64) {
        self.slots.remove(&cgroup_id);
        let theirs: Vec<u32> = self
            .owners
            .iter()
            .filter(|(_, c)| **c == cgroup_id)
            .map(|(s, _)| *s)
            .collect();
        for slot in theirs {
            let _ = self.map.set(slot, 0, 0);
            self.owners.remove(&slot);
            if slot > self.pool {
                self.progs.forget_trampoline(slot);
            }
        }
    }

    /// Frees the slots of pods not in `keep`.
    pub fn retain(&mut self, keep: &BTreeSet<u64>) {
        let gone: Vec<u64> = self
            .owners
            .values()
            .copied()
            .filter(|c| !keep.contains(c))
            .collect();
        for c in gone {
            self.release(c);
        }
        // And any a killed agent pinned for a slot it never gave out, outside the pool.
        self.progs
            .forget_trampolines(|s| s <= self.pool || self.owners.contains_key(&s));
    }

    fn slot_of(&self, cgroup_id: u64) -> Option<u32> {
        self.slots.get(&cgroup_id).copied()
    }

    fn free_slots(&self) -> impl Iterator<Item = u32> + '_ {
        (1..capacity::SK_LOOKUP_SLOTS).filter(|s| !self.owners.contains_key(s))
    }
}

/// Loads the shared `ms_sk_lookup` of the object and puts it in `MS_SK_LOOKUP_PROG`: from
/// this update on, every pod's trampoline runs it (a restarted agent's swap for all pods at
/// once; a trampoline never finds the array empty).
pub fn load_shared(bpf: &mut Ebpf, progs: &ProgPins) -> Result<()> {
    let prog = progs.get_or_load("ms_sk_lookup", || {
        let p: &mut SkLookup = bpf
            .program_mut("ms_sk_lookup")
            .context("program ms_sk_lookup missing from the object")?
            .try_into()?;
        p.load().context("loading sk_lookup (Linux 5.9)")?;
        Ok(p.fd()?.as_fd().try_clone_to_owned()?)
    })?;
    let array = bpf
        .map(names::SK_LOOKUP_PROG)
        .with_context(|| format!("map {} missing from the object", names::SK_LOOKUP_PROG))?;
    let Map::ProgramArray(array) = array else {
        bail!("{} is not a program array", names::SK_LOOKUP_PROG);
    };
    bpf_sys::prog_array_set(array.fd().as_fd(), 0, prog.fd.as_fd())
        .with_context(|| format!("setting {}", names::SK_LOOKUP_PROG))?;
    Ok(())
}
