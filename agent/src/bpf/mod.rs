//! The eBPF side, from user space: loading the object ([`load`]), each pod's cgroup links
//! ([`cgroup_links`]), the pin layout
//! ([`pins`]), the upgrade from the previous layout's pins ([`migrate`]), the per-pod map
//! writes ([`maps`]), counters, sk_lookup's slots ([`sk_lookup`]), each pod's trampoline
//! ([`trampoline`], loaded ahead by [`preload`]) and its link ([`netns`]), the trace lease, acceleration, and the kernel feature probes.
pub mod accel;
pub mod btf;
pub mod cgroup_links;
pub mod counters;
pub mod features;
pub mod load;
pub mod lock;
pub mod maps;
pub mod migrate;
pub mod netns;
pub mod netns_offsets;
pub mod object;
pub mod owner;
pub mod pins;
pub mod preload;
pub mod prog_pins;
pub mod run_stats;
pub mod sk_lookup;
pub mod trace;
pub mod trampoline;
