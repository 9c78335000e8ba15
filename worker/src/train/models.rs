//! The models a training job starts from: a Hugging Face directory or GGUF file (path or URL) or a tiny
//! Llama built in code for a built-in task's vocabulary (`init = "tiny"`), with the tokenizer,
//! generation ids and auxiliary files that are written back with the trained model, in the dtype it was loaded
//! in unless the job's `SaveSpec` says otherwise.

use std::collections::BTreeMap;

use bytes::Bytes;
use candle_core::Device;
use mirrorplay_proto::v1::{model_source, ModelSource, SaveSpec};

use super::TrainError;
use crate::io::shard_plan::DEFAULT_MAX_SHARD_SIZE;
use crate::io::Dtype;
use crate::model::{
    init_random, save_model, Model, Pretrained, SaveOptions, SavedObject, Tokenizer,
};
use crate::tasks::vocab::TinyShape;
use crate::tasks::Task;

/// A model with the files saved beside its weights.
pub struct Loaded {
    pub model: Model,
    pub tokenizer: Option<Tokenizer>,
    /// From generation_config.json, else config.json.
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
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

    fn new(p: Pretrained, source: String) -> Self {
        Loaded {
            model: p.model,
            tokenizer: p.tokenizer,
            eos_token_ids: p.eos_token_ids,
            pad_token_id: p.pad_token_id,
            aux_files: p.aux_files,
            source,
            source_dtype: p.source_dtype,
        }
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
            Ok(Loaded::new(p, url.clone()))
        }
        Some(model_source::Source::Tiny(tiny)) => {
            let task = Task::named(&tiny.task)?;
            let shape = TinyShape {
                hidden_size: tiny.hidden_size as usize,
                num_layers: tiny.num_layers as usize,
                num_heads: tiny.num_heads as usize,
                num_kv_heads: tiny.num_kv_heads as usize,
                intermediate_size: tiny.intermediate_size as usize,
                initializer_range: tiny.initializer_range,
            };
            let (config, tokenizer) = task.tiny_model(shape).ok_or_else(|| {
                TrainError::Invalid(format!(
                    "task `{}` has no vocabulary of its own, so no tiny model: give a model path",
                    tiny.task
                ))
            })??;
            let model = init_random(&config, seed, trainable, device)?;
            let p = Pretrained::from_parts(model, Some(tokenizer))?;
            Ok(Loaded::new(
                p,
                format!("tiny ({} parameters)", config.num_parameters()),
            ))
        }
        None => Err(TrainError::Invalid("a model source is empty".into())),
    }
}

#[cfg(test)]
mod tests {
    use mirrorplay_proto::v1::TinyModel;

    use super::*;

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
                initializer_range: 0.0,
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
