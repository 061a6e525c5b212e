//! The performance goals, each read from this run's medians as a ratio (or a count) and marked
//! met or not: one table, so that a run says at a glance where meshsteer stands. Absolute
//! figures depend on the machine; these do not.
use serde_json::{Value, json};

use super::{Mode, Results, scale};

/// What a goal asks of its figure.
#[derive(Clone, Copy)]
enum Want {
    AtMost(f64),
    AtLeast(f64),
}

impl Want {
    fn met(self, v: f64) -> bool {
        match self {
            Want::AtMost(t) => v <= t,
            Want::AtLeast(t) => v >= t,
        }
    }

    fn text(self) -> String {
        match self {
            Want::AtMost(t) => format!("≤ {t}"),
            Want::AtLeast(t) => format!("≥ {t}"),
        }
    }
}

/// One goal's row.
pub struct Goal {
    goal: &'static str,
    what: String,
    want: Want,
    /// `None`: this bench does not measure it (yet), which the table says.
    measured: Option<f64>,
}

impl Goal {
    fn verdict(&self) -> &'static str {
        match self.measured {
            Some(v) if self.want.met(v) => "met",
            Some(_) => "NOT met",
            None => "not measured",
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "workload": "goal",
            "goal": self.goal,
            "what": self.what,
            "target": self.want.text(),
            "measured": self.measured,
            "verdict": self.verdict(),
        })
    }
}

const RUNS: &str = "eBPF program runs per connection";
const PROFILE_EBPF: &str = "profile: new-connection µs/req, eBPF";
const PROFILE_NETFILTER: &str = "profile: new-connection µs/req, netfilter";

/// The name the rule-scaling workload gives `n` rules of `kind` (`-x CIDRs`, `-o ports`).
fn rules(n: usize, kind: &str) -> String {
    format!("connect rate, {n:>5} {kind}")
}

/// Every goal, from the medians in `r`.
pub fn evaluate(r: &Results, pods: usize) -> Vec<Goal> {
    let med = |w: &str, m: Mode| r.median(w, m).map(|(v, ..)| v);
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    };
    let vs_iptables = |w: &str| ratio(med(w, Mode::Meshsteer), med(w, Mode::Iptables));
    let flat = |kind: &str, from: usize, to: usize| {
        ratio(
            med(&rules(to, kind), Mode::Meshsteer),
            med(&rules(from, kind), Mode::Meshsteer),
        )
    };
    let row = |goal, what: &str, want, measured| Goal {
        goal,
        what: what.to_string(),
        want,
        measured,
    };
    vec![
        row(
            "1",
            "program runs per connection, pod not enrolled (direct)",
            Want::AtMost(0.0),
            med(RUNS, Mode::Direct),
        ),
        row(
            "1",
            "program runs per connection, pod not enrolled (iptables)",
            Want::AtMost(0.0),
            med(RUNS, Mode::Iptables),
        ),
        row(
            "1",
            "eBPF µs per new-connection request, direct pods",
            Want::AtMost(0.02),
            med(PROFILE_EBPF, Mode::Direct),
        ),
        row(
            "1",
            "eBPF µs per new-connection request, iptables pods",
            Want::AtMost(0.02),
            med(PROFILE_EBPF, Mode::Iptables),
        ),
        row(
            "2",
            "eBPF in meshsteer pods / netfilter in iptables pods, per new-connection request",
            Want::AtMost(0.1),
            ratio(
                med(PROFILE_EBPF, Mode::Meshsteer),
                med(PROFILE_NETFILTER, Mode::Iptables),
            ),
        ),
        row(
            "3",
            "new-connection rate, meshsteer / iptables",
            Want::AtLeast(1.2),
            vs_iptables("new-connection rate"),
        ),
        row(
            "3",
            "CPU per new-connection request, meshsteer / iptables",
            Want::AtMost(0.85),
            vs_iptables("new-connection CPU per req"),
        ),
        row(
            "3",
            "keep-alive rate, meshsteer / iptables",
            Want::AtLeast(1.2),
            vs_iptables("keep-alive rate"),
        ),
        row(
            "3",
            "bulk throughput, meshsteer / iptables",
            Want::AtLeast(1.2),
            vs_iptables("bulk throughput"),
        ),
        row(
            "4",
            &format!("{pods} pods: s until all ready after the spec burst"),
            Want::AtMost(2.0),
            med(scale::READY, Mode::Meshsteer),
        ),
        row(
            "4",
            &format!("{pods} pods: agent RSS, MiB"),
            Want::AtMost(40.0),
            med(scale::RSS, Mode::Meshsteer),
        ),
        row(
            "4",
            &format!("{pods} pods: s until a SIGKILLed agent's successor has all ready"),
            Want::AtMost(1.0),
            med(scale::ADOPTION, Mode::Meshsteer),
        ),
        row(
            "4",
            &format!("connect rate with {pods} pods / with 1"),
            Want::AtLeast(0.9),
            ratio(
                med(scale::RATE_ALL, Mode::Meshsteer),
                med(scale::RATE_ONE, Mode::Meshsteer),
            ),
        ),
        row(
            "4",
            &format!("eBPF run time per connection with {pods} pods / with 1"),
            Want::AtMost(1.1),
            ratio(
                med(scale::EBPF_ALL, Mode::Meshsteer),
                med(scale::EBPF_ONE, Mode::Meshsteer),
            ),
        ),
        row(
            "5",
            "connect rate, 10,000 -x CIDRs / 1 CIDR (meshsteer)",
            Want::AtLeast(0.9),
            flat("-x CIDRs", 1, 10_000),
        ),
        row(
            "5",
            "connect rate, 1,000 -o ports / 1 port (meshsteer)",
            Want::AtLeast(0.9),
            flat("-o ports", 1, 1_000),
        ),
    ]
}

/// The goals as a markdown table.
pub fn table(goals: &[Goal]) -> String {
    let mut t = String::from("| goal | what | target | measured | |\n|---|---|---|---|---|\n");
    for g in goals {
        let measured = g.measured.map_or("–".to_string(), |v| format!("{v:.2}"));
        t.push_str(&format!(
            "| {} | {} | {} | {measured} | {} |\n",
            g.goal,
            g.what,
            g.want.text(),
            g.verdict()
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_goal_reads_its_ratio_from_the_medians() {
        let mut r = Results::default();
        for (m, v) in [(Mode::Meshsteer, 1300.0), (Mode::Iptables, 1000.0)] {
            r.add("new-connection rate", "req/s", true, m, 0, v);
        }
        r.add(RUNS, "runs", false, Mode::Direct, 0, 3.0);
        let goals = evaluate(&r, 1000);
        let find = |what: &str| goals.iter().find(|g| g.what.starts_with(what)).unwrap();
        let rate = find("new-connection rate");
        assert!((rate.measured.unwrap() - 1.3).abs() < 1e-9);
        assert_eq!(rate.verdict(), "met");
        assert_eq!(
            find("program runs per connection, pod not enrolled (direct)").verdict(),
            "NOT met"
        );
        assert_eq!(find("bulk throughput").verdict(), "not measured");
        assert!(
            table(&goals)
                .contains("| 3 | new-connection rate, meshsteer / iptables | ≥ 1.2 | 1.30 | met |")
        );
    }
}
