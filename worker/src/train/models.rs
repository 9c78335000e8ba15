//! The models a training job starts from: a Hugging Face directory (path or URL) or a tiny
//! Llama built in code for a built-in task's vocabulary (`init = "tiny"`), with the tokenizer
//! and auxiliary files that are written back with the trained model, in the dtype it was loaded
//! in unless the job's `SaveSpec` says otherwise.

use std::collections::BTreeMap;

use bytes::Bytes;
use candle_core::Device;
use mirrorplay_proto::v1::{model_source, ModelSource, SaveSpec, TinyModel};
use serde_json::json;

use super::TrainError;
use crate::io::shard_plan::DEFAULT_MAX_SHARD_SIZE;
use crate::io::Dtype;
use crate::model::{
    init_random, save_model, Model, ModelConfig, Pretrained, SaveOptions, SavedObject, Tokenizer,
};
use crate::tasks::goodhart_digits as gd;

/// A model with the files saved beside its weights.
pub struct Loaded {
    pub model: Model,
    pub tokenizer: Option<Tokenizer>,
    pub aux_files: BTreeMap<String, Bytes>,
    /// Where it came from, for logs.
    pub source: String,
    /// The float dtype its weights were stored in (F32 when built in code).
    pub source_dtype: Dtype,
}

impl Loaded {
    /// How `spec` saves this model: its dtype ("" = [`Loaded::source_dtype`]) and largest
    /// weight file (0 = 5 GB).
    pub fn save_options(&self, spec: Option<&SaveSpec>) -> Result<SaveOptions, TrainError> {
        let dtype = match spec.map(|s| s.dtype.as_str()).unwrap_or("") {
            "" => self.source_dtype,
            name => Dtype::parse_float_name(name).ok_or_else(|| {
                TrainError::Invalid(format!(
                    "save dtype `{name}`: expected f32, bf16 or f16 (or empty: the source's)"
                ))
            })?,
        };
        let max_shard_size = match spec.map_or(0, |s| s.max_shard_size) {
            0 => DEFAULT_MAX_SHARD_SIZE,
            n => n,
        };
        Ok(SaveOptions {
            dtype,
            max_shard_size,
        })
    }

    /// Writes the model as a Hugging Face directory at `url` as `spec` says.
    pub async fn save(
        &self,
        url: &str,
        spec: Option<&SaveSpec>,
    ) -> Result<Vec<SavedObject>, TrainError> {
        let options = self.save_options(spec)?;
        Ok(save_model(&self.model, &self.aux_files, url, &options).await?)
    }
}

/// Loads (or builds, for a tiny model seeded by `seed`) the model `source` names.
pub async fn load(
    source: &ModelSource,
    trainable: bool,
    seed: u64,
    device: &Device,
) -> Result<Loaded, TrainError> {
    match &source.source {
        Some(model_source::Source::Url(url)) => {
            let p = Pretrained::load(url, trainable, device).await?;
            Ok(Loaded {
                model: p.model,
                tokenizer: p.tokenizer,
                aux_files: p.aux_files,
                source: url.clone(),
                source_dtype: p.source_dtype,
            })
        }
        Some(model_source::Source::Tiny(tiny)) => {
            let (config, tokenizer) = tiny_for_task(tiny)?;
            let model = init_random(&config, seed, trainable, device)?;
            let p = Pretrained::from_parts(model, Some(tokenizer))?;
            Ok(Loaded {
                model: p.model,
                tokenizer: p.tokenizer,
                aux_files: p.aux_files,
                source: format!("tiny ({} parameters)", config.num_parameters()),
                source_dtype: p.source_dtype,
            })
        }
        None => Err(TrainError::Invalid("a model source is empty".into())),
    }
}

/// The tiny config and tokenizer of a task's vocabulary. Goodhart-Digits: token ids are the
/// task's ids (content symbols `0`..`15` are ids 0..15, then `<s>` BOS, `<sep>` SEP, `</s>` EOS,
/// `<pad>` PAD), so prompts and completions need no translation.
pub fn tiny_for_task(tiny: &TinyModel) -> Result<(ModelConfig, Tokenizer), TrainError> {
    if tiny.task != "goodhart_digits" {
        return Err(TrainError::Invalid(format!(
            "no tiny model for task `{}` (known: goodhart_digits)",
            tiny.task
        )));
    }
    let base = ModelConfig::tiny_with(
        gd::VOCAB_SIZE,
        tiny.hidden_size as usize,
        tiny.num_layers as usize,
        tiny.num_heads as usize,
        tiny.num_kv_heads as usize,
        tiny.intermediate_size as usize,
    );
    let mut raw = base.to_json();
    if let Some(obj) = raw.as_object_mut() {
        obj.insert("bos_token_id".into(), json!(gd::BOS));
        obj.insert("eos_token_id".into(), json!(gd::EOS));
        obj.insert("pad_token_id".into(), json!(gd::PAD));
    }
    let config = ModelConfig::from_json(&raw, "<tiny goodhart_digits config>")?;
    Ok((config, goodhart_tokenizer()?))
}

/// A word-level tokenizer over Goodhart-Digits' 20 ids (whitespace-separated symbols).
pub fn goodhart_tokenizer() -> Result<Tokenizer, TrainError> {
    let mut vocab = serde_json::Map::new();
    for s in 0..gd::NUM_SYMBOLS {
        vocab.insert(s.to_string(), json!(s));
    }
    let specials = [
        ("<s>", gd::BOS),
        ("<sep>", gd::SEP),
        ("</s>", gd::EOS),
        ("<pad>", gd::PAD),
    ];
    let mut added = Vec::new();
    for (tok, id) in specials {
        vocab.insert(tok.into(), json!(id));
        added.push(
            json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}),
        );
    }
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<pad>"}
    });
    let config = json!({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                        "model_max_length": 256, "tokenizer_class": "PreTrainedTokenizerFast"});
    Ok(Tokenizer::from_bytes(
        tokenizer.to_string().as_bytes(),
        config,
        "<goodhart_digits tokenizer>",
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_goodhart_tokenizer_maps_symbols_to_task_ids() {
        let t = goodhart_tokenizer().unwrap();
        assert_eq!(t.vocab_size(), gd::VOCAB_SIZE);
        assert_eq!(
            t.encode("<s> 3 15 0 7 <sep>").unwrap(),
            vec![gd::BOS, 3, 15, 0, 7, gd::SEP]
        );
        assert_eq!(t.token_to_id("</s>"), Some(gd::EOS));
    }

    #[tokio::test]
    async fn saves_in_the_source_dtype_unless_the_spec_says_otherwise() {
        let tiny = ModelSource {
            source: Some(model_source::Source::Tiny(TinyModel {
                task: "goodhart_digits".into(),
                hidden_size: 16,
                num_layers: 1,
                num_heads: 2,
                num_kv_heads: 1,
                intermediate_size: 32,
            })),
        };
        let mut loaded = load(&tiny, false, 3, &Device::Cpu).await.unwrap();
        assert_eq!(loaded.source_dtype, Dtype::F32);
        loaded.source_dtype = Dtype::BF16;
        let options = |dtype: &str, max_shard_size| {
            let spec = SaveSpec {
                dtype: dtype.into(),
                max_shard_size,
            };
            loaded.save_options(Some(&spec))
        };
        let default = loaded.save_options(None).unwrap();
        assert_eq!(default, SaveOptions::new(Dtype::BF16));
        assert_eq!(options("", 0).unwrap(), default);
        let f16 = options("f16", 1000).unwrap();
        assert_eq!((f16.dtype, f16.max_shard_size), (Dtype::F16, 1000));
        assert_eq!(options("f32", 0).unwrap().dtype, Dtype::F32);
        let err = options("int8", 0).unwrap_err().to_string();
        assert!(err.contains("save dtype `int8`"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().to_str().unwrap();
        let saved = loaded.save(url, None).await.unwrap();
        assert!(saved.iter().any(|s| s.path == "model.safetensors"));
        let back = load(
            &ModelSource {
                source: Some(model_source::Source::Url(url.into())),
            },
            false,
            0,
            &Device::Cpu,
        )
        .await
        .unwrap();
        assert_eq!(back.source_dtype, Dtype::BF16);
    }
}
