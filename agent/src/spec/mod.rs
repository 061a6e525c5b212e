//! Pure and kernel-free: istio-iptables command lines ([`istio`]), pod specs ([`pod`]), the
//! map entries a spec turns into ([`plan`]) and each pod's share of the maps ([`budget`]).
//! Nothing here touches the host.
pub mod budget;
pub mod istio;
pub mod plan;
pub mod pod;
pub mod resolv;
