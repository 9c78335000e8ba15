//! Batched, KV-cached generation from one model or from the geometric mixture of a policy and
//! a reference (ALGORITHMS.md §1). Prompts are left-padded; each row stops at its first EOS
//! (which is kept in its completion) or after `max_new_tokens`; finished rows leave the batch.
//! The draw for token t of a row uses draw t of the counter-based stream keyed by
//! (seed, step, global prompt index, sample index, `Purpose::Sample`), so a row's tokens do not
//! depend on which rows share its batch, on rank or on world size.
//! Runs without gradients (frozen or detached use of the model); must not compute losses.

use candle_core::{DType, Tensor};

use super::filter::{
    apply_mask, draw, log_softmax_row, mix_logprobs, token_distribution, SamplingParams,
};
use crate::model::{KvCache, Model, ModelError, Result};
use crate::rng::{Purpose, Stream, StreamKey};

/// Which stream a row draws from: its global prompt index and sample index (DESIGN.md
/// "Randomness").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowKey {
    pub prompt: u64,
    pub sample: u64,
}

/// Generation settings (every field explicit: the coordinator applies defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateConfig {
    pub max_new_tokens: usize,
    pub params: SamplingParams,
    /// A row finishes when it emits one of these.
    pub eos_token_ids: Vec<u32>,
    /// EOS ids are forbidden until a row has this many tokens (1 = "no EOS at step 1").
    pub min_new_tokens: usize,
    /// Never sampled.
    pub forbidden_token_ids: Vec<u32>,
    /// Job seed and training step: the first two fields of every row's stream key.
    pub seed: u64,
    pub step: u64,
}

/// Sampled completions, one per prompt row.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Completion tokens, cut after (and including) the first EOS.
    pub tokens: Vec<Vec<u32>>,
    /// log π(y_t | x, y_<t) of the sampled tokens under the policy (the sampled model), at
    /// T = 1 and without filters or masks (ALGORITHMS.md §1).
    pub logprobs: Vec<Vec<f32>>,
    /// The same under the reference, for mixture sampling (None for plain sampling).
    pub ref_logprobs: Option<Vec<Vec<f32>>>,
    /// Whether the row ended with an EOS (false: cut by `max_new_tokens`).
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
/// ALGORITHMS.md §1): policy and reference each keep their own KV cache and advance one token
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
    (Stream::at(k, t as u64) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
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
    if b == 0 || config.max_new_tokens == 0 {
        return Ok(gen);
    }
    let mut always = vec![false; vocab];
    let mut with_eos = vec![false; vocab];
    for &id in &config.forbidden_token_ids {
        if let Some(slot) = always.get_mut(id as usize) {
            *slot = true;
        }
    }
    with_eos.copy_from_slice(&always);
    for &id in &config.eos_token_ids {
        if let Some(slot) = with_eos.get_mut(id as usize) {
            *slot = true;
        }
    }
    // Sampling records no graph, even for a trainable policy.
    let policy = &policy.detached()?;
    let reference = match reference {
        Some((m, beta)) => Some((m.detached()?, beta)),
        None => None,
    };
    let reference = reference.as_ref().map(|(m, beta)| (m, *beta));
    let (ids, valid) = left_pad(prompts);
    let mut cache = KvCache::new();
    let mut ref_cache = KvCache::new();
    let mut logits = last_logits(policy, &ids, &valid, &mut cache)?;
    let mut ref_logits = match reference {
        Some((m, _)) => Some(last_logits(m, &ids, &valid, &mut ref_cache)?),
        None => None,
    };
    // `active[i]` is the original row of batch row i.
    let mut active: Vec<usize> = (0..b).collect();
    for t in 0..config.max_new_tokens {
        let mut next = Vec::with_capacity(active.len());
        let mut still = Vec::with_capacity(active.len());
        for (i, &row) in active.iter().enumerate() {
            let lp = log_softmax_row(&logits[i]);
            let lr = ref_logits.as_ref().map(|r| log_softmax_row(&r[i]));
            // ALGORITHMS.md §1, as `filter::mixed_logits`, reusing the rows' log-softmaxes.
            let mut mixed = match (reference, &ref_logits, &lr) {
                (Some((_, beta)), Some(r), _) if beta == 1.0 => {
                    r[i].iter().map(|&x| x as f64).collect()
                }
                (Some((_, beta)), _, Some(lr)) if beta > 0.0 => mix_logprobs(&lp, lr, beta),
                _ => logits[i].iter().map(|&x| x as f64).collect(),
            };
            apply_mask(
                &mut mixed,
                if t < config.min_new_tokens {
                    &with_eos
                } else {
                    &always
                },
            );
            if mixed.iter().all(|x| *x == f64::NEG_INFINITY) {
                return Err(ModelError::Input("every token is masked".into()));
            }
            let probs = token_distribution(&mixed, &config.params);
            let token = draw(&probs, uniform_at(config, keys[row], t)) as u32;
            gen.tokens[row].push(token);
            gen.logprobs[row].push(lp[token as usize] as f32);
            if let (Some(all), Some(lr)) = (gen.ref_logprobs.as_mut(), lr) {
                all[row].push(lr[token as usize] as f32);
            }
            if config.eos_token_ids.contains(&token) {
                gen.finished[row] = true;
            } else {
                still.push(i);
                next.push(token);
            }
        }
        if still.is_empty() || t + 1 == config.max_new_tokens {
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
