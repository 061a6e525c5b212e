//! Rust source as tokens, with comments and string/char literals gone: enough to find paths
//! (`crate::…`, `super::…`, `mod x {`) and keywords without mistaking prose for code.

/// One token and the line (1-based) it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub text: String,
    pub line: usize,
}

/// `src` with every comment and string or char literal replaced by spaces (newlines kept, so
/// line numbers still hold).
pub fn strip(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    // Blanks chars[from..to], keeping newlines.
    let blank = |out: &mut String, from: usize, to: usize| {
        for c in &chars[from..to.min(chars.len())] {
            out.push(if *c == '\n' { '\n' } else { ' ' });
        }
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let end = if c == '/' && next == Some('/') {
            chars[i..]
                .iter()
                .position(|&c| c == '\n')
                .map_or(chars.len(), |n| i + n)
        } else if c == '/' && next == Some('*') {
            block_comment_end(&chars, i)
        } else if c == '"' {
            quoted_end(&chars, i + 1, '"')
        } else if let Some(end) = raw_string_end(&chars, i) {
            end
        } else if c == '\'' {
            match char_literal_end(&chars, i) {
                Some(end) => end,
                None => {
                    // A lifetime or label: code.
                    out.push(c);
                    i += 1;
                    continue;
                }
            }
        } else {
            out.push(c);
            i += 1;
            continue;
        };
        blank(&mut out, i, end);
        i = end;
    }
    out
}

/// Block comments nest in Rust.
fn block_comment_end(chars: &[char], start: usize) -> usize {
    let (mut depth, mut i) = (0, start);
    while i + 1 < chars.len() {
        match (chars[i], chars[i + 1]) {
            ('/', '*') => {
                depth += 1;
                i += 2;
            }
            ('*', '/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    chars.len()
}

/// The index after the `close` that ends a literal whose body starts at `from` (backslash
/// escapes skipped).
fn quoted_end(chars: &[char], from: usize, close: char) -> usize {
    let mut i = from;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            c if c == close => return i + 1,
            _ => i += 1,
        }
    }
    chars.len()
}

/// `r"…"`, `r#"…"#`, `br"…"` starting at `start`: the index after it. (`b"…"` is caught by the
/// plain string case one character later, the `b` staying behind as harmless code.)
fn raw_string_end(chars: &[char], start: usize) -> Option<usize> {
    let prev_is_ident = start > 0 && is_ident_char(chars[start - 1]);
    let mut i = start;
    if chars.get(i) == Some(&'b') {
        i += 1;
    }
    if prev_is_ident || chars.get(i) != Some(&'r') {
        return None;
    }
    i += 1;
    let hashes = chars[i..].iter().take_while(|&&c| c == '#').count();
    i += hashes;
    if chars.get(i) != Some(&'"') {
        return None;
    }
    i += 1;
    while i < chars.len() {
        if chars[i] == '"'
            && chars[i + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == '#')
                .count()
                == hashes
        {
            return Some(i + 1 + hashes);
        }
        i += 1;
    }
    Some(chars.len())
}

/// A char literal at `start` (`'x'`, `'\n'`, `'\u{1F600}'`): the index after it; `None` for a
/// lifetime or label (`'a`, `'outer:`).
fn char_literal_end(chars: &[char], start: usize) -> Option<usize> {
    match chars.get(start + 1)? {
        '\\' => Some(quoted_end(chars, start + 1, '\'')),
        _ if chars.get(start + 2) == Some(&'\'') => Some(start + 3),
        _ => None,
    }
}

pub fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The tokens of stripped source: identifiers (and numbers), `::`, and single punctuation.
pub fn tokens(stripped: &str) -> Vec<Token> {
    let chars: Vec<char> = stripped.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if is_ident_char(c) {
            let len = chars[i..].iter().take_while(|&&c| is_ident_char(c)).count();
            out.push(Token {
                text: chars[i..i + len].iter().collect(),
                line,
            });
            i += len;
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push(Token {
                text: "::".into(),
                line,
            });
            i += 2;
        } else {
            out.push(Token {
                text: c.to_string(),
                line,
            });
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(src: &str) -> Vec<String> {
        tokens(&strip(src)).into_iter().map(|t| t.text).collect()
    }

    #[test]
    fn comments_and_literals_are_not_code() {
        let src = "// use crate::a;\n/* crate::b /* nested */ unsafe */ let s = \"crate::c\";\n\
                   let r = r#\"unsafe \"crate::d\"\"#; let q = '\"'; crate::e";
        let t = texts(src);
        assert!(
            !t.iter()
                .any(|t| ["a", "b", "c", "d", "unsafe"].contains(&t.as_str()))
        );
        assert!(t.ends_with(&["crate".into(), "::".into(), "e".into()]));
    }

    #[test]
    fn lifetimes_stay_code_and_lines_are_kept() {
        let t = tokens(&strip("fn f<'a>(x: &'a str) {}\n/* one\ntwo */ crate::x"));
        assert!(t.iter().any(|t| t.text == "str"));
        assert_eq!(t.last().map(|t| t.line), Some(3));
    }
}
