//! `[merge]`: method, base, models, weights, lambda, max_shard_size, and each method's own keys
//! (docs/algorithms.md §5). Only the keys of the chosen method are accepted.

use mirrorplay_proto::v1::{
    merge_spec, Dare, DareRescale, MergeScope, MergeSpec, Pcb, PcbInter, TaskArithmetic, Ties,
};
use toml::Value;

use super::reader::Tbl;
use super::{ConfigError, Resolver};

pub const METHODS: &[&str] = &["task_arithmetic", "pcb", "ties", "dare_linear", "dare_ties"];
/// transformers' `save_pretrained` default (the worker's shard planner's).
pub use mirrorplay_worker::io::shard_plan::DEFAULT_MAX_SHARD_SIZE;

fn scope(t: &Tbl, default: &str) -> Result<i32, ConfigError> {
    Ok(match t
        .choice("scope", &["global", "per_tensor"], Some(default))?
        .as_str()
    {
        "global" => MergeScope::Global,
        _ => MergeScope::PerTensor,
    } as i32)
}

fn density(t: &Tbl, n: usize, hi: f64, lo_open: bool) -> Result<Vec<f64>, ConfigError> {
    t.per_model("density", n, 0.0, lo_open, hi)?.ok_or_else(|| {
        t.error(
            "density",
            "missing required key (a number, or one per model)",
        )
    })
}

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
    let n = models.len();
    t.record(
        "models",
        Value::Array(models.iter().cloned().map(Value::String).collect()),
    );
    let weights = match t.opt_f64_list("weights")? {
        Some(w) if w.len() != n => {
            return Err(t.error(
                "weights",
                format!("has {} entries but there are {n} models", w.len()),
            ));
        }
        Some(w) => w,
        None => vec![1.0; n],
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
        "pcb" => {
            // PCB weighs the models itself (its balancing and the λ search); a weight would be
            // silently ignored, so anything but the default is refused.
            if weights.iter().any(|&w| w != 1.0) {
                return Err(t.error(
                    "weights",
                    "pcb weighs the models itself (docs/algorithms.md §5); remove `weights`",
                ));
            }
            let keep_ratio = t.f64_in("keep_ratio", 0.1, 0.0, 1.0)?;
            if keep_ratio == 0.0 {
                return Err(t.error("keep_ratio", "must be in (0, 1], found 0"));
            }
            let clip_ratio = t.f64_in("clip_ratio", 0.01, 0.0, 0.5)?;
            if clip_ratio == 0.5 {
                return Err(t.error("clip_ratio", "must be in [0, 0.5), found 0.5"));
            }
            let lambdas = match t.opt_f64_list("lambdas")? {
                Some(l) if l.len() != n => {
                    return Err(t.error(
                        "lambdas",
                        format!("has {} entries but there are {n} models", l.len()),
                    ))
                }
                Some(l) => l,
                None => vec![1.0; n],
            };
            t.record(
                "lambdas",
                Value::Array(lambdas.iter().map(|&v| Value::Float(v)).collect()),
            );
            let inter = match t
                .choice("inter", &["sum_raw", "pairwise"], Some("sum_raw"))?
                .as_str()
            {
                "sum_raw" => PcbInter::SumRaw,
                _ => PcbInter::Pairwise,
            };
            merge_spec::Method::Pcb(Pcb {
                scope: scope(t, "global")?,
                keep_ratio,
                clip_ratio,
                lambdas: lambdas.iter().map(|&v| v as f32).collect(),
                inter: inter as i32,
            })
        }
        "ties" => merge_spec::Method::Ties(Ties {
            scope: scope(t, "per_tensor")?,
            density: density(t, n, 1.0, true)?,
            normalize: t.bool_or("normalize", true)?,
        }),
        dare => {
            let rescale = match t
                .choice(
                    "rescale",
                    &["inv_density", "l1", "none"],
                    Some("inv_density"),
                )?
                .as_str()
            {
                "inv_density" => DareRescale::InvDensity,
                "l1" => DareRescale::L1,
                _ => DareRescale::None,
            };
            let ties = dare == "dare_ties";
            merge_spec::Method::Dare(Dare {
                ties,
                density: density(t, n, 1.0, false)?,
                rescale: rescale as i32,
                seed: t.u64_or("seed", resolver.seed)?,
                normalize: if ties {
                    t.bool_or("normalize", false)?
                } else {
                    false
                },
            })
        }
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
