//! A crate's source files, each with its module path and the paths it names.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::paths::{Reference, references};
use super::source::{Token, strip, tokens};

#[derive(Debug)]
pub struct File {
    /// As shown in messages: relative to the workspace root.
    pub shown: String,
    /// Its module path from the crate root (empty for `lib.rs` and `main.rs`).
    pub module: Vec<String>,
    /// Its top-level module: the first segment, or the file stem of a crate root.
    pub top: String,
    pub tokens: Vec<Token>,
    pub references: Vec<Reference>,
}

impl File {
    pub fn is_root(&self) -> bool {
        self.module.is_empty()
    }
}

/// Every `.rs` file under one crate's `src`.
#[derive(Debug)]
pub struct Tree {
    pub files: Vec<File>,
}

impl Tree {
    /// Reads `root/src_dir`; file names are shown relative to `root`.
    pub fn load(root: &Path, src_dir: &str) -> Result<Self> {
        let src = root.join(src_dir);
        let mut paths = Vec::new();
        collect(&src, &mut paths)?;
        paths.sort();
        let mut files = Vec::new();
        for path in paths {
            let rel = path.strip_prefix(&src).unwrap_or(&path);
            let module = module_path(rel);
            let top = match module.first() {
                Some(top) => top.clone(),
                None => stem(rel),
            };
            let text =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let tokens = tokens(&strip(&text));
            let references = references(&tokens, &module);
            files.push(File {
                shown: format!("{src_dir}/{}", rel.display()),
                module,
                top,
                tokens,
                references,
            });
        }
        Ok(Self { files })
    }

    /// The file that defines `path` (or the longest prefix of it that is a file's module:
    /// the rest names items or inline modules). Paths into the crate root resolve to
    /// `lib.rs`, else `main.rs`.
    pub fn file_of(&self, path: &[String]) -> Option<usize> {
        (0..=path.len()).rev().find_map(|n| {
            let prefix = &path[..n];
            let mut matching = self
                .files
                .iter()
                .enumerate()
                .filter(|(_, f)| f.module == prefix);
            if prefix.is_empty() {
                let roots: Vec<_> = matching.collect();
                roots
                    .iter()
                    .find(|(_, f)| f.top == "lib")
                    .or(roots.first())
                    .map(|(i, _)| *i)
            } else {
                matching.next().map(|(i, _)| i)
            }
        })
    }

    /// The top-level module `path` falls in: its first segment when files live there, else
    /// the crate root's (`lib`, else `main`).
    pub fn top_of(&self, path: &[String]) -> Option<&str> {
        if let Some(first) = path.first()
            && let Some(f) = self.files.iter().find(|f| f.module.first() == Some(first))
        {
            return Some(&f.top);
        }
        let root = self.file_of(&[])?;
        Some(&self.files[root].top)
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

fn stem(rel: &Path) -> String {
    rel.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `lib.rs`/`main.rs` → the crate root; `a/b.rs` and `a/b/mod.rs` → `a::b`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().unwrap_or_default();
    let at_root = parts.is_empty();
    match file.strip_suffix(".rs") {
        Some("mod") => {}
        Some("lib" | "main") if at_root => {}
        Some(name) => parts.push(name.to_string()),
        None => {}
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_paths_follow_the_file_layout() {
        let m = |p: &str| module_path(Path::new(p)).join("::");
        assert_eq!(m("lib.rs"), "");
        assert_eq!(m("main.rs"), "");
        assert_eq!(m("cmd.rs"), "cmd");
        assert_eq!(m("cmd/mod.rs"), "cmd");
        assert_eq!(m("cmd/run.rs"), "cmd::run");
        assert_eq!(m("cmd/main.rs"), "cmd::main");
    }
}
