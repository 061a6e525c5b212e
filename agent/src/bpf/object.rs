//! The eBPF object, built by build.rs from `ebpf/` (the same build as `cargo xtask
//! build-ebpf`): loaded once for the node-wide programs and once per pod for its sk_lookup.
pub static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/meshsteer.bpf.o"));
