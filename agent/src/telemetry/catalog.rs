//! The catalogue of per-pod counters: where each is in `PodCounters`, and what `meshsteer
//! status` and `/metrics` call it. One list, so the two never disagree.
use meshsteer_common::{inbound::InRule, maps::counter, outbound::Rule};

/// A Prometheus metric family (its name without the `_total` a counter gets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
}

pub const OUTBOUND: Family = Family {
    name: "meshsteer_outbound_connections",
    help: "TCP connect()s of the pod by the ISTIO_OUTPUT rule that decided them, and whether \
           they were redirected to the proxy",
};
pub const INBOUND: Family = Family {
    name: "meshsteer_inbound_connections",
    help: "TCP connections arriving at the pod by the ISTIO_INBOUND rule that decided them, \
           and whether they were to be steered to the proxy",
};
pub const ORIG_DST_LOOKUPS: Family = Family {
    name: "meshsteer_original_dst_lookups",
    help: "getsockopt(SO_ORIGINAL_DST) in the pod: answered from meshsteer's map (hit) or, on \
           connections it did not redirect, as conntrack would (miss)",
};
pub const ORIG_DST_MAP_FULL: Family = Family {
    name: "meshsteer_original_dst_map_full",
    help: "Redirected connections whose original destination could not be stored (map full)",
};
pub const ORIG_DST_EVICTED: Family = Family {
    name: "meshsteer_original_dst_evicted",
    help: "Live original destinations lost to LRU eviction before their connection closed",
};
pub const IN_NO_LISTENER: Family = Family {
    name: "meshsteer_inbound_no_listener",
    help: "Connections to steer that were refused because the proxy had no inbound listener",
};
pub const IN_LISTENER_REFUSED: Family = Family {
    name: "meshsteer_inbound_listener_refused",
    help: "Sockets that listened on the inbound port but are not the proxy's, so were not \
           made the pod's inbound listener",
};

pub const REFUSED: Family = Family {
    name: "meshsteer_refused_pod_connections",
    help: "Connections of a pod enrolled refused (over its budget, or an option meshsteer \
           cannot apply), failed rather than let through uncaptured: outbound connect()s \
           failed with EPERM, inbound ones refused",
};

/// Per-pod counters without a family of their own (socket-level acceleration, …), labelled
/// `event` with their `meshsteer status` name.
pub const OTHER: Family = Family {
    name: "meshsteer_pod_datapath_events",
    help: "Other per-pod datapath counters (socket-level acceleration, ...), by their \
           `meshsteer status` name",
};

/// Every family of per-pod counters, in exposition order.
pub const POD_FAMILIES: [Family; 9] = [
    OUTBOUND,
    INBOUND,
    ORIG_DST_LOOKUPS,
    ORIG_DST_MAP_FULL,
    ORIG_DST_EVICTED,
    IN_NO_LISTENER,
    IN_LISTENER_REFUSED,
    REFUSED,
    OTHER,
];

/// One per-pod counter: where it is in [`PodCounters`] and what it is called.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterInfo {
    pub index: usize,
    /// `meshsteer status` key, e.g. `outbound_included_cidr`.
    pub key: String,
    pub family: Family,
    /// Labels besides `pod`, e.g. `rule="included_cidr", action="redirected"`.
    pub labels: Vec<(&'static str, &'static str)>,
}

impl CounterInfo {
    fn new(index: usize, key: String, family: Family) -> Self {
        Self {
            index,
            key,
            family,
            labels: Vec::new(),
        }
    }

    fn label(mut self, name: &'static str, value: &'static str) -> Self {
        self.labels.push((name, value));
        self
    }
}

/// A decision counter: `outbound_<rule>` (or `inbound_…`), labelled with its rule and action.
fn decision(index: usize, family: Family, rule: &'static str, action: &'static str) -> CounterInfo {
    let direction = if family == OUTBOUND {
        "outbound"
    } else {
        "inbound"
    };
    CounterInfo::new(index, format!("{direction}_{rule}"), family)
        .label("rule", rule)
        .label("action", action)
}

/// Every per-pod counter, in index order within each family.
pub fn catalog() -> Vec<CounterInfo> {
    let outbound = Rule::ALL.iter().map(|r| {
        let action = if r.redirects() {
            "redirected"
        } else {
            "passed"
        };
        decision(counter::outbound(*r), OUTBOUND, r.name(), action)
    });
    let inbound = InRule::ALL.iter().map(|r| {
        let action = if r.steers() { "steered" } else { "passed" };
        decision(counter::inbound(*r), INBOUND, r.name(), action)
    });
    let other = counter::NAMES.iter().map(|(index, key)| {
        let info = |family| CounterInfo::new(*index, key.to_string(), family);
        match *index {
            counter::ORIG_DST_HIT => info(ORIG_DST_LOOKUPS).label("result", "hit"),
            counter::ORIG_DST_MISS => info(ORIG_DST_LOOKUPS).label("result", "miss"),
            counter::ORIG_DST_MAP_FULL => info(ORIG_DST_MAP_FULL),
            counter::ORIG_DST_EVICTED => info(ORIG_DST_EVICTED),
            counter::IN_NO_LISTENER => info(IN_NO_LISTENER),
            counter::IN_LISTENER_REFUSED => info(IN_LISTENER_REFUSED),
            counter::REFUSED_CONNECT => info(REFUSED).label("direction", "outbound"),
            counter::REFUSED_INBOUND => info(REFUSED).label("direction", "inbound"),
            _ => info(OTHER).label("event", key),
        }
    });
    outbound.chain(inbound).chain(other).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn catalog_names_every_counter_once() {
        let c = catalog();
        let indices: BTreeSet<usize> = c.iter().map(|i| i.index).collect();
        let keys: BTreeSet<&str> = c.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(indices.len(), c.len());
        assert_eq!(keys.len(), c.len());
        assert!(indices.iter().all(|i| *i < counter::COUNT));
        assert_eq!(
            c.len(),
            Rule::ALL.len() + InRule::ALL.len() + counter::NAMES.len()
        );
        for f in POD_FAMILIES.iter().filter(|f| **f != OTHER) {
            assert!(c.iter().any(|i| i.family == *f), "{f:?} has no counter");
        }
    }

    #[test]
    fn catalog_labels_the_decisions() {
        let c = catalog();
        let of = |key: &str| c.iter().find(|i| i.key == key).expect(key).clone();
        assert_eq!(
            of("outbound_included_cidr").labels,
            [("rule", "included_cidr"), ("action", "redirected")]
        );
        assert_eq!(
            of("outbound_proxy_owner").labels,
            [("rule", "proxy_owner"), ("action", "passed")]
        );
        assert_eq!(
            of("inbound_captured").labels,
            [("rule", "captured"), ("action", "steered")]
        );
        assert_eq!(of("orig_dst_miss").labels, [("result", "miss")]);
        assert_eq!(of("inbound_no_listener").family, IN_NO_LISTENER);
    }
}
