//! meshsteer's chained CNI plugin, `meshsteer-cni`, and the protocol it speaks with the agent.
//!
//! The runtime calls the plugin while it sets up a pod's sandbox, before any container of the
//! pod exists. ADD asks the agent (over a local unix socket) to enrol the pod and succeeds only
//! once its capture is in effect, or when the pod needs none: fail-closed, like istio-init.
//!
//! - [`proto`]: the request and reply on the agent's socket, and their framing (the agent
//!   uses these types too);
//! - [`plugin`]: the CNI commands, on top of
//!   - [`env`] (CNI_* variables), [`args`] (CNI_ARGS), [`conf`] (the config on stdin),
//!     [`result`] (prevResult), [`client`] (one exchange with the agent);
//! - [`error`]: every failure, with its CNI error code.
#![deny(unsafe_code)]

pub mod args;
pub mod client;
pub mod conf;
pub mod env;
pub mod error;
pub mod plugin;
pub mod proto;
pub mod result;
#[cfg(test)]
mod testdir;
