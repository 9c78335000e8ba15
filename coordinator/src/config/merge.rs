//! `[merge]`: method, base, models, weights, lambda, max_shard_size (ALGORITHMS.md §5).

use mirrorplay_proto::v1::{merge_spec, MergeSpec, TaskArithmetic};
use toml::Value;

use super::reader::Tbl;
use super::{ConfigError, Resolver};

pub const METHODS: &[&str] = &["task_arithmetic"];
/// transformers' `save_pretrained` default.
pub const DEFAULT_MAX_SHARD_SIZE: u64 = 5_000_000_000;

pub(super) fn read(t: &Tbl, resolver: &Resolver) -> Result<MergeSpec, ConfigError> {
    let method = t.choice("method", METHODS, None)?;
    let base_raw = t.req_str("base")?;
    let base = resolver.model(t, "base", &base_raw)?;
    t.record("base", Value::String(base.clone()));
    let models_raw = t
        .opt_str_list("models")?
        .ok_or_else(|| t.error("models", "missing required key"))?;
    if models_raw.is_empty() {
        return Err(t.error("models", "needs at least one model"));
    }
    let mut models = Vec::new();
    for (i, m) in models_raw.iter().enumerate() {
        models.push(resolver.model(t, &format!("models.{i}"), m)?);
    }
    t.record(
        "models",
        Value::Array(models.iter().cloned().map(Value::String).collect()),
    );
    let weights = match t.opt_f64_list("weights")? {
        Some(w) if w.len() != models.len() => {
            return Err(t.error(
                "weights",
                format!(
                    "has {} entries but there are {} models",
                    w.len(),
                    models.len()
                ),
            ));
        }
        Some(w) => w,
        None => vec![1.0; models.len()],
    };
    t.record(
        "weights",
        Value::Array(weights.iter().map(|&w| Value::Float(w)).collect()),
    );
    let lambda = t.opt_f64("lambda")?.unwrap_or(1.0);
    t.record("lambda", Value::Float(lambda));
    let max_shard_size = t.size_or("max_shard_size", DEFAULT_MAX_SHARD_SIZE)?;
    let method = match method.as_str() {
        "task_arithmetic" => merge_spec::Method::TaskArithmetic(TaskArithmetic {}),
        other => unreachable!("choice() admitted unknown method {other}"),
    };
    Ok(MergeSpec {
        base,
        models,
        weights: weights.iter().map(|&w| w as f32).collect(),
        lambda: lambda as f32,
        max_shard_size,
        method: Some(method),
    })
}
