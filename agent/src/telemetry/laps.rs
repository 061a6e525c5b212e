//! Where a step's time went, for debug logs: named laps since a start, shown as
//! `name=µs name=µs …` (each lap's own duration).
use std::{fmt, time::Instant};

pub struct Laps {
    last: Instant,
    laps: Vec<(&'static str, u128)>,
}

impl Laps {
    pub fn start() -> Self {
        Self {
            last: Instant::now(),
            laps: Vec::new(),
        }
    }

    /// Ends the lap named `name` now.
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.laps
            .push((name, now.duration_since(self.last).as_micros()));
        self.last = now;
    }
}

impl fmt::Display for Laps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, us)) in self.laps.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={us}µs")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_each_lap_by_name() {
        let mut l = Laps::start();
        l.mark("a");
        l.mark("b");
        let shown = l.to_string();
        assert!(shown.starts_with("a=") && shown.contains(" b="), "{shown}");
    }
}
