//! Each pod's copy of the sk_lookup program. sk_lookup cannot ask which network namespace it
//! runs in, and looking the pod up by the connection's local address misses every address the
//! agent was not told of (link-local, secondary, added later), which PREROUTING captures. So
//! each pod's namespace runs a copy loaded for a slot (`SK_LOOKUP_SLOT`), and
//! `MS_SK_LOOKUP_PODS` maps the slot to the pod: the same object, sharing every pinned map, its
//! link pinned per pod (`netns.rs`).
//!
//! Copies are kept per slot and reused by the next pod of a freed slot, and one spare is loaded
//! ahead while the agent is idle: enrolment itself loads nothing. All copies come from one
//! loader: aya parses the kernel's BTF when a loader is made (10 to 20 ms), not for each load.
//!
//! A copy costs 10 to 20 ms (aya parses the whole object, the verifier checks the program), so
//! a restarted agent does not load its pods' copies again: a pod's link that runs a copy of
//! this very program for the pod's slot (same instructions, same pinned maps, same read-only
//! data) is kept as it is ([`SkLookups::adopt`]), and its program serves the slot from then on.
use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use aya::{
    EbpfLoader,
    maps::{Array, MapData},
    programs::SkLookup,
};
use meshsteer_common::{
    globals::{self, NetnsOffsets, OwnerOffsets},
    maps::{capacity, names},
};
use tracing::{debug, warn};

use super::{object::OBJECT, pins::Pins};
use crate::sys::bpf::{self as bpf_sys, ProgCode};

/// Every slot number, for the loader to borrow for as long as it lives.
static SLOTS: [u32; capacity::SK_LOOKUP_SLOTS as usize] = {
    let mut slots = [0; capacity::SK_LOOKUP_SLOTS as usize];
    let mut i = 0;
    while i < slots.len() {
        slots[i] = i as u32;
        i += 1;
    }
    slots
};

/// Loads the copies, all through one aya loader (the kernel's BTF parsed once).
#[derive(Clone)]
pub struct SkLookupLoader {
    loader: Arc<Mutex<EbpfLoader<'static>>>,
    /// How a copy of this build looks to the kernel; None where it cannot be read back (the
    /// by-id calls need CAP_SYS_ADMIN): a restart then loads every pod's copy again.
    own: Option<Arc<Fingerprint>>,
}

/// A loaded copy of this agent's sk_lookup, as the kernel shows it: enough to recognise one
/// that a previous agent of the same build attached.
struct Fingerprint {
    /// The instructions' tag (the kernel zeroes map references before hashing: equal for every
    /// copy).
    tag: [u8; 8],
    /// The pinned maps a copy uses (ids).
    shared_maps: BTreeSet<u32>,
    /// Every pinned map's id: a copy's other maps are its own (`.rodata` and the like).
    pinned: BTreeSet<u32>,
    /// The `.rodata` of slot 0's copy: the agent's offsets, the slot at `slot_at`.
    rodata: Vec<u8>,
    slot_at: usize,
}

impl Fingerprint {
    fn of(prog: BorrowedFd<'_>, pins: &Pins) -> Result<Self> {
        let mut pinned = BTreeSet::new();
        for name in names::PINNED {
            let map = bpf_sys::obj_get(&pins.map(name))
                .with_context(|| format!("opening {}", pins.map(name).display()))?;
            pinned.insert(bpf_sys::map_id(map.as_fd())?);
        }
        let code = bpf_sys::prog_code(prog).context("reading the sk_lookup program's info")?;
        let shared_maps = shared(&code, &pinned);
        let rodata = rodata(&code, &pinned)?.context("the sk_lookup program has no .rodata map")?;
        let slot_at = slot_offset(OBJECT)?;
        anyhow::ensure!(
            slot_at + 4 <= rodata.len(),
            "{} lies outside .rodata",
            globals::SK_LOOKUP_SLOT
        );
        Ok(Self {
            tag: code.tag,
            shared_maps,
            pinned,
            rodata,
            slot_at,
        })
    }

    /// Whether `prog` is a copy of this build's sk_lookup loaded for `slot`.
    fn matches(&self, prog: BorrowedFd<'_>, slot: u32) -> Result<bool> {
        let code = bpf_sys::prog_code(prog)?;
        if code.tag != self.tag || shared(&code, &self.pinned) != self.shared_maps {
            return Ok(false);
        }
        let mut want = self.rodata.clone();
        want[self.slot_at..self.slot_at + 4].copy_from_slice(&slot.to_le_bytes());
        Ok(rodata(&code, &self.pinned)?.is_some_and(|have| have == want))
    }
}

/// The pinned maps among a program's maps.
fn shared(code: &ProgCode, pinned: &BTreeSet<u32>) -> BTreeSet<u32> {
    code.map_ids
        .iter()
        .copied()
        .filter(|id| pinned.contains(id))
        .collect()
}

/// The contents of a program's `.rodata` map (aya names it after its section): one of its own
/// maps, so the pinned ones are not opened to be asked.
fn rodata(code: &ProgCode, pinned: &BTreeSet<u32>) -> Result<Option<Vec<u8>>> {
    for id in code.map_ids.iter().filter(|id| !pinned.contains(id)) {
        let (map, name, value_size) = bpf_sys::map_by_id(*id)?;
        if name == ".rodata" {
            return Ok(Some(bpf_sys::array_first_value(map.as_fd(), value_size)?));
        }
    }
    Ok(None)
}

/// Where `SK_LOOKUP_SLOT` sits in the object's `.rodata` (a symbol's value is its offset in
/// its section, in a relocatable object). aya does not say.
fn slot_offset(elf: &[u8]) -> Result<usize> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    let file = object::File::parse(elf).context("parsing the eBPF object")?;
    let symbol = file
        .symbols()
        .find(|s| s.name() == Ok(globals::SK_LOOKUP_SLOT))
        .with_context(|| format!("{} missing from the eBPF object", globals::SK_LOOKUP_SLOT))?;
    let section = symbol
        .section_index()
        .and_then(|i| file.section_by_index(i).ok())
        .with_context(|| format!("{} has no section", globals::SK_LOOKUP_SLOT))?;
    anyhow::ensure!(
        section.name() == Ok(".rodata"),
        "{} is not in .rodata",
        globals::SK_LOOKUP_SLOT
    );
    usize::try_from(symbol.address()).context("symbol offset")
}

impl SkLookupLoader {
    /// Checks that this kernel takes the program (the copy of slot 0, never attached).
    pub fn new(pins: &Pins, owner: OwnerOffsets, netns: NetnsOffsets) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        for name in names::PINNED {
            loader.map_pin_path(name, pins.map(name));
        }
        // Borrowed by the loader for the agent's lifetime: made once per agent.
        let offsets: &'static (OwnerOffsets, NetnsOffsets) = Box::leak(Box::new((owner, netns)));
        loader
            .override_global(globals::OWNER_OFFSETS, &offsets.0, true)
            .override_global(globals::NETNS_OFFSETS, &offsets.1, true);
        let loader = Arc::new(Mutex::new(loader));
        let probe = Self::load_for(&loader, 0).context("loading sk_lookup (Linux 5.9)")?;
        let own = match Fingerprint::of(probe.as_fd(), pins) {
            Ok(own) => Some(Arc::new(own)),
            Err(e) => {
                warn!(
                    error = %format!("{e:#}"),
                    "cannot read back a copy of sk_lookup (reading programs and maps by id needs \
                     CAP_SYS_ADMIN): a restart will load every pod's copy again"
                );
                None
            }
        };
        Ok(Self { loader, own })
    }

    /// The copy that serves whichever pod `MS_SK_LOOKUP_PODS` maps `slot` to.
    fn for_slot(&self, slot: u32) -> Result<OwnedFd> {
        Self::load_for(&self.loader, slot)
    }

    fn load_for(loader: &Mutex<EbpfLoader<'static>>, slot: u32) -> Result<OwnedFd> {
        let slot = SLOTS
            .get(slot as usize)
            .with_context(|| format!("sk_lookup slot {slot} out of range"))?;
        // A panic while loading leaves nothing half-set that the next load relies on.
        let mut loader = loader.lock().unwrap_or_else(PoisonError::into_inner);
        let mut bpf = loader
            .override_global(globals::SK_LOOKUP_SLOT, slot, true)
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

/// The slots: which pod each serves, and the copies loaded so far.
pub struct SkLookups {
    loader: SkLookupLoader,
    /// `MS_SK_LOOKUP_PODS`.
    map: Array<MapData, u64>,
    /// Slot → pod cgroup id, as in the map (a previous agent's too).
    owners: BTreeMap<u32, u64>,
    /// Copies loaded by this agent, by slot.
    programs: BTreeMap<u32, OwnedFd>,
}

/// Copies loaded ahead for slots no pod has yet.
const SPARES: usize = 1;

impl SkLookups {
    /// The slots as pinned (a previous agent's pods keep theirs).
    pub fn new(loader: SkLookupLoader, pins: &Pins) -> Result<Self> {
        let map: Array<MapData, u64> = pins.open_map(names::SK_LOOKUP_PODS)?.try_into()?;
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
        Ok(Self {
            loader,
            map,
            owners,
            programs: BTreeMap::new(),
        })
    }

    /// The copy serving `cgroup_id`: its slot's (kept since it was adopted or assigned), or a
    /// free slot's, now mapped to it.
    pub fn program_for(&mut self, cgroup_id: u64) -> Result<BorrowedFd<'_>> {
        let slot = match self.slot_of(cgroup_id) {
            Some(slot) => slot,
            None => {
                // A free slot whose copy is loaded already (see `warm`), else any.
                let loaded = self.free_slots().find(|s| self.programs.contains_key(s));
                let Some(slot) = loaded.or_else(|| self.free_slots().next()) else {
                    bail!(
                        "every sk_lookup slot is taken ({} pods with inbound capture)",
                        capacity::SK_LOOKUP_SLOTS - 1
                    );
                };
                self.map
                    .set(slot, cgroup_id, 0)
                    .context("writing MS_SK_LOOKUP_PODS")?;
                self.owners.insert(slot, cgroup_id);
                slot
            }
        };
        self.load(slot)?;
        Ok(self.programs[&slot].as_fd())
    }

    /// Keeps the program of the pod's pinned `link` as its slot's copy if it is one: a previous
    /// agent of this build loaded it for the slot `MS_SK_LOOKUP_PODS` gives the pod. Then the
    /// link stays as it is and nothing is loaded. False if the pod has no slot yet, if this agent
    /// has a copy for the slot already, or if the program is anything else (another build's,
    /// another slot's): the caller loads and swaps in a copy as usual.
    pub fn adopt(&mut self, cgroup_id: u64, link: BorrowedFd<'_>) -> bool {
        let Some(slot) = self.slot_of(cgroup_id) else {
            return false;
        };
        if self.programs.contains_key(&slot) {
            return false;
        }
        let Some(own) = &self.loader.own else {
            return false;
        };
        let adopted = bpf_sys::link_prog_id(link)
            .and_then(bpf_sys::prog_by_id)
            .map_err(anyhow::Error::from)
            .and_then(|prog| Ok((own.matches(prog.as_fd(), slot)?, prog)));
        match adopted {
            Ok((true, prog)) => {
                self.programs.insert(slot, prog);
                true
            }
            Ok((false, _)) => false,
            Err(e) => {
                debug!(error = %format!("{e:#}"), slot, "could not read the pod's sk_lookup program");
                false
            }
        }
    }

    /// `cgroup_id`'s slot is free again (its link is gone).
    pub fn release(&mut self, cgroup_id: u64) {
        if let Some(slot) = self.slot_of(cgroup_id) {
            let _ = self.map.set(slot, 0, 0);
            self.owners.remove(&slot);
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
    }

    /// Loads a copy ahead for the next free slot, if none is ready: the next enrolment then
    /// loads nothing. At most one load per call.
    pub fn warm(&mut self) {
        let ready = self
            .free_slots()
            .filter(|s| self.programs.contains_key(s))
            .count();
        if ready >= SPARES {
            return;
        }
        let next = self.free_slots().find(|s| !self.programs.contains_key(s));
        if let Some(slot) = next
            && let Err(e) = self.load(slot)
        {
            debug!(error = %format!("{e:#}"), slot, "could not load a spare sk_lookup copy");
        }
    }

    fn slot_of(&self, cgroup_id: u64) -> Option<u32> {
        self.owners
            .iter()
            .find(|(_, c)| **c == cgroup_id)
            .map(|(s, _)| *s)
    }

    fn free_slots(&self) -> impl Iterator<Item = u32> + '_ {
        (1..capacity::SK_LOOKUP_SLOTS).filter(|s| !self.owners.contains_key(s))
    }

    fn load(&mut self, slot: u32) -> Result<()> {
        if !self.programs.contains_key(&slot) {
            let started = Instant::now();
            let fd = self.loader.for_slot(slot)?;
            debug!(
                slot,
                micros = started.elapsed().as_micros(),
                "loaded a copy of sk_lookup"
            );
            self.programs.insert(slot, fd);
        }
        Ok(())
    }
}
