//! Generates `docs/configuration.md`: every key of every config table with its default and its
//! description (`super::keys`). The defaults are the reader's own: each minimal config of
//! `samples` is parsed with `super::parse`, and a key's default is its value in the resolved
//! config (`Loaded::resolved_toml`) of a sample that does not give it. A key no sample leaves
//! out is "required" when removing it from every sample that gives it makes the parse fail,
//! else "—" (optional, no default). The tests (`tests.rs`) compare the page with the committed
//! file and check that `keys::KEYS` and the resolved configs name the same keys.

mod samples;
#[cfg(test)]
mod tests;

use std::path::Path;

use toml::{Table, Value};

use super::keys::{KeyDoc, KEYS, SECTIONS};
use super::{parse, ConfigError};

/// The command that rewrites `docs/configuration.md` (`tests.rs`).
pub const BLESS: &str =
    "MIRRORPLAY_BLESS=1 cargo test -p mirrorplay-coordinator --bin mirrorplay keydoc";
/// The job name the samples default to (a config's default is its file's stem).
const DEFAULT_NAME: &str = "<file stem>";

/// One key as one sample's resolved config has it.
#[derive(Debug, Clone)]
pub struct Occurrence {
    /// A `KeyDoc::table` id: `stage.` dropped before a stage's kind table, and `optimizer` and
    /// `sampling` without their parent.
    pub table: String,
    pub key: String,
    /// The merge method, self-play algorithm or job kind the value belongs to.
    pub label: String,
    pub value: Value,
    /// Whether the sample gives the key (else the value is the reader's default).
    pub given: bool,
    /// Whether the sample fails to parse without it.
    pub required: bool,
}

#[derive(Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

fn parse_sample(text: &str) -> Result<String, ConfigError> {
    parse("sample.toml", text, &[], Path::new("/cfg"), DEFAULT_NAME).map(|l| l.resolved_toml)
}

/// Every key of every sample's resolved config.
pub fn occurrences() -> Result<Vec<Occurrence>, ConfigError> {
    let mut out = Vec::new();
    for text in samples::samples() {
        let resolved: Table = toml::from_str(&parse_sample(&text)?).expect("resolved TOML parses");
        let input: Table = toml::from_str(&text).expect("a sample is TOML");
        let label = resolved
            .get("job")
            .and_then(|j| j.get("kind"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        walk(&resolved, &input, &mut vec![], &label, &mut out);
    }
    Ok(out)
}

fn walk(table: &Table, input: &Table, path: &mut Vec<Seg>, label: &str, out: &mut Vec<Occurrence>) {
    for (key, value) in table {
        path.push(Seg::Key(key.clone()));
        match value {
            Value::Table(child) => {
                let id = table_id(&path_keys(path));
                let label = match id.as_str() {
                    "merge" => child
                        .get("method")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                    "selfplay" => child
                        .get("algorithm")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                    "sft" => "sft",
                    _ => label,
                };
                walk(child, input, path, label, out);
            }
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_table) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(Seg::Index(i));
                    walk(item.as_table().expect("checked"), input, path, label, out);
                    path.pop();
                }
            }
            _ => {
                let keys = path_keys(path);
                let given = lookup(input, path).is_some();
                let required = given && {
                    let mut without = input.clone();
                    remove(&mut without, path);
                    parse_sample(&toml::to_string(&without).expect("TOML")).is_err()
                };
                out.push(Occurrence {
                    table: table_id(&keys[..keys.len() - 1]),
                    key: key.clone(),
                    label: label.to_string(),
                    value: value.clone(),
                    given,
                    required,
                });
            }
        }
        path.pop();
    }
}

fn path_keys(path: &[Seg]) -> Vec<&str> {
    path.iter()
        .filter_map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        })
        .collect()
}

/// The `KeyDoc::table` id of a table path (`stage.merge` → `merge`, `sft.optimizer` →
/// `optimizer`).
fn table_id(keys: &[&str]) -> String {
    let keys = match keys {
        ["stage", rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    match keys {
        [_, last @ ("optimizer" | "sampling")] => last.to_string(),
        other => other.join("."),
    }
}

fn lookup<'v>(table: &'v Table, path: &[Seg]) -> Option<&'v Value> {
    let (Seg::Key(first), rest) = path.split_first()? else {
        return None;
    };
    let mut value = table.get(first)?;
    for seg in rest {
        value = match seg {
            Seg::Key(k) => value.as_table()?.get(k)?,
            Seg::Index(i) => value.as_array()?.get(*i)?,
        };
    }
    Some(value)
}

fn remove(table: &mut Table, path: &[Seg]) {
    let Some((Seg::Key(last), parent)) = path.split_last() else {
        return;
    };
    let parent = match parent.split_first() {
        None => Some(table),
        Some((Seg::Key(first), rest)) => {
            let mut value = table.get_mut(first);
            for seg in rest {
                value = value.and_then(|v| match seg {
                    Seg::Key(k) => v.as_table_mut().and_then(|t| t.get_mut(k)),
                    Seg::Index(i) => v.as_array_mut().and_then(|a| a.get_mut(*i)),
                });
            }
            value.and_then(Value::as_table_mut)
        }
        Some((Seg::Index(_), _)) => None,
    };
    if let Some(parent) = parent {
        parent.remove(last);
    }
}

/// `table.key` of every resolved key that `keys` does not describe (sorted, deduplicated).
pub fn undocumented(occurrences: &[Occurrence], keys: &[KeyDoc]) -> Vec<String> {
    let mut out: Vec<String> = occurrences
        .iter()
        .filter(|o| !keys.iter().any(|d| d.table == o.table && d.key == o.key))
        .map(|o| format!("{}.{}", o.table, o.key))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `table.key` of every description no resolved config has (stale docs), and of every table
/// without a section.
pub fn stale(occurrences: &[Occurrence], keys: &[KeyDoc]) -> Vec<String> {
    keys.iter()
        .filter(|d| {
            !occurrences
                .iter()
                .any(|o| o.table == d.table && o.key == d.key)
                || !SECTIONS.iter().any(|s| s.table == d.table)
        })
        .map(|d| format!("{}.{}", d.table, d.key))
        .collect()
}

/// A value as the page shows it; a list with one equal entry per model is "`x` each".
fn show(value: &Value) -> String {
    match value {
        Value::Array(items) if !items.is_empty() && items.iter().all(|v| *v == items[0]) => {
            format!("{} each", show(&items[0]))
        }
        other => format!("`{other}`"),
    }
}

/// The default column: the default (per method, algorithm or kind where they differ),
/// "required" or "—".
pub fn default_cell(occurrences: &[&Occurrence]) -> String {
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    for o in occurrences.iter().filter(|o| !o.given) {
        let shown = show(&o.value);
        match groups.iter_mut().find(|(v, _)| *v == shown) {
            Some((_, labels)) if labels.contains(&o.label.as_str()) => {}
            Some((_, labels)) => labels.push(&o.label),
            None => groups.push((shown, vec![&o.label])),
        }
    }
    match groups.len() {
        0 if occurrences.iter().all(|o| o.required) => "required".into(),
        0 => "—".into(),
        1 => groups.remove(0).0,
        _ => groups
            .iter()
            .map(|(v, labels)| format!("{v} ({})", labels.join(", ")))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// The page.
pub fn render() -> Result<String, ConfigError> {
    let occurrences = occurrences()?;
    let mut md = String::new();
    md.push_str("# Configuration keys\n\n");
    md.push_str(&format!(
        "<!-- Generated from `coordinator/src/config/keys.rs` by `coordinator/src/config/keydoc/mod.rs`; do not edit. Regenerate: `{BLESS}` -->\n\n"
    ));
    md.push_str(
        "Every key a job config can have (TOML; the [README](../README.md#configs) shows whole \
         configs), with the default the config reader applies. `mirrorplay validate CONFIG` \
         prints a config with every default filled in; `--set table.key=VALUE` overrides any \
         key. \"required\": the config fails without it; \"—\": optional, no default. Where a \
         default differs by merge method, self-play algorithm or kind, each is listed with \
         where it applies. Unknown keys are errors.\n\n",
    );
    md.push_str(&format!(
        "This page is generated (`{BLESS}`); a test fails when a key lacks a description or \
         the page is out of date.\n"
    ));
    for section in SECTIONS {
        md.push_str(&format!(
            "\n## {}\n\n{}\n\n",
            section.heading, section.about
        ));
        md.push_str("| key | default | description |\n|---|---|---|\n");
        let of_table: Vec<&Occurrence> = occurrences
            .iter()
            .filter(|o| o.table == section.table)
            .collect();
        let mut rows: Vec<(&str, &str)> = KEYS
            .iter()
            .filter(|d| d.table == section.table)
            .map(|d| (d.key, d.description))
            .collect();
        for o in &of_table {
            if !rows.iter().any(|(k, _)| *k == o.key) {
                rows.push((o.key.as_str(), "**undocumented**"));
            }
        }
        for (key, description) in rows {
            let of_key: Vec<&Occurrence> =
                of_table.iter().copied().filter(|o| o.key == key).collect();
            let default = if of_key.is_empty() {
                "**resolved by no config**".to_string()
            } else {
                default_cell(&of_key)
            };
            md.push_str(&format!("| `{key}` | {default} | {description} |\n"));
        }
    }
    Ok(md)
}
