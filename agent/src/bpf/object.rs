//! The eBPF object, built by build.rs from `ebpf/` (the same build as `cargo xtask
//! build-ebpf`): loaded once, at start.
pub static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/meshsteer.bpf.o"));
