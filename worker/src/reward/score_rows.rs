//! The rows of a score job's data (docs/configuration.md, `[score]`): every row of a file is
//! either one completion (`{prompt, completion}` or `{messages}` ending with the assistant's
//! reply) or a labelled pair (`{prompt, chosen, rejected}` or `{chosen, rejected}` as message
//! lists, the same forms `reward_train` reads). A file holds one form; the coordinator checks
//! every row before any work and the worker reads its shard's rows the same way.

use serde_json::{Map, Value};

use super::pairs::pair_text;
use crate::io::jsonl::bad;
use crate::io::IoError;
use crate::train::prompts::{example_text, PromptText};

/// Which form a file's rows take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowForm {
    /// One completion per row.
    Single,
    /// A chosen and a rejected completion per row.
    Pair,
}

impl RowForm {
    /// The form a row is written in: a pair names `chosen` or `rejected`.
    pub fn of(obj: &Map<String, Value>) -> RowForm {
        if obj.contains_key("chosen") || obj.contains_key("rejected") {
            RowForm::Pair
        } else {
            RowForm::Single
        }
    }

    fn describe(self) -> &'static str {
        match self {
            RowForm::Single => "a single completion",
            RowForm::Pair => "a chosen/rejected pair",
        }
    }
}

/// A row's prompt and its completions: one, or chosen then rejected.
pub fn row_text(obj: &Map<String, Value>) -> Result<(PromptText, Vec<String>), String> {
    match RowForm::of(obj) {
        RowForm::Single => example_text(obj).map(|(p, c)| (p, vec![c])),
        RowForm::Pair => pair_text(obj).map(|(p, c, r)| (p, vec![c, r])),
    }
}

/// Checks every row of `url` (parsed as `objects`, with their 1-based lines): each must parse in
/// its form, all must share the first row's form, and there must be at least one.
pub fn check_rows(url: &str, objects: &[(usize, Map<String, Value>)]) -> Result<RowForm, IoError> {
    let Some((first_line, first)) = objects.first() else {
        return Err(bad(url, 0, "holds no rows".into()));
    };
    let form = RowForm::of(first);
    for (line, obj) in objects {
        row_text(obj).map_err(|r| bad(url, *line, r))?;
        let this = RowForm::of(obj);
        if this != form {
            return Err(bad(
                url,
                *line,
                format!(
                    "{} in a file whose rows are {} (line {first_line}); score one form per file",
                    this.describe(),
                    form.describe()
                ),
            ));
        }
    }
    Ok(form)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(lines: &[&str]) -> Vec<(usize, Map<String, Value>)> {
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| (i + 1, serde_json::from_str(l).unwrap()))
            .collect()
    }

    #[test]
    fn forms_are_recognised_and_mixed_files_refused() {
        let single = r#"{"prompt": "p", "completion": "c"}"#;
        let pair = r#"{"prompt": "p", "chosen": "a", "rejected": "b"}"#;
        assert_eq!(
            check_rows("f", &rows(&[single, single])).unwrap(),
            RowForm::Single
        );
        assert_eq!(
            check_rows("f", &rows(&[pair, pair])).unwrap(),
            RowForm::Pair
        );
        let (_, texts) = row_text(&rows(&[pair])[0].1).unwrap();
        assert_eq!(texts, vec!["a".to_string(), "b".to_string()]);
        let e = check_rows("f", &rows(&[single, pair]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("f:2") && e.contains("one form per file"), "{e}");
        let e = check_rows("f", &rows(&[pair, r#"{"prompt": "p", "chosen": "a"}"#]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("f:2") && e.contains("rejected"), "{e}");
        assert!(check_rows("f", &[])
            .unwrap_err()
            .to_string()
            .contains("no rows"));
    }
}
