//! Tables shared by the training kinds (`sft`, `selfplay`): `[optimizer]`, `[sampling]`, model
//! sources (a path, a URL, `stage:<name>` or `"tiny"`: a tiny Llama built in code for the
//! job's task vocabulary, seeded by the job seed) and how the final model is saved.

use mirrorplay_proto::v1::{
    model_source, CheckpointSpec, ComputeDtype, DataParallelSpec, Decay, ModelSource,
    OptimizerSpec, SamplingSpec, SaveSpec, TinyModel,
};
use toml::Value;

use super::merge::DEFAULT_MAX_SHARD_SIZE;
use super::reader::Tbl;
use super::{ConfigError, Resolver};

/// Built-in tasks (`task = ...`).
pub const TASKS: &[&str] = &["goodhart_digits", "exact_words"];
/// Tasks with a vocabulary of their own, so `"tiny"` models exist for them.
pub const TINY_TASKS: &[&str] = &["goodhart_digits"];
/// Goodhart-Digits: at most 16 symbols, then EOS.
pub const DEFAULT_MAX_NEW_TOKENS: u64 = 17;

/// A model key: `"tiny"` (for `task`), or a path, URL or `stage:<name>`.
pub(super) fn model(
    t: &Tbl,
    key: &str,
    task: Option<&str>,
    resolver: &Resolver,
) -> Result<ModelSource, ConfigError> {
    let raw = t.req_str(key)?;
    let source = if raw == "tiny" {
        let task =
            task.ok_or_else(|| t.error(key, "`tiny` needs `task` (the vocabulary it uses)"))?;
        if !TINY_TASKS.contains(&task) {
            return Err(t.error(
                key,
                format!(
                    "task `{task}` runs on real language models (it has no vocabulary of its \
                     own for a tiny model): give a model path, URL or `.gguf` file"
                ),
            ));
        }
        model_source::Source::Tiny(TinyModel {
            task: task.to_string(),
            hidden_size: 64,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            intermediate_size: 128,
            initializer_range: 0.0,
        })
    } else {
        let url = resolver.model(t, key, &raw)?;
        t.record(key, Value::String(url.clone()));
        model_source::Source::Url(url)
    };
    Ok(ModelSource {
        source: Some(source),
    })
}

/// `compute_dtype`: "f32" (default) | "bf16" | "f16". Master weights and optimizer state stay
/// f32 whatever this says; bf16/f16 are meant for CUDA (on CPU they run, slowly).
pub(super) fn compute_dtype(t: &Tbl) -> Result<ComputeDtype, ConfigError> {
    Ok(
        match t
            .choice("compute_dtype", &["f32", "bf16", "f16"], Some("f32"))?
            .as_str()
        {
            "bf16" => ComputeDtype::Bf16,
            "f16" => ComputeDtype::F16,
            _ => ComputeDtype::F32,
        },
    )
}

/// A positive integer with a default, at most `max`.
pub(super) fn count(t: &Tbl, key: &str, default: u64, max: u64) -> Result<u64, ConfigError> {
    let v = t.u64_or(key, default)?;
    if v == 0 || v > max {
        return Err(t.error(key, format!("must be in [1, {max}], found {v}")));
    }
    Ok(v)
}

/// `[optimizer]`: lr, warmup_steps, decay, beta1, beta2, eps, weight_decay, max_grad_norm.
pub(super) fn optimizer(parent: &Tbl, default_lr: f64) -> Result<OptimizerSpec, ConfigError> {
    let t = parent.opt_table("optimizer")?;
    let empty;
    let t = match t {
        Some(t) => t,
        None => {
            empty = parent.empty_child("optimizer");
            empty
        }
    };
    let lr = t.f64_in("lr", default_lr, 0.0, 1.0)?;
    if lr <= 0.0 {
        return Err(t.error("lr", format!("must be > 0, found {lr}")));
    }
    let warmup_steps = t.u64_or("warmup_steps", 0)?;
    let decay = match t
        .choice("decay", &["constant", "linear", "cosine"], Some("constant"))?
        .as_str()
    {
        "linear" => Decay::Linear,
        "cosine" => Decay::Cosine,
        _ => Decay::Constant,
    };
    let beta1 = t.f64_in("beta1", 0.9, 0.0, 0.999_999)?;
    let beta2 = t.f64_in("beta2", 0.999, 0.0, 0.999_999_999)?;
    let eps = t.f64_in("eps", 1e-8, 0.0, 1.0)?;
    let weight_decay = t.f64_in("weight_decay", 0.0, 0.0, 1.0)?;
    let max_grad_norm = t.f64_in("max_grad_norm", 1.0, 0.0, f64::MAX)?;
    parent.record_table("optimizer", t.finish()?);
    let mut spec = OptimizerSpec {
        lr,
        warmup_steps,
        decay: 0,
        beta1,
        beta2,
        eps,
        weight_decay,
        max_grad_norm,
    };
    spec.set_decay(decay);
    Ok(spec)
}

/// `[sampling]`: max_new_tokens, min_new_tokens, temperature, top_k, top_p (docs/algorithms.md
/// §0–§1; defaults: no minimum beyond the rules' own, T = 1, no top-k, no top-p).
pub(super) fn sampling(parent: &Tbl) -> Result<SamplingSpec, ConfigError> {
    let t = parent.opt_table("sampling")?;
    let empty;
    let t = match t {
        Some(t) => t,
        None => {
            empty = parent.empty_child("sampling");
            empty
        }
    };
    let max_new_tokens = count(&t, "max_new_tokens", DEFAULT_MAX_NEW_TOKENS, 4096)?;
    let temperature = t.f64_in("temperature", 1.0, 0.0, 100.0)?;
    let top_k = t.u64_or("top_k", 0)?;
    let top_p = t.f64_in("top_p", 1.0, 0.0, 1.0)?;
    if top_p <= 0.0 {
        return Err(t.error("top_p", "must be in (0, 1]"));
    }
    let min_new_tokens = t.u64_or("min_new_tokens", 0)?;
    if min_new_tokens > max_new_tokens {
        return Err(t.error(
            "min_new_tokens",
            format!("must be in [0, max_new_tokens = {max_new_tokens}], found {min_new_tokens}"),
        ));
    }
    parent.record_table("sampling", t.finish()?);
    Ok(SamplingSpec {
        max_new_tokens: max_new_tokens as u32,
        temperature,
        top_k: top_k as u32,
        top_p,
        min_new_tokens: min_new_tokens as u32,
    })
}

/// Data parallelism: `world_size` (default 1; 0 = every worker registered when the job
/// starts), `min_world_size` (default world_size: the fewest ranks a gang re-formed after a
/// loss starts with) and `collective_timeout_s` (default 120: a collective call that makes no
/// progress this long fails the rank's task, and the gang is re-formed).
pub(super) fn parallel(t: &Tbl) -> Result<DataParallelSpec, ConfigError> {
    let world_size = t.u64_or("world_size", 1)?;
    if world_size > 4096 {
        return Err(t.error(
            "world_size",
            format!("must be in [0, 4096], found {world_size}"),
        ));
    }
    let min_world_size = t.u64_or("min_world_size", world_size)?;
    if world_size > 0 && (min_world_size == 0 || min_world_size > world_size) {
        return Err(t.error(
            "min_world_size",
            format!("must be in [1, world_size = {world_size}], found {min_world_size}"),
        ));
    }
    let timeout_s = t.f64_in("collective_timeout_s", 120.0, 0.0, 86_400.0)?;
    if timeout_s < 0.1 {
        return Err(t.error(
            "collective_timeout_s",
            format!("must be at least 0.1, found {timeout_s}"),
        ));
    }
    Ok(DataParallelSpec {
        world_size: world_size as u32,
        min_world_size: min_world_size as u32,
        collective_timeout_ms: (timeout_s * 1000.0).round() as u64,
    })
}

/// Checkpoints (docs/checkpoints.md): `checkpoint_every` (default 0: only at the end; else also
/// every N steps), `keep_last` (default 2; 0 = keep all), `keep_every` (default 0 = none: also
/// keep every checkpoint whose step is a multiple of it), `checkpoint_timeout_s` (default 1800:
/// a write that has not committed by then fails the task, which is then re-issued).
pub(super) fn checkpoint(t: &Tbl) -> Result<CheckpointSpec, ConfigError> {
    Ok(CheckpointSpec {
        every: t.u64_or("checkpoint_every", 0)?,
        keep_last: t.u64_or("keep_last", 2)?,
        keep_every: t.u64_or("keep_every", 0)?,
        timeout_s: count(t, "checkpoint_timeout_s", 1800, 7 * 86_400)?,
    })
}

/// The prompt formatting keys: `chat` (render prompts with the tokenizer's chat template,
/// default false) and `max_prompt_tokens` (longer prompts keep their last this many tokens,
/// default 1024, 0 = no limit).
pub(super) fn prompt_format(t: &Tbl) -> Result<(bool, u32), ConfigError> {
    let chat = t.bool_or("chat", false)?;
    let max = t.u64_or("max_prompt_tokens", 1024)?;
    if max > u32::MAX as u64 {
        return Err(t.error(
            "max_prompt_tokens",
            format!("must be at most {}, found {max}", u32::MAX),
        ));
    }
    Ok((chat, max as u32))
}

/// The final model's files (`OUTPUT/model/`): `save_dtype` ("auto", the default: the dtype the
/// model was loaded in, f32 for `"tiny"`; or "f32", "bf16", "f16") and `max_shard_size` (default
/// "5GB"; bytes or a size such as "512MiB": larger models are written as
/// `model-0000K-of-0000N.safetensors` + `model.safetensors.index.json`). Checkpoints stay f32.
pub(super) fn save(t: &Tbl) -> Result<SaveSpec, ConfigError> {
    let dtype = t.choice("save_dtype", &["auto", "f32", "bf16", "f16"], Some("auto"))?;
    Ok(SaveSpec {
        dtype: if dtype == "auto" {
            String::new()
        } else {
            dtype
        },
        max_shard_size: t.size_or("max_shard_size", DEFAULT_MAX_SHARD_SIZE)?,
    })
}
