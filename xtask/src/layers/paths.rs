//! The module paths a file names: `crate::…`, `super::…` and `self::…` paths, grouped `use`
//! trees expanded, resolved against the module the path appears in (inline `mod x { … }`
//! blocks, such as `mod tests`, included).

use super::source::Token;

/// A path from the crate root that a file names, and the line it is named on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub path: Vec<String>,
    pub line: usize,
}

/// Every path `tokens` name, absolute, for a file whose module is `file_module`.
pub fn references(tokens: &[Token], file_module: &[String]) -> Vec<Reference> {
    let mut out = Vec::new();
    // Inline modules open at this point, with the brace depth inside each.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth: usize = 0;
    let text = |i: usize| tokens.get(i).map_or("", |t| t.text.as_str());
    let mut i = 0;
    while i < tokens.len() {
        match text(i) {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d > depth) {
                    inline.pop();
                }
            }
            "mod" if text(i + 2) == "{" => {
                inline.push((text(i + 1).to_string(), depth + 1));
            }
            // `$crate` is a macro's crate, `a::crate` no path of ours.
            "crate" if text(i + 1) == "::" && !matches!(text(i.wrapping_sub(1)), "$" | "::") => {
                for (path, line) in tree(tokens, i + 2, Vec::new(), tokens[i].line) {
                    out.push(Reference { path, line });
                }
            }
            first @ ("super" | "self")
                if text(i + 1) == "::" && text(i.wrapping_sub(1)) != "::" =>
            {
                let mut base: Vec<String> = file_module.to_vec();
                base.extend(inline.iter().map(|(name, _)| name.clone()));
                let mut j = i;
                if first == "self" {
                    j += 2;
                }
                let mut resolves = true;
                while text(j) == "super" && text(j + 1) == "::" {
                    resolves &= base.pop().is_some();
                    j += 2;
                }
                if resolves {
                    for (path, line) in tree(tokens, j, base, tokens[i].line) {
                        out.push(Reference { path, line });
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The paths of the `use`-tree (or plain path) starting at `i`, each prefixed by `prefix`,
/// with the line of its last segment (a grouped `use` spans lines; `line` is the prefix's).
fn tree(tokens: &[Token], i: usize, prefix: Vec<String>, line: usize) -> Vec<(Vec<String>, usize)> {
    let text = |i: usize| tokens.get(i).map_or("", |t| t.text.as_str());
    match text(i) {
        "{" => {
            let mut out = Vec::new();
            let mut j = i + 1;
            while j < tokens.len() && text(j) != "}" {
                out.extend(tree(tokens, j, prefix.clone(), line));
                j = item_end(tokens, j);
                if text(j) == "," {
                    j += 1;
                }
            }
            out
        }
        "*" | "self" => vec![(prefix, tokens[i].line)],
        name if name.starts_with(|c: char| c.is_alphabetic() || c == '_') => {
            let mut path = prefix;
            path.push(name.to_string());
            let line = tokens[i].line;
            if text(i + 1) == "::" && text(i + 2) != "<" {
                tree(tokens, i + 2, path, line)
            } else {
                vec![(path, line)]
            }
        }
        _ => vec![(prefix, line)],
    }
}

/// The index of the `,` or `}` that ends the group item starting at `i`.
fn item_end(tokens: &[Token], i: usize) -> usize {
    let mut depth = 0;
    let mut j = i;
    while let Some(t) = tokens.get(j) {
        match t.text.as_str() {
            "{" => depth += 1,
            "}" if depth == 0 => return j,
            "}" => depth -= 1,
            "," if depth == 0 => return j,
            _ => {}
        }
        j += 1;
    }
    j
}

#[cfg(test)]
mod tests {
    use super::super::source::{strip, tokens};
    use super::*;

    fn paths(src: &str, module: &[&str]) -> Vec<String> {
        let module: Vec<String> = module.iter().map(|s| s.to_string()).collect();
        references(&tokens(&strip(src)), &module)
            .into_iter()
            .map(|r| format!("{}:{}", r.line, r.path.join("::")))
            .collect()
    }

    #[test]
    fn plain_grouped_and_nested_use_trees() {
        let src = "use crate::a::b;\nuse crate::{c::d, e::{f, g::H as I}, j};\nlet x = crate::k::f();\n\
                   use crate::{\n    l,\n    m::n,\n};";
        assert_eq!(
            paths(src, &["m"]),
            [
                "1:a::b",
                "2:c::d",
                "2:e::f",
                "2:e::g::H",
                "2:j",
                "3:k::f",
                "5:l",
                "6:m::n"
            ]
        );
    }

    #[test]
    fn super_and_self_resolve_against_the_enclosing_module() {
        let src = "use super::x::Y;\nuse self::child::Z;\nuse super::super::top;\n\
                   mod tests {\n    use super::*;\n}\nuse super::{p, q};";
        assert_eq!(
            paths(src, &["a", "b"]),
            [
                "1:a::x::Y",
                "2:a::b::child::Z",
                "3:top",
                "5:a::b",
                "7:a::p",
                "7:a::q"
            ]
        );
    }

    #[test]
    fn macro_crate_and_visibility_are_not_paths() {
        let src = "pub(crate) fn f() {}\nmacro_rules! m { () => { $crate::x::y() } }\nuse other::crate::z;";
        assert!(paths(src, &["a"]).is_empty());
    }
}
