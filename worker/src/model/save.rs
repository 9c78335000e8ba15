//! Saving a model as a Hugging Face directory that transformers loads with
//! `from_pretrained(dir)`: `config.json` with its `torch_dtype`/`dtype` set to the saved dtype,
//! the auxiliary files (tokenizer, generation settings) byte for byte, and the weights in the
//! requested float dtype (F32, F16 or BF16, converted from f32 with round-to-nearest-even as
//! `io::dtype` does), in name order (a tied `lm_head` is not a tensor of the model, so it is
//! omitted as transformers omits it), encoded and streamed one tensor at a time and sharded by
//! `max_shard_size` as transformers shards (`io::sharded`). Must not load models or interpret
//! tokens.

use std::collections::BTreeMap;

use bytes::Bytes;
use candle_core::DType;
use serde_json::{json, Value};

use super::config::ModelConfig;
use super::decoder::Model;
use super::error::{ModelError, Result};
use crate::io::dtype::encode_f32_owned;
use crate::io::safetensors::TensorLayout;
use crate::io::shard_plan::DEFAULT_MAX_SHARD_SIZE;
use crate::io::sharded::{SavedObject, ShardedWriter};
use crate::io::{Dtype, Location};

/// How [`save_model`] writes the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveOptions {
    /// F32, F16 or BF16.
    pub dtype: Dtype,
    /// The largest weight file in bytes (a larger tensor gets a file of its own).
    pub max_shard_size: u64,
}

impl SaveOptions {
    /// `dtype` with transformers' default shard size (5 GB).
    pub fn new(dtype: Dtype) -> Self {
        SaveOptions {
            dtype,
            max_shard_size: DEFAULT_MAX_SHARD_SIZE,
        }
    }
}

impl Default for SaveOptions {
    /// F32, 5 GB shards.
    fn default() -> Self {
        SaveOptions::new(Dtype::F32)
    }
}

/// Sets a config.json value's dtype key to `dtype`: `dtype` (transformers ≥ 5) and/or
/// `torch_dtype`, whichever it has; `torch_dtype` when it has neither.
pub fn set_config_dtype(config: &mut Value, dtype: Dtype) {
    let Some(obj) = config.as_object_mut() else {
        return;
    };
    let mut keys: Vec<&str> = ["dtype", "torch_dtype"]
        .into_iter()
        .filter(|k| obj.contains_key(*k))
        .collect();
    if keys.is_empty() {
        keys.push("torch_dtype");
    }
    for key in keys {
        obj.insert(key.into(), json!(dtype.torch_name()));
    }
}

/// The `config.json` bytes [`save_model`] writes for `config` saved as `dtype` (pretty JSON).
pub fn config_file(config: &ModelConfig, dtype: Dtype) -> Bytes {
    let mut json = config.to_json();
    set_config_dtype(&mut json, dtype);
    Bytes::from(pretty(&json))
}

/// Pretty JSON with a final newline, as the files mirrorplay writes end.
pub(crate) fn pretty(v: &Value) -> Vec<u8> {
    let mut s = serde_json::to_string_pretty(v).expect("JSON value");
    s.push('\n');
    s.into_bytes()
}

/// Writes `model` (weights as `options.dtype`, sharded by `options.max_shard_size`) and
/// `aux_files` as a Hugging Face directory at `location` (path or URL); returns what was written
/// with sizes and SHA-256: config.json, the auxiliary files, then the weight files and the index.
pub async fn save_model(
    model: &Model,
    aux_files: &BTreeMap<String, Bytes>,
    location: &str,
    options: &SaveOptions,
) -> Result<Vec<SavedObject>> {
    let dtype = options.dtype;
    if !dtype.is_float() {
        return Err(ModelError::Unsupported {
            url: location.to_string(),
            what: "dtype to save in".into(),
            found: dtype.to_string(),
            supported: "F32, F16, BF16".into(),
        });
    }
    let dir = Location::parse(location)?;
    let mut saved = Vec::new();
    let config = config_file(model.config(), dtype);
    let small = std::iter::once(("config.json", &config))
        .chain(aux_files.iter().map(|(n, b)| (n.as_str(), b)));
    for (name, bytes) in small {
        dir.join(name).put(bytes.clone()).await?;
        saved.push(SavedObject::of_bytes(name, bytes));
    }
    let tensors = model.tensors();
    let layout: Vec<TensorLayout> = tensors
        .iter()
        .map(|(name, t)| TensorLayout {
            name: name.clone(),
            dtype,
            shape: t.dims().iter().map(|&d| d as u64).collect(),
        })
        .collect();
    let mut writer = ShardedWriter::new(&dir, layout, options.max_shard_size);
    for t in tensors.values() {
        let values = t
            .detach()
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        writer.write_owned(encode_f32_owned(dtype, values)).await?;
    }
    saved.extend(writer.finish().await?);
    Ok(saved)
}
