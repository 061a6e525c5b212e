//! The agent's rules: imports only go down the layer table; `unsafe` only in its one module.

use super::table::Layer;
use super::tree::Tree;

/// Where `top` sits in `layers` (0 is the top).
fn layer_of(layers: &[Layer], top: &str) -> Option<usize> {
    layers.iter().position(|l| l.modules.contains(&top))
}

/// One message per import that goes up (or sideways) the table, and per top-level module the
/// table does not place.
pub fn layer_violations(tree: &Tree, layers: &[Layer]) -> Vec<String> {
    let mut out = Vec::new();
    let mut unplaced: Vec<&str> = Vec::new();
    for file in &tree.files {
        let Some(from) = layer_of(layers, &file.top) else {
            if !unplaced.contains(&file.top.as_str()) {
                unplaced.push(&file.top);
                out.push(format!(
                    "{}: module `{}` is in no layer of the table",
                    file.shown, file.top
                ));
            }
            continue;
        };
        // The first layer (crate roots, the tests' facade) may use anything.
        if from == 0 {
            continue;
        }
        for r in &file.references {
            let Some(top) = tree.top_of(&r.path) else {
                continue;
            };
            if top == file.top {
                continue;
            }
            let name = layers[from].name;
            match layer_of(layers, top) {
                Some(to) if to > from => {}
                Some(to) if to == from => out.push(format!(
                    "{}:{}: {name} imports {} (same layer)",
                    file.shown, r.line, layers[to].name
                )),
                Some(to) => out.push(format!(
                    "{}:{}: {name} imports {} (upward)",
                    file.shown, r.line, layers[to].name
                )),
                None => out.push(format!(
                    "{}:{}: {name} imports `{top}`, which is in no layer",
                    file.shown, r.line
                )),
            }
        }
    }
    out
}

/// One message per `unsafe` outside the top-level module `allowed`.
pub fn unsafe_violations(tree: &Tree, allowed: &str) -> Vec<String> {
    let mut out = Vec::new();
    for file in tree.files.iter().filter(|f| f.top != allowed) {
        for t in file.tokens.iter().filter(|t| t.text == "unsafe") {
            out.push(format!(
                "{}:{}: `unsafe` outside {allowed}/",
                file.shown, t.line
            ));
        }
    }
    out
}
