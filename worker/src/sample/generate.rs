//! Batched, KV-cached generation from one model or from the geometric mixture of a policy and
//! a reference (docs/algorithms.md §1). Prompts are left-padded; each row stops at its first EOS
//! (which is kept in its completion) or after `max_new_tokens`; finished rows leave the batch.
//! The [`TokenRules`] are logit masks applied before the draw (so a length-forced EOS is drawn,
//! with probability 1), and the recorded log-probs are under the same constrained distribution
//! p_A at T = 1 (`rules` module doc), which is what [`super::score_constrained`] returns.
//! The draw for token t of a row uses draw t of the counter-based stream keyed by
//! (seed, step, global prompt index, sample index, `Purpose::Sample`), so a row's tokens do not
//! depend on which rows share its batch, on rank or on world size.
//! Runs without gradients (frozen or detached use of the model); must not compute losses.

use std::sync::OnceLock;

use candle_core::{DType, Tensor};

use super::filter::{
    apply_mask, draw, log_softmax_row, mix_logprobs, token_distribution, SamplingParams,
};
use super::rules::{constrained_logprobs, TokenRules};
use crate::model::{KvCache, Model, ModelError, Result};
use crate::rng::{Purpose, Stream, StreamKey};

/// Which stream a row draws from: its global prompt index and sample index
/// (docs/architecture.md#randomness).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowKey {
    pub prompt: u64,
    pub sample: u64,
}

/// Generation settings (every field explicit: the coordinator applies defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateConfig {
    /// Temperature, top-k, top-p: how a token is drawn from the constrained distribution.
    pub params: SamplingParams,
    /// EOS ids, forbidden ids, min/max new tokens: the support of the distribution (the same
    /// value must be given to [`super::score_constrained`]).
    pub rules: TokenRules,
    /// Job seed and training step: the first two fields of every row's stream key.
    pub seed: u64,
    pub step: u64,
}

/// Sampled completions, one per prompt row.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Completion tokens, cut after (and including) the first EOS.
    pub tokens: Vec<Vec<u32>>,
    /// log π_A(y_t | x, y_<t) of the sampled tokens under the policy (the sampled model)
    /// constrained by the rules, at T = 1 and without top-k/top-p (`rules` module doc).
    pub logprobs: Vec<Vec<f32>>,
    /// The same under the reference, for mixture sampling (None for plain sampling).
    pub ref_logprobs: Option<Vec<Vec<f32>>>,
    /// Whether the row ended with an EOS (false: cut by `max_new_tokens` without
    /// `eos_at_limit`).
    pub finished: Vec<bool>,
}

/// Samples one completion per prompt from `model`.
pub fn generate(
    model: &Model,
    prompts: &[Vec<u32>],
    keys: &[RowKey],
    config: &GenerateConfig,
) -> Result<Generation> {
    run(model, None, prompts, keys, config)
}

/// Samples from the geometric mixture π^(1−β)·μ^β token by token (`mixture_coef` = β ∈ [0, 1],
/// docs/algorithms.md §1): policy and reference each keep their own KV cache and advance one token
/// per step. β = 0 gives exactly `generate(policy, ..)`, β = 1 exactly `generate(reference, ..)`.
pub fn generate_mixture(
    policy: &Model,
    reference: &Model,
    mixture_coef: f64,
    prompts: &[Vec<u32>],
    keys: &[RowKey],
    config: &GenerateConfig,
) -> Result<Generation> {
    if !(0.0..=1.0).contains(&mixture_coef) {
        return Err(ModelError::Input(format!(
            "mixture_coef must be in [0, 1], got {mixture_coef}"
        )));
    }
    if policy.config().vocab_size != reference.config().vocab_size {
        return Err(ModelError::Input(format!(
            "policy vocabulary {} differs from the reference's {}",
            policy.config().vocab_size,
            reference.config().vocab_size
        )));
    }
    run(
        policy,
        Some((reference, mixture_coef)),
        prompts,
        keys,
        config,
    )
}

/// The uniform draw t of a row's sampling stream.
pub fn uniform_at(config: &GenerateConfig, key: RowKey, t: usize) -> f64 {
    let k = StreamKey::new(
        config.seed,
        config.step,
        key.prompt,
        key.sample,
        Purpose::Sample,
    );
    Stream::uniform_at(k, t as u64)
}

/// Left-pads rows to a common length with (id 0, invalid).
pub(crate) fn left_pad(rows: &[Vec<u32>]) -> (Vec<Vec<u32>>, Vec<Vec<bool>>) {
    let len = rows.iter().map(Vec::len).max().unwrap_or(0);
    let ids = rows
        .iter()
        .map(|r| {
            std::iter::repeat_n(0, len - r.len())
                .chain(r.iter().copied())
                .collect()
        })
        .collect();
    let valid = rows
        .iter()
        .map(|r| {
            std::iter::repeat_n(false, len - r.len())
                .chain(std::iter::repeat_n(true, r.len()))
                .collect()
        })
        .collect();
    (ids, valid)
}

/// One row's draw at one step.
struct Drawn {
    token: u32,
    /// log π_A(token) under the policy, constrained by the rules.
    logprob: f32,
    /// The same under the reference (mixture sampling).
    ref_logprob: Option<f32>,
}

/// Next-token logits of the last position of each row, as host rows [b][vocab].
fn last_logits(
    model: &Model,
    ids: &[Vec<u32>],
    valid: &[Vec<bool>],
    cache: &mut KvCache,
) -> Result<Vec<Vec<f32>>> {
    let hidden = model.forward_hidden(ids, valid, cache)?;
    let t = hidden.dim(1)?;
    let last = hidden.narrow(1, t - 1, 1)?;
    let logits: Tensor = model.lm_logits(&last)?.squeeze(1)?.to_dtype(DType::F32)?;
    Ok(logits.to_vec2::<f32>()?)
}

fn run(
    policy: &Model,
    reference: Option<(&Model, f64)>,
    prompts: &[Vec<u32>],
    keys: &[RowKey],
    config: &GenerateConfig,
) -> Result<Generation> {
    let b = prompts.len();
    if keys.len() != b {
        return Err(ModelError::Input(format!(
            "{b} prompts but {} row keys",
            keys.len()
        )));
    }
    if let Some(r) = prompts.iter().position(Vec::is_empty) {
        return Err(ModelError::Input(format!("prompt {r} is empty")));
    }
    let vocab = policy.config().vocab_size;
    let mut gen = Generation {
        tokens: vec![Vec::new(); b],
        logprobs: vec![Vec::new(); b],
        ref_logprobs: reference.map(|_| vec![Vec::new(); b]),
        finished: vec![false; b],
    };
    let rules = &config.rules;
    let masks = rules.masks(vocab)?;
    if b == 0 || rules.max_new_tokens == 0 {
        return Ok(gen);
    }
    // Sampling records no graph, even for a trainable policy; the decoding views pack their
    // weights for the panel kernel once per generation.
    let policy = &policy.for_decoding()?;
    let reference = match reference {
        Some((m, beta)) => Some((m.for_decoding()?, beta)),
        None => None,
    };
    let reference = reference.as_ref().map(|(m, beta)| (m, *beta));
    let (ids, valid) = left_pad(prompts);
    // Room for the whole sequence up front: decoding writes the cache in place.
    let room = ids[0].len() + rules.max_new_tokens;
    let mut cache = KvCache::with_capacity(room);
    let mut ref_cache = KvCache::with_capacity(room);
    let mut logits = last_logits(policy, &ids, &valid, &mut cache)?;
    let mut ref_logits = match reference {
        Some((m, _)) => Some(last_logits(m, &ids, &valid, &mut ref_cache)?),
        None => None,
    };
    // `active[i]` is the original row of batch row i.
    let mut active: Vec<usize> = (0..b).collect();
    let beta = reference.map(|(_, beta)| beta);
    for t in 0..rules.max_new_tokens {
        let forbidden = masks.at(t);
        // The host work of a row (log-softmaxes over the vocabulary, the mix, the draw) does
        // not depend on the other rows: rows run on candle's thread pool, same arithmetic.
        let draw_row = |i: usize| -> Result<Drawn> {
            let lp = log_softmax_row(&logits[i]);
            let lr = ref_logits.as_ref().map(|r| log_softmax_row(&r[i]));
            // docs/algorithms.md §1, as `filter::mixed_logits`, reusing the rows' log-softmaxes.
            let mut mixed = match (beta, &ref_logits, &lr) {
                (Some(beta), Some(r), _) if beta >= 1.0 => r[i].iter().map(|&x| x as f64).collect(),
                (Some(beta), _, Some(lr)) if beta > 0.0 => mix_logprobs(&lp, lr, beta),
                _ => logits[i].iter().map(|&x| x as f64).collect(),
            };
            apply_mask(&mut mixed, forbidden);
            if mixed.iter().all(|x| *x == f64::NEG_INFINITY) {
                return Err(ModelError::Input("every token is masked".into()));
            }
            let probs = token_distribution(&mixed, &config.params);
            let token = draw(&probs, uniform_at(config, keys[active[i]], t)) as u32;
            let constrained = |l: &[f64]| constrained_logprobs(l, forbidden)[token as usize] as f32;
            Ok(Drawn {
                token,
                logprob: constrained(&lp),
                ref_logprob: lr.as_deref().map(constrained),
            })
        };
        let drawn: Vec<Result<Drawn>> = if active.len() > 1 {
            let slots: Vec<OnceLock<Result<Drawn>>> =
                (0..active.len()).map(|_| OnceLock::new()).collect();
            candle_core::utils::barrier_pool().execute_chunked(active.len(), |rows| {
                for i in rows {
                    let _ = slots[i].set(draw_row(i));
                }
            });
            slots
                .into_iter()
                .map(|slot| {
                    slot.into_inner().unwrap_or_else(|| {
                        Err(ModelError::Input("internal: a row was not drawn".into()))
                    })
                })
                .collect()
        } else {
            vec![draw_row(0)]
        };
        let mut next = Vec::with_capacity(active.len());
        let mut still = Vec::with_capacity(active.len());
        for (i, drawn) in drawn.into_iter().enumerate() {
            let Drawn {
                token,
                logprob,
                ref_logprob,
            } = drawn?;
            let row = active[i];
            gen.tokens[row].push(token);
            gen.logprobs[row].push(logprob);
            if let (Some(all), Some(lr)) = (gen.ref_logprobs.as_mut(), ref_logprob) {
                all[row].push(lr);
            }
            if rules.is_eos(token) {
                gen.finished[row] = true;
            } else {
                still.push(i);
                next.push(token);
            }
        }
        if still.is_empty() || t + 1 == rules.max_new_tokens {
            break;
        }
        cache.retain_rows(&still)?;
        let step_ids: Vec<Vec<u32>> = next.iter().map(|&tok| vec![tok]).collect();
        let step_valid = vec![vec![true]; next.len()];
        logits = last_logits(policy, &step_ids, &step_valid, &mut cache)?;
        if let Some((m, _)) = reference {
            ref_cache.retain_rows(&still)?;
            ref_logits = Some(last_logits(m, &step_ids, &step_valid, &mut ref_cache)?);
        }
        active = still.iter().map(|&i| active[i]).collect();
    }
    Ok(gen)
}
