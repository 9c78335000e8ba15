//! Every reference in the repository resolves: the files, sections and anchors that Markdown
//! files and code comments cite exist in the repository (the citation style is in
//! `docs/README.md`).
//!
//! What is read: every `*.md` file whole, and the comments of source files (`//`, `///`, `//!`
//! in `.rs` and `.proto`; `#` in `.sh`, `.toml`, `.yaml`, `.yml`; `#` and `"""` docstrings in
//! `.py`), under the repository root, skipping `target/` directories, the root's `models/`
//! (downloaded weights) and hidden directories (`.git/`, ...). String literals are not read.
//!
//! What is a reference (`references/extract.rs`):
//! 1. a token ending in `.md`, optionally followed by `#anchor`, `§N` (or `§N, §M`, then
//!    optionally `, "Subsection"`) or `"Heading"`. It resolves against the repository root, else
//!    against the citing file's directory (so a bare page name inside `docs/` names a sibling);
//! 2. a word inside backticks that starts with a top-level directory (`worker/`, `docs/`,
//!    `scripts/`, ..., `extract::TOP_DIRS`), resolved against the root; a `:line` suffix is
//!    dropped, and a path holding a glob or placeholder (`*`, `<...>`, `{...}`, `$`, `...`) is
//!    checked up to the last `/` before it;
//! 3. in a Markdown file, the target of a link, `path#anchor`, resolved against the citing
//!    file (a bare `#anchor` is the file itself). In code comments link targets are rustdoc
//!    paths and are not read (a `.md` target is still a rule-1 token).
//!
//! Never references: URLs, and tokens holding a glob or placeholder (rule 1), and words that
//! start elsewhere (`OUTPUT/...`, `models/...`, `crate::...`; rule 2).
//!
//! A section must exist in the cited Markdown file (`references/anchors.rs`): `#anchor` as a
//! heading's GitHub slug or an explicit `<a id="...">` / `{#...}`; `§N` as a heading containing
//! `§N` or an anchor `sN`; `"Heading"` as a heading of that text.
//!
//! The failure lists every broken reference as `file:line: reference`.

#[path = "references/anchors.rs"]
mod anchors;
#[path = "references/comments.rs"]
mod comments;
#[path = "references/extract.rs"]
mod extract;

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use anchors::Sections;
use comments::{scanned_lines, Kind};
use extract::{references, Base, Reference};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the coordinator crate lives in the workspace")
        .to_path_buf()
}

/// Files to scan, relative to `root`, sorted.
fn files(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = dir.join(&name);
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                let skipped = name.starts_with('.')
                    || name == "target"
                    || (dir.as_os_str().is_empty() && name == "models");
                if !skipped {
                    walk(root, &rel, out);
                }
            } else if kind.is_file() && Kind::of(&rel).is_some() {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out);
    out.sort();
    out
}

/// `a/b/../c` → `a/c`, without touching the file system; None if it climbs out of the root.
fn normalise(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// The repository-relative file a reference names, if it exists.
fn resolve(root: &Path, file: &Path, r: &Reference) -> Option<PathBuf> {
    let here = file.parent().unwrap_or(Path::new(""));
    let candidates = match r.base {
        Base::Root => vec![PathBuf::from(&r.path)],
        Base::File if r.path.is_empty() => vec![file.to_path_buf()],
        Base::File => vec![here.join(&r.path)],
        Base::RootOrFile => vec![PathBuf::from(&r.path), here.join(&r.path)],
    };
    candidates
        .iter()
        .filter_map(|c| normalise(c))
        .find(|c| root.join(c).exists())
}

/// (file, line, what does not resolve) for every broken reference under `root`, in file order.
fn broken(root: &Path) -> Vec<(String, String, String)> {
    let mut sections: HashMap<PathBuf, Sections> = HashMap::new();
    let mut out = Vec::new();
    for file in files(root) {
        let kind = Kind::of(&file).unwrap();
        let Ok(content) = std::fs::read_to_string(root.join(&file)) else {
            continue; // not UTF-8: nothing we would cite from
        };
        let shown = file.to_string_lossy().into_owned();
        for (line, text) in scanned_lines(kind, &content) {
            for r in references(&text, kind == Kind::Markdown) {
                let what = if r.path.is_empty() {
                    "(this file)".to_string()
                } else {
                    r.path.clone()
                };
                let Some(target) = resolve(root, &file, &r) else {
                    out.push((shown.clone(), format!("{line}"), what));
                    continue;
                };
                if r.sections.is_empty() || target.extension().is_none_or(|e| e != "md") {
                    continue;
                }
                let s = sections.entry(target.clone()).or_insert_with(|| {
                    Sections::of(&std::fs::read_to_string(root.join(&target)).unwrap())
                });
                for section in r.sections.iter().filter(|x| !s.has(x)) {
                    out.push((
                        shown.clone(),
                        format!("{line}"),
                        format!("{what} {section:?} (no such section)"),
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn every_reference_resolves() {
    let root = root();
    let report: Vec<String> = broken(&root)
        .iter()
        .map(|(file, line, what)| format!("{file}:{line}: {what}"))
        .collect();
    assert!(
        report.is_empty(),
        "{} reference(s) do not resolve:\n{}",
        report.len(),
        report.join("\n")
    );
}

#[test]
fn the_scan_sees_the_repository() {
    // Guards against a walk that silently finds nothing (a wrong root, a skipped tree).
    let files = files(&root());
    for expected in [
        "docs/architecture.md",
        "worker/src/lib.rs",
        "proto/mirrorplay/v1/jobs.proto",
        "scripts/merge_reference.py",
        "configs/quickstart.toml",
        "coordinator/tests/references.rs",
    ] {
        assert!(
            files.iter().any(|f| f == Path::new(expected)),
            "{expected} not scanned"
        );
    }
    assert!(!files.iter().any(|f| f.starts_with("target")));
}

#[test]
fn broken_references_are_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write(
        "docs/guide.md",
        "# Guide\n<a id=\"s1\"></a>\n## §1 Start\n### Data\nSee [top](#guide) and [x](other.md).\n",
    );
    // Each line its own literal, so that the scan of this file sees string literals here.
    let rust = [
        "//! From docs/guide.md §1, \"Data\" and docs/guide.md#s1.",
        "//! Broken: OLD.md §2, docs/guide.md §2, docs/guide.md#nowhere, `worker/src/gone.rs`.",
        "const URL: &str = \"see OLD.md\"; // `worker/src/a.rs` exists, [`f`](crate::f)",
    ];
    write("worker/src/a.rs", &rust.join("\n"));
    write(
        "scripts/b.py",
        "\"\"\"Doc citing NOTES.md.\"\"\"\nx = \"MISSING.md\"  # and docs/guide.md \"Start\"\n",
    );
    let found: Vec<String> = broken(dir.path())
        .into_iter()
        .map(|(f, l, w)| format!("{f}:{l}: {w}"))
        .collect();
    assert_eq!(
        found,
        vec![
            "docs/guide.md:5: other.md",
            "scripts/b.py:1: NOTES.md",
            "scripts/b.py:2: docs/guide.md Heading(\"Start\") (no such section)",
            "worker/src/a.rs:2: OLD.md",
            "worker/src/a.rs:2: docs/guide.md Number(\"§2\") (no such section)",
            "worker/src/a.rs:2: docs/guide.md Anchor(\"nowhere\") (no such section)",
            "worker/src/a.rs:2: worker/src/gone.rs",
        ]
    );
}
