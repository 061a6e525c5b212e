//! What the agent tells the world: the status file ([`status`]) and its publisher
//! ([`reporter`]), the counter catalogue ([`catalog`]), and the HTTP endpoints ([`http`]):
//! `/metrics` ([`metrics`]), `/healthz` and `/readyz` ([`probes`]).
pub mod catalog;
pub mod http;
pub mod metrics;
pub mod probes;
pub mod reporter;
pub mod status;
