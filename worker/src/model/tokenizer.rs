//! Tokenizers: a Hugging Face `tokenizer.json` (through the `tokenizers` crate) or a tiny
//! word-level vocabulary built from code for the synthetic tasks, with the chat template of its
//! tokenizer_config.json (or of a `chat_template.jinja` beside it, which wins as in
//! transformers). Must not know about models.

use serde_json::{json, Value};

use super::chat::{config_chat_template, ChatMessage, ChatTemplate, SpecialTokens};
use super::error::{ModelError, Result};

/// Ids of the special tokens every tiny vocabulary starts with.
pub const TINY_SPECIALS: [&str; 4] = ["<pad>", "<s>", "</s>", "<unk>"];
pub const TINY_PAD: u32 = 0;
pub const TINY_BOS: u32 = 1;
pub const TINY_EOS: u32 = 2;

/// A tokenizer plus the `tokenizer_config.json` written beside it and its chat template.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    config: Value,
    chat_template: Option<ChatTemplate>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer(vocab {})", self.vocab_size())
    }
}

fn tok_err(url: &str, e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer {
        url: url.to_string(),
        reason: e.to_string(),
    }
}

impl Tokenizer {
    /// Parses `tokenizer.json` bytes; `config` is `tokenizer_config.json` (or Null). Its
    /// `chat_template` is compiled (errors name `url` and the key).
    pub fn from_bytes(bytes: &[u8], config: Value, url: &str) -> Result<Self> {
        Self::from_files(bytes, url, config, url, None)
    }

    /// [`Tokenizer::from_bytes`] for a model directory: `url` is tokenizer.json's,
    /// `config_url` tokenizer_config.json's, and `template_file` the URL and bytes of a
    /// `chat_template.jinja`, which is the chat template when given (the config's is then not
    /// read, as in transformers). A template that does not compile is an error naming its file.
    pub fn from_files(
        bytes: &[u8],
        url: &str,
        config: Value,
        config_url: &str,
        template_file: Option<(&str, &[u8])>,
    ) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| tok_err(url, e))?;
        let special = SpecialTokens::from_config(&config);
        let chat_template = match template_file {
            Some((file_url, text)) => {
                let text = std::str::from_utf8(text).map_err(|e| ModelError::ChatTemplate {
                    origin: file_url.to_string(),
                    reason: format!("not UTF-8: {e}"),
                })?;
                Some(ChatTemplate::new(file_url, text, &special)?)
            }
            None => match config_chat_template(&config) {
                Err(reason) => {
                    return Err(ModelError::Config {
                        url: config_url.to_string(),
                        key: "chat_template".into(),
                        reason,
                    })
                }
                Ok(Some(text)) => Some(ChatTemplate::new(
                    &format!("{config_url} `chat_template`"),
                    text,
                    &special,
                )?),
                Ok(None) => {
                    if config.get("chat_template").is_some_and(Value::is_array) {
                        tracing::warn!(
                            url = config_url,
                            "named chat templates without a `default` one: none is used"
                        );
                    }
                    None
                }
            },
        };
        Ok(Tokenizer {
            inner,
            config,
            chat_template,
        })
    }

    /// A word-level tokenizer: ids 0..4 are `<pad> <s> </s> <unk>`, then `symbols` in order;
    /// text is split on whitespace. Fixed by its symbols alone (no randomness involved).
    pub fn tiny(symbols: &[&str]) -> Result<Self> {
        let specials: Vec<(&str, u32)> = TINY_SPECIALS.iter().copied().zip(0..).collect();
        let first = TINY_SPECIALS.len() as u32;
        let symbols: Vec<(&str, u32)> = symbols.iter().copied().zip(first..).collect();
        let config = json!({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                            "unk_token": "<unk>", "model_max_length": 256,
                            "tokenizer_class": "PreTrainedTokenizerFast"});
        Self::word_level(&symbols, &specials, "<unk>", config, "<tiny>")
    }

    /// Token ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err("encode", e))?
            .get_ids()
            .to_vec())
    }

    /// Token ids of `text` with the special tokens the post-processor adds (BOS/EOS), as
    /// transformers' `tokenizer(text)`.
    pub fn encode_with_special_tokens(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, true)
            .map_err(|e| tok_err("encode", e))?
            .get_ids()
            .to_vec())
    }

    /// The chat template (from `chat_template.jinja` or tokenizer_config.json), if any.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Token ids of `messages` rendered with the chat template, without added special tokens
    /// (transformers' `apply_chat_template(tokenize=True)`: a BOS only if the template writes
    /// one). An error when there is no template or it fails.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let template = self.chat_template().ok_or_else(|| {
            tok_err(
                "chat",
                "no chat template (tokenizer_config.json `chat_template` or chat_template.jinja)",
            )
        })?;
        self.encode(&template.render(messages, add_generation_prompt)?)
    }

    /// Text of `ids` (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| tok_err("decode", e))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a special token named in tokenizer_config.json (`"eos_token"`, `"pad_token"`),
    /// whether given as a string or as `{"content": ...}`.
    pub fn special_id(&self, key: &str) -> Option<u32> {
        let v = self.config.get(key)?;
        let s = v
            .as_str()
            .or_else(|| v.get("content").and_then(Value::as_str))?;
        self.token_to_id(s)
    }

    /// `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| tok_err("serialise", e))
    }

    /// `tokenizer_config.json` value (Null when unknown).
    pub fn config(&self) -> &Value {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_round_trips() {
        let t = Tokenizer::tiny(&["a", "b", "c", "+", "="]).unwrap();
        assert_eq!(t.vocab_size(), 9);
        assert_eq!(t.encode("a + b = c").unwrap(), vec![4, 7, 5, 8, 6]);
        assert_eq!(t.encode("zz").unwrap(), vec![3]);
        assert_eq!(t.decode(&[1, 4, 5, 2]).unwrap(), "a b");
        assert_eq!(t.special_id("eos_token"), Some(TINY_EOS));
        assert_eq!(t.special_id("pad_token"), Some(TINY_PAD));
        let back = Tokenizer::from_bytes(t.to_json().unwrap().as_bytes(), t.config().clone(), "x")
            .unwrap();
        assert_eq!(back.encode("c c a").unwrap(), vec![6, 6, 4]);
        assert!(Tokenizer::tiny(&["a", "a"]).is_err());
    }
}
