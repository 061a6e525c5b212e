//! aya `Pod` impls, so the agent can read and write these types in maps.
use crate::{
    Addr,
    maps::{
        CidrKey, ListenerKey, LocalKey, OrigDst, PodConfig, PodCounters, PortKey, SockState,
        TupleKey,
        trace::{TraceCtl, TraceEvent},
    },
};

// SAFETY: all are `#[repr(C)]`, `Copy`, made only of integers and byte arrays, with every
// padding byte an explicit field, so any bit pattern is valid and none is uninitialised.
unsafe impl aya::Pod for Addr {}
// SAFETY: as above.
unsafe impl aya::Pod for PodConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for PortKey {}
// SAFETY: as above.
unsafe impl aya::Pod for CidrKey {}
// SAFETY: as above.
unsafe impl aya::Pod for LocalKey {}
// SAFETY: as above.
unsafe impl aya::Pod for SockState {}
// SAFETY: as above.
unsafe impl aya::Pod for TupleKey {}
// SAFETY: as above.
unsafe impl aya::Pod for OrigDst {}
// SAFETY: as above.
unsafe impl aya::Pod for PodCounters {}
// SAFETY: as above.
unsafe impl aya::Pod for ListenerKey {}
// SAFETY: as above.
unsafe impl aya::Pod for TraceCtl {}
// SAFETY: as above.
unsafe impl aya::Pod for TraceEvent {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::maps::accel::AccelConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::maps::accel::AccelState {}
