//! `/healthz` and `/readyz`: what the agent loop's published view says of the agent.
use std::time::{Duration, Instant};

use super::reporter::AgentView;

/// An agent loop that has not turned for this long is reported unhealthy.
pub const STALL: Duration = Duration::from_secs(10);

/// Why a probe fails; its text is the probe's 503 body.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unwell {
    #[error("the agent loop has not run for {:.1}s", .0.as_secs_f64())]
    Stalled(Duration),
    #[error("waiting for the first full reconcile of the pod source")]
    NotReconciled,
}

/// Alive: the endpoints only run once the datapath is loaded and attached, so this checks that
/// the agent loop still turns.
pub fn health(view: &AgentView, now: Instant) -> Result<(), Unwell> {
    match view.heartbeat.map(|t| now.saturating_duration_since(t)) {
        Some(idle) if idle > STALL => Err(Unwell::Stalled(idle)),
        _ => Ok(()),
    }
}

/// Ready: healthy, and the pod source was listed in full and reconciled once.
pub fn readiness(view: &AgentView, now: Instant) -> Result<(), Unwell> {
    health(view, now)?;
    if view.reconciled {
        Ok(())
    } else {
        Err(Unwell::NotReconciled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_and_readiness() {
        let now = Instant::now();
        let mut view = AgentView::default();
        assert_eq!(health(&view, now), Ok(()), "starting up is healthy");
        assert!(readiness(&view, now).is_err(), "but not ready");
        view.heartbeat = Some(now);
        view.reconciled = true;
        assert_eq!(readiness(&view, now), Ok(()));
        let later = now + STALL + Duration::from_secs(1);
        let stalled = health(&view, later).unwrap_err().to_string();
        assert_eq!(stalled, "the agent loop has not run for 11.0s");
        assert!(readiness(&view, later).is_err());
    }
}
