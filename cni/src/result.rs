//! The chain's `prevResult`: the pod's addresses in it, and what the plugin prints back.

use std::net::IpAddr;

use serde_json::{Value, json};

/// A `prevResult` whose addresses cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("prevResult: {0}")]
pub struct ResultError(String);

/// The pod's addresses in `prev` (0.3.x, 0.4.0, 1.0.0 and 1.1.0 share the shape: `ips[]`
/// with an `address` in CIDR notation, and an optional `interface` index into `interfaces`).
///
/// The spec lets a result list addresses outside the container; an address whose interface
/// is on the host (no `sandbox`) is left out when the result does mark container interfaces
/// with their sandbox. Duplicates are dropped; the order is kept.
pub fn pod_ips(prev: &Value) -> Result<Vec<IpAddr>, ResultError> {
    let ips = match prev.get("ips") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(ips)) => ips,
        Some(other) => return Err(ResultError(format!("ips must be an array, not {other}"))),
    };
    let interfaces = prev.get("interfaces").and_then(Value::as_array);
    let in_sandbox = |iface: &Value| {
        iface
            .get("sandbox")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    let sandboxes_marked = interfaces.is_some_and(|list| list.iter().any(in_sandbox));
    let mut out = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let address = ip
            .get("address")
            .and_then(Value::as_str)
            .ok_or_else(|| ResultError(format!("ips[{i}].address is missing or not a string")))?;
        let addr = parse_cidr(address)
            .ok_or_else(|| ResultError(format!("ips[{i}].address {address:?} is not CIDR")))?;
        let on_host = match (ip.get("interface").and_then(Value::as_u64), interfaces) {
            (Some(index), Some(list)) if sandboxes_marked => list
                .get(index as usize)
                .is_some_and(|iface| !in_sandbox(iface)),
            _ => false,
        };
        if !on_host && !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

/// `10.0.0.2/24` → 10.0.0.2, with a prefix length valid for the family.
fn parse_cidr(cidr: &str) -> Option<IpAddr> {
    let (addr, len) = cidr.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    // Digits only: `u8::from_str` would also take a leading `+`.
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u8 = len.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some(addr)
}

/// ADD's output: `prev` unchanged but for `cniVersion`, which is the configuration's (the
/// runtime already converted `prevResult` to it).
pub fn add_success(prev: &Value, cni_version: &str) -> Value {
    let mut out = prev.clone();
    if let Value::Object(map) = &mut out {
        map.insert("cniVersion".into(), Value::String(cni_version.into()));
    }
    out
}

/// VERSION's output.
pub fn version(cni_version: &str, supported: &[&str]) -> Value {
    json!({"cniVersion": cni_version, "supportedVersions": supported})
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 244, 1, 5));
    const V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 5));

    /// What the bridge plugin returns in 1.0.0: the bridge and the host veth have no sandbox.
    fn bridge_1_0_0() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "0a:58:0a:f4:01:01"},
                {"name": "veth1234", "mac": "aa:bb:cc:dd:ee:ff"},
                {"name": "eth0", "mac": "0a:58:0a:f4:01:05", "sandbox": "/var/run/netns/cni-1"}
            ],
            "ips": [
                {"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2},
                {"address": "fd00:10:244:1::5/64", "gateway": "fd00:10:244:1::1", "interface": 2}
            ],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        })
    }

    #[test]
    fn ips_from_a_1_0_0_result() {
        assert_eq!(pod_ips(&bridge_1_0_0()).unwrap(), [V4, V6]);
    }

    #[test]
    fn ips_from_a_0_4_0_result() {
        // 0.3.x/0.4.0 carry `version` per address; otherwise the same shape.
        let prev = json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/cni-1"}],
            "ips": [
                {"version": "4", "address": "10.244.1.5/32", "interface": 0},
                {"version": "6", "address": "fd00:10:244:1::5/128"}
            ]
        });
        assert_eq!(pod_ips(&prev).unwrap(), [V4, V6]);
    }

    #[test]
    fn host_addresses_and_duplicates_are_left_out() {
        let prev = json!({
            "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/n"}],
            "ips": [
                {"address": "10.244.1.1/24", "interface": 0},
                {"address": "10.244.1.5/24", "interface": 1},
                {"address": "10.244.1.5/24", "interface": 1}
            ]
        });
        assert_eq!(pod_ips(&prev).unwrap(), [V4]);
        // A result that marks no sandbox at all cannot tell: every address is kept.
        let unmarked = json!({
            "interfaces": [{"name": "eth0"}],
            "ips": [{"address": "10.244.1.5/24", "interface": 0}]
        });
        assert_eq!(pod_ips(&unmarked).unwrap(), [V4]);
    }

    #[test]
    fn no_ips_and_bad_ips() {
        assert_eq!(
            pod_ips(&json!({"cniVersion": "1.0.0"})).unwrap(),
            Vec::<IpAddr>::new()
        );
        for bad in [
            json!({"ips": {}}),
            json!({"ips": [{"gateway": "10.0.0.1"}]}),
            json!({"ips": [{"address": "10.0.0.1"}]}),
            json!({"ips": [{"address": "10.0.0.1/33"}]}),
            json!({"ips": [{"address": "10.0.0.1/+8"}]}),
            json!({"ips": [{"address": "fd00::1/129"}]}),
            json!({"ips": [{"address": "pod/24"}]}),
        ] {
            assert!(pod_ips(&bad).is_err(), "{bad}");
        }
        assert!(
            pod_ips(&json!({"ips": [{"address": "10.0.0.1/8"}, {"address": 3}]}))
                .unwrap_err()
                .to_string()
                .contains("ips[1].address")
        );
    }

    #[test]
    fn add_success_is_prev_result_in_the_configs_version() {
        let prev = bridge_1_0_0();
        assert_eq!(add_success(&prev, "1.0.0"), prev);
        let mut expected = prev.clone();
        expected["cniVersion"] = json!("1.1.0");
        assert_eq!(add_success(&prev, "1.1.0"), expected);
    }

    #[test]
    fn version_shape() {
        assert_eq!(
            version("1.0.0", &["0.4.0", "1.0.0"]),
            json!({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]})
        );
    }
}
