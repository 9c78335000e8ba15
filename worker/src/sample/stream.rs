//! Streaming generation for one prompt: KV-cached decoding of a single row that hands each
//! token to a callback as soon as it is drawn (for a person watching the text appear). The
//! draw is the batched generator's: the same rules masks, the same
//! draw ([`draw_row`](super::draw::draw_row)) and the same uniform ([`uniform_at`]) for token t
//! of the row's stream key, so a row streamed here gets the tokens
//! [`super::generate()`] gives that row. Records no log-probs and keeps one row; must not
//! batch, score or compute losses.

use super::draw::draw_row;
use super::generate::{last_logits, uniform_at, GenerateConfig, RowKey};
use crate::model::{KvCache, Model, ModelError, Result};

/// What a streamed completion produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streamed {
    /// Every token handed to the callback, the final EOS included.
    pub tokens: Vec<u32>,
    /// Whether it ended with an EOS (false: stopped by `max_new_tokens`).
    pub finished: bool,
}

/// Next-token logits after feeding `ids` (one row) to `model` with `cache` (the batched
/// generator's `last_logits` on one row). The forward runs on one of rayon's threads, as
/// `generate`'s decode loop does, so the kernels' ≈ 120 parallel calls per token fork from
/// inside the pool instead of each parking the caller; the callback (not `Send`) stays on the
/// caller's thread, so a token costs one entry into the pool.
fn next_logits(model: &Model, ids: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
    let mut rows =
        rayon::scope(|_| last_logits(model, &[ids.to_vec()], &[vec![true; ids.len()]], cache))?;
    rows.pop()
        .ok_or_else(|| ModelError::Input("internal: no logits row".into()))
}

/// Generates a completion of `prompt` from `model` under `config`, drawing token t from the
/// stream of `key` (as [`super::generate()`] does for a row with that key), and calls
/// `on_token` with each token as soon as it is drawn; an error from `on_token` stops
/// generation and is returned. Stops after an EOS id of `config.rules` (handed over too) or
/// `max_new_tokens` tokens.
pub fn generate_stream<E, F>(
    model: &Model,
    prompt: &[u32],
    key: RowKey,
    config: &GenerateConfig,
    mut on_token: F,
) -> std::result::Result<Streamed, E>
where
    E: From<ModelError>,
    F: FnMut(u32) -> std::result::Result<(), E>,
{
    if prompt.is_empty() {
        return Err(ModelError::Input("the prompt is empty".into()).into());
    }
    let rules = &config.rules;
    let masks = rules
        .masks(model.config().vocab_size)
        .map_err(ModelError::from)?;
    let mut out = Streamed {
        tokens: Vec::new(),
        finished: false,
    };
    if rules.max_new_tokens == 0 {
        return Ok(out);
    }
    // Sampling records no graph, even for a trainable model; the decoding view decodes on
    // packed weights, as `generate`'s does.
    let model = &model.for_decoding()?;
    let mut cache = KvCache::new();
    let mut logits = next_logits(model, prompt, &mut cache)?;
    for t in 0..rules.max_new_tokens {
        let u = uniform_at(config, key, t);
        let token = draw_row(&logits, None, masks.at(t), &config.params, u)?.token;
        out.tokens.push(token);
        on_token(token)?;
        if rules.is_eos(token) {
            out.finished = true;
            break;
        }
        if t + 1 < rules.max_new_tokens {
            logits = next_logits(model, &[token], &mut cache)?;
        }
    }
    Ok(out)
}
