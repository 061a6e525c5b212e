//! What the agent tells the world: the status file ([`status`]) and its publisher
//! ([`reporter`]), the counter catalogue ([`catalog`]), and `/metrics`, `/healthz`, `/readyz`
//! ([`http`]).
pub mod catalog;
pub mod http;
pub mod reporter;
pub mod status;
