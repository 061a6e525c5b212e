//! Import cycles among files: strongly connected components of the file graph.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::tree::Tree;

/// One message per cycle among files of one group; `group` gives a file's group (files with
/// `None` are left out, as are edges between groups).
pub fn cycle_violations(tree: &Tree, group: impl Fn(usize) -> Option<String>) -> Vec<String> {
    // file -> file it imports -> first line it does.
    let mut edges: Vec<BTreeMap<usize, usize>> = vec![BTreeMap::new(); tree.files.len()];
    for (from, file) in tree.files.iter().enumerate() {
        let Some(g) = group(from) else { continue };
        for r in &file.references {
            match tree.file_of(&r.path) {
                Some(to) if to != from && group(to).as_ref() == Some(&g) => {
                    edges[from].entry(to).or_insert(r.line);
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    for component in components(&edges) {
        if component.len() < 2 {
            continue;
        }
        let cycle = shortest_cycle(&edges, &component);
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|w| format!("{}:{}", tree.files[w[0]].shown, edges[w[0]][&w[1]]))
            .collect();
        // Each `file:line` is where that file imports the next one.
        out.push(format!(
            "import cycle: {} -> {}",
            steps.join(" -> "),
            tree.files[cycle[0]].shown
        ));
    }
    out
}

/// Tarjan's strongly connected components.
fn components(edges: &[BTreeMap<usize, usize>]) -> Vec<BTreeSet<usize>> {
    struct State<'a> {
        edges: &'a [BTreeMap<usize, usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        stack: Vec<usize>,
        on_stack: Vec<bool>,
        next: usize,
        out: Vec<BTreeSet<usize>>,
    }
    fn visit(s: &mut State<'_>, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in s.edges[v].keys() {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(i) if s.on_stack[w] => s.low[v] = s.low[v].min(i),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                component.insert(w);
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let n = edges.len();
    let mut s = State {
        edges,
        index: vec![None; n],
        low: vec![0; n],
        stack: Vec::new(),
        on_stack: vec![false; n],
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.out
}

/// A shortest cycle through the component's first file, as the files in order, first repeated
/// at the end.
fn shortest_cycle(edges: &[BTreeMap<usize, usize>], component: &BTreeSet<usize>) -> Vec<usize> {
    let start = *component.first().expect("a non-empty component");
    let mut parent: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in edges[v].keys().filter(|w| component.contains(w)) {
            if w == start {
                let mut path = vec![start, v];
                let mut at = v;
                while at != start {
                    at = parent[&at];
                    path.push(at);
                }
                path.reverse();
                return path;
            }
            if let Entry::Vacant(e) = parent.entry(w) {
                e.insert(v);
                queue.push_back(w);
            }
        }
    }
    vec![start, start]
}
