//! `[reward_train]`: K Bradley–Terry reward models (docs/algorithms.md §3, "Bradley–Terry reward
//! loss"), one task per member, then the ensemble manifest `OUTPUT/ensemble.json`. Keys:
//! `members` (K), `init` ("tiny" | path | URL | `stage:<name>`: a causal LM gets a new
//! one-label head), `[tiny]` (the tiny backbone's shape), `task` (a built-in task: its proxy
//! preference data when `data` is absent) or `data` (JSONL pairs), `label_noise` (task data),
//! `train_pairs`, `eval_pairs`, `bootstrap`, `shared_backbone`, `batch_size`, `steps`, `eval_every`,
//! `[optimizer]` (lr default 1e-3), `compute_dtype`, `chat`, `max_prompt_tokens`, and the
//! normalisation statistics' `norm_policy`, `norm_prompts`, `norm_samples` and `[sampling]`.

use mirrorplay_proto::v1::{model_source, pair_source, PairSource, RewardTrainSpec};
use toml::Value;

use super::reader::Tbl;
use super::training::{compute_dtype, count, model, optimizer, prompt_format, sampling, TASKS};
use super::{ConfigError, Resolver};

/// Tasks with proxy preference data.
const PAIR_TASKS: &[&str] = &["goodhart_digits"];

pub(super) fn read(t: &Tbl, resolver: &Resolver) -> Result<RewardTrainSpec, ConfigError> {
    let members = count(t, "members", 5, 64)? as u32;
    let task = match t.opt_str("task")? {
        Some(_) => Some(t.choice("task", TASKS, None)?),
        None => None,
    };
    let mut init = model(t, "init", task.as_deref(), resolver)?;
    if let Some(model_source::Source::Tiny(tiny)) = &mut init.source {
        tiny_shape(t, tiny)?;
    } else if t.has("tiny") {
        return Err(t.error("tiny", "only `init = \"tiny\"` takes a [tiny] shape"));
    }
    let data = match t.opt_str("data")? {
        Some(raw) => {
            let url = resolver.input(t, "data", &raw)?;
            t.record("data", Value::String(url.clone()));
            pair_source::Source::JsonlUrl(url)
        }
        None => match &task {
            Some(task) if PAIR_TASKS.contains(&task.as_str()) => {
                pair_source::Source::Task(task.clone())
            }
            Some(task) => {
                return Err(t.error(
                    "task",
                    format!(
                        "task `{task}` has no built-in preference data: give `data` (JSONL pairs)"
                    ),
                ))
            }
            None => {
                return Err(t.error(
                    "data",
                    "missing: give `data` (JSONL pairs) or a built-in `task` (goodhart_digits)",
                ))
            }
        },
    };
    let from_task = matches!(data, pair_source::Source::Task(_));
    let label_noise = if from_task {
        t.f64_in("label_noise", 0.0, 0.0, 0.5)?
    } else if t.has("label_noise") {
        return Err(t.error("label_noise", "only built-in task data takes label noise"));
    } else {
        0.0
    };
    let train_pairs = t.u64_or("train_pairs", if from_task { 4096 } else { 0 })?;
    if from_task && train_pairs == 0 {
        return Err(t.error("train_pairs", "task data needs train_pairs ≥ 1"));
    }
    let eval_pairs = t.u64_or("eval_pairs", 512)?;
    let bootstrap = t.bool_or("bootstrap", false)?;
    let shared_backbone = t.bool_or("shared_backbone", false)?;
    let batch_size = count(t, "batch_size", 64, 1 << 20)?;
    let steps = count(t, "steps", 300, 1 << 40)?;
    let eval_every = count(t, "eval_every", 100, 1 << 40)?;
    let optimizer = optimizer(t, 1e-3)?;
    let compute_dtype = compute_dtype(t)?;
    let (chat, max_prompt_tokens) = prompt_format(t)?;
    let norm_policy = match t.opt_str("norm_policy")? {
        Some(_) => Some(model(t, "norm_policy", task.as_deref(), resolver)?),
        None => None,
    };
    let norm_prompts = count(t, "norm_prompts", 64, 1 << 20)?;
    let norm_samples = count(t, "norm_samples", 8, 1 << 16)?;
    let sampling = sampling(t)?;
    let mut spec = RewardTrainSpec {
        members,
        init: Some(init),
        data: Some(PairSource { source: Some(data) }),
        label_noise,
        train_pairs: train_pairs as u32,
        eval_pairs: eval_pairs as u32,
        bootstrap,
        batch_size: batch_size as u32,
        steps,
        optimizer: Some(optimizer),
        norm_policy,
        norm_prompts: norm_prompts as u32,
        norm_samples: norm_samples as u32,
        sampling: Some(sampling),
        chat,
        max_prompt_tokens,
        compute_dtype: 0,
        eval_every,
        shared_backbone,
    };
    spec.set_compute_dtype(compute_dtype);
    Ok(spec)
}

/// `[tiny]`: the tiny backbone's `hidden_size`, `num_layers`, `num_heads`, `num_kv_heads`,
/// `intermediate_size` (defaults: the tiny model of the training kinds) and `initializer_range`
/// (the std of the weights' normal init, 0.02 as in transformers).
fn tiny_shape(t: &Tbl, tiny: &mut mirrorplay_proto::v1::TinyModel) -> Result<(), ConfigError> {
    let s = t
        .opt_table("tiny")?
        .unwrap_or_else(|| t.empty_child("tiny"));
    tiny.hidden_size = count(&s, "hidden_size", u64::from(tiny.hidden_size), 4096)? as u32;
    tiny.num_layers = count(&s, "num_layers", u64::from(tiny.num_layers), 64)? as u32;
    tiny.num_heads = count(&s, "num_heads", u64::from(tiny.num_heads), 64)? as u32;
    tiny.num_kv_heads = count(&s, "num_kv_heads", u64::from(tiny.num_kv_heads), 64)? as u32;
    tiny.intermediate_size = count(
        &s,
        "intermediate_size",
        u64::from(tiny.intermediate_size),
        1 << 16,
    )? as u32;
    tiny.initializer_range = s.f64_in("initializer_range", 0.02, 1e-6, 10.0)?;
    if !tiny.hidden_size.is_multiple_of(tiny.num_heads)
        || !tiny.num_heads.is_multiple_of(tiny.num_kv_heads)
    {
        return Err(s.error(
            "num_heads",
            format!(
                "hidden_size {} must be a multiple of num_heads {}, itself a multiple of \
                 num_kv_heads {}",
                tiny.hidden_size, tiny.num_heads, tiny.num_kv_heads
            ),
        ));
    }
    t.record_table("tiny", s.finish()?);
    Ok(())
}
