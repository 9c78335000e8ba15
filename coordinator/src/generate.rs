//! `mirrorplay generate`: text from a model for a person, on this machine's CPU. Loads the model
//! with `Pretrained::load` (path or URL), builds the prompt (with `--chat`, the chat template
//! rendered with a generation prompt and no added special tokens; else the text with the
//! tokenizer's special tokens, as transformers' `tokenizer(text)`), and streams the completion
//! (`sample::generate_stream`, stopping at the model's EOS ids) to stdout as tokens are drawn:
//! the completion text only, special tokens stripped, then a newline. Bad input exits 2.
//! Must not talk to a coordinator or write files.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use mirrorplay_worker::io::IoError;
use mirrorplay_worker::model::{ChatMessage, ModelError, Pretrained, Tokenizer};
use mirrorplay_worker::sample::{
    generate_stream, GenerateConfig, RowKey, SamplingParams, TokenRules,
};

use crate::cli::GenerateArgs;
use crate::exit::Exit;

fn usage(message: String) -> anyhow::Error {
    anyhow::Error::new(Exit::Config(message))
}

/// Checks the flags that need no model; returns the sampling parameters.
fn sampling(args: &GenerateArgs) -> Result<SamplingParams> {
    if args.prompt.trim().is_empty() {
        return Err(usage("--prompt is empty".into()));
    }
    if args.max_new_tokens == 0 {
        return Err(usage("--max-new-tokens must be at least 1".into()));
    }
    if args.greedy {
        return Ok(SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        });
    }
    if !(args.temperature.is_finite() && args.temperature > 0.0) {
        return Err(usage(format!(
            "--temperature must be > 0, got {} (use --greedy for the most likely tokens)",
            args.temperature
        )));
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        return Err(usage(format!(
            "--top-p must be in (0, 1], got {}",
            args.top_p
        )));
    }
    Ok(SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
    })
}

/// Whether a load failure is the user's to fix (a wrong location, not a model, a bad file:
/// exit 2) rather than the machine's (storage, network or compute: exit 1).
fn is_usage(e: &ModelError) -> bool {
    !matches!(
        e,
        ModelError::Io(IoError::Store { .. } | IoError::Fs { .. }) | ModelError::Candle(_)
    )
}

/// The prompt's token ids: chat-templated with `--chat`, else with special tokens.
fn prompt_ids(args: &GenerateArgs, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
    let ids = if args.chat {
        if tokenizer.chat_template().is_none() {
            return Err(usage(format!(
                "{}: the model has no chat template (chat_template.jinja or tokenizer_config.json \
                 `chat_template`); drop --chat to use the prompt as plain text",
                args.model
            )));
        }
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", &args.prompt));
        tokenizer
            .encode_chat(&messages, true)
            .map_err(|e| usage(e.to_string()))?
    } else {
        tokenizer.encode_with_special_tokens(&args.prompt)?
    };
    if ids.is_empty() {
        return Err(usage("the prompt encodes to no tokens".into()));
    }
    Ok(ids)
}

/// Text of a growing completion, handed out in increments: after each token the ids so far
/// are decoded (so multi-byte characters and byte-level merges come out whole) and the part
/// not yet handed out is returned. A text ending in U+FFFD (a character whose other bytes are
/// still to come) is held back. Were a decoder to change text already handed out, nothing more
/// is handed out until its text extends what was.
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    shown: String,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        TextStream {
            tokenizer,
            ids: Vec::new(),
            shown: String::new(),
        }
    }

    /// Adds a token; returns the new text to show (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        Ok(self.advance(text))
    }

    /// The text not yet shown once no token follows (a trailing U+FFFD included).
    pub fn finish(&mut self) -> Result<String> {
        let text = self.tokenizer.decode(&self.ids)?;
        Ok(self.advance(text))
    }

    fn advance(&mut self, text: String) -> String {
        match text.strip_prefix(self.shown.as_str()) {
            Some(new) => {
                let new = new.to_string();
                self.shown = text;
                new
            }
            None => {
                tracing::warn!(shown = %self.shown, decoded = %text, "the decoded text changed what was already printed");
                String::new()
            }
        }
    }
}

/// Runs `mirrorplay generate`.
pub async fn run(args: &GenerateArgs) -> Result<()> {
    let params = sampling(args)?;
    let loaded = Pretrained::load(&args.model, false, &Device::Cpu)
        .await
        .map_err(|e| {
            let message = format!("cannot load the model {}: {e}", args.model);
            if is_usage(&e) {
                usage(message)
            } else {
                anyhow::Error::new(e).context(message)
            }
        })?;
    let tokenizer = loaded.tokenizer.as_ref().ok_or_else(|| {
        usage(format!(
            "{}: the model has no tokenizer.json; generate needs one",
            args.model
        ))
    })?;
    let prompt = prompt_ids(args, tokenizer)?;
    if loaded.eos_token_ids.is_empty() {
        tracing::warn!(
            model = %args.model,
            "no EOS id in generation_config.json or config.json: generation stops at --max-new-tokens"
        );
    }
    let config = GenerateConfig {
        params,
        rules: TokenRules {
            eos_token_ids: loaded.eos_token_ids.clone(),
            forbidden_token_ids: Vec::new(),
            min_new_tokens: 0,
            max_new_tokens: args.max_new_tokens,
            eos_at_limit: false,
        },
        seed: args.seed,
        step: 0,
    };
    let rules = &config.rules;
    let key = RowKey {
        prompt: 0,
        sample: 0,
    };
    let mut text = TextStream::new(tokenizer);
    let mut stdout = std::io::stdout().lock();
    let started = Instant::now();
    let out = generate_stream(&loaded.model, &prompt, key, &config, |token| {
        if rules.is_eos(token) {
            return Ok(());
        }
        let new = text.push(token)?;
        if !new.is_empty() {
            stdout.write_all(new.as_bytes())?;
            stdout.flush()?;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    let rest = text.finish()?;
    stdout
        .write_all(format!("{rest}\n").as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing to stdout")?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        prompt_tokens = prompt.len(),
        new_tokens = out.tokens.len(),
        finished = out.finished,
        seconds,
        tokens_per_second = out.tokens.len() as f64 / seconds.max(1e-9),
        "generated"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A byte-fallback BPE tokenizer: `a` is id 0, `<0xC3>` id 1, `<0xA9>` id 2 (the two bytes
    /// of `é`), `</s>` id 3 (special).
    fn byte_tokenizer() -> Tokenizer {
        let json = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [{"id": 3, "content": "</s>", "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null,
            "decoder": {"type": "ByteFallback"},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": true,
                      "vocab": {"a": 0, "<0xC3>": 1, "<0xA9>": 2, "</s>": 3}, "merges": []}
        });
        Tokenizer::from_bytes(json.to_string().as_bytes(), serde_json::Value::Null, "test").unwrap()
    }

    #[test]
    fn text_stream_holds_back_partial_characters_and_skips_special_tokens() {
        let t = byte_tokenizer();
        assert_eq!(t.encode("aé").unwrap(), vec![0, 1, 2]);
        assert_eq!(t.decode(&[1]).unwrap(), "\u{FFFD}");
        let mut s = TextStream::new(&t);
        assert_eq!(s.push(0).unwrap(), "a");
        assert_eq!(s.push(1).unwrap(), "", "half of é is held back");
        assert_eq!(s.push(2).unwrap(), "é");
        assert_eq!(s.push(3).unwrap(), "", "special tokens are not shown");
        assert_eq!(s.push(0).unwrap(), "a");
        assert_eq!(s.push(1).unwrap(), "");
        assert_eq!(
            s.finish().unwrap(),
            "\u{FFFD}",
            "a dangling byte shows at the end"
        );
    }
}
