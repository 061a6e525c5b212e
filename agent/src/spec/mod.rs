//! Pure and kernel-free: istio-iptables command lines ([`istio`]), pod specs ([`pod`]) and the
//! map entries a spec turns into ([`plan`]). Nothing here touches the host.
pub mod istio;
pub mod plan;
pub mod pod;
