//! A pod cgroup's path in a form that compares cheaply. Every enrolment checks its cgroup
//! against every other pod's (neither may hold the other); with `Path::starts_with` that
//! walked both paths' components for each pod, most of the agent's CPU when 1,000 pods were
//! enrolled at once (a restart). Normalised once, nesting is a byte prefix that ends at a '/'.
use std::{
    os::unix::ffi::OsStringExt,
    path::{Path, PathBuf},
};

/// The path's components joined by '/' (no repeated, trailing or `.` separators): equal and
/// nested exactly when the `Path`s are, component by component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct CgroupPath(Vec<u8>);

impl CgroupPath {
    pub(super) fn new(path: &Path) -> Self {
        let normal: PathBuf = path.components().collect();
        Self(normal.into_os_string().into_vec())
    }

    /// One holds the other, and they are not the same.
    pub(super) fn nests_with(&self, other: &Self) -> bool {
        under(&self.0, &other.0) || under(&other.0, &self.0)
    }
}

/// `child` lies strictly below `parent`.
fn under(child: &[u8], parent: &[u8]) -> bool {
    child.len() > parent.len()
        && child.starts_with(parent)
        && (parent.ends_with(b"/") || child[parent.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Agrees with `Path` on every pair of these, the awkward spellings included.
    #[test]
    fn nesting_is_what_path_says() {
        let paths = [
            "/",
            "/a",
            "/a/",
            "//a//b",
            "/a/b",
            "/a/b/",
            "/a/./b",
            "/a/bc",
            "/a/b/c",
            "/a/b/c/d",
            "/ab",
            "/b",
            "a/b",
            "a",
            "/a/../a/b",
        ];
        for x in paths {
            for y in paths {
                let (px, py) = (Path::new(x), Path::new(y));
                let want = px != py && (px.starts_with(py) || py.starts_with(px));
                let (cx, cy) = (CgroupPath::new(px), CgroupPath::new(py));
                assert_eq!(cx.nests_with(&cy), want, "{x} and {y}");
                assert_eq!(cx == cy, px == py, "{x} == {y}");
            }
        }
    }
}
