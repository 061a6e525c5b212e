//! The pin layout under `--bpffs-dir`: everything the agent pins lives below
//! `<bpffs-dir>/v<LAYOUT_VERSION>/`, so that a restarted agent adopts it and an agent of
//! another layout refuses it.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use meshsteer_common::maps::LAYOUT_VERSION;

/// The pin layout under `--bpffs-dir`.
#[derive(Clone, Debug)]
pub struct Pins {
    pub root: PathBuf,
}

impl Pins {
    pub fn new(bpffs_dir: &Path) -> Self {
        Self {
            root: bpffs_dir.join(format!("v{LAYOUT_VERSION}")),
        }
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }
    /// Opens the pinned map `name` (a handle of the caller's own: `status`, `trace`, the
    /// metrics endpoint, tests).
    pub fn open_map(&self, name: &str) -> Result<aya::maps::Map> {
        let path = self.map(name);
        let data = aya::maps::MapData::from_pin(&path).with_context(|| {
            format!(
                "opening {} (is the agent running, and are you root?)",
                path.display()
            )
        })?;
        aya::maps::Map::from_map_data(data).context("unexpected map type")
    }

    /// Where the pods' cgroup links are pinned, one directory per pod cgroup id.
    /// `progs`: one directory of pinned programs per build ([`super::prog_pins`]).
    pub fn programs(&self) -> PathBuf {
        self.root.join("progs")
    }

    pub fn cgroup_links(&self) -> PathBuf {
        self.root.join("links").join("cgroup")
    }

    /// A pod's link for the cgroup program `program`, by pod cgroup id.
    pub fn cgroup_link(&self, pod_cgroup: u64, program: &str) -> PathBuf {
        self.cgroup_links()
            .join(pod_cgroup.to_string())
            .join(program)
    }

    /// The entries of `dir` (a directory of per-pod pins) named by a pod cgroup id not in
    /// `keep`: what a previous agent pinned for pods that went while no agent ran.
    pub fn stale(dir: &Path, keep: &BTreeSet<u64>) -> Vec<PathBuf> {
        fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let id = name.to_str().and_then(|n| n.parse::<u64>().ok());
                id.is_some_and(|id| !keep.contains(&id))
            })
            .map(|e| e.path())
            .collect()
    }

    /// A pod's sk_lookup link, by pod cgroup id.
    pub fn netns_link(&self, pod_cgroup: u64) -> PathBuf {
        self.netns_links().join(pod_cgroup.to_string())
    }

    /// Where the pods' sk_lookup links are pinned, one file per pod cgroup id.
    pub fn netns_links(&self) -> PathBuf {
        self.root.join("links").join("netns")
    }

    /// Refuses pins of a layout this agent can neither use nor upgrade (older than the
    /// previous one, or newer than its own): adopting maps whose key/value layout differs
    /// would misread them silently. The previous layout's pins are upgraded
    /// (`bpf::migrate`).
    pub(crate) fn check_layout(bpffs_dir: &Path, upgradable: u32) -> Result<()> {
        let Ok(entries) = fs::read_dir(bpffs_dir) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(version) = name.strip_prefix('v').and_then(|v| v.parse::<u32>().ok()) else {
                continue;
            };
            if version == LAYOUT_VERSION || version == upgradable {
                continue;
            }
            let (what, how) = if version > LAYOUT_VERSION {
                (
                    "a newer layout",
                    "run that agent (downgrades are not supported)".to_string(),
                )
            } else {
                (
                    "a layout too old to upgrade",
                    format!("upgrade through an agent of layout v{upgradable} first"),
                )
            };
            bail!(
                "{} holds pins of {what} (v{version}), this agent uses v{LAYOUT_VERSION} and \
                 upgrades v{upgradable}: {how}, or run that agent's `meshsteer uninstall` \
                 (capture stops) before switching",
                bpffs_dir.display()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_layout_and_the_upgradable_one_are_accepted() {
        let dir = std::env::temp_dir().join(format!("ms-pins-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join(format!("v{LAYOUT_VERSION}"))).unwrap();
        fs::create_dir_all(dir.join("other")).unwrap();
        let previous = LAYOUT_VERSION - 1;
        fs::create_dir_all(dir.join(format!("v{previous}"))).unwrap();
        Pins::check_layout(&dir, previous).unwrap();
        let newer = dir.join(format!("v{}", LAYOUT_VERSION + 1));
        fs::create_dir_all(&newer).unwrap();
        let e = Pins::check_layout(&dir, previous).unwrap_err().to_string();
        assert!(
            e.contains("a newer layout") && e.contains("downgrades"),
            "{e}"
        );
        fs::remove_dir(&newer).unwrap();
        fs::create_dir_all(dir.join("v0")).unwrap();
        let e = Pins::check_layout(&dir, previous).unwrap_err().to_string();
        assert!(e.contains("too old to upgrade"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
