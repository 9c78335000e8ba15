//! Example and benchmark models, generated deterministically from code.
//!
//! `write_example_models` writes the small f32 models committed under `examples/` (a tiny
//! Llama-shaped `base` and three fine-tunes `task-a`, `task-b`, `task-c`), byte-identical on every run.
//! `write_random_models` writes large models of a requested size for benchmarks, streaming so
//! memory stays bounded.

use std::path::Path;

use serde_json::json;

use super::dtype::{encode_f32, Dtype};
use super::error::{IoError, Result};
use super::safetensors::{pt_metadata, TensorLayout};
use super::store::Location;
use super::writer::{write_safetensors, SafetensorsWriter};
use crate::rng::{Purpose, Stream, StreamKey};

/// Shape of the example models (LlamaForCausalLM).
const VOCAB: u64 = 32;
const HIDDEN: u64 = 32;
const LAYERS: u64 = 2;
const HEADS: u64 = 4;
const KV_HEADS: u64 = 2;
const INTERMEDIATE: u64 = 64;

const EXAMPLE_SEED: u64 = 20240601;

/// Tensor names and shapes of the example Llama model, in name order.
fn example_layout() -> Vec<TensorLayout> {
    let head_dim = HIDDEN / HEADS;
    let mut shapes: Vec<(String, Vec<u64>)> = vec![
        ("model.embed_tokens.weight".into(), vec![VOCAB, HIDDEN]),
        ("model.norm.weight".into(), vec![HIDDEN]),
        ("lm_head.weight".into(), vec![VOCAB, HIDDEN]),
    ];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        shapes.extend([
            (format!("{p}.input_layernorm.weight"), vec![HIDDEN]),
            (format!("{p}.post_attention_layernorm.weight"), vec![HIDDEN]),
            (
                format!("{p}.self_attn.q_proj.weight"),
                vec![HEADS * head_dim, HIDDEN],
            ),
            (
                format!("{p}.self_attn.k_proj.weight"),
                vec![KV_HEADS * head_dim, HIDDEN],
            ),
            (
                format!("{p}.self_attn.v_proj.weight"),
                vec![KV_HEADS * head_dim, HIDDEN],
            ),
            (
                format!("{p}.self_attn.o_proj.weight"),
                vec![HIDDEN, HEADS * head_dim],
            ),
            (
                format!("{p}.mlp.gate_proj.weight"),
                vec![INTERMEDIATE, HIDDEN],
            ),
            (
                format!("{p}.mlp.up_proj.weight"),
                vec![INTERMEDIATE, HIDDEN],
            ),
            (
                format!("{p}.mlp.down_proj.weight"),
                vec![HIDDEN, INTERMEDIATE],
            ),
        ]);
    }
    shapes.sort();
    shapes
        .into_iter()
        .map(|(name, shape)| TensorLayout {
            name,
            dtype: Dtype::F32,
            shape,
        })
        .collect()
}

/// Base value of element `i` of tensor `t`: norms are 1 + noise, matrices N(0, 0.02²)·scale.
fn base_value(key: StreamKey, i: u64, is_norm: bool) -> f32 {
    let mut s = key.derive(i).stream();
    let z = s.normal() as f32;
    if is_norm {
        1.0 + 0.05 * z
    } else {
        0.2 * z
    }
}

/// Task delta of element `i`: small dense noise plus a sparse set (5%) of large changes, so
/// that trimming methods (TIES, DARE, PCB) have something to choose between.
fn delta_value(key: StreamKey, i: u64) -> f32 {
    let mut s = key.derive(i).stream();
    let dense = 0.01 * s.normal();
    let sparse = if s.bernoulli(0.05) {
        0.2 * s.normal()
    } else {
        0.0
    };
    (dense + sparse) as f32
}

fn config_json() -> serde_json::Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
        "attention_bias": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "torch_dtype": "float32"
    })
}

/// A word-level tokenizer over 32 symbols: 4 specials, then `a`..`z`, then digits `0`..`1`.
fn tokenizer_json() -> serde_json::Value {
    let specials = ["<pad>", "<s>", "</s>", "<unk>"];
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, tok) in specials.iter().enumerate() {
        vocab.insert(tok.to_string(), json!(id));
        added.push(
            json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}),
        );
    }
    let words = (b'a'..=b'z')
        .map(|c| (c as char).to_string())
        .chain(["0".to_string(), "1".to_string()]);
    for (i, w) in words.enumerate() {
        vocab.insert(w, json!(specials.len() + i));
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
}

fn tokenizer_config_json() -> serde_json::Value {
    json!({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
           "model_max_length": 128, "tokenizer_class": "PreTrainedTokenizerFast"})
}

async fn write_json(loc: &Location, value: &serde_json::Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).expect("JSON value");
    text.push('\n');
    loc.put(text.into_bytes()).await
}

/// Writes `base`, `task-a`, `task-b` and `task-c` under `dir` (created if missing).
pub async fn write_example_models(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| IoError::Fs {
        path: dir.display().to_string(),
        source: e,
    })?;
    let root = Location::parse(&dir.to_string_lossy())?;
    let layout = example_layout();
    for (model_index, name) in ["base", "task-a", "task-b", "task-c"].iter().enumerate() {
        let out = root.join(name);
        let mut tensors = Vec::new();
        for (t, l) in layout.iter().enumerate() {
            let is_norm = l.name.ends_with("norm.weight");
            let base_key = StreamKey::new(EXAMPLE_SEED, 0, t as u64, 0, Purpose::Example);
            let delta_key = StreamKey::new(
                EXAMPLE_SEED,
                0,
                t as u64,
                model_index as u64,
                Purpose::Example,
            );
            let values: Vec<f32> = (0..l.shape.iter().product::<u64>())
                .map(|i| {
                    base_value(base_key, i, is_norm)
                        + if model_index == 0 {
                            0.0
                        } else {
                            delta_value(delta_key, i)
                        }
                })
                .collect();
            let mut bytes = Vec::new();
            encode_f32(Dtype::F32, &values, &mut bytes);
            tensors.push((l.clone(), bytes));
        }
        write_safetensors(&out.join("model.safetensors"), &tensors, &pt_metadata()).await?;
        write_json(&out.join("config.json"), &config_json()).await?;
        write_json(&out.join("tokenizer.json"), &tokenizer_json()).await?;
        write_json(&out.join("tokenizer_config.json"), &tokenizer_config_json()).await?;
    }
    Ok(())
}

/// Large random models for benchmarks: `names` (e.g. base, m1, m2, m3) each of about
/// `bytes_per_model` bytes of `dtype`, as tensors of at most 64 MiB (rows × 4096). Models after
/// the first are the first plus a delta, like fine-tunes. Written with bounded memory.
pub async fn write_random_models(
    dir: &Path,
    names: &[String],
    bytes_per_model: u64,
    dtype: Dtype,
    seed: u64,
) -> Result<()> {
    const COLS: u64 = 4096;
    const MAX_TENSOR_ELEMENTS: u64 = 64 * 1024 * 1024 / 4;
    const CHUNK: u64 = 1 << 20;
    std::fs::create_dir_all(dir).map_err(|e| IoError::Fs {
        path: dir.display().to_string(),
        source: e,
    })?;
    let root = Location::parse(&dir.to_string_lossy())?;
    let mut elements_left = (bytes_per_model / dtype.size() as u64).max(COLS);
    let mut layout = Vec::new();
    while elements_left > 0 {
        let rows = (elements_left.min(MAX_TENSOR_ELEMENTS) / COLS).max(1);
        layout.push(TensorLayout {
            name: format!("model.layers.{:04}.weight", layout.len()),
            dtype,
            shape: vec![rows, COLS],
        });
        elements_left = elements_left.saturating_sub(rows * COLS);
    }
    for (model_index, name) in names.iter().enumerate() {
        let out = root.join(name);
        let mut writer = SafetensorsWriter::create(
            &out.join("model.safetensors"),
            layout.clone(),
            &pt_metadata(),
        )
        .await?;
        let mut values = Vec::with_capacity(CHUNK as usize);
        let mut bytes = Vec::with_capacity(CHUNK as usize * dtype.size());
        for (t, l) in layout.iter().enumerate() {
            let base_key = StreamKey::new(seed, 0, t as u64, 0, Purpose::Example);
            let delta_key = StreamKey::new(seed, 0, t as u64, model_index as u64, Purpose::Example);
            let numel = l.shape.iter().product::<u64>();
            let mut start = 0;
            while start < numel {
                let end = (start + CHUNK).min(numel);
                values.clear();
                values.extend((start..end).map(|i| {
                    let base = 0.02 * Stream::at(base_key, i) as i64 as f32 / i64::MAX as f32;
                    let delta = if model_index == 0 {
                        0.0
                    } else {
                        0.002 * Stream::at(delta_key, i) as i64 as f32 / i64::MAX as f32
                    };
                    base + delta
                }));
                bytes.clear();
                encode_f32(dtype, &values, &mut bytes);
                writer.write(&bytes).await?;
                start = end;
            }
        }
        writer.finish().await?;
        write_json(&out.join("config.json"), &json!({"model_type": "random", "note": "benchmark model from mirrorplay example-models --random"})).await?;
    }
    Ok(())
}
