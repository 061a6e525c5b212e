//! Per-pod state: which spec file enrolled which cgroup under which plan, and whether its
//! capture is in effect. Every change is applied to the maps before it is reported.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};
use serde::Serialize;
use tracing::{info, info_span, warn};

use crate::{
    host,
    podmaps::PodMaps,
    podspec::{Plan, PodSpec},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub name: String,
    pub file: PathBuf,
    /// `ready`, or `error: <reason>`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_id: Option<u32>,
}

struct Enrolled {
    cgroup_id: u64,
    plan: Plan,
}

struct Entry {
    name: String,
    spec: Option<PodSpec>,
    enrolled: Option<Enrolled>,
    error: Option<String>,
}

pub struct Registry {
    maps: PodMaps,
    cgroup_root: PathBuf,
    /// Keyed by spec file.
    pods: BTreeMap<PathBuf, Entry>,
    next_pod_id: u32,
}

impl Registry {
    pub fn new(maps: PodMaps, cgroup_root: PathBuf) -> Self {
        let next_pod_id = maps
            .enrolled()
            .iter()
            .map(|(_, c)| c.pod_id)
            .max()
            .unwrap_or(0)
            + 1;
        Self {
            maps,
            cgroup_root,
            pods: BTreeMap::new(),
            next_pod_id,
        }
    }

    pub fn maps(&self) -> &PodMaps {
        &self.maps
    }

    /// After the first full read of the pod source: forget what a previous agent enrolled for
    /// pods that no longer exist.
    pub fn reconcile_adopted(&mut self) {
        let keep: BTreeSet<u64> = self
            .pods
            .values()
            .filter_map(|e| e.enrolled.as_ref().map(|x| x.cgroup_id))
            .collect();
        self.maps.garbage_collect(&keep);
    }

    /// A spec file was added or changed (`Err`: it could not be read or parsed).
    pub fn upsert(&mut self, file: &Path, spec: Result<PodSpec, String>) {
        let name = match &spec {
            Ok(s) => s.name.clone(),
            Err(_) => file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        let span = info_span!("pod", name = %name);
        let _g = span.enter();
        if let Some(e) = self.pods.get(file)
            && e.spec.as_ref() == spec.as_ref().ok()
            && e.error.is_none()
        {
            return;
        }
        let previous = self.pods.remove(file);
        let mut entry = Entry {
            name,
            spec: None,
            enrolled: None,
            error: None,
        };
        let result = spec.map_err(anyhow::Error::msg).and_then(|s| {
            entry.spec = Some(s.clone());
            self.enrol(
                file,
                &s,
                previous.as_ref().and_then(|p| p.enrolled.as_ref()),
            )
        });
        match result {
            Ok(enrolled) => {
                info!(
                    cgroup_id = enrolled.cgroup_id,
                    pod_id = enrolled.plan.config.pod_id,
                    "ready"
                );
                entry.enrolled = Some(enrolled);
            }
            Err(e) => {
                let reason = format!("{e:#}");
                warn!(error = %reason, "not enrolled");
                // A failed update leaves the pod's previous capture in effect: keep it.
                entry.enrolled = previous.and_then(|p| p.enrolled);
                entry.error = Some(reason);
            }
        }
        self.pods.insert(file.to_path_buf(), entry);
    }

    fn enrol(
        &mut self,
        file: &Path,
        spec: &PodSpec,
        previous: Option<&Enrolled>,
    ) -> Result<Enrolled> {
        if let Some((other, _)) = self
            .pods
            .iter()
            .find(|(f, e)| f.as_path() != file && e.name == spec.name)
        {
            bail!(
                "pod name {:?} is already used by {}",
                spec.name,
                other.display()
            );
        }
        if !spec.cgroup.starts_with(&self.cgroup_root) {
            bail!(
                "cgroup {} is outside the cgroup root {} where capture is attached",
                spec.cgroup.display(),
                self.cgroup_root.display()
            );
        }
        let cgroup_id = host::cgroup_id(&spec.cgroup)?;
        if let Some((other, _)) = self.pods.iter().find(|(f, e)| {
            f.as_path() != file
                && e.enrolled
                    .as_ref()
                    .is_some_and(|x| x.cgroup_id == cgroup_id)
        }) {
            bail!(
                "cgroup {} is already enrolled by {}",
                spec.cgroup.display(),
                other.display()
            );
        }
        if let Some(ns) = &spec.netns
            && !ns.exists()
        {
            bail!("network namespace {} does not exist", ns.display());
        }
        let plan = Plan::new(spec, self.next_pod_id)?;
        self.next_pod_id += 1;
        // Same cgroup as before: swap in place. A different one: the old one is removed.
        let same = previous.filter(|p| p.cgroup_id == cgroup_id);
        self.maps.apply(cgroup_id, &plan, same.map(|p| &p.plan))?;
        if let Some(old) = previous.filter(|p| p.cgroup_id != cgroup_id) {
            self.maps.remove(old.cgroup_id, Some(&old.plan));
        }
        Ok(Enrolled { cgroup_id, plan })
    }

    /// A spec file went away: capture for that pod stops and its map entries are freed.
    pub fn remove(&mut self, file: &Path) {
        if let Some(e) = self.pods.remove(file) {
            let _g = info_span!("pod", name = %e.name).entered();
            if let Some(x) = e.enrolled {
                self.maps.remove(x.cgroup_id, Some(&x.plan));
            }
            info!("removed");
        }
    }

    pub fn status(&self) -> Vec<PodStatus> {
        self.pods
            .iter()
            .map(|(file, e)| PodStatus {
                name: e.name.clone(),
                file: file.clone(),
                state: match &e.error {
                    None => "ready".into(),
                    Some(r) => format!("error: {r}"),
                },
                cgroup: e.spec.as_ref().map(|s| s.cgroup.clone()),
                cgroup_id: e.enrolled.as_ref().map(|x| x.cgroup_id),
                pod_id: e.enrolled.as_ref().map(|x| x.plan.config.pod_id),
            })
            .collect()
    }
}
