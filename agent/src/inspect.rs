//! What the privileged tests and the benchmark may read of the agent: a small, stable facade,
//! so that they don't reach into internal modules (which move as the crate is reorganised).
pub use crate::{
    accel::open_sockets,
    bpf_sys::{CgroupLinkInfo, cgroup_link_info, netns_links, obj_get},
    datapath::Pins,
    features::kernel_release,
    host::{cgroup_id, cgroup2_mount},
    istio::{Capture, Cidr, INJECTOR_DEFAULT_ARGS, Ports, Ranges},
    podmaps::PodMaps,
    trace::current_lease,
};
