//! Streaming generation for one prompt: KV-cached decoding of a single row that hands each
//! token to a callback as soon as it is drawn (for a person watching the text appear). The
//! draw is the batched generator's own step (`generate::draw_step`: the same rules masks, the
//! same draw on the same site — on the host by [`draw_row`](super::draw::draw_row), or on the
//! logits' device by `sample::device_draw`, chosen as the batched generator chooses — and the
//! same uniform ([`uniform_at`](super::generate::uniform_at)) for token t of the row's stream
//! key), so a row streamed here gets the tokens
//! [`super::generate()`] gives that row. Records no log-probs and keeps one row; must not
//! batch, score or compute losses.

use super::device_draw::{draws_on_device, DeviceDraw};
use super::generate::{draw_step, last_logits_tensor, GenerateConfig, Logits, RowKey, Step};
use crate::model::{KvCache, Model, ModelError, Result};

/// What a streamed completion produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streamed {
    /// Every token handed to the callback, the final EOS included.
    pub tokens: Vec<u32>,
    /// Whether it ended with an EOS (false: stopped by `max_new_tokens`).
    pub finished: bool,
}

/// Next-token logits of one row after feeding `ids` to `model` with `cache` (the batched
/// generator's on one row), placed where the draw reads them (`on_device`: left on the model's
/// device). The forward runs on one of rayon's threads, as `generate`'s decode loop does, so
/// the kernels' ≈ 120 parallel calls per token fork from inside the pool instead of each
/// parking the caller; the callback (not `Send`) stays on the caller's thread, so a token costs
/// one entry into the pool.
fn next_logits(model: &Model, ids: &[u32], cache: &mut KvCache, on_device: bool) -> Result<Logits> {
    let logits = rayon::scope(|_| {
        last_logits_tensor(model, &[ids.to_vec()], &[vec![true; ids.len()]], cache)
    })?;
    Logits::place(logits, on_device)
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
    on_token: F,
) -> std::result::Result<Streamed, E>
where
    E: From<ModelError>,
    F: FnMut(u32) -> std::result::Result<(), E>,
{
    let on_device = draws_on_device(model.device());
    generate_stream_drawing(model, prompt, key, config, on_device, on_token)
}

/// [`generate_stream`] with the draw's site given, as `generate`'s `run_drawing` takes it.
pub(super) fn generate_stream_drawing<E, F>(
    model: &Model,
    prompt: &[u32],
    key: RowKey,
    config: &GenerateConfig,
    on_device: bool,
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
    let device_draw = if on_device {
        DeviceDraw::new(&masks, &config.params, model.device())?
    } else {
        None
    };
    let mut cache = KvCache::new();
    let on_device = device_draw.is_some();
    let mut logits = next_logits(model, prompt, &mut cache, on_device)?;
    for t in 0..rules.max_new_tokens {
        let step = Step {
            active: &[0],
            keys: &[key],
            masks: &masks,
            config,
            t,
        };
        let token = draw_step(device_draw.as_ref(), &logits, None, &step)?
            .pop()
            .ok_or_else(|| ModelError::Input("internal: no draw for the row".into()))?
            .token;
        out.tokens.push(token);
        on_token(token)?;
        if rules.is_eos(token) {
            out.finished = true;
            break;
        }
        if t + 1 < rules.max_new_tokens {
            logits = next_logits(model, &[token], &mut cache, on_device)?;
        }
    }
    Ok(out)
}
