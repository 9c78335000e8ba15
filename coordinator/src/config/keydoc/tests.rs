//! `docs/configuration.md` is the generator's output, and `keys::KEYS` describes exactly the
//! keys the reader resolves.

use std::path::PathBuf;

use super::super::keys::KEYS;
use super::*;

fn page_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md")
}

fn all() -> Vec<Occurrence> {
    occurrences().unwrap_or_else(|e| panic!("a sample config fails to parse: {e}"))
}

#[test]
fn every_resolved_key_is_documented() {
    let missing = undocumented(&all(), KEYS);
    assert!(
        missing.is_empty(),
        "keys the config reader resolves but coordinator/src/config/keys.rs does not describe \
         (add a KeyDoc for each): {missing:?}"
    );
    let tables: Vec<String> = all().into_iter().map(|o| o.table).collect();
    for table in tables {
        assert!(
            SECTIONS.iter().any(|s| s.table == table),
            "table `{table}` has no section in keys::SECTIONS"
        );
    }
}

#[test]
fn every_documented_key_is_resolved() {
    let stale = stale(&all(), KEYS);
    assert!(
        stale.is_empty(),
        "KeyDocs in coordinator/src/config/keys.rs that no sample config resolves (remove them, \
         or add a sample in keydoc/samples.rs that has the key): {stale:?}"
    );
}

#[test]
fn docs_configuration_md_is_generated() {
    let generated = render().unwrap_or_else(|e| panic!("a sample config fails to parse: {e}"));
    let path = page_path();
    if std::env::var_os("MIRRORPLAY_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed == generated {
        return;
    }
    let (line, ours, theirs) = committed
        .lines()
        .map(Some)
        .chain(std::iter::repeat(None))
        .zip(generated.lines().map(Some).chain(std::iter::repeat(None)))
        .enumerate()
        .find(|(_, (c, g))| c != g)
        .map(|(i, (c, g))| {
            (
                i + 1,
                c.unwrap_or("<end of file>"),
                g.unwrap_or("<end of file>"),
            )
        })
        .unwrap_or((0, "", "(only line endings differ)"));
    panic!(
        "docs/configuration.md is not what the generator writes; first difference at line \
         {line}:\n  committed: {ours}\n  generated: {theirs}\nRegenerate it with `{BLESS}` and \
         commit it."
    );
}

// The checks catch what they are for.

#[test]
fn a_missing_description_is_named() {
    let occurrences = all();
    let without: Vec<KeyDoc> = KEYS
        .iter()
        .copied()
        .filter(|d| (d.table, d.key) != ("selfplay", "kl_coef"))
        .collect();
    assert_eq!(
        undocumented(&occurrences, &without),
        vec!["selfplay.kl_coef"]
    );
}

#[test]
fn a_stale_description_is_named() {
    let mut keys = KEYS.to_vec();
    keys.push(KeyDoc {
        table: "merge",
        key: "gone",
        description: "",
    });
    assert_eq!(stale(&all(), &keys), vec!["merge.gone"]);
}

#[test]
fn defaults_come_from_the_reader() {
    let occurrences = all();
    let cell = |table: &str, key: &str| {
        let of: Vec<&Occurrence> = occurrences
            .iter()
            .filter(|o| o.table == table && o.key == key)
            .collect();
        default_cell(&of)
    };
    assert_eq!(cell("job", "output"), "required");
    assert_eq!(cell("job", "seed"), "`0`");
    assert_eq!(cell("merge", "density"), "required");
    assert_eq!(cell("merge", "weights"), "`1.0` each");
    assert_eq!(
        cell("merge", "scope"),
        "`\"global\"` (pcb); `\"per_tensor\"` (ties)"
    );
    assert_eq!(cell("sft", "data"), "—");
    assert_eq!(cell("selfplay", "prompts"), "—");
    assert_eq!(cell("selfplay.preference", "model"), "required");
    assert_eq!(cell("selfplay.preference", "source"), "`\"gold\"`");
    assert!(
        cell("selfplay", "kl_coef").contains("`0.008` (nash_md)"),
        "{}",
        cell("selfplay", "kl_coef")
    );
}
