//! `MS_PORTS`: every pod's port sets in one hash map.

/// Which port set a [`PortKey`] belongs to.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortSet {
    /// `-o`: outbound ports never captured.
    OutExclude = 1,
    /// `-q`: outbound ports always captured.
    OutInclude = 2,
    /// `-d`: inbound ports not captured when `-b '*'`.
    InExclude = 3,
    /// `-b` list: the only inbound ports captured.
    InInclude = 4,
}

/// `MS_PORTS` key (value: `u8` 1). Port in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub pod_id: u32,
    pub port: u16,
    pub set: u8,
    pub _pad: u8,
}
plain_data!(PortKey);

impl PortKey {
    pub const fn new(pod_id: u32, set: PortSet, port: u16) -> Self {
        Self {
            pod_id,
            port,
            set: set as u8,
            _pad: 0,
        }
    }
}
