//! The layering check (`cargo xtask lint`, or alone: `cargo xtask lint --layers-only`).
//!
//! Textual, and so only as good as its parsing: `crate::…`, `super::…` and `self::…` paths
//! (grouped `use` trees too) outside comments and string literals. That is how the agent's
//! modules name each other; anything subtler is the compiler's and the reviewer's to catch.
//! - Agent files import only layers below their own ([`table::AGENT`]), or their own module.
//! - No import cycle among the files of one agent top-level module, nor among the files of
//!   each crate in [`table::CYCLE_FREE_CRATES`].
//! - `unsafe` in the agent only under [`table::UNSAFE_MODULE`] (backing up the compiler's
//!   `deny(unsafe_code)` elsewhere).

mod cycles;
mod paths;
mod rules;
mod source;
mod table;
mod tree;

use std::path::Path;

use anyhow::{Result, bail};

use tree::Tree;

/// Runs every layering check on the workspace at `root`, prints each violation on stderr, and
/// fails if there was any.
pub fn check(root: &Path) -> Result<()> {
    let violations = violations(root)?;
    for v in &violations {
        eprintln!("{v}");
    }
    if !violations.is_empty() {
        bail!(
            "{} layering violation(s); the layers, top to bottom, are {} (xtask/src/layers/table.rs)",
            violations.len(),
            table::AGENT
                .iter()
                .map(|l| l.name)
                .collect::<Vec<_>>()
                .join(" > ")
        );
    }
    Ok(())
}

/// Every violation in the workspace at `root`, one message each.
pub fn violations(root: &Path) -> Result<Vec<String>> {
    let agent = Tree::load(root, table::AGENT_SRC)?;
    let mut out = agent_violations(&agent);
    for src in table::CYCLE_FREE_CRATES {
        let tree = Tree::load(root, src)?;
        out.extend(cycles::cycle_violations(&tree, |_| Some(String::new())));
    }
    Ok(out)
}

fn agent_violations(agent: &Tree) -> Vec<String> {
    let mut out = rules::layer_violations(agent, table::AGENT);
    // Cycles within each top-level module; the crate roots are above them all.
    out.extend(cycles::cycle_violations(agent, |i| {
        let file = &agent.files[i];
        (!file.is_root()).then(|| file.top.clone())
    }));
    out.extend(rules::unsafe_violations(agent, table::UNSAFE_MODULE));
    out
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A synthetic workspace in a temporary directory, removed on drop.
    struct Workspace(PathBuf);

    impl Workspace {
        fn new(files: &[(&str, &str)]) -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "xtask-layers-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            for src in ["agent/src", "common/src", "ebpf/src", "cni/src"] {
                fs::create_dir_all(dir.join(src)).unwrap();
            }
            for (path, text) in files {
                let path = dir.join(path);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(path, text).unwrap();
            }
            Self(dir)
        }

        fn violations(&self) -> Vec<String> {
            violations(&self.0).unwrap()
        }
    }

    impl Drop for Workspace {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A well-layered agent: every import goes down, or stays in its module.
    const GOOD: &[(&str, &str)] = &[
        (
            "agent/src/lib.rs",
            "pub mod cmd;\npub mod sys;\npub mod inspect;\n",
        ),
        ("agent/src/main.rs", "use meshsteer::cmd;\n"),
        (
            "agent/src/inspect.rs",
            "pub use crate::{cmd::Run, sys::fd};\n",
        ),
        (
            "agent/src/cmd/mod.rs",
            "mod run;\npub use self::run::Run;\n",
        ),
        (
            "agent/src/cmd/run.rs",
            "use crate::{registry::Pods, spec::{Spec, parse}};\nuse crate::sys::fd;\n\
             // use crate::inspect; (a comment)\nconst S: &str = \"crate::inspect\";\n",
        ),
        ("agent/src/registry.rs", "use crate::sys;\n"),
        ("agent/src/spec/mod.rs", "pub mod parse;\n"),
        ("agent/src/spec/parse.rs", "use super::Spec;\n"),
        (
            "agent/src/sys/fd.rs",
            "// SAFETY: …\npub fn f() { unsafe { g() } }\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
        ),
        ("common/src/lib.rs", "pub mod a;\npub mod b;\n"),
        ("common/src/a.rs", "use crate::b::B;\n"),
        ("common/src/b.rs", "pub struct B;\n"),
    ];

    fn with(changes: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut files: Vec<_> = GOOD
            .iter()
            .filter(|(p, _)| !changes.iter().any(|(c, _)| c == p))
            .copied()
            .collect();
        files.extend_from_slice(changes);
        files
    }

    #[test]
    fn a_well_layered_tree_passes() {
        assert_eq!(Workspace::new(GOOD).violations(), Vec::<String>::new());
    }

    #[test]
    fn upward_imports_are_named_with_file_line_and_layers() {
        let ws = Workspace::new(&with(&[
            (
                "agent/src/registry.rs",
                "use crate::sys;\nuse crate::{spec, cmd::Run};\n",
            ),
            (
                "agent/src/sys/fd.rs",
                "fn f() {\n    crate::registry::Pods::new();\n}\n",
            ),
            // `super` out of a top-level module is the crate root, the top layer.
            (
                "agent/src/spec/mod.rs",
                "pub mod parse;\nuse super::inspect;\n",
            ),
        ]));
        assert_eq!(
            ws.violations(),
            [
                "agent/src/registry.rs:2: registry imports cmd (upward)",
                "agent/src/spec/mod.rs:2: spec imports main (upward)",
                "agent/src/sys/fd.rs:2: sys imports registry (upward)",
            ]
        );
    }

    #[test]
    fn modules_outside_the_table_are_named_once() {
        let ws = Workspace::new(&with(&[
            ("agent/src/accel.rs", "use crate::cmd;\nuse crate::sys;\n"),
            ("agent/src/sys/mod.rs", "use crate::accel::X;\n"),
        ]));
        assert_eq!(
            ws.violations(),
            [
                "agent/src/accel.rs: module `accel` is in no layer of the table",
                "agent/src/sys/mod.rs:1: sys imports `accel`, which is in no layer",
            ]
        );
    }

    #[test]
    fn cycles_inside_a_module_and_a_crate_are_found() {
        let ws = Workspace::new(&with(&[
            (
                "agent/src/spec/mod.rs",
                "pub mod parse;\nuse self::parse::p;\n",
            ),
            ("common/src/b.rs", "\n\nuse crate::a;\n"),
            // The CNI plugin has no layers: imports either way are fine, a cycle is not.
            (
                "cni/src/lib.rs",
                "pub mod client;\npub mod plugin;\npub mod proto;\n",
            ),
            ("cni/src/plugin.rs", "use crate::{client, proto};\n"),
            ("cni/src/client.rs", "use crate::proto::Reply;\n"),
            ("cni/src/proto.rs", "use crate::plugin::run;\n"),
        ]));
        assert_eq!(
            ws.violations(),
            [
                "import cycle: agent/src/spec/mod.rs:2 -> agent/src/spec/parse.rs:1 -> agent/src/spec/mod.rs",
                "import cycle: common/src/a.rs:1 -> common/src/b.rs:3 -> common/src/a.rs",
                "import cycle: cni/src/client.rs:1 -> cni/src/proto.rs:1 -> cni/src/plugin.rs:1 -> cni/src/client.rs",
            ]
        );
    }

    #[test]
    fn unsafe_outside_sys_is_named() {
        let ws = Workspace::new(&with(&[(
            "agent/src/registry.rs",
            "use crate::sys;\n// unsafe in a comment\nfn f() -> &'static str { \"unsafe\" }\nunsafe fn g() {}\n",
        )]));
        assert_eq!(
            ws.violations(),
            ["agent/src/registry.rs:4: `unsafe` outside sys/"]
        );
    }
}
