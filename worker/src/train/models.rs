//! The models a training job starts from: a Hugging Face directory (path or URL) or a tiny
//! Llama built in code for a built-in task's vocabulary (`init = "tiny"`), with the tokenizer
//! and auxiliary files that are written back with the trained model.

use std::collections::BTreeMap;

use bytes::Bytes;
use candle_core::Device;
use mirrorplay_proto::v1::{model_source, ModelSource, TinyModel};
use serde_json::json;

use super::TrainError;
use crate::model::{init_random, save_model, Model, ModelConfig, Pretrained, Tokenizer};
use crate::tasks::goodhart_digits as gd;

/// A model with the files saved beside its weights.
pub struct Loaded {
    pub model: Model,
    pub tokenizer: Option<Tokenizer>,
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
}
