//! Which text of a file the reference check reads: all of a Markdown file, only the comments of
//! a source file. Line-based and deliberately simple: a comment marker inside a string literal
//! on the same line is skipped (quotes are tracked per line), a string spanning lines is not
//! tracked.

/// How a file's scanned text is found, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `.md`: every line.
    Markdown,
    /// `.rs`, `.proto`: `//` comments (`///` and `//!` included).
    Slashes,
    /// `.sh`, `.toml`, `.yaml`, `.yml`: `#` comments.
    Hash,
    /// `.py`: `#` comments and `"""` docstrings.
    Python,
}

impl Kind {
    pub fn of(path: &std::path::Path) -> Option<Kind> {
        match path.extension()?.to_str()? {
            "md" => Some(Kind::Markdown),
            "rs" | "proto" => Some(Kind::Slashes),
            "sh" | "toml" | "yaml" | "yml" => Some(Kind::Hash),
            "py" => Some(Kind::Python),
            _ => None,
        }
    }
}

/// (1-based line number, scanned text) for every line with something to scan.
pub fn scanned_lines(kind: Kind, content: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_docstring = false;
    for (i, line) in content.lines().enumerate() {
        let text = match kind {
            Kind::Markdown => Some(line),
            Kind::Slashes => comment(line, "//"),
            Kind::Hash => comment(line, "#"),
            Kind::Python => {
                let quotes = line.matches("\"\"\"").count();
                if in_docstring || quotes > 0 {
                    // A line that opens, closes or lies inside a docstring is read whole.
                    in_docstring ^= quotes % 2 == 1;
                    Some(line)
                } else {
                    comment(line, "#")
                }
            }
        };
        if let Some(text) = text {
            out.push((i + 1, text.to_string()));
        }
    }
    out
}

/// The comment of one line: from the first `marker` that is outside a string literal and
/// starts the line or follows whitespace (so `$#` or `a#b` are not comments).
fn comment<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let bytes = line.as_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) => {
                if b == b'\\' {
                    i += 1;
                } else if b == q {
                    quote = None;
                }
            }
            None => {
                if line[i..].starts_with(marker) && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
                    return Some(&line[i..]);
                }
                if b == b'"' {
                    quote = Some(b'"');
                } else if b == b'\'' {
                    // Rust: a char literal ('"', '\'') is skipped, a lifetime is not a quote.
                    // Elsewhere ('...' strings in shell, TOML, Python) it opens a string.
                    if marker == "//" {
                        if let Some(len) = char_literal_len(&line[i..]) {
                            i += len;
                            continue;
                        }
                    } else {
                        quote = Some(b'\'');
                    }
                }
            }
        }
        i += 1;
    }
    None
}

/// Length in bytes of a Rust char literal at the start of `s` (`'x'`, `'\n'`, `'\''`), if any.
fn char_literal_len(s: &str) -> Option<usize> {
    let mut chars = s.char_indices().skip(1);
    let (_, c) = chars.next()?;
    if c == '\\' {
        chars.next()?;
    }
    match chars.next()? {
        (at, '\'') => Some(at + 1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_outside_strings_only() {
        assert_eq!(comment("let a = 1; // x", "//"), Some("// x"));
        assert_eq!(comment("/// doc", "//"), Some("/// doc"));
        assert_eq!(comment(r#"let u = "file:///a"; // y"#, "//"), Some("// y"));
        assert_eq!(comment(r#"let u = "file:///a";"#, "//"), None);
        assert_eq!(comment(r#"let q = '"'; // z"#, "//"), Some("// z"));
        assert_eq!(comment("fn f<'a>(x: &'a str) // w", "//"), Some("// w"));
        assert_eq!(comment("echo $# ${#A} # c", "#"), Some("# c"));
        assert_eq!(comment("key = \"a # b\" # c", "#"), Some("# c"));
        assert_eq!(comment("  # indented", "#"), Some("# indented"));
    }

    #[test]
    fn python_docstrings_are_read_whole() {
        let py = "\"\"\"Doc\nsecond line\n\"\"\"\nx = 1\ny = 2  # note\n";
        let lines: Vec<usize> = scanned_lines(Kind::Python, py)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(lines, vec![1, 2, 3, 5]);
    }
}
