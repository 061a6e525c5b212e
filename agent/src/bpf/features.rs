//! Kernel feature probes, run before anything is loaded: a missing feature is reported by
//! name with the first kernel version that has it, instead of as a verifier log.
use std::path::Path;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};

#[derive(Debug, thiserror::Error)]
pub enum Missing {
    #[error("the kernel lacks {feature} (needs Linux {since} or later); running {running}")]
    Feature {
        feature: &'static str,
        since: &'static str,
        running: String,
    },
    /// The probe itself was refused (EPERM without CAP_BPF/CAP_NET_ADMIN, a seccomp filter):
    /// that says nothing of the kernel, so it must not read as a missing feature.
    #[error(
        "could not probe the kernel for {feature}: {error}; the agent needs CAP_BPF, \
         CAP_PERFMON and CAP_NET_ADMIN (see deploy/daemonset.yaml), and bpf() allowed by seccomp"
    )]
    Refused {
        feature: &'static str,
        error: String,
    },
}

enum Probe {
    Program(ProgramType),
    Map(MapType),
    Helper(ProgramType, BpfHelper),
    File(&'static str),
}

/// Everything the datapath uses, in the order a kernel gained it.
const REQUIRED: &[(&str, &str, Probe)] = &[
    ("BPF LPM trie maps", "4.11", Probe::Map(MapType::LpmTrie)),
    (
        "sockops programs",
        "4.13",
        Probe::Program(ProgramType::SockOps),
    ),
    ("LRU hash maps", "4.10", Probe::Map(MapType::LruHash)),
    (
        "cgroup sock_addr programs (connect4/6)",
        "4.17",
        Probe::Program(ProgramType::CgroupSockAddr),
    ),
    (
        "cgroup sock programs (sock_create)",
        "4.10",
        Probe::Program(ProgramType::CgroupSock),
    ),
    (
        "bpf_bind() in connect hooks",
        "4.17",
        Probe::Helper(ProgramType::CgroupSockAddr, BpfHelper::BPF_FUNC_bind),
    ),
    ("sockhash maps", "4.18", Probe::Map(MapType::SockHash)),
    (
        "sk_lookup programs (inbound capture)",
        "5.9",
        Probe::Program(ProgramType::SkLookup),
    ),
    (
        "socket-local storage maps",
        "5.2",
        Probe::Map(MapType::SkStorage),
    ),
    (
        "cgroup sockopt programs (getsockopt)",
        "5.3",
        Probe::Program(ProgramType::CgroupSockopt),
    ),
    (
        "kernel BTF (/sys/kernel/btf/vmlinux)",
        "5.4",
        Probe::File("/sys/kernel/btf/vmlinux"),
    ),
    (
        "bpf_get_current_ancestor_cgroup_id() in cgroup hooks",
        "5.7",
        Probe::Helper(
            ProgramType::CgroupSockAddr,
            BpfHelper::BPF_FUNC_get_current_ancestor_cgroup_id,
        ),
    ),
    (
        "socket storage from cgroup/sock_create",
        "5.10",
        Probe::Helper(ProgramType::CgroupSock, BpfHelper::BPF_FUNC_sk_storage_get),
    ),
    (
        "bpf_get_netns_cookie() in sockops",
        "5.15",
        Probe::Helper(ProgramType::SockOps, BpfHelper::BPF_FUNC_get_netns_cookie),
    ),
    (
        "bpf_get_netns_cookie() in cgroup/getsockopt",
        "5.15",
        Probe::Helper(
            ProgramType::CgroupSockopt,
            BpfHelper::BPF_FUNC_get_netns_cookie,
        ),
    ),
];

/// Fails on the first missing feature. Attach-time features (bpf_link for cgroups: 5.7;
/// getpeername hooks: 5.8) are reported by the loader when the attach itself fails.
pub fn check() -> Result<(), Missing> {
    for (feature, since, probe) in REQUIRED {
        let refused = |error: String| Missing::Refused { feature, error };
        let present = match probe {
            Probe::Program(t) => is_program_supported(*t).map_err(|e| refused(chain(&e)))?,
            Probe::Map(t) => is_map_supported(*t).map_err(|e| refused(chain(&e)))?,
            Probe::Helper(t, h) => is_helper_supported(*t, *h).unwrap_or(false),
            Probe::File(p) => Path::new(p).exists(),
        };
        if !present {
            return Err(Missing::Feature {
                feature,
                since,
                running: kernel_release(),
            });
        }
    }
    Ok(())
}

/// An error and its sources, as one line (aya's errors keep the errno in their source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "an unknown kernel".into())
}
