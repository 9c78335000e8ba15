//! `[selfplay.preference]`: where self-play's preferences come from (docs/algorithms.md §2).
//! `source` ("gold": the task's gold judge, the default with a task; "reward_model": `model`, a
//! one-label `*ForSequenceClassification` directory sharing the policy's tokenizer; "ensemble":
//! `members`, ≥ 2 such directories, with `aggregate`, `uwo_lambda`, `normalize`,
//! `norm_prompts`), `temperature` (> 0, default 1). The aggregate and normalisation names are
//! the worker's own (`mirrorplay_worker::preference::aggregate`), so the config accepts exactly
//! what training runs.

use mirrorplay_proto::v1::PreferenceSpec;
use mirrorplay_worker::preference::aggregate::{Aggregate, NormKind};
use toml::Value;

use super::reader::Tbl;
use super::training::{count, model};
use super::{ConfigError, Resolver};

/// The keys only an ensemble source takes.
const ENSEMBLE_KEYS: &[&str] = &[
    "members",
    "ensemble",
    "aggregate",
    "uwo_lambda",
    "normalize",
    "norm_prompts",
];

pub(super) fn preference(
    t: &Tbl,
    task: Option<&str>,
    resolver: &Resolver,
) -> Result<PreferenceSpec, ConfigError> {
    let p = t
        .opt_table("preference")?
        .unwrap_or_else(|| t.empty_child("preference"));
    let source = p.choice(
        "source",
        &["gold", "reward_model", "ensemble"],
        Some("gold"),
    )?;
    if source == "gold" && task.is_none() {
        return Err(p.error(
            "source",
            "\"gold\" needs a built-in `task` (its gold judge); with a prompt file, set `task` \
             or use source = \"reward_model\" or \"ensemble\"",
        ));
    }
    let model = match source.as_str() {
        "reward_model" => Some(model(&p, "model", None, resolver)?),
        _ => {
            if p.has("model") {
                return Err(p.error("model", "only a reward_model source takes a model"));
            }
            None
        }
    };
    let temperature = p.f64_in("temperature", 1.0, 0.0, 1e6)?;
    if temperature <= 0.0 {
        return Err(p.error("temperature", format!("must be > 0, found {temperature}")));
    }
    let mut spec = PreferenceSpec {
        source,
        temperature,
        model,
        ..PreferenceSpec::default()
    };
    if spec.source == "ensemble" {
        ensemble(&p, resolver, &mut spec)?;
    } else if let Some(key) = ENSEMBLE_KEYS.iter().find(|k| p.has(k)) {
        return Err(p.error(key, "only an ensemble source takes this key"));
    }
    t.record_table("preference", p.finish()?);
    Ok(spec)
}

/// `members` (≥ 2, each resolved like `model`) or `ensemble` (a manifest), `aggregate` (default "mean"), `uwo_lambda`
/// (≥ 0, default 0.5), `normalize` (default "center"), `norm_prompts` (default 64).
fn ensemble(p: &Tbl, resolver: &Resolver, spec: &mut PreferenceSpec) -> Result<(), ConfigError> {
    let members = match (p.opt_str("ensemble")?, p.has("members")) {
        (Some(_), true) => {
            return Err(p.error(
                "members",
                "give either `members` or `ensemble` (a manifest), not both",
            ))
        }
        (Some(raw), false) => {
            spec.ensemble = manifest_url(p, resolver, &raw)?;
            None
        }
        (None, _) => Some(members(p, resolver, spec)?),
    };
    spec.uwo_lambda = p.f64_in("uwo_lambda", 0.5, 0.0, 1e6)?;
    let aggregate = p.str_or("aggregate", "mean")?;
    Aggregate::parse(&aggregate, spec.uwo_lambda)
        .and_then(|a| {
            members.map_or(Ok(()), |k| a.check(k))?;
            // self-play draws no reference-policy samples per prompt (docs/algorithms.md §2)
            a.check_without_reference()
        })
        .map_err(|e| p.error("aggregate", e.to_string()))?;
    spec.aggregate = aggregate;
    spec.normalize = p.str_or("normalize", "center")?;
    NormKind::parse(&spec.normalize).map_err(|e| p.error("normalize", e.to_string()))?;
    spec.norm_prompts = count(p, "norm_prompts", 64, 1 << 20)? as u32;
    Ok(())
}

/// `members` (≥ 2, each resolved like `model`); returns how many.
fn members(p: &Tbl, resolver: &Resolver, spec: &mut PreferenceSpec) -> Result<usize, ConfigError> {
    let raw = p.opt_str_list("members")?.ok_or_else(|| {
        p.error(
            "members",
            "missing required key (≥ 2 reward models), or give `ensemble` (a manifest)",
        )
    })?;
    if raw.len() < 2 {
        return Err(p.error(
            "members",
            format!("an ensemble needs at least 2 members, found {}", raw.len()),
        ));
    }
    let mut urls = Vec::new();
    for (i, m) in raw.iter().enumerate() {
        urls.push(resolver.model(p, &format!("members.{i}"), m)?);
    }
    p.record(
        "members",
        Value::Array(urls.iter().cloned().map(Value::String).collect()),
    );
    spec.members = urls
        .into_iter()
        .map(|u| mirrorplay_proto::v1::ModelSource {
            source: Some(mirrorplay_proto::v1::model_source::Source::Url(u)),
        })
        .collect();
    Ok(raw.len())
}

/// An ensemble manifest: an `ensemble.json` (path, URL or `stage:<name>` of a reward_train
/// stage) or the directory holding one.
pub(super) fn manifest_url(t: &Tbl, resolver: &Resolver, raw: &str) -> Result<String, ConfigError> {
    let mut url = resolver.model(t, "ensemble", raw)?;
    if !url.ends_with(".json") {
        url = format!(
            "{}/{}",
            url.trim_end_matches('/'),
            mirrorplay_worker::preference::manifest::FILE_NAME
        );
    }
    t.record("ensemble", Value::String(url.clone()));
    Ok(url)
}
