//! The pods' address sets: CIDR tries and the addresses inside each pod.
use crate::Addr;

/// Data part of the LPM keys of `MS_CIDR_EXCLUDE` / `MS_CIDR_INCLUDE` (value: `u8` 1).
/// The pod id comes first, big-endian, so the prefix length is `32 + bits`: one trie serves
/// every pod and a lookup is O(address bits) whatever the number of CIDRs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CidrKey {
    pub pod_id_be: [u8; 4],
    pub addr: Addr,
}
plain_data!(CidrKey);

impl CidrKey {
    /// Bits of the key that are the pod id.
    pub const POD_BITS: u32 = 32;

    pub const fn new(pod_id: u32, addr: Addr) -> Self {
        Self {
            pod_id_be: pod_id.to_be_bytes(),
            addr,
        }
    }

    /// LPM prefix length for a CIDR of `bits` on `addr`'s family (IPv4 is mapped: +96).
    pub const fn prefix_len(addr: &Addr, bits: u8) -> u32 {
        let family_bits = if addr.is_ipv4() { 96 } else { 0 };
        Self::POD_BITS + family_bits + bits as u32
    }

    /// Prefix length for an exact lookup of one address.
    pub const FULL: u32 = Self::POD_BITS + 128;
}

/// `MS_LOCAL_ADDRS` key (value: `u8` 1): addresses assigned inside the pod's network namespace
/// (besides loopback), i.e. destinations that iptables sees leaving through `-o lo`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalKey {
    pub pod_id: u32,
    pub addr: Addr,
}
plain_data!(LocalKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_prefix_counts_pod_and_family_bits() {
        assert_eq!(
            CidrKey::prefix_len(&Addr::v4([10, 0, 0, 0]), 8),
            32 + 96 + 8
        );
        assert_eq!(CidrKey::prefix_len(&Addr::LOCALHOST_V6, 64), 32 + 64);
    }
}
