//! `mst-stream run`'s options.
use std::net::IpAddr;

pub struct Opts {
    pub bind: Option<IpAddr>,
    pub v6: bool,
    pub timeout: u64,
    /// Scenario arguments, in order.
    pub rest: Vec<u64>,
}

impl Opts {
    pub fn parse(args: &[String]) -> Self {
        let mut o = Self {
            bind: None,
            v6: false,
            timeout: 120,
            rest: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--bind" => o.bind = it.next().and_then(|v| v.parse().ok()),
                "--v6" => o.v6 = true,
                "--timeout" => o.timeout = it.next().and_then(|v| v.parse().ok()).unwrap_or(120),
                n => o.rest.push(n.parse().expect("numeric scenario argument")),
            }
        }
        o
    }

    pub fn arg(&self, i: usize, default: u64) -> u64 {
        self.rest.get(i).copied().unwrap_or(default)
    }
}
