//! The Hugging Face `config.json` value of a llama GGUF file, rebuilt from its `llama.*` and
//! `tokenizer.ggml.*_token_id` metadata as transformers' GGUF loader does (`LlamaForCausalLM`,
//! tie from the absence of `output.weight`, f32 metadata widened exactly), plus typed readers
//! of metadata values whose errors name the file and the key. Anything in the metadata that
//! would change the maths and is not implemented (experts, partial rotary, RoPE scaling other
//! than linear) is an error. Must not read tensors.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value as Meta;
use serde_json::{json, Value};

use super::error::{ModelError, Result};

/// An [`ModelError::Unsupported`] for the file at `url`.
pub(super) fn unsupported(
    url: &str,
    what: impl Into<String>,
    found: impl Into<String>,
    supported: &str,
) -> ModelError {
    ModelError::Unsupported {
        url: url.to_string(),
        what: what.into(),
        found: found.into(),
        supported: supported.to_string(),
    }
}

/// The `config.json` transformers builds from this metadata (`LlamaForCausalLM`); `vocab` is
/// the embedding's row count, `untied` whether the file has `output.weight`. A linear
/// `llama.rope.scaling.type` becomes `rope_scaling` (transformers ignores it; llama.cpp applies
/// it).
pub fn config_json(
    meta: &HashMap<String, Meta>,
    url: &str,
    vocab: usize,
    untied: bool,
) -> Result<Value> {
    let get = |k: &str| meta_usize(meta, url, &format!("llama.{k}"));
    let need = |k: &str| get(k)?.ok_or_else(|| config_err(url, &format!("llama.{k}"), "missing"));
    let hidden = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    if let Some(n) = get("expert_count")?.filter(|&n| n > 0) {
        return Err(unsupported(
            url,
            "mixture of experts (llama.expert_count)",
            n.to_string(),
            "0",
        ));
    }
    let eps_key = "llama.attention.layer_norm_rms_epsilon";
    let eps = meta_f64(meta, url, eps_key)?.ok_or_else(|| config_err(url, eps_key, "missing"))?;
    let mut c = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length")?,
        "num_hidden_layers": need("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv")?.unwrap_or(heads),
        "max_position_embeddings": need("context_length")?,
        "rms_norm_eps": eps,
        "rope_theta": meta_f64(meta, url, "llama.rope.freq_base")?.unwrap_or(10000.0),
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "tie_word_embeddings": !untied,
        "torch_dtype": "float32",
    });
    let head_dim = match get("attention.key_length")? {
        Some(d) => d,
        None if heads > 0 && hidden % heads == 0 => hidden / heads,
        None => {
            return Err(config_err(
                url,
                "llama.embedding_length",
                format!("{hidden} is not a multiple of llama.attention.head_count = {heads}"),
            ))
        }
    };
    c["head_dim"] = json!(head_dim);
    for key in ["rope.dimension_count", "attention.value_length"] {
        if let Some(d) = get(key)?.filter(|&d| d != head_dim) {
            return Err(unsupported(
                url,
                format!("llama.{key} ≠ head dimension {head_dim}"),
                d.to_string(),
                &head_dim.to_string(),
            ));
        }
    }
    match meta_str(meta, url, "llama.rope.scaling.type")?.as_deref() {
        None | Some("none") => {}
        Some("linear") => {
            let factor = meta_f64(meta, url, "llama.rope.scaling.factor")?
                .ok_or_else(|| config_err(url, "llama.rope.scaling.factor", "missing"))?;
            c["rope_scaling"] = json!({"rope_type": "linear", "factor": factor});
        }
        Some(other) => {
            return Err(unsupported(
                url,
                "llama.rope.scaling.type",
                other,
                "none, linear",
            ))
        }
    }
    for (key, name) in [
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("pad_token_id", "padding_token_id"),
    ] {
        if let Some(id) = meta_usize(meta, url, &format!("tokenizer.ggml.{name}"))? {
            c[key] = json!(id);
        }
    }
    Ok(c)
}

pub(super) fn config_err(url: &str, key: &str, reason: impl Into<String>) -> ModelError {
    ModelError::Config {
        url: url.to_string(),
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// A non-negative integer metadata value (any integer type), or None when absent.
pub(super) fn meta_usize(
    meta: &HashMap<String, Meta>,
    url: &str,
    key: &str,
) -> Result<Option<usize>> {
    meta.get(key)
        .map(|v| {
            as_usize(v).ok_or_else(|| {
                config_err(
                    url,
                    key,
                    format!("expected a non-negative integer, found {}", shown(v)),
                )
            })
        })
        .transpose()
}

pub(super) fn as_usize(v: &Meta) -> Option<usize> {
    let n: i128 = match *v {
        Meta::U8(n) => n.into(),
        Meta::I8(n) => n.into(),
        Meta::U16(n) => n.into(),
        Meta::I16(n) => n.into(),
        Meta::U32(n) => n.into(),
        Meta::I32(n) => n.into(),
        Meta::U64(n) => n.into(),
        Meta::I64(n) => n.into(),
        _ => return None,
    };
    usize::try_from(n).ok()
}

/// A float metadata value (f32 values widened exactly, as transformers reads them).
pub(super) fn meta_f64(meta: &HashMap<String, Meta>, url: &str, key: &str) -> Result<Option<f64>> {
    meta.get(key)
        .map(|v| match *v {
            Meta::F32(x) => Ok(x as f64),
            Meta::F64(x) => Ok(x),
            _ => Err(config_err(
                url,
                key,
                format!("expected a number, found {}", shown(v)),
            )),
        })
        .transpose()
}

pub(super) fn meta_str(
    meta: &HashMap<String, Meta>,
    url: &str,
    key: &str,
) -> Result<Option<String>> {
    meta.get(key)
        .map(|v| match v {
            Meta::String(s) => Ok(s.clone()),
            _ => Err(config_err(
                url,
                key,
                format!("expected a string, found {}", shown(v)),
            )),
        })
        .transpose()
}

pub(super) fn meta_bool(
    meta: &HashMap<String, Meta>,
    url: &str,
    key: &str,
) -> Result<Option<bool>> {
    meta.get(key)
        .map(|v| match *v {
            Meta::Bool(b) => Ok(b),
            _ => Err(config_err(
                url,
                key,
                format!("expected true or false, found {}", shown(v)),
            )),
        })
        .transpose()
}

/// A metadata value for error messages (arrays by length only).
pub(super) fn shown(v: &Meta) -> String {
    match v {
        Meta::Array(a) => format!("an array of {} values", a.len()),
        Meta::String(s) => format!("{s:?}"),
        v => format!("{v:?}"),
    }
}
