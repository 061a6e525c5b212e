//! What the privileged tests and the benchmark may read of the agent: a small, stable facade,
//! so that they don't reach into internal modules.
pub use crate::{
    bpf::{
        accel::{open_sockets, pending_count},
        features::kernel_release,
        maps::PodMaps,
        pins::Pins,
        preload::pool_size as preloaded_trampolines,
        run_stats::{pinned_program_runs, pinned_program_runs_by_name},
        trace::current_lease,
    },
    host::cgroup::{cgroup_id, cgroup2_mount},
    spec::istio::{Capture, Cidr, INJECTOR_DEFAULT_ARGS, Ports, Ranges},
    sys::bpf::{
        AttachType, CgroupLinkInfo, ProgRuns, cgroup_link_info, cgroup_links, enable_run_stats,
        link_create, link_prog_id, netns_links, obj_get, prog_array_entry, prog_by_id, prog_id,
    },
};
