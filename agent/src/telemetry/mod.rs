//! What the agent tells the world: the status file ([`status`]) and its publisher
//! ([`reporter`]), the counter catalogue ([`catalog`]), and the HTTP endpoints ([`http`]):
//! `/metrics` ([`metrics`]), `/healthz` and `/readyz` ([`probes`]); [`laps`], step timings for
//! debug logs.
pub mod catalog;
pub mod http;
pub mod laps;
pub mod metrics;
pub mod probes;
pub mod reporter;
pub mod status;
