//! The images can be built from the repository: every path that `Dockerfile` and
//! `Dockerfile.cuda` COPY from the build context exists and is not excluded by `.dockerignore`,
//! the binaries the manifests run are the ones the images install, and the final stage runs as
//! the non-root user the manifests expect (uid 10001). (No container registry is reachable on
//! the machines that run this, so the images themselves are not built here.)

mod common;

use common::repo_root;

/// The COPY instructions of a Dockerfile that read the build context: (line, sources).
fn context_copies(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"COPY") || words.iter().any(|w| w.starts_with("--from")) {
            continue;
        }
        let args: Vec<String> = words[1..]
            .iter()
            .filter(|w| !w.starts_with("--"))
            .map(|w| w.to_string())
            .collect();
        assert!(args.len() >= 2, "line {}: {line}", i + 1);
        out.push((i + 1, args[..args.len() - 1].to_vec()));
    }
    out
}

/// Top-level entries that `.dockerignore` excludes (its lines of the form `NAME/`).
fn ignored() -> Vec<String> {
    std::fs::read_to_string(repo_root().join(".dockerignore"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("**"))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect()
}

#[test]
fn every_path_the_dockerfiles_copy_exists_and_is_in_the_context() {
    let ignored = ignored();
    for name in ["Dockerfile", "Dockerfile.cuda"] {
        let text = std::fs::read_to_string(repo_root().join(name)).unwrap();
        let copies = context_copies(&text);
        assert!(copies.len() >= 5, "{name}: {copies:?}");
        for (line, sources) in copies {
            for src in sources {
                let path = repo_root().join(&src);
                assert!(path.exists(), "{name}:{line}: COPY {src}: no such path");
                let top = src.split('/').next().unwrap();
                assert!(
                    !ignored.iter().any(|i| i == top || i == &src),
                    "{name}:{line}: COPY {src} is excluded by .dockerignore"
                );
            }
        }
        // The binaries every manifest runs, installed on PATH, and a non-root final user.
        assert!(
            text.contains("/out/mirrorplay /out/mirrorplay-worker /usr/local/bin/"),
            "{name}"
        );
        let last_user = text
            .lines()
            .rfind(|l| l.starts_with("USER "))
            .unwrap_or_else(|| panic!("{name}: no USER"));
        assert_eq!(last_user, "USER 10001:10001", "{name}");
    }
}

#[test]
fn the_copy_check_sees_a_missing_path() {
    let copies =
        context_copies("FROM x AS b\nCOPY --from=b /out/a /bin/\nCOPY nothing-here dir/ /dst/\n");
    assert_eq!(
        copies,
        vec![(3, vec!["nothing-here".to_string(), "dir/".to_string()])]
    );
    assert!(!repo_root().join("nothing-here").exists());
}
