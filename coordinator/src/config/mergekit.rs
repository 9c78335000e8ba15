//! mergekit YAML → mirrorplay TOML, for the methods both tools share: `task_arithmetic`,
//! `ties`, `dare_linear` and `dare_ties` (mergekit 0.1.x, `merge_methods/registry.py` and
//! `generalized_task_arithmetic.py`). The result is ordinary config text, read by the same
//! reader as any TOML config, so `validate`, `submit` and `local` accept a `.yml`/`.yaml` file
//! and `mirrorplay convert mergekit FILE` prints what they run.
//!
//! Mapping (mergekit semantics preserved):
//! - `base_model` → `merge.base`; `models[*].model` → `merge.models` (an entry equal to the
//!   base is dropped, as mergekit treats it as the base).
//! - `weight` (required by mergekit for every non-base model) → `merge.weights`;
//!   `density` (default 1) → `merge.density`; top-level `parameters:` give defaults that a
//!   model's own `parameters:` override.
//! - `normalize` (default true for ties, false otherwise): for ties and dare_ties it is
//!   `merge.normalize`; for task_arithmetic and dare_linear mergekit divides the sum by Σ
//!   weights, which is the same as dividing each weight by that sum (done here).
//! - `rescale` (default true for DARE) → `rescale = "l1"` (mergekit's `RescaleNorm.l1`), false
//!   → `"none"`; TIES with `rescale: true` is refused (mirrorplay's TIES never rescales).
//! - `lambda` → `merge.lambda`; `int8_mask` is a memory option and is ignored.
//! - `dtype`/`out_dtype` are not mapped: mirrorplay computes in f32 and writes every tensor in
//!   the base's dtype (a comment in the output says so when they are set).
//! - The output directory is not part of a mergekit file: it defaults to `<file stem>-merged`
//!   next to the working directory; set it with `--set job.output=DIR`.
//!
//! Anything else (slices, modules, layer-gradient lists, filtered parameters, other methods,
//! LoRA `model+adapter` references, tokenizer options other than the base's) is an error
//! naming the key, never silently dropped.

use std::collections::BTreeMap;

use serde_norway::Value as Yaml;
use toml::{Table, Value};

use super::ConfigError;

/// Methods both tools implement with the same semantics.
pub const SHARED_METHODS: &[&str] = &["task_arithmetic", "ties", "dare_linear", "dare_ties"];

/// True when `path` names a mergekit YAML file (by extension).
pub fn is_mergekit_yaml(path: &std::path::Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yml") | Some("yaml")
    )
}

struct Conv<'a> {
    file: &'a str,
    text: &'a str,
}

impl Conv<'_> {
    fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        // Lines are known for top-level keys only (serde_norway's values carry no positions).
        let top = key.split(['.', '[']).next().unwrap_or(key);
        let line = self
            .text
            .lines()
            .position(|l| l.starts_with(&format!("{top}:")))
            .map(|i| i + 1);
        ConfigError {
            file: self.file.to_string(),
            line,
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn number(&self, key: &str, v: &Yaml) -> Result<f64, ConfigError> {
        match v {
            Yaml::Number(n) => n.as_f64().ok_or_else(|| self.error(key, "is not a number")),
            Yaml::Sequence(_) => Err(self.error(
                key,
                "layer-gradient lists are not supported (mirrorplay applies one value per model)",
            )),
            Yaml::Mapping(_) => Err(self.error(
                key,
                "filtered parameters ({filter, value}) are not supported (one value per model)",
            )),
            other => Err(self.error(key, format!("expected a number, found {}", kind(other)))),
        }
    }

    fn boolean(&self, key: &str, v: &Yaml) -> Result<bool, ConfigError> {
        v.as_bool()
            .ok_or_else(|| self.error(key, format!("expected true or false, found {}", kind(v))))
    }

    fn string(&self, key: &str, v: &Yaml) -> Result<String, ConfigError> {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| self.error(key, format!("expected a string, found {}", kind(v))))
    }

    /// A model reference: a path or URL, refusing mergekit's `model+lora` syntax.
    fn model_ref(&self, key: &str, v: &Yaml) -> Result<String, ConfigError> {
        let s = match v {
            Yaml::Mapping(m) => match m.get("model") {
                Some(inner) => return self.model_ref(&format!("{key}.model"), inner),
                None => return Err(self.error(key, "expected a model path or URL")),
            },
            other => self.string(key, other)?,
        };
        if s.contains('+') && !s.contains("://") {
            return Err(self.error(
                key,
                format!("`{s}`: LoRA references (`model+adapter`) are not supported; merge the adapter first"),
            ));
        }
        Ok(s)
    }
}

fn kind(v: &Yaml) -> &'static str {
    match v {
        Yaml::Null => "null",
        Yaml::Bool(_) => "a boolean",
        Yaml::Number(_) => "a number",
        Yaml::String(_) => "a string",
        Yaml::Sequence(_) => "a list",
        Yaml::Mapping(_) => "a mapping",
        Yaml::Tagged(_) => "a tagged value",
    }
}

/// The parameters a shared method reads: (name, scope is per model).
const PARAMETERS: &[(&str, bool)] = &[
    ("weight", true),
    ("density", true),
    ("normalize", false),
    ("rescale", false),
    ("lambda", false),
    ("int8_mask", false),
];

/// Converts mergekit YAML `text` (from `file`, for errors) into mirrorplay config TOML.
/// `stem` names the default output directory.
pub fn to_toml(file: &str, text: &str, stem: &str) -> Result<String, ConfigError> {
    let c = Conv { file, text };
    let doc: Yaml = serde_norway::from_str(text).map_err(|e| ConfigError {
        file: file.to_string(),
        line: e.location().map(|l| l.line()),
        key: String::new(),
        message: format!("not valid YAML: {e}"),
    })?;
    let Yaml::Mapping(root) = doc else {
        return Err(c.error("", "a mergekit config is a YAML mapping"));
    };
    let mut top: BTreeMap<String, Yaml> = BTreeMap::new();
    for (k, v) in root {
        let k = c.string("<key>", &k)?;
        top.insert(k, v);
    }
    for (key, why) in [
        ("slices", "slice-wise merges are not supported"),
        ("modules", "module-wise merges are not supported"),
        (
            "chat_template",
            "mirrorplay copies the base's tokenizer files unchanged",
        ),
        (
            "tokenizer",
            "mirrorplay copies the base's tokenizer files unchanged",
        ),
    ] {
        if top.get(key).is_some_and(|v| !v.is_null()) {
            return Err(c.error(key, why));
        }
    }
    let method = c.string(
        "merge_method",
        top.get("merge_method")
            .ok_or_else(|| c.error("merge_method", "missing required key"))?,
    )?;
    if !SHARED_METHODS.contains(&method.as_str()) {
        return Err(c.error(
            "merge_method",
            format!(
                "`{method}` is not one of the methods mirrorplay shares with mergekit ({}); PCB has no mergekit form, write a TOML config",
                SHARED_METHODS.join(", ")
            ),
        ));
    }
    if let Some(src) = top.get("tokenizer_source").filter(|v| !v.is_null()) {
        if src.as_str() != Some("base") {
            return Err(c.error(
                "tokenizer_source",
                "only `base` is supported (mirrorplay copies the base's tokenizer files)",
            ));
        }
    }
    let base = c.model_ref(
        "base_model",
        top.get("base_model").ok_or_else(|| {
            c.error(
                "base_model",
                "missing required key (every shared method needs a base)",
            )
        })?,
    )?;

    // Shared (top-level) parameters: defaults for every model.
    let mut shared: BTreeMap<String, Yaml> = BTreeMap::new();
    if let Some(p) = top.get("parameters").filter(|v| !v.is_null()) {
        let Yaml::Mapping(p) = p else {
            return Err(c.error("parameters", "expected a mapping"));
        };
        for (k, v) in p {
            let k = c.string("parameters.<key>", k)?;
            if !PARAMETERS.iter().any(|(n, _)| *n == k) {
                return Err(c.error(
                    &format!("parameters.{k}"),
                    format!("`{method}` has no parameter `{k}`"),
                ));
            }
            shared.insert(k, v.clone());
        }
    }

    let Some(Yaml::Sequence(entries)) = top.get("models") else {
        return Err(c.error(
            "models",
            "missing required key (a list of {model, parameters})",
        ));
    };
    let mut models = Vec::new();
    let mut weights = Vec::new();
    let mut densities = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let key = format!("models[{i}]");
        let (model, params) = match entry {
            Yaml::Mapping(m) => {
                for k in m.keys() {
                    let k = c.string(&format!("{key}.<key>"), k)?;
                    if k != "model" && k != "parameters" {
                        return Err(c.error(&format!("{key}.{k}"), "unknown key"));
                    }
                }
                let model = c.model_ref(
                    &format!("{key}.model"),
                    m.get("model")
                        .ok_or_else(|| c.error(&format!("{key}.model"), "missing required key"))?,
                )?;
                (model, m.get("parameters").cloned())
            }
            other => (c.model_ref(&key, other)?, None),
        };
        if model == base {
            continue;
        }
        let mut own: BTreeMap<String, Yaml> = BTreeMap::new();
        if let Some(p) = params.filter(|v| !v.is_null()) {
            let Yaml::Mapping(p) = p else {
                return Err(c.error(&format!("{key}.parameters"), "expected a mapping"));
            };
            for (k, v) in p {
                let k = c.string(&format!("{key}.parameters.<key>"), &k)?;
                match PARAMETERS.iter().find(|(n, _)| *n == k) {
                    Some((_, true)) => {
                        own.insert(k, v);
                    }
                    Some((_, false)) => {
                        return Err(c.error(
                            &format!("{key}.parameters.{k}"),
                            format!("`{k}` applies to the whole merge: set it under top-level `parameters:`"),
                        ))
                    }
                    None => {
                        return Err(c.error(
                            &format!("{key}.parameters.{k}"),
                            format!("`{method}` has no parameter `{k}`"),
                        ))
                    }
                }
            }
        }
        let lookup = |name: &str| -> Option<(String, &Yaml)> {
            own.get(name)
                .map(|v| (format!("{key}.parameters.{name}"), v))
                .or_else(|| shared.get(name).map(|v| (format!("parameters.{name}"), v)))
        };
        let weight = match lookup("weight") {
            Some((k, v)) => c.number(&k, v)?,
            None => {
                return Err(c.error(
                    &format!("{key}.parameters.weight"),
                    "missing (mergekit requires a weight for every non-base model)",
                ))
            }
        };
        let density = match lookup("density") {
            Some((k, v)) => c.number(&k, v)?,
            None => 1.0,
        };
        models.push(model);
        weights.push(weight);
        densities.push(density);
    }
    if models.is_empty() {
        return Err(c.error("models", "needs at least one model besides the base"));
    }

    let get_bool = |name: &str, default: bool| -> Result<bool, ConfigError> {
        match shared.get(name) {
            Some(v) => c.boolean(&format!("parameters.{name}"), v),
            None => Ok(default),
        }
    };
    let normalize = get_bool("normalize", method == "ties")?;
    let rescale = get_bool("rescale", method.starts_with("dare"))?;
    let lambda = match shared.get("lambda") {
        Some(v) => c.number("parameters.lambda", v)?,
        None => 1.0,
    };

    let mut merge = Table::new();
    merge.insert("method".into(), Value::String(method.clone()));
    merge.insert("base".into(), Value::String(base));
    merge.insert(
        "models".into(),
        Value::Array(models.into_iter().map(Value::String).collect()),
    );
    let linear_sum = method == "task_arithmetic" || method == "dare_linear";
    if normalize && linear_sum {
        // mergekit: mixed /= Σ w (when |Σ w| ≥ 1e-8), i.e. weights w_i / Σ w.
        let sum: f64 = weights.iter().sum();
        if sum.abs() >= 1e-8 {
            weights.iter_mut().for_each(|w| *w /= sum);
        }
    }
    merge.insert(
        "weights".into(),
        Value::Array(weights.into_iter().map(Value::Float).collect()),
    );
    merge.insert("lambda".into(), Value::Float(lambda));
    let uniform = densities.windows(2).all(|w| w[0] == w[1]);
    let density = if uniform {
        Value::Float(densities[0])
    } else {
        Value::Array(densities.iter().map(|&d| Value::Float(d)).collect())
    };
    match method.as_str() {
        "task_arithmetic" => {
            if densities.iter().any(|&d| d != 1.0) {
                return Err(c.error(
                    "parameters.density",
                    "task_arithmetic does not sparsify (mergekit ignores density); use ties or dare_*",
                ));
            }
            if rescale {
                return Err(c.error("parameters.rescale", "task_arithmetic does not rescale"));
            }
        }
        "ties" => {
            if rescale {
                return Err(c.error(
                    "parameters.rescale",
                    "TIES with rescale: true is not supported (mirrorplay's TIES keeps magnitudes)",
                ));
            }
            merge.insert("density".into(), density);
            merge.insert("normalize".into(), Value::Boolean(normalize));
            merge.insert("scope".into(), Value::String("per_tensor".into()));
        }
        _ => {
            merge.insert("density".into(), density);
            merge.insert(
                "rescale".into(),
                Value::String(if rescale { "l1" } else { "none" }.into()),
            );
            if method == "dare_ties" {
                merge.insert("normalize".into(), Value::Boolean(normalize));
            }
        }
    }

    let mut job = Table::new();
    job.insert("kind".into(), Value::String("merge".into()));
    job.insert("output".into(), Value::String(format!("{stem}-merged")));
    let mut root = Table::new();
    root.insert("job".into(), Value::Table(job));
    root.insert("merge".into(), Value::Table(merge));

    let mut out = format!(
        "# Converted from the mergekit config {file} by `mirrorplay convert mergekit`.\n\
         # The output directory is not part of a mergekit file: change job.output or pass\n\
         # --set job.output=DIR.\n"
    );
    if method.starts_with("dare") {
        out.push_str(
            "# DARE's random masks come from mirrorplay's counter-based RNG (job.seed), not\n\
             # torch's: the same distribution as mergekit's, not the same entries.\n",
        );
    }
    for key in ["dtype", "out_dtype"] {
        if let Some(v) = top.get(key).filter(|v| !v.is_null()) {
            out.push_str(&format!(
                "# mergekit {key} = {}: not mapped; mirrorplay computes in f32 and writes each\n\
                 # tensor in the base model's dtype.\n",
                v.as_str().unwrap_or("?")
            ));
        }
    }
    if shared.contains_key("int8_mask") {
        out.push_str("# int8_mask is a mergekit memory option; not needed here (ignored).\n");
    }
    out.push_str(&toml::to_string(&root).map_err(|e| c.error("", e.to_string()))?);
    Ok(out)
}
