//! The local inputs of a config (docs/architecture.md#job-flow, step 1): every model, dataset,
//! prompt file and ensemble manifest a config names as a path or `file://` URL must exist on
//! this machine. Object-store URLs (`s3://`, `gs://`, ...) are not checked here: the task that
//! reads them reports a missing object. `stage:NAME` references are not inputs yet: the stage
//! writes them.

use url::Url;

use super::ConfigError;

/// One input location a config names, with where it is named (file, line and dotted key).
#[derive(Debug, Clone)]
pub struct LocalInput {
    /// Where the key is: `message` is empty until the check fills it in.
    pub(super) at: ConfigError,
    /// The value as written in the config (or `--set`).
    pub(super) raw: String,
    /// The resolved absolute URL.
    pub(super) url: String,
}

/// Whether a command checks that a config's local inputs exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputCheck {
    /// Refuse a config naming a local path that does not exist (`validate`, `local`).
    Local,
    /// Check nothing: the inputs are read on other machines (`submit`, `run`, `k8s`), or
    /// `validate --no-input-check`.
    Skip,
}

/// The first local input that does not exist, as a config error naming its key and path.
pub fn check(inputs: &[LocalInput]) -> Result<(), ConfigError> {
    for input in inputs {
        let Ok(url) = Url::parse(&input.url) else {
            continue;
        };
        if url.scheme() != "file" {
            continue;
        }
        let Ok(path) = url.to_file_path() else {
            continue;
        };
        if path.exists() {
            continue;
        }
        let written = if input.raw == path.display().to_string() {
            format!("`{}`", input.raw)
        } else {
            format!("`{}` ({})", input.raw, path.display())
        };
        return Err(ConfigError {
            message: format!("input {written} does not exist"),
            ..input.at.clone()
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{parse, InputCheck};

    fn merge_config(base: &str, models: &str) -> String {
        format!(
            "[job]\nkind = \"merge\"\noutput = \"out\"\n\n[merge]\nmethod = \"task_arithmetic\"\n\
             base = \"{base}\"\nmodels = {models}\n"
        )
    }

    #[test]
    fn a_missing_local_input_is_refused_naming_its_key_and_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("base")).unwrap();
        let text = merge_config("base", r#"["s3://bucket/a", "missing/b"]"#);
        let loaded = parse("m.toml", &text, &[], dir.path(), "m").unwrap();
        let err = loaded.check_inputs(InputCheck::Local).unwrap_err();
        assert_eq!(err.key, "merge.models.1");
        assert_eq!(err.line, Some(8));
        let missing = dir.path().join("missing/b");
        assert_eq!(
            err.message,
            format!("input `missing/b` ({}) does not exist", missing.display())
        );
        assert!(err.to_string().starts_with("m.toml:8: `merge.models.1`: "));
        // Skipped on request; and once the path exists the config passes.
        loaded.check_inputs(InputCheck::Skip).unwrap();
        std::fs::create_dir_all(&missing).unwrap();
        let loaded = parse("m.toml", &text, &[], dir.path(), "m").unwrap();
        loaded.check_inputs(InputCheck::Local).unwrap();
    }

    #[test]
    fn file_urls_data_files_and_set_overrides_are_checked_stage_references_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("absent.jsonl");
        let text = format!(
            "[job]\nkind = \"pipeline\"\noutput = \"out\"\n\n\
             [[stage]]\nname = \"a\"\nkind = \"sft\"\n[stage.sft]\ninit = \"tiny\"\n\
             task = \"goodhart_digits\"\n\n\
             [[stage]]\nname = \"b\"\nkind = \"sft\"\n[stage.sft]\ninit = \"stage:a\"\n\
             task = \"goodhart_digits\"\ndata = \"file://{}\"\n",
            absent.display()
        );
        let loaded = parse("p.toml", &text, &[], dir.path(), "p").unwrap();
        let err = loaded.check_inputs(InputCheck::Local).unwrap_err();
        assert_eq!(err.key, "stage.1.sft.data");
        assert!(err.message.contains(&absent.display().to_string()), "{err}");
        std::fs::write(&absent, "").unwrap();
        let loaded = parse("p.toml", &text, &[], dir.path(), "p").unwrap();
        loaded.check_inputs(InputCheck::Local).unwrap();
        // A path given with --set is named with its --set.
        let sets = vec!["stage.1.sft.data=\"nowhere.jsonl\"".to_string()];
        let err = parse("p.toml", &text, &sets, dir.path(), "p")
            .unwrap()
            .check_inputs(InputCheck::Local)
            .unwrap_err();
        assert_eq!(err.key, "stage.1.sft.data");
        assert!(err.file.contains("--set"), "{err}");
        assert!(err.message.contains("`nowhere.jsonl`"), "{err}");
    }
}
