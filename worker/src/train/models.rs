//! The models a training job starts from: a Hugging Face directory or GGUF file (path or URL)
//! or a tiny Llama built in code for a built-in task's vocabulary (`init = "tiny"`), with the
//! tokenizer, generation ids and auxiliary files that are written back with the trained model.

use std::collections::BTreeMap;

use bytes::Bytes;
use candle_core::Device;
use mirrorplay_proto::v1::{model_source, ModelSource};

use super::TrainError;
use crate::model::{init_random, save_model, Model, Pretrained, Tokenizer};
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
}

impl Loaded {
    /// Writes the model as a Hugging Face directory at `url`.
    pub async fn save(&self, url: &str) -> Result<(), TrainError> {
        save_model(&self.model, &self.aux_files, url).await?;
        Ok(())
    }
}

impl Loaded {
    fn new(p: Pretrained, source: String) -> Self {
        Loaded {
            model: p.model,
            tokenizer: p.tokenizer,
            eos_token_ids: p.eos_token_ids,
            pad_token_id: p.pad_token_id,
            aux_files: p.aux_files,
            source,
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
