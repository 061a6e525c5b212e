//! One address representation for both families: IPv6 bytes, IPv4 as IPv4-mapped
//! (`::ffff:a.b.c.d`). It keeps map keys and the decision model family-agnostic, and treats
//! IPv4-mapped traffic on AF_INET6 sockets as the IPv4 traffic it is on the wire.

/// An IP address in network byte order; IPv4 is stored IPv4-mapped. Four 32-bit words laid
/// out as the kernel's `__be32 user_ip6[4]` (same bytes in memory as the 16-byte address):
/// word-wise compares keep eBPF code to four registers per address instead of sixteen.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Addr(pub [u32; 4]);
plain_data!(Addr);

/// `::ffff:0:0/96`, the IPv4-mapped prefix's third word.
const MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

impl Addr {
    /// `0.0.0.0`/`::` as the kernel reports an unbound source.
    pub const UNSPECIFIED_V6: Self = Self([0; 4]);
    pub const LOCALHOST_V4: Self = Self::v4([127, 0, 0, 1]);
    pub const LOCALHOST_V6: Self = Self::v6_word(1);
    /// Envoy's inbound-passthrough source address (`127.0.0.6` / `::6`).
    pub const PASSTHROUGH_V4: Self = Self::v4([127, 0, 0, 6]);
    pub const PASSTHROUGH_V6: Self = Self::v6_word(6);

    pub const fn v4(octets: [u8; 4]) -> Self {
        Self([0, 0, MAPPED, u32::from_ne_bytes(octets)])
    }

    /// `::N`, for the IPv6 loopback and passthrough addresses.
    const fn v6_word(last: u8) -> Self {
        Self([0, 0, 0, u32::from_ne_bytes([0, 0, 0, last])])
    }

    /// From the 16 bytes of an IPv6 address.
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        Self([
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
        ])
    }

    /// The 16 bytes of the (IPv4-mapped) IPv6 address.
    pub const fn bytes(&self) -> [u8; 16] {
        let (a, b, c, d) = (
            self.0[0].to_ne_bytes(),
            self.0[1].to_ne_bytes(),
            self.0[2].to_ne_bytes(),
            self.0[3].to_ne_bytes(),
        );
        [
            a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1],
            d[2], d[3],
        ]
    }

    /// From a `u32` as the kernel's `bpf_sock_addr` holds it (network byte order in memory).
    pub const fn from_be_u32(ip: u32) -> Self {
        Self([0, 0, MAPPED, ip])
    }

    /// From four `u32` words as the kernel's `bpf_sock_addr`/`bpf_sock` hold IPv6.
    pub const fn from_be_words(w: [u32; 4]) -> Self {
        Self(w)
    }

    /// Back to the kernel's IPv6 word layout.
    pub const fn be_words(&self) -> [u32; 4] {
        self.0
    }

    /// The IPv4 address as the kernel's `user_ip4` holds it, if this is IPv4.
    pub const fn be_u32(&self) -> Option<u32> {
        if self.is_ipv4() {
            Some(self.0[3])
        } else {
            None
        }
    }

    pub const fn is_ipv4(&self) -> bool {
        self.0[0] == 0 && self.0[1] == 0 && self.0[2] == MAPPED
    }

    pub const fn ipv4_octets(&self) -> Option<[u8; 4]> {
        if self.is_ipv4() {
            Some(self.0[3].to_ne_bytes())
        } else {
            None
        }
    }

    /// `0.0.0.0` or `::`: connect() treats these as "this host".
    pub const fn is_unspecified(&self) -> bool {
        (self.is_ipv4() && self.0[3] == 0) || self.eq_const(&Self::UNSPECIFIED_V6)
    }

    /// 127.0.0.0/8 or ::1: always routed through `lo`.
    pub const fn is_loopback(&self) -> bool {
        (self.is_ipv4() && self.0[3].to_ne_bytes()[0] == 127) || self.eq_const(&Self::LOCALHOST_V6)
    }

    /// The family's localhost: 127.0.0.1 or ::1 (what REDIRECT rewrites to in OUTPUT).
    pub const fn localhost_like(&self) -> Self {
        if self.is_ipv4() {
            Self::LOCALHOST_V4
        } else {
            Self::LOCALHOST_V6
        }
    }

    /// The family's inbound-passthrough source: 127.0.0.6 or ::6.
    pub const fn passthrough_like(&self) -> Self {
        if self.is_ipv4() {
            Self::PASSTHROUGH_V4
        } else {
            Self::PASSTHROUGH_V6
        }
    }

    /// `const` equality (derive(PartialEq) is not const).
    pub const fn eq_const(&self, other: &Self) -> bool {
        let (a, b) = (&self.0, &other.0);
        a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
    }
}

#[cfg(feature = "user")]
mod std_conv {
    extern crate std;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::Addr;

    impl From<IpAddr> for Addr {
        fn from(ip: IpAddr) -> Self {
            match ip {
                IpAddr::V4(v4) => Self::v4(v4.octets()),
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => Self::v4(v4.octets()),
                    None => Self::from_bytes(v6.octets()),
                },
            }
        }
    }

    impl From<Addr> for IpAddr {
        fn from(a: Addr) -> Self {
            match a.ipv4_octets() {
                Some(o) => IpAddr::V4(Ipv4Addr::from(o)),
                None => IpAddr::V6(Ipv6Addr::from(a.bytes())),
            }
        }
    }

    impl core::fmt::Display for Addr {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            IpAddr::from(*self).fmt(f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_round_trips_through_kernel_layout() {
        let a = Addr::v4([10, 1, 2, 3]);
        let be = a.be_u32().unwrap();
        assert_eq!(be.to_ne_bytes(), [10, 1, 2, 3]);
        assert_eq!(Addr::from_be_u32(be), a);
        assert_eq!(Addr::from_be_words(a.be_words()), a);
    }

    #[test]
    fn classifies_special_addresses() {
        assert!(Addr::v4([127, 9, 9, 9]).is_loopback());
        assert!(Addr::LOCALHOST_V6.is_loopback());
        assert!(!Addr::v4([10, 0, 0, 1]).is_loopback());
        assert!(Addr::v4([0, 0, 0, 0]).is_unspecified());
        assert!(Addr::UNSPECIFIED_V6.is_unspecified());
        assert!(!Addr::UNSPECIFIED_V6.is_ipv4());
        assert_eq!(
            Addr::v4([10, 1, 2, 3]).bytes()[10..],
            [0xff, 0xff, 10, 1, 2, 3]
        );
        assert_eq!(
            Addr::from_bytes(Addr::LOCALHOST_V6.bytes()),
            Addr::LOCALHOST_V6
        );
        assert_eq!(
            Addr::v4([10, 0, 0, 1]).passthrough_like(),
            Addr::PASSTHROUGH_V4
        );
        assert_eq!(Addr::LOCALHOST_V6.localhost_like(), Addr::LOCALHOST_V6);
    }
}
