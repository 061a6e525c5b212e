//! A pod's sk_lookup trampoline: sixteen instructions that write the pod's slot to the per-CPU
//! `MS_SK_LOOKUP_SLOT` and tail-call the one shared `ms_sk_lookup` in `MS_SK_LOOKUP_PROG`.
//! sk_lookup cannot ask which network namespace it runs in, so something per namespace must
//! say which pod it is: this, verified in microseconds, instead of a copy of the whole program
//! per pod (10 to 20 ms each: aya parses the object, the verifier walks the program).
//!
//! Written as instructions because aya loads programs only from an object file, and an object
//! per slot is what this replaces.
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use anyhow::{Context, Result};

use crate::sys::bpf::{self as bpf_sys, AttachType, Insn, ProgType};

/// The kernel's name for every trampoline: run statistics add them up under it.
pub const NAME: &str = "ms_sk_lookup";

// Opcodes (include/uapi/linux/bpf.h), as class | size-or-source | operation.
const MOV64_REG: u8 = 0x07 | 0x08 | 0xb0; // BPF_ALU64 | BPF_X | BPF_MOV
const MOV64_IMM: u8 = 0x07 | 0xb0; // BPF_ALU64 | BPF_K | BPF_MOV
const ADD64_IMM: u8 = 0x07; // BPF_ALU64 | BPF_K | BPF_ADD
const STORE_W_IMM: u8 = 0x02 | 0x60; // BPF_ST | BPF_MEM | BPF_W
const LOAD_IMM64: u8 = 0x18; // BPF_LD (0) | BPF_IMM | BPF_DW
const JEQ_IMM: u8 = 0x05 | 0x10; // BPF_JMP | BPF_K | BPF_JEQ
const CALL: u8 = 0x05 | 0x80; // BPF_JMP | BPF_CALL
const EXIT: u8 = 0x05 | 0x90; // BPF_JMP | BPF_EXIT
const PSEUDO_MAP_FD: u8 = 1;
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_TAIL_CALL: i32 = 12;
/// What the trampoline returns if the tail call fails (no shared program in the array, which
/// the agent sets before attaching any trampoline): fail closed, nothing reaches the app.
const SK_DROP: i32 = 0;

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// `r[dst] = map` (two instructions; the kernel swaps the fd for the map).
fn load_map(dst: u8, map: RawFd) -> [Insn; 2] {
    [
        insn(LOAD_IMM64, dst, PSEUDO_MAP_FD, 0, map),
        insn(0, 0, 0, 0, 0),
    ]
}

/// The instructions of `slot`'s trampoline, with `slots` (`MS_SK_LOOKUP_SLOT`) and `prog`
/// (`MS_SK_LOOKUP_PROG`) as fds open while it is loaded.
fn program(slot: u32, slots: RawFd, prog: RawFd) -> Result<Vec<Insn>> {
    let slot = i32::try_from(slot).context("sk_lookup slot out of range")?;
    let mut p = vec![
        insn(MOV64_REG, 6, 1, 0, 0),     // r6 = ctx
        insn(STORE_W_IMM, 10, 0, -4, 0), // key = 0, on the stack
        insn(MOV64_REG, 2, 10, 0, 0),    // r2 = &key
        insn(ADD64_IMM, 2, 0, 0, -4),
    ];
    p.extend(load_map(1, slots)); // r1 = MS_SK_LOOKUP_SLOT
    p.extend([
        insn(CALL, 0, 0, 0, HELPER_MAP_LOOKUP_ELEM), // r0 = this CPU's entry
        insn(JEQ_IMM, 0, 0, 6, 0),                   // none: to the drop below
        insn(STORE_W_IMM, 0, 0, 0, slot),            // *r0 = slot
        insn(MOV64_REG, 1, 6, 0, 0),                 // r1 = ctx
    ]);
    p.extend(load_map(2, prog)); // r2 = MS_SK_LOOKUP_PROG
    p.extend([
        insn(MOV64_IMM, 3, 0, 0, 0),           // index 0
        insn(CALL, 0, 0, 0, HELPER_TAIL_CALL), // does not return if it jumps
        insn(MOV64_IMM, 0, 0, 0, SK_DROP),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    Ok(p)
}

/// Loads `slot`'s trampoline.
pub fn load(slot: u32, slots: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> Result<OwnedFd> {
    let insns = program(slot, slots.as_raw_fd(), prog.as_raw_fd())?;
    bpf_sys::prog_load(ProgType::SkLookup, AttachType::SkLookup, NAME, &insns)
        .with_context(|| format!("loading the sk_lookup trampoline of slot {slot}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The jump over the slot store lands on the drop: counted by hand, and nothing but the
    /// verifier would notice a wrong count.
    #[test]
    fn the_null_check_jumps_to_the_drop() {
        let p = program(7, 1000, 1001).unwrap();
        let jeq = p.iter().position(|i| i.code == JEQ_IMM).unwrap();
        let target = jeq + 1 + p[jeq].off as usize;
        assert_eq!(p[target], insn(MOV64_IMM, 0, 0, 0, SK_DROP));
        assert_eq!(p[target + 1].code, EXIT);
        assert_eq!(p.len(), 16);
        assert!(p.contains(&insn(STORE_W_IMM, 0, 0, 0, 7)));
        assert!(p.contains(&insn(LOAD_IMM64, 1, PSEUDO_MAP_FD, 0, 1000)));
        assert!(p.contains(&insn(LOAD_IMM64, 2, PSEUDO_MAP_FD, 0, 1001)));
    }
}
