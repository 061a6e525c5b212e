//! Which nameservers `--redirect-dns` captures for a pod, from the first source that has
//! them (docs/dns.md): the spec's `nameservers`, the file its `resolvConf` names, the pod's
//! own resolv.conf through one of its processes, then what Kubernetes gives it by its
//! `dnsPolicy`. Read only for pods that redirect DNS; read again, for the last two, when the
//! pod's source says its processes may have changed.
use std::net::IpAddr;

use tracing::{info, info_span, warn};

use super::{Dataplane, Registry, error::EnrolError};
use crate::{
    source::change::SourceKey,
    spec::{
        istio::Capture,
        pod::PodSpec,
        resolv::{NameserversFrom, nameservers},
    },
};

/// A pod's nameservers and where they came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Resolved {
    pub servers: Vec<IpAddr>,
    /// `None`: no source had them (or the pod does not redirect DNS).
    pub from: Option<NameserversFrom>,
    /// Why DNS the pod asks for is not captured as istio-init would, when that is so.
    pub warning: Option<String>,
}

impl<D: Dataplane> Registry<D> {
    /// The pod's nameservers. `Err` only for a `resolvConf` that cannot be read: the pod is
    /// refused naming it, before anything is written.
    pub(super) fn nameservers(
        &self,
        spec: &PodSpec,
        capture: &Capture,
    ) -> Result<Resolved, EnrolError> {
        if !capture.redirect_dns {
            return Ok(Resolved::default());
        }
        let found = |servers, from| Resolved {
            servers,
            from: Some(from),
            warning: None,
        };
        if let Some(list) = &spec.nameservers {
            return Ok(found(list.clone(), NameserversFrom::Spec));
        }
        if let Some(path) = &spec.resolv_conf {
            let text = self
                .dataplane
                .read_resolv_conf(path)
                .map_err(EnrolError::ResolvConf)?;
            return Ok(found(nameservers(&text), NameserversFrom::ResolvConf));
        }
        if let Some((_pid, text)) = self.dataplane.pod_resolv_conf(&spec.cgroup) {
            return Ok(found(nameservers(&text), NameserversFrom::Pod));
        }
        let why = match &spec.kube_nameservers {
            Some(Ok(list)) => return Ok(found(list.clone(), NameserversFrom::Kubernetes)),
            Some(Err(why)) => format!(
                "no process of the pod has an /etc/resolv.conf yet, and its dnsPolicy's \
                 nameservers are not known: {why}"
            ),
            None => "no `nameservers` or `resolvConf` in the pod's spec, and no process of the \
                     pod has an /etc/resolv.conf yet"
                .to_string(),
        };
        let warning = (!capture.capture_all_dns).then(|| {
            format!(
                "--redirect-dns: {why}. As istio-init with no nameserver, no DNS is captured \
                 until one is known"
            )
        });
        Ok(Resolved {
            warning,
            ..Resolved::default()
        })
    }

    /// The pod's processes may have changed (its source saw it change, or its spec file was
    /// touched): nameservers read through them, or given in their absence, are read again,
    /// and the pod re-planned if they differ. Returns whether it was.
    pub fn refresh_nameservers(&mut self, key: &SourceKey) -> bool {
        let Some(e) = self.pods.get(key) else {
            return false;
        };
        let (Some(spec), Some(x), None) = (&e.spec, &e.enrolled, &e.unready) else {
            return false;
        };
        let fixed = x.nameservers_from.is_some_and(|f| !f.may_change());
        if x.plan.is_refused() || !x.plan.capture().redirect_dns || fixed {
            return false;
        }
        let _g = info_span!("pod", pod = %e.name).entered();
        let now = match self.nameservers(spec, x.plan.capture()) {
            Ok(now) => now,
            Err(e) => {
                warn!(error = %e, "reading the pod's nameservers again");
                return false;
            }
        };
        if now.servers == x.plan.nameservers() {
            // The same servers from elsewhere (the pod's file says what Kubernetes did):
            // said, nothing re-planned.
            let changed = now.from != x.nameservers_from || now.warning != x.dns_warning;
            if changed && let Some(x) = self.pods.get_mut(key).and_then(|e| e.enrolled.as_mut()) {
                x.nameservers_from = now.from;
                x.dns_warning = now.warning;
            }
            return changed;
        }
        info!(
            servers = ?now.servers,
            from = ?now.from,
            was = ?x.plan.nameservers(),
            "the pod's nameservers changed: re-planned"
        );
        let spec = spec.clone();
        drop(_g);
        self.replan(key, Ok(spec));
        true
    }
}
