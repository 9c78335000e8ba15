//! Tasks that bring their own vocabulary (Goodhart-Digits): the tiny Llama config and the
//! word-level tokenizer built for it, and the token rules its completions are sampled and
//! scored under. Tasks on real language models have none of these: they use the model's.

use serde_json::json;

use super::goodhart_digits as gd;
use super::Task;
use crate::model::{ModelConfig, ModelError, Tokenizer};
use crate::sample::TokenRules;

/// The shape of a tiny model (`policy = "tiny"`).
#[derive(Debug, Clone, Copy)]
pub struct TinyShape {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub intermediate_size: usize,
    /// The std of the weights' normal init (config.json's `initializer_range`); 0 = 0.02.
    pub initializer_range: f64,
}

impl Task {
    /// The tiny model config and tokenizer of this task's own vocabulary; None for a task on
    /// real language models. Goodhart-Digits: token ids are the task's ids (content symbols
    /// `0`..`15` are ids 0..15, then `<s>` BOS, `<sep>` SEP, `</s>` EOS, `<pad>` PAD), so
    /// prompts and completions need no translation.
    pub fn tiny_model(
        self,
        shape: TinyShape,
    ) -> Option<Result<(ModelConfig, Tokenizer), ModelError>> {
        match self {
            Task::GoodhartDigits => Some(goodhart_tiny(shape)),
            Task::ExactWords => None,
        }
    }

    /// The rules completions of this task's own vocabulary are drawn under; None for a task
    /// on real language models (they use the model's EOS: `train::rollout::model_rules`).
    /// Goodhart-Digits: BOS, SEP and PAD never; EOS not first; at most
    /// min(`max_new_tokens`, 16 + 1) tokens, the last of them a forced EOS (so
    /// `max_new_tokens` counts the EOS, and the default 17 allows the task's 16 symbols).
    pub fn token_rules(self, max_new_tokens: usize) -> Option<TokenRules> {
        match self {
            Task::GoodhartDigits => Some(TokenRules {
                eos_token_ids: vec![gd::EOS],
                forbidden_token_ids: vec![gd::BOS, gd::SEP, gd::PAD],
                min_new_tokens: 1,
                max_new_tokens: max_new_tokens.min(gd::MAX_SYMBOLS + 1),
                eos_at_limit: true,
            }),
            Task::ExactWords => None,
        }
    }
}

fn goodhart_tiny(shape: TinyShape) -> Result<(ModelConfig, Tokenizer), ModelError> {
    let base = ModelConfig::tiny_with(
        gd::VOCAB_SIZE,
        shape.hidden_size,
        shape.num_layers,
        shape.num_heads,
        shape.num_kv_heads,
        shape.intermediate_size,
    );
    let mut raw = base.to_json();
    if let Some(obj) = raw.as_object_mut() {
        obj.insert("bos_token_id".into(), json!(gd::BOS));
        obj.insert("eos_token_id".into(), json!(gd::EOS));
        obj.insert("pad_token_id".into(), json!(gd::PAD));
        if shape.initializer_range > 0.0 {
            obj.insert("initializer_range".into(), json!(shape.initializer_range));
        }
    }
    let config = ModelConfig::from_json(&raw, "<tiny goodhart_digits config>")?;
    Ok((config, goodhart_tokenizer()?))
}

/// A word-level tokenizer over Goodhart-Digits' 20 ids (whitespace-separated symbols).
pub fn goodhart_tokenizer() -> Result<Tokenizer, ModelError> {
    let symbols: Vec<String> = (0..gd::NUM_SYMBOLS).map(|s| s.to_string()).collect();
    let symbols: Vec<(&str, u32)> = symbols
        .iter()
        .zip(0..)
        .map(|(s, id)| (s.as_str(), id))
        .collect();
    let specials = [
        ("<s>", gd::BOS),
        ("<sep>", gd::SEP),
        ("</s>", gd::EOS),
        ("<pad>", gd::PAD),
    ];
    Tokenizer::word_level(
        &symbols,
        &specials,
        "<pad>",
        json!({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
               "model_max_length": 256, "tokenizer_class": "PreTrainedTokenizerFast"}),
        "<goodhart_digits tokenizer>",
    )
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
        assert_eq!(t.special_id("pad_token"), Some(gd::PAD));
    }

    /// At the default limit the rules allow exactly the task's `allowed_tokens` at each
    /// position; a longer limit is capped at the task's 16 symbols + EOS.
    #[test]
    fn goodhart_rules_are_the_tasks_allowed_tokens() {
        let rules = Task::GoodhartDigits.token_rules(17).unwrap();
        let masks = rules.masks(gd::VOCAB_SIZE).unwrap();
        for t in 0..=gd::MAX_SYMBOLS {
            let allowed: Vec<bool> = masks.at(t).iter().map(|f| !f).collect();
            assert_eq!(allowed, gd::allowed_tokens(t), "position {t}");
        }
        assert_eq!(
            Task::GoodhartDigits.token_rules(40).unwrap().max_new_tokens,
            gd::MAX_SYMBOLS + 1
        );
        assert!(Task::ExactWords.token_rules(40).is_none());
    }
}
