//! Batched, KV-cached generation from one model, from the geometric mixture of a policy and
//! a reference (docs/algorithms.md §1), or from both at once with a mixture coefficient per row
//! ([`generate_rows`]: one policy forward and one reference forward over every row per token,
//! the reference's log-probs recorded for every row). Prompts are left-padded, and rows with
//! the same prompt share one prefill ([`prefill`]); each row stops at its first EOS (which is
//! kept in its completion) or after `max_new_tokens`; finished rows leave the batch.
//! The [`TokenRules`] are logit masks applied before the draw (so a length-forced EOS is drawn,
//! with probability 1), and the recorded log-probs are under the same constrained distribution
//! p_A at T = 1 (`rules` module doc), which is what [`super::score_constrained`] returns.
//! The draw for token t of a row uses draw t of the counter-based stream keyed by
//! (seed, step, global prompt index, sample index, `Purpose::Sample`), so a row's tokens do not
//! depend on which rows share its batch, on rank or on world size. Its logits' last bits can:
//! the matmul on packed weights (`kernels::packed`, through [`Model::for_decoding`], for the
//! prefill and every decode step) and the fused attention are batch-invariant, but candle's
//! gemm (the tiny models, whose weights are below the kernels' gate) rounds a row differently
//! with the row count, and so does left padding to a longer prompt. Log-probs then differ in
//! the last bits, and a token could in principle flip where a uniform falls within rounding of
//! a cumulative-probability boundary.
//! A step's batch is drawn on the host row by row (`draw::draw_row`), or, for a model off the
//! CPU, on the logits' device (`device_draw`: the same distribution and uniforms, f32 sums, no
//! copy of the vocabulary); `MIRRORPLAY_DEVICE_DRAW` overrides the choice.
//! Runs without gradients (frozen or detached use of the model); must not compute losses.

use std::collections::HashMap;

use rayon::prelude::*;

use candle_core::{DType, Tensor};

use super::device_draw::{draws_on_device, DeviceBatch, DeviceDraw};
use super::draw::{draw_row, Drawn};
use super::filter::SamplingParams;
use super::rules::{Masks, TokenRules};
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
    /// The same under the reference: None from [`generate`]; every row's from
    /// [`generate_mixture`] and [`generate_rows`] (a plain row's too: the reference's
    /// log-probs of the policy's draws).
    pub ref_logprobs: Option<Vec<Vec<f32>>>,
    /// Whether the row ended with an EOS (false: cut by `max_new_tokens` without
    /// `eos_at_limit`).
    pub finished: Vec<bool>,
}

impl Generation {
    /// Rows `at..` as a second generation; `self` keeps rows `..at`.
    pub fn split_off(&mut self, at: usize) -> Generation {
        Generation {
            tokens: self.tokens.split_off(at),
            logprobs: self.logprobs.split_off(at),
            ref_logprobs: self.ref_logprobs.as_mut().map(|r| r.split_off(at)),
            finished: self.finished.split_off(at),
        }
    }

    /// Rows `start..start + len`.
    pub fn rows(&self, start: usize, len: usize) -> Generation {
        let range = start..start + len;
        Generation {
            tokens: self.tokens[range.clone()].to_vec(),
            logprobs: self.logprobs[range.clone()].to_vec(),
            ref_logprobs: self
                .ref_logprobs
                .as_ref()
                .map(|r| r[range.clone()].to_vec()),
            finished: self.finished[range].to_vec(),
        }
    }

    /// Rows of `self` followed by rows of `other`; the reference's log-probs only if both
    /// have them.
    pub fn chain(mut self, other: &Generation) -> Generation {
        self.tokens.extend_from_slice(&other.tokens);
        self.logprobs.extend_from_slice(&other.logprobs);
        self.finished.extend_from_slice(&other.finished);
        self.ref_logprobs = match (self.ref_logprobs, &other.ref_logprobs) {
            (Some(mut a), Some(b)) => {
                a.extend_from_slice(b);
                Some(a)
            }
            _ => None,
        };
        self
    }
}

/// Mixture settings that cannot be sampled; reported as [`ModelError::Input`], the error of
/// every sampler, so callers handle one type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MixtureError {
    #[error("mixture_coef must be in [0, 1], got {beta}")]
    Coefficient { beta: f64 },
    #[error("the mixture coefficient of row {row} must be in [0, 1], got {beta}")]
    RowCoefficient { row: usize, beta: f64 },
    #[error("{betas} mixture coefficients for {prompts} prompts: give one per prompt row")]
    Coefficients { betas: usize, prompts: usize },
    #[error("policy vocabulary {policy} differs from the reference's {reference}")]
    Vocabulary { policy: usize, reference: usize },
}

impl From<MixtureError> for ModelError {
    fn from(e: MixtureError) -> Self {
        ModelError::Input(e.to_string())
    }
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
/// per step. β = 0 gives exactly `generate(policy, ..)`, β = 1 exactly `generate(reference, ..)`;
/// either way both models' log-probs are recorded for every row.
pub fn generate_mixture(
    policy: &Model,
    reference: &Model,
    mixture_coef: f64,
    prompts: &[Vec<u32>],
    keys: &[RowKey],
    config: &GenerateConfig,
) -> Result<Generation> {
    if !in_unit_interval(mixture_coef) {
        return Err(MixtureError::Coefficient { beta: mixture_coef }.into());
    }
    check_vocabularies(policy, reference)?;
    let betas = vec![mixture_coef; prompts.len()];
    run(policy, Some((reference, &betas)), prompts, keys, config)
}

/// Samples each row from its own source in one decode pass, and records both models'
/// log-probs of every row. Row r with `betas[r]` = 0 is a plain row, drawn from the policy as
/// [`generate`] draws it; with β = `betas[r]` ∈ (0, 1] it is a mixture row, drawn from
/// π^(1−β)·μ^β as [`generate_mixture`] with that β draws it (docs/algorithms.md §1): the same
/// stream, the same arithmetic on the row's logits. So the tokens are those calls' tokens, and
/// the log-probs their bits wherever the forward pass is batch-invariant (module doc). Every
/// token costs one policy forward and one reference forward over all rows, where separate
/// calls cost a policy forward each: decoding is memory-bound, so Nash-MD-PG's y ~ π and
/// y′ ~ π_mix^β read the policy's weights once per token, not twice, and the reference's
/// log-probs of y — which its loss reads — come from rows added to a pass that reads the
/// reference's weights anyway, instead of a scoring forward after sampling
/// (docs/architecture.md#self-play-step).
///
/// `ref_logprobs` is always Some, with every row's reference log-probs. Errors, without
/// panicking, on a number of betas other than the number of prompts, a β outside [0, 1] (NaN
/// included) and vocabularies that differ.
pub fn generate_rows(
    policy: &Model,
    reference: &Model,
    betas: &[f64],
    prompts: &[Vec<u32>],
    keys: &[RowKey],
    config: &GenerateConfig,
) -> Result<Generation> {
    if betas.len() != prompts.len() {
        return Err(MixtureError::Coefficients {
            betas: betas.len(),
            prompts: prompts.len(),
        }
        .into());
    }
    if let Some((row, &beta)) = betas
        .iter()
        .enumerate()
        .find(|(_, &beta)| !in_unit_interval(beta))
    {
        return Err(MixtureError::RowCoefficient { row, beta }.into());
    }
    check_vocabularies(policy, reference)?;
    run(policy, Some((reference, betas)), prompts, keys, config)
}

/// Whether β is a mixture coefficient (false for NaN).
fn in_unit_interval(beta: f64) -> bool {
    (0.0..=1.0).contains(&beta)
}

/// The mixture adds log-probabilities token by token: both models need one vocabulary.
fn check_vocabularies(policy: &Model, reference: &Model) -> std::result::Result<(), MixtureError> {
    let (p, r) = (policy.config().vocab_size, reference.config().vocab_size);
    if p != r {
        return Err(MixtureError::Vocabulary {
            policy: p,
            reference: r,
        });
    }
    Ok(())
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

/// Next-token logits of the last position of each row, [b, vocab] f32 on the model's device.
pub(super) fn last_logits_tensor(
    model: &Model,
    ids: &[Vec<u32>],
    valid: &[Vec<bool>],
    cache: &mut KvCache,
) -> Result<Tensor> {
    let hidden = model.forward_hidden(ids, valid, cache)?;
    let t = hidden.dim(1)?;
    let last = hidden.narrow(1, t - 1, 1)?;
    Ok(model.lm_logits(&last)?.squeeze(1)?.to_dtype(DType::F32)?)
}

/// A step's next-token logits for the draw: host rows [b][vocab], or left on the model's device
/// for [`DeviceDraw`] as [b, vocab].
pub(super) enum Logits {
    Host(Vec<Vec<f32>>),
    Device(Tensor),
}

impl Logits {
    /// `logits` [b, vocab] where the draw reads them.
    pub(super) fn place(logits: Tensor, on_device: bool) -> Result<Self> {
        Ok(if on_device {
            Logits::Device(logits)
        } else {
            Logits::Host(logits.to_vec2::<f32>()?)
        })
    }

    /// Rows `rows` in that order (a row may repeat).
    fn select(self, rows: &[usize]) -> Result<Self> {
        Ok(match self {
            Logits::Host(h) => Logits::Host(rows.iter().map(|&i| h[i].clone()).collect()),
            Logits::Device(t) => {
                let ids: Vec<u32> = rows.iter().map(|&i| i as u32).collect();
                let ids = Tensor::from_vec(ids, rows.len(), t.device())?;
                Logits::Device(t.index_select(&ids, 0)?)
            }
        })
    }
}

/// The KV cache of `prompts` (left-padded to the longest) with room for `max_new_tokens` more,
/// and each row's next-token logits. Rows with the same prompt share one row of the forward
/// (Nash-MD-PG's y and y′, and IPO-MD's, start from the same prompts): the distinct prompts
/// are run, left-padded as the whole batch would be, and the cache's rows and the logits are
/// copied out to every row, so a duplicate costs no prefill work.
fn prefill(
    model: &Model,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    on_device: bool,
) -> Result<(KvCache, Logits)> {
    let mut index: HashMap<&[u32], usize> = HashMap::with_capacity(prompts.len());
    let mut distinct: Vec<Vec<u32>> = Vec::with_capacity(prompts.len());
    let of_row: Vec<usize> = prompts
        .iter()
        .map(|p| {
            *index.entry(p).or_insert_with(|| {
                distinct.push(p.clone());
                distinct.len() - 1
            })
        })
        .collect();
    // The distinct prompts include the longest, so they pad as the whole batch would.
    let (ids, valid) = left_pad(&distinct);
    // Room for the whole sequence up front: decoding writes the cache in place.
    let mut cache = KvCache::with_capacity(ids[0].len() + max_new_tokens);
    let logits = Logits::place(
        last_logits_tensor(model, &ids, &valid, &mut cache)?,
        on_device,
    )?;
    if distinct.len() == prompts.len() {
        // No duplicate: the forward's rows are the batch's rows.
        return Ok((cache, logits));
    }
    cache.retain_rows(&of_row)?;
    Ok((cache, logits.select(&of_row)?))
}

/// Next-token logits after feeding each cached row its one new token.
fn next_logits(
    model: &Model,
    tokens: &[u32],
    cache: &mut KvCache,
    on_device: bool,
) -> Result<Logits> {
    let ids: Vec<Vec<u32>> = tokens.iter().map(|&tok| vec![tok]).collect();
    let logits = last_logits_tensor(model, &ids, &vec![vec![true]; tokens.len()], cache)?;
    Logits::place(logits, on_device)
}

/// The reference's side of a decode: its model, its KV cache and its next-token logits, over
/// the same rows as the policy's, in the same order (every row runs both models).
struct ReferenceBatch {
    model: Model,
    cache: KvCache,
    logits: Logits,
    on_device: bool,
}

impl ReferenceBatch {
    /// Prefills the reference on every row's prompt.
    fn start(
        model: Model,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
        on_device: bool,
    ) -> Result<Self> {
        let (cache, logits) = prefill(&model, prompts, max_new_tokens, on_device)?;
        Ok(Self {
            model,
            cache,
            logits,
            on_device,
        })
    }

    /// Keeps its rows `rows` (in that order) and feeds each its next token.
    fn advance(&mut self, rows: &[usize], tokens: &[u32]) -> Result<()> {
        self.cache.retain_rows(rows)?;
        self.logits = next_logits(&self.model, tokens, &mut self.cache, self.on_device)?;
        Ok(())
    }
}

/// `draw(i)` for the batch rows 0..n. The host work of a row (`draw::draw_row`) does not
/// depend on the other rows: rows run on rayon's pool, same arithmetic.
fn draw_all(n: usize, draw: impl Fn(usize) -> Result<Drawn> + Sync + Send) -> Result<Vec<Drawn>> {
    if n <= 1 {
        return (0..n).map(draw).collect();
    }
    (0..n).into_par_iter().map(draw).collect()
}

/// Appends batch row i's draw to its original row `active[i]`; returns the batch rows that
/// go on (no EOS yet) and their new tokens.
fn record(
    gen: &mut Generation,
    active: &[usize],
    drawn: Vec<Drawn>,
    rules: &TokenRules,
) -> (Vec<usize>, Vec<u32>) {
    let mut still = Vec::with_capacity(active.len());
    let mut next = Vec::with_capacity(active.len());
    for (i, d) in drawn.into_iter().enumerate() {
        let row = active[i];
        gen.tokens[row].push(d.token);
        gen.logprobs[row].push(d.logprob);
        if let (Some(all), Some(lr)) = (gen.ref_logprobs.as_mut(), d.ref_logprob) {
            all[row].push(lr);
        }
        if rules.is_eos(d.token) {
            gen.finished[row] = true;
        } else {
            still.push(i);
            next.push(d.token);
        }
    }
    (still, next)
}

/// What a step's draw needs besides the logits: the batch rows' original rows, every row's
/// key, the rules' masks, the settings and the completion position.
pub(super) struct Step<'a> {
    pub active: &'a [usize],
    pub keys: &'a [RowKey],
    pub masks: &'a Masks,
    pub config: &'a GenerateConfig,
    pub t: usize,
}

/// Every active row's draw at `step.t`, where the logits are: on the device by `device_draw`
/// (the whole batch at once), or on the host row by row (`draw_row`); `reference` is the
/// reference's logits and each original row's β.
pub(super) fn draw_step(
    device_draw: Option<&DeviceDraw>,
    logits: &Logits,
    reference: Option<(&Logits, &[f64])>,
    step: &Step,
) -> Result<Vec<Drawn>> {
    let Step {
        active,
        keys,
        masks,
        config,
        t,
    } = *step;
    let u = |i: usize| uniform_at(config, keys[active[i]], t);
    let mismatch = || {
        ModelError::Input(
            "internal: the policy's and the reference's logits on different sites".into(),
        )
    };
    match (device_draw, logits) {
        (Some(draw), Logits::Device(x)) => {
            let us: Vec<f64> = (0..active.len()).map(u).collect();
            let row_betas: Vec<f64>;
            let reference = match reference {
                Some((Logits::Device(r), betas)) => {
                    row_betas = active.iter().map(|&row| betas[row]).collect();
                    Some((r, row_betas.as_slice()))
                }
                Some((Logits::Host(_), _)) => return Err(mismatch()),
                None => None,
            };
            let batch = DeviceBatch {
                logits: x,
                reference,
            };
            draw.draw(batch, masks, t, &us)
        }
        (_, Logits::Host(x)) => {
            let reference = match reference {
                Some((Logits::Host(r), betas)) => Some((r, betas)),
                Some((Logits::Device(_), _)) => return Err(mismatch()),
                None => None,
            };
            let forbidden = masks.at(t);
            draw_all(active.len(), |i| {
                let mixed = reference.map(|(r, betas)| (r[i].as_slice(), betas[active[i]]));
                draw_row(&x[i], mixed, forbidden, &config.params, u(i))
            })
        }
        (None, Logits::Device(_)) => Err(ModelError::Input(
            "internal: logits left on the device without a device draw".into(),
        )),
    }
}

/// The decode loop of every sampler. `reference`: the reference and each row's β — the
/// reference runs on every row and its log-probs are recorded; β > 0 draws from the mixture,
/// β = 0 from the policy alone; without it every row is the policy's alone. Callers check
/// the coefficients and vocabularies.
fn run(
    policy: &Model,
    reference: Option<(&Model, &[f64])>,
    prompts: &[Vec<u32>],
    keys: &[RowKey],
    config: &GenerateConfig,
) -> Result<Generation> {
    // On one of rayon's threads, so the kernels' parallel calls (≈ 120 per token) are forked
    // from a pool thread, which takes a share of the work itself, rather than from outside,
    // where each call parks the caller until the pool wakes it (BENCHMARKS.md, "The decode
    // loop on a pool thread": batch 8 194–212 → 240–241 tokens/s).
    let on_device = draws_on_device(policy.device());
    run_drawing(policy, reference, prompts, keys, config, on_device)
}

/// [`run`] with the draw's site given: on the logits' device when `on_device` and the
/// settings allow it ([`DeviceDraw::new`]), else on the host.
pub(super) fn run_drawing(
    policy: &Model,
    reference: Option<(&Model, &[f64])>,
    prompts: &[Vec<u32>],
    keys: &[RowKey],
    config: &GenerateConfig,
    on_device: bool,
) -> Result<Generation> {
    rayon::scope(|_| decode(policy, reference, prompts, keys, config, on_device))
}

/// [`run`]'s body, on a rayon thread.
fn decode(
    policy: &Model,
    reference: Option<(&Model, &[f64])>,
    prompts: &[Vec<u32>],
    keys: &[RowKey],
    config: &GenerateConfig,
    draw_on_device: bool,
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
    let betas: &[f64] = reference.map_or(&[], |(_, betas)| betas);
    if reference.is_some() && betas.len() != b {
        return Err(MixtureError::Coefficients {
            betas: betas.len(),
            prompts: b,
        }
        .into());
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
        Some((m, _)) => Some(m.for_decoding()?),
        None => None,
    };
    // Where the batch is drawn: on the logits' device (a GPU: no copy of the vocabulary per
    // token), or on the host.
    let device_draw = if draw_on_device {
        DeviceDraw::new(&masks, &config.params, policy.device())?
    } else {
        None
    };
    let on_device = device_draw.is_some();
    let (mut cache, mut logits) = prefill(policy, prompts, rules.max_new_tokens, on_device)?;
    let mut ref_batch = match reference {
        Some(m) => Some(ReferenceBatch::start(
            m,
            prompts,
            rules.max_new_tokens,
            on_device,
        )?),
        None => None,
    };
    // `active[i]` is the original row of batch row i.
    let mut active: Vec<usize> = (0..b).collect();
    for t in 0..rules.max_new_tokens {
        let reference = ref_batch.as_ref().map(|r| (&r.logits, betas));
        let step = Step {
            active: &active,
            keys,
            masks: &masks,
            config,
            t,
        };
        let drawn = draw_step(device_draw.as_ref(), &logits, reference, &step)?;
        let (still, next) = record(&mut gen, &active, drawn, rules);
        if still.is_empty() || t + 1 == rules.max_new_tokens {
            break;
        }
        cache.retain_rows(&still)?;
        let mut policy_step = || next_logits(policy, &next, &mut cache, on_device);
        match ref_batch.as_mut() {
            None => logits = policy_step()?,
            Some(r) => {
                // The two models' forwards share nothing but the new tokens: run them side by
                // side, so one fills the pool's gaps in the other's (each model's arithmetic
                // is its own, whichever thread runs it).
                let (p, r) = rayon::join(policy_step, || r.advance(&still, &next));
                logits = p?;
                r?;
            }
        }
        active = still.iter().map(|&i| active[i]).collect();
    }
    Ok(gen)
}
