//! `[score]` and `[bon]`: jobs that score with a trained ensemble (docs/algorithms.md §2, §4).
//! Both name the `ensemble` (an `ensemble.json`, the directory holding one, or
//! `stage:<name>` of a reward_train stage) and take the scorers' keys `normalize` (default
//! "zscore": the manifest's statistics), `uwo_lambda` (default 0.5), `lsc_samples` (reference
//! samples per prompt for LSC; 0 = no LSC column) and `lsc_quantile` (default 0.85), and
//! `[sampling]`.
//! `[score]`: `data` (JSONL of `{prompt, completion}` or `{messages}`), `shard_rows`, `chat`,
//! `max_prompt_tokens`, and `reference` (the policy LSC samples; required for LSC).
//! `[bon]`: `policy`, `task` (held-out prompts and gold judge), `prompts`, `samples` (N),
//! `max_n`, `prompts_per_shard`.

use mirrorplay_proto::v1::{BonSpec, ScoreSpec};
use mirrorplay_worker::preference::aggregate::{NormKind, LSC_QUANTILE, LSC_REFERENCE_SAMPLES};
use toml::Value;

use super::preference::manifest_url;
use super::reader::Tbl;
use super::training::{count, model, prompt_format, sampling};
use super::{ConfigError, Resolver};

/// Tasks whose gold judge best-of-n can use with a tiny policy.
const BON_TASKS: &[&str] = &["goodhart_digits", "exact_words"];

/// The scorers' shared keys.
struct Scoring {
    ensemble: String,
    normalize: String,
    uwo_lambda: f64,
    lsc_samples: u32,
    lsc_quantile: f64,
}

fn scoring(t: &Tbl, resolver: &Resolver) -> Result<Scoring, ConfigError> {
    let ensemble = manifest_url(t, resolver, &t.req_str("ensemble")?)?;
    let normalize = t.str_or("normalize", "zscore")?;
    NormKind::parse(&normalize).map_err(|e| t.error("normalize", e.to_string()))?;
    let uwo_lambda = t.f64_in("uwo_lambda", 0.5, 0.0, 1e6)?;
    let lsc_samples = t.u64_or("lsc_samples", LSC_REFERENCE_SAMPLES as u64)?;
    if lsc_samples > 1 << 16 {
        return Err(t.error("lsc_samples", "must be at most 65536"));
    }
    let lsc_quantile = t.f64_in("lsc_quantile", LSC_QUANTILE, 0.0, 1.0)?;
    Ok(Scoring {
        ensemble,
        normalize,
        uwo_lambda,
        lsc_samples: lsc_samples as u32,
        lsc_quantile,
    })
}

pub(super) fn read_score(t: &Tbl, resolver: &Resolver) -> Result<ScoreSpec, ConfigError> {
    let s = scoring(t, resolver)?;
    let raw = t.req_str("data")?;
    let data_url = resolver.input(t, "data", &raw)?;
    t.record("data", Value::String(data_url.clone()));
    let shard_rows = count(t, "shard_rows", 256, 1 << 24)? as u32;
    let (chat, max_prompt_tokens) = prompt_format(t)?;
    let reference = match t.opt_str("reference")? {
        Some(_) => Some(model(t, "reference", None, resolver)?),
        None => None,
    };
    // LSC needs reference samples; its keys without a reference would be silently unused.
    if reference.is_none() {
        for key in ["lsc_samples", "lsc_quantile"] {
            if t.has(key) {
                return Err(t.error(
                    key,
                    "LSC scores need a `reference` policy to sample; give `reference` or drop \
                     this key",
                ));
            }
        }
    }
    let sampling = sampling(t)?;
    Ok(ScoreSpec {
        ensemble: s.ensemble,
        data_url,
        shard_rows,
        uwo_lambda: s.uwo_lambda,
        normalize: s.normalize,
        chat,
        max_prompt_tokens,
        lsc_samples: if reference.is_some() {
            s.lsc_samples
        } else {
            0
        },
        reference,
        lsc_quantile: s.lsc_quantile,
        sampling: Some(sampling),
    })
}

pub(super) fn read_bon(t: &Tbl, resolver: &Resolver) -> Result<BonSpec, ConfigError> {
    let s = scoring(t, resolver)?;
    let task = t.choice("task", BON_TASKS, Some("goodhart_digits"))?;
    let policy = model(t, "policy", Some(&task), resolver)?;
    let prompts = count(t, "prompts", 64, 1 << 20)?;
    let samples = count(t, "samples", 1024, 1 << 20)?;
    let max_n = count(t, "max_n", samples, samples)?;
    let prompts_per_shard = count(t, "prompts_per_shard", 8, 1 << 20)?;
    let sampling = sampling(t)?;
    Ok(BonSpec {
        ensemble: s.ensemble,
        policy: Some(policy),
        task,
        prompts: prompts as u32,
        samples: samples as u32,
        max_n: max_n as u32,
        prompts_per_shard: prompts_per_shard as u32,
        uwo_lambda: s.uwo_lambda,
        normalize: s.normalize,
        lsc_samples: s.lsc_samples,
        lsc_quantile: s.lsc_quantile,
        sampling: Some(sampling),
    })
}
