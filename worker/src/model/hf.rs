//! Hugging Face directories in and out, through `crate::io` (paths or object-store URLs):
//! `config.json`, `model.safetensors` or a sharded index (F32/F16/BF16, computed in f32),
//! `tokenizer.json`, and generation settings (EOS ids); the model remembers the dtype its
//! weights were stored in. Saving is `super::save` (the dtype and shards of `SaveOptions`).
//! Must not interpret tokens or run models.

use std::collections::BTreeMap;

use bytes::Bytes;
use candle_core::{Device, Tensor};
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

use super::config::{token_ids, ModelConfig};
use super::decoder::Model;
use super::error::{ModelError, Result};
use super::gguf::load_gguf;
use super::save::{pretty, save_model, SaveOptions};
use super::tokenizer::Tokenizer;
use crate::io::hf::{open_model, read_json};
use crate::io::sharded::SavedObject;
use crate::io::{Dtype, Location};

/// Non-weight files of a model directory that are carried from load to save.
pub const AUX_FILES: [&str; 9] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "added_tokens.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
];

/// A loaded model directory: the model, its tokenizer, its generation ids and the auxiliary
/// files written back on save.
#[derive(Debug)]
pub struct Pretrained {
    pub model: Model,
    pub tokenizer: Option<Tokenizer>,
    /// From generation_config.json when present, else config.json's `eos_token_id`.
    pub eos_token_ids: Vec<u32>,
    /// config.json's `pad_token_id`, else the tokenizer's `pad_token`, else None.
    pub pad_token_id: Option<u32>,
    /// File name → bytes, written verbatim by [`save_model`].
    pub aux_files: BTreeMap<String, Bytes>,
    /// The float dtype the weights were stored in (the one holding most elements if mixed;
    /// F32 for a model built in code): what a save writes unless told otherwise.
    pub source_dtype: Dtype,
}

impl Pretrained {
    /// Loads a model directory (or a single `.safetensors` file with config.json beside it)
    /// from a path or URL, as f32 on `device`; `trainable` gives `Var` weights.
    /// A location whose path ends in `.gguf` (any case) is loaded by [`load_gguf`].
    pub async fn load(location: &str, trainable: bool, device: &Device) -> Result<Self> {
        if is_gguf(location)? {
            return load_gguf(location, trainable, device).await;
        }
        let files = open_model(location).await?;
        let config_loc = files.root.join("config.json");
        let config = ModelConfig::from_json(&read_json(&config_loc).await?, config_loc.url())?;
        let mut aux_files = BTreeMap::new();
        for name in AUX_FILES {
            if files.extras.iter().any(|e| e == name) {
                aux_files.insert(name.to_string(), files.root.join(name).read().await?);
            }
        }
        let root_url = files.root.url().to_string();
        let shapes: BTreeMap<String, Vec<usize>> = config.tensor_shapes().into_iter().collect();
        let mut wanted: Vec<String> = files.tensors.keys().cloned().collect();
        for name in shapes.keys() {
            if !files.tensors.contains_key(name) {
                return Err(ModelError::MissingTensor {
                    url: root_url,
                    name: name.clone(),
                });
            }
        }
        // Only tensors the model uses are read (a tied lm_head copy or rotary buffers are not).
        wanted.retain(|n| {
            shapes.contains_key(n) || !(n.ends_with("rotary_emb.inv_freq") || n == "lm_head.weight")
        });
        let reads = wanted.iter().map(|name| {
            let entry = &files.tensors[name];
            let loc = files.file_of(entry).clone();
            let (name, info) = (name.clone(), entry.info.clone());
            let device = device.clone();
            async move {
                let shape: Vec<usize> = info.shape.iter().map(|&d| d as usize).collect();
                if !info.dtype.is_float() {
                    return Err(ModelError::Dtype {
                        url: loc.url().into(),
                        name,
                        found: info.dtype.to_string(),
                    });
                }
                let values = loc
                    .read_range_f32(info.start..info.start + info.len, info.dtype, Vec::new())
                    .await?;
                let t = Tensor::from_vec(values, shape, &device)?;
                Ok::<_, ModelError>((name, t))
            }
        });
        let mut tensors: BTreeMap<String, Tensor> = futures::stream::iter(reads)
            .buffered(8)
            .try_collect()
            .await?;
        Model::check(&config, &mut tensors, &root_url)?;
        let tokenizer = match aux_files.get("tokenizer.json") {
            Some(bytes) => {
                let tc = match aux_files.get("tokenizer_config.json") {
                    Some(b) => serde_json::from_slice(b).map_err(|e| crate::io::IoError::Json {
                        url: files.root.join("tokenizer_config.json").url().into(),
                        source: e,
                    })?,
                    None => Value::Null,
                };
                let jinja_url = files.root.join("chat_template.jinja").url().to_string();
                let jinja = aux_files
                    .get("chat_template.jinja")
                    .map(|b| (jinja_url.as_str(), &b[..]));
                Some(Tokenizer::from_files(
                    bytes,
                    files.root.join("tokenizer.json").url(),
                    tc,
                    files.root.join("tokenizer_config.json").url(),
                    jinja,
                )?)
            }
            None => None,
        };
        if let Some(t) = &tokenizer {
            check_vocab(t, &config, files.root.join("tokenizer.json").url())?;
        }
        let mut eos_token_ids = config.eos_token_ids.clone();
        if let Some(bytes) = aux_files.get("generation_config.json") {
            let url = files.root.join("generation_config.json").url().to_string();
            let gen: Value =
                serde_json::from_slice(bytes).map_err(|e| crate::io::IoError::Json {
                    url: url.clone(),
                    source: e,
                })?;
            if let Some(obj) = gen.as_object() {
                let ids = token_ids(obj, &url, "eos_token_id")?;
                if !ids.is_empty() {
                    eos_token_ids = ids;
                }
            }
        }
        let pad_token_id = pad_token_id(&config, tokenizer.as_ref());
        let source_dtype = Dtype::most_common_float(
            wanted
                .iter()
                .map(|n| (files.tensors[n].info.dtype, files.tensors[n].info.numel())),
        );
        let model = Model::new(config, tensors, trainable)?;
        Ok(Pretrained {
            model,
            tokenizer,
            eos_token_ids,
            pad_token_id,
            aux_files,
            source_dtype,
        })
    }

    /// Wraps a model built in code (e.g. `init_random` + `Tokenizer::tiny`); the tokenizer's
    /// files become the auxiliary files.
    pub fn from_parts(model: Model, tokenizer: Option<Tokenizer>) -> Result<Self> {
        let mut aux_files = BTreeMap::new();
        if let Some(t) = &tokenizer {
            aux_files.insert(
                "tokenizer.json".to_string(),
                Bytes::from(t.to_json()?.into_bytes()),
            );
            if !t.config().is_null() {
                aux_files.insert(
                    "tokenizer_config.json".to_string(),
                    Bytes::from(pretty(t.config())),
                );
            }
        }
        let c = model.config();
        Ok(Pretrained {
            eos_token_ids: c.eos_token_ids.clone(),
            pad_token_id: pad_token_id(c, tokenizer.as_ref()),
            model,
            tokenizer,
            aux_files,
            source_dtype: Dtype::F32,
        })
    }

    /// Saves to a directory (path or URL); see [`save_model`].
    pub async fn save(&self, location: &str, options: &SaveOptions) -> Result<Vec<SavedObject>> {
        save_model(&self.model, &self.aux_files, location, options).await
    }
}

/// The pad id: config.json's `pad_token_id`, else the tokenizer's `pad_token`, else None.
pub(crate) fn pad_token_id(config: &ModelConfig, tokenizer: Option<&Tokenizer>) -> Option<u32> {
    config
        .pad_token_id
        .or_else(|| tokenizer.and_then(|t| t.special_id("pad_token")))
}

/// Whether `location`'s path names a GGUF file (ends in `.gguf`, any case).
fn is_gguf(location: &str) -> Result<bool> {
    let name = Location::parse(location)?.file_name().to_ascii_lowercase();
    Ok(name.ends_with(".gguf"))
}

/// A tokenizer's vocabulary (added tokens included) must fit in the model's embedding rows
/// (it may be smaller: embeddings are often padded); `url` names the tokenizer in the error.
pub(crate) fn check_vocab(tokenizer: &Tokenizer, config: &ModelConfig, url: &str) -> Result<()> {
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(ModelError::VocabTooLarge {
            url: url.to_string(),
            tokenizer: tokenizer.vocab_size(),
            model: config.vocab_size,
        });
    }
    Ok(())
}
