//! `MS_POD_LIVE`: what each pod holds right now in maps the datapath writes, against its budget.

/// `MS_POD_LIVE` value, keyed by pod cgroup id. Created by the agent at enrolment (never reset
/// while the pod lives), updated by the datapath with atomic adds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PodLive {
    /// The pod's live entries in `MS_ORIG_DST`. Signed: entries of a pod re-enrolled under
    /// the same cgroup while its connections lived are freed against the new count, which may
    /// then go below zero (and so never block the pod).
    pub orig_dst: i64,
    /// Its budget: a redirected connect() finding `orig_dst` at this fails (EPERM).
    pub orig_dst_limit: i64,
}
plain_data!(PodLive);
