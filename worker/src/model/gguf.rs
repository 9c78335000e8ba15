//! GGUF files (llama.cpp's single-file format) in, as a [`Pretrained`] that saves as a Hugging
//! Face directory, the way transformers loads them with `from_pretrained(dir, gguf_file=..)`:
//! the config from `gguf_config`, weights from `gguf_tensors` (f32, HF names, Q/K
//! un-permuted), tokenizer files from `gguf_tokenizer`, and a generation_config.json. Only
//! architecture `llama` is supported; anything unsupported is an error naming the file and the
//! key, tensor or type, raised before any tensor is dequantised. Must not run models or write
//! files.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;

use bytes::Bytes;
use candle_core::quantized::gguf_file::{Content, Value as Meta};
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use serde_json::{json, Value};

use super::config::ModelConfig;
use super::decoder::Model;
use super::error::{ModelError, Result};
use super::gguf_config::{config_err, config_json, meta_str, unsupported};
use super::gguf_header::unknown_type_error;
use super::gguf_tensors::{check_tensors, known_tensors, read_tensors};
use super::gguf_tokenizer::tokenizer_files;
use super::hf::{check_vocab, pad_token_id, Pretrained};
use super::save::pretty;
use super::tokenizer::Tokenizer;
use crate::io::{Dtype, Location};

/// Loads a `.gguf` file (path or URL; read whole into memory) as f32 on `device`; `trainable`
/// gives `Var` weights. The tokenizer, tokenizer_config.json and generation_config.json it
/// describes become auxiliary files, so [`Pretrained::save`] writes an HF directory.
pub async fn load_gguf(location: &str, trainable: bool, device: &Device) -> Result<Pretrained> {
    let loc = Location::parse(location)?;
    let url = loc.url().to_string();
    let bytes = loc.read().await?;
    let device = device.clone();
    // Dequantising is CPU-bound: keep it off the async workers.
    let task = tokio::task::spawn_blocking(move || from_bytes(&bytes, &url, trainable, &device));
    task.await.map_err(|e| ModelError::Gguf {
        url: location.to_string(),
        reason: format!("loading task failed: {e}"),
    })?
}

fn from_bytes(bytes: &[u8], url: &str, trainable: bool, device: &Device) -> Result<Pretrained> {
    let mut reader = Cursor::new(bytes);
    let content = Content::read(&mut reader).map_err(|e| {
        unknown_type_error(bytes, url).unwrap_or_else(|| ModelError::Gguf {
            url: url.to_string(),
            reason: e.to_string(),
        })
    })?;
    let meta = &content.metadata;
    let arch = meta_str(meta, url, "general.architecture")?
        .ok_or_else(|| config_err(url, "general.architecture", "missing"))?;
    if arch != "llama" {
        return Err(unsupported(
            url,
            "GGUF architecture (general.architecture)",
            arch,
            "llama",
        ));
    }
    // Names, types, config, shapes and tokenizer are all checked before anything is dequantised.
    let names = known_tensors(&content, url)?;
    let embd = content
        .tensor_infos
        .get("token_embd.weight")
        .ok_or_else(|| ModelError::MissingTensor {
            url: url.to_string(),
            name: "token_embd.weight (model.embed_tokens.weight)".into(),
        })?;
    let vocab = embd.shape.dims().first().copied().unwrap_or(0);
    let untied = content.tensor_infos.contains_key("output.weight");
    let config = ModelConfig::from_json(&config_json(meta, url, vocab, untied)?, url)?;
    check_tensors(&content, &names, &config, url)?;
    let (tokenizer, mut aux_files) = tokenizer_and_files(meta, url, &config)?;
    let mut tensors = read_tensors(&content, &mut reader, &names, &config, url, device)?;
    if let Some(generation) = generation_config(&config) {
        aux_files.insert(
            "generation_config.json".into(),
            Bytes::from(pretty(&generation)),
        );
    }
    let eos_token_ids = config.eos_token_ids.clone();
    let pad_token_id = pad_token_id(&config, tokenizer.as_ref());
    Model::check(&config, &mut tensors, url)?;
    let model = Model::new(config, tensors, trainable)?;
    Ok(Pretrained {
        model,
        tokenizer,
        eos_token_ids,
        pad_token_id,
        aux_files,
        source_dtype: source_dtype(&content),
    })
}

/// The float dtype a save keeps by default: F16 or BF16 when most weights are stored so,
/// else F32 (quantised weights have no float dtype of their own; transformers dequantises
/// them to f32 as well).
fn source_dtype(content: &Content) -> Dtype {
    Dtype::most_common_float(content.tensor_infos.values().map(|info| {
        let dtype = match info.ggml_dtype {
            GgmlDType::F16 => Dtype::F16,
            GgmlDType::BF16 => Dtype::BF16,
            _ => Dtype::F32,
        };
        (dtype, info.shape.elem_count() as u64)
    }))
}

/// `generation_config.json` with the config's bos/eos/pad ids (None when it has none).
fn generation_config(config: &ModelConfig) -> Option<Value> {
    let mut generation = serde_json::Map::new();
    for (key, id) in [
        ("bos_token_id", config.bos_token_id),
        ("eos_token_id", config.eos_token_ids.first().copied()),
        ("pad_token_id", config.pad_token_id),
    ] {
        if let Some(id) = id {
            generation.insert(key.into(), json!(id));
        }
    }
    (!generation.is_empty()).then_some(Value::Object(generation))
}

/// The tokenizer the metadata describes (None without `tokenizer.ggml.model`) and its files.
fn tokenizer_and_files(
    meta: &HashMap<String, Meta>,
    url: &str,
    config: &ModelConfig,
) -> Result<(Option<Tokenizer>, BTreeMap<String, Bytes>)> {
    let mut aux_files = BTreeMap::new();
    let Some(files) = tokenizer_files(meta, url)? else {
        return Ok((None, aux_files));
    };
    let json = serde_json::to_vec(&files.tokenizer_json).expect("JSON value");
    let tokenizer = Tokenizer::from_bytes(&json, files.tokenizer_config.clone(), url)?;
    check_vocab(&tokenizer, config, url)?;
    aux_files.insert("tokenizer.json".into(), Bytes::from(json));
    aux_files.insert(
        "tokenizer_config.json".into(),
        Bytes::from(pretty(&files.tokenizer_config)),
    );
    Ok((Some(tokenizer), aux_files))
}
