//! The references in one line of scanned text (the rules are listed in `references.rs`'s doc).

/// The repository's top-level directories: a backticked path starting with one of these is a
/// repository path.
pub const TOP_DIRS: [&str; 11] = [
    "worker/",
    "coordinator/",
    "proto/",
    "docs/",
    "scripts/",
    "bench/",
    "configs/",
    "examples/",
    "k8s/",
    ".ci/",
    "assets/",
];

/// What a reference points into, besides the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Section {
    /// `#anchor`: a heading's slug or an explicit anchor.
    Anchor(String),
    /// `§N`: a heading containing `§N`, or an anchor `sN`.
    Number(String),
    /// `"Heading"` right after the file name: a heading with that text.
    Heading(String),
}

/// How a reference's path is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// Relative to the citing file's directory (a Markdown link target).
    File,
    /// Relative to the repository root, else to the citing file's directory (a bare file name
    /// in `docs/` names a sibling page).
    RootOrFile,
    /// Relative to the repository root (a backticked repository path).
    Root,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The path as written (empty for an in-page `#anchor` link).
    pub path: String,
    pub base: Base,
    pub sections: Vec<Section>,
}

/// Characters that end a file name token when walking back from `.md`.
fn stops(c: char) -> bool {
    c.is_whitespace() || "()[]`\"'|,;=".contains(c)
}

/// A pattern that only looks like a path: a URL, a glob, a placeholder, an ellipsis.
fn is_pattern(s: &str) -> bool {
    s.contains("://")
        || s.starts_with("http")
        || s.starts_with("www.")
        || s.contains("...")
        || s.contains(['*', '<', '>', '{', '}', '$'])
}

/// Every reference in `text`: `.md` tokens, backticked repository paths and, in a Markdown
/// file, link targets. (In code comments a link target is a rustdoc path, and a `.md` one is
/// left to rule 1.)
pub fn references(text: &str, markdown: bool) -> Vec<Reference> {
    let mut out = md_tokens(text, markdown);
    if markdown {
        out.extend(link_targets(text));
    }
    out.extend(backticked_paths(text));
    out
}

/// Rule 1: a token ending in `.md` (not a link target), with an optional `#anchor`, `§N`
/// (and `, §M` ...) or `"Heading"` after it.
fn md_tokens(text: &str, markdown: bool) -> Vec<Reference> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices(".md") {
        let end = at + 3;
        let rest = &text[end..];
        if rest.starts_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue; // `.mdx`, `.md_file`
        }
        let start = text[..at]
            .char_indices()
            .rev()
            .find(|&(_, c)| stops(c))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let token = &text[start..end];
        if token == ".md" || is_pattern(token) || (markdown && text[..start].ends_with("](")) {
            continue; // `.md` alone, a URL or placeholder, or a Markdown link target (rule 3)
        }
        out.push(Reference {
            path: token.to_string(),
            base: Base::RootOrFile,
            sections: sections_after(rest),
        });
    }
    out
}

/// What follows a `.md` token: `#anchor`, ` §N[, §M ...][, "Subsection"]` or ` "Heading"`.
fn sections_after(rest: &str) -> Vec<Section> {
    if let Some(anchor) = rest.strip_prefix('#') {
        let name: String = anchor
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        return vec![Section::Anchor(name)];
    }
    if let Some(quoted) = rest.strip_prefix(" \"") {
        if let Some(close) = quoted.find('"') {
            return vec![Section::Heading(quoted[..close].to_string())];
        }
    }
    let mut out = Vec::new();
    let mut rest = rest;
    while let Some(number) = rest.trim_start_matches([' ', ',', ';']).strip_prefix('§') {
        let digits: String = number.chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() {
            break;
        }
        out.push(Section::Number(format!("§{digits}")));
        rest = &number[digits.len()..];
    }
    // `§N, "Subsection"`: the subsection's heading too.
    if let Some(quoted) = rest.strip_prefix(", \"").filter(|_| !out.is_empty()) {
        if let Some(close) = quoted.find('"') {
            out.push(Section::Heading(quoted[..close].to_string()));
        }
    }
    out
}

/// Rule 3: the target of a Markdown link, if not a URL, relative to the file.
fn link_targets(text: &str) -> Vec<Reference> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices("](") {
        let target = &text[at + 2..];
        let Some(close) = target.find(')') else {
            continue;
        };
        let target = target[..close].trim();
        if target.is_empty() || is_pattern(target) || target.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((p, a)) => (p, vec![Section::Anchor(a.to_string())]),
            None => (target, vec![]),
        };
        out.push(Reference {
            path: path.to_string(),
            base: Base::File,
            sections: anchor,
        });
    }
    out
}

/// Rule 2: a word inside a backtick span that starts with a top-level directory. A path with a
/// glob or placeholder is checked up to the last `/` before it; `:line` suffixes are dropped;
/// `.md` paths are left to rule 1.
fn backticked_paths(text: &str) -> Vec<Reference> {
    if text.trim_start().starts_with("```") {
        return vec![];
    }
    let mut out = Vec::new();
    let spans: Vec<&str> = text.split('`').collect();
    // Odd pieces are inside a span; a final unmatched backtick opens no span.
    let complete = if spans.len().is_multiple_of(2) {
        spans.len() - 1
    } else {
        spans.len()
    };
    for span in spans[..complete].iter().skip(1).step_by(2) {
        for word in span.split_whitespace() {
            let word = word.trim_start_matches(['(', '[', '"', '\'']);
            let word = word.split(':').next().unwrap_or(word);
            let word = word.trim_end_matches([',', ';', ')', ']', '"', '\'']);
            if !TOP_DIRS.iter().any(|d| word.starts_with(d)) || word.contains(".md") {
                continue;
            }
            let path = match word.find(['*', '<', '{', '$']).or_else(|| word.find("...")) {
                Some(cut) => match word[..cut].rfind('/') {
                    Some(slash) => &word[..=slash],
                    None => continue,
                },
                None => word,
            };
            out.push(Reference {
                path: path.to_string(),
                base: Base::Root,
                sections: vec![],
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(text: &str) -> Vec<(String, Vec<Section>)> {
        references(text, true)
            .into_iter()
            .map(|r| (r.path, r.sections))
            .collect()
    }

    #[test]
    fn md_tokens_with_their_sections() {
        use Section::*;
        assert_eq!(
            paths("see OLD.md §3, §4 and docs/a.md#s1, also x.md \"Outputs\"; y.md §6, \"Data\""),
            vec![
                (
                    "OLD.md".into(),
                    vec![Number("§3".into()), Number("§4".into())]
                ),
                ("docs/a.md".into(), vec![Anchor("s1".into())]),
                ("x.md".into(), vec![Heading("Outputs".into())]),
                (
                    "y.md".into(),
                    vec![Number("§6".into()), Heading("Data".into())]
                ),
            ]
        );
        assert_eq!(
            paths("(NOTES.md's table)"),
            vec![("NOTES.md".into(), vec![])]
        );
        // URLs, globs and placeholders only look like paths.
        assert!(paths("https://github.com/o/r/blob/main/README.md *.md <name>.md").is_empty());
    }

    #[test]
    fn link_targets_are_relative_to_the_file() {
        let refs = references(
            "[GUIDE.md](../GUIDE.md#setup) and [here](#local) [w](https://x.y)",
            true,
        );
        assert_eq!(refs.len(), 3);
        assert_eq!(refs[0].path, "GUIDE.md"); // link text is a rule-1 token
        assert_eq!(refs[0].base, Base::RootOrFile);
        assert_eq!(refs[1].path, "../GUIDE.md");
        assert_eq!(refs[1].base, Base::File);
        assert_eq!(refs[1].sections, vec![Section::Anchor("setup".into())]);
        assert_eq!((refs[2].path.as_str(), refs[2].base), ("", Base::File));
        // In a code comment a link target is a rustdoc path; a `.md` one is a rule-1 token.
        let refs = references("[`f`](super::f), [n](../NOTES.md)", false);
        assert_eq!(refs.len(), 1);
        assert_eq!(
            (refs[0].path.as_str(), refs[0].base),
            ("../NOTES.md", Base::RootOrFile)
        );
    }

    #[test]
    fn backticked_repository_paths() {
        let text = "`worker/src/a.rs:12`, `python scripts/b.py --x`, `configs/sp-<algo>.toml`, \
                    `OUTPUT/model/`, `models/x/`, `crate::a`, `bench/c.sh";
        let found: Vec<String> = references(text, false)
            .into_iter()
            .map(|r| r.path)
            .collect();
        assert_eq!(found, vec!["worker/src/a.rs", "scripts/b.py", "configs/"]);
    }
}
