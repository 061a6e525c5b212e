//! The pin layout under `--bpffs-dir`: everything the agent pins lives below
//! `<bpffs-dir>/v<LAYOUT_VERSION>/`, so that a restarted agent adopts it and an agent of
//! another layout refuses it.
use std::{
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
    pub fn link(&self, program: &str) -> PathBuf {
        self.root.join("links").join(program)
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

    /// A pod's sk_lookup link, by pod cgroup id.
    pub fn netns_link(&self, pod_cgroup: u64) -> PathBuf {
        self.netns_links().join(pod_cgroup.to_string())
    }

    /// Where the pods' sk_lookup links are pinned, one file per pod cgroup id.
    pub fn netns_links(&self) -> PathBuf {
        self.root.join("links").join("netns")
    }

    /// Refuses pins of another layout: adopting maps whose key/value layout differs would
    /// misread them silently.
    pub(crate) fn check_layout(bpffs_dir: &Path) -> Result<()> {
        let current = format!("v{LAYOUT_VERSION}");
        let Ok(entries) = fs::read_dir(bpffs_dir) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('v')
                && name[1..].chars().all(|c| c.is_ascii_digit())
                && name != current
            {
                bail!(
                    "{} holds pins of layout {name}, this agent uses {current}: run the matching \
                     agent's `meshsteer uninstall`, or remove that directory, before switching",
                    bpffs_dir.display()
                );
            }
        }
        Ok(())
    }
}
