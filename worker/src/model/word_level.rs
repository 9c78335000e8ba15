//! Word-level tokenizers built in code (tiny models of built-in tasks, tests): a fixed
//! vocabulary of whitespace-separated symbols plus special tokens at given ids.

use serde_json::{json, Map, Value};

use super::error::{ModelError, Result};
use super::tokenizer::Tokenizer;

impl Tokenizer {
    /// A word-level tokenizer: `symbols` and `specials` as (token, id) pairs (ids unique,
    /// tokens non-empty, without whitespace, unique); text is split on whitespace; a word
    /// outside the vocabulary becomes `unk` (one of the specials). `config` is the
    /// tokenizer_config.json written beside it.
    pub fn word_level(
        symbols: &[(&str, u32)],
        specials: &[(&str, u32)],
        unk: &str,
        config: Value,
        url: &str,
    ) -> Result<Self> {
        let bad = |reason: String| ModelError::Tokenizer {
            url: url.to_string(),
            reason,
        };
        let mut vocab = Map::new();
        let mut ids = std::collections::BTreeSet::new();
        let mut added = Vec::new();
        for (i, &(tok, id)) in symbols.iter().chain(specials).enumerate() {
            if tok.is_empty() || tok.chars().any(char::is_whitespace) {
                return Err(bad(format!("token {tok:?} is empty or has whitespace")));
            }
            if vocab.contains_key(tok) || !ids.insert(id) {
                return Err(bad(format!("token {tok:?} or id {id} repeats")));
            }
            vocab.insert(tok.to_string(), json!(id));
            if i >= symbols.len() {
                added.push(json!({"id": id, "content": tok, "single_word": false,
                    "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
            }
        }
        if !specials.iter().any(|(t, _)| *t == unk) {
            return Err(bad(format!(
                "the unknown token {unk:?} is not a special token"
            )));
        }
        let json = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": unk}
        });
        Self::from_bytes(json.to_string().as_bytes(), config, url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_level_maps_given_ids_and_refuses_repeats() {
        let t = Tokenizer::word_level(
            &[("a", 2), ("b", 0)],
            &[("<unk>", 1)],
            "<unk>",
            Value::Null,
            "t",
        )
        .unwrap();
        assert_eq!(t.encode("b a zz").unwrap(), vec![0, 2, 1]);
        assert_eq!(t.decode(&[2, 1, 0]).unwrap(), "a b");
        assert!(
            Tokenizer::word_level(&[("a", 0), ("b", 0)], &[("u", 1)], "u", Value::Null, "t")
                .is_err()
        );
        assert!(Tokenizer::word_level(&[("a b", 0)], &[("u", 1)], "u", Value::Null, "t").is_err());
        assert!(Tokenizer::word_level(&[("a", 0)], &[("u", 1)], "x", Value::Null, "t").is_err());
    }
}
