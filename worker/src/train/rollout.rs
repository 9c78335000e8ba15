//! Rollouts on Goodhart-Digits prompts: the task's sampling rules (ALGORITHMS.md §6: BOS, SEP
//! and PAD never, EOS not first, at most 16 symbols), batched generation from the policy or the
//! geometric mixture (§1), and the scoring pass that turns completions into per-token log-probs
//! under the policy (graph-connected) and the reference (§0).

use candle_core::Tensor;
use mirrorplay_proto::v1::SamplingSpec;

use super::TrainError;
use crate::model::Model;
use crate::objectives::Completions;
use crate::sample::{
    generate, generate_mixture, score_completions, GenerateConfig, RowKey, SamplingParams,
};
use crate::tasks::goodhart_digits as gd;

/// Sample indices of the counter-based streams (DESIGN.md "Randomness"): y, y′, the extra
/// policy sample used only for KL metrics, and evaluation samples.
pub const SAMPLE_Y: u64 = 0;
pub const SAMPLE_Y_PRIME: u64 = 1;
pub const SAMPLE_KL: u64 = 2;
pub const SAMPLE_EVAL_POLICY: u64 = 1000;
pub const SAMPLE_EVAL_REFERENCE: u64 = 1001;

/// The generation settings of step `step` under the task's rules.
pub fn task_config(sampling: &SamplingSpec, seed: u64, step: u64) -> GenerateConfig {
    GenerateConfig {
        max_new_tokens: sampling.max_new_tokens as usize,
        params: SamplingParams {
            temperature: sampling.temperature,
            top_k: sampling.top_k as usize,
            top_p: sampling.top_p,
        },
        eos_token_ids: vec![gd::EOS],
        min_new_tokens: 1,
        forbidden_token_ids: vec![gd::BOS, gd::SEP, gd::PAD],
        seed,
        step,
    }
}

/// Where a completion's tokens come from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'m> {
    Policy(&'m Model),
    /// π^(1−β)·μ^β with β = `mixture_coef`.
    Mixture {
        policy: &'m Model,
        reference: &'m Model,
        mixture_coef: f64,
    },
}

/// One completion per (prompt, key), cut to the task's rule: a row the length limit stopped
/// keeps its first 16 symbols and gets its EOS.
pub fn sample(
    source: Source,
    prompts: &[Vec<u32>],
    keys: &[RowKey],
    config: &GenerateConfig,
) -> Result<Vec<Vec<u32>>, TrainError> {
    let generation = match source {
        Source::Policy(model) => generate(model, prompts, keys, config)?,
        Source::Mixture {
            policy,
            reference,
            mixture_coef,
        } => generate_mixture(policy, reference, mixture_coef, prompts, keys, config)?,
    };
    Ok(generation
        .tokens
        .into_iter()
        .map(|mut t| {
            if t.last() != Some(&gd::EOS) {
                t.truncate(gd::MAX_SYMBOLS);
                t.push(gd::EOS);
            }
            t
        })
        .collect())
}

/// Stream keys of rows `rows` (global prompt indices) for sample index `sample`.
pub fn keys(rows: impl IntoIterator<Item = u64>, sample: u64) -> Vec<RowKey> {
    rows.into_iter()
        .map(|prompt| RowKey { prompt, sample })
        .collect()
}

/// Per-token log-probs of `completions` under `policy` (graph-connected when it is trainable)
/// and `reference` (detached).
pub fn score(
    policy: &Model,
    reference: &Model,
    prompts: &[Vec<u32>],
    completions: &[Vec<u32>],
) -> Result<Completions, TrainError> {
    let p = score_completions(policy, prompts, completions)?;
    let r = score_completions(reference, prompts, completions)?;
    Ok(Completions {
        policy: p.logprobs,
        reference: r.logprobs.detach(),
        mask: p.mask,
    })
}

/// Rows `range` of a [B, T] batch of completions.
pub fn rows(c: &Completions, start: usize, len: usize) -> Result<Completions, TrainError> {
    let take = |t: &Tensor| t.narrow(0, start, len);
    Ok(Completions {
        policy: take(&c.policy)?,
        reference: take(&c.reference)?,
        mask: take(&c.mask)?,
    })
}

/// Number of completion tokens.
pub fn num_tokens(completions: &[Vec<u32>]) -> usize {
    completions.iter().map(Vec::len).sum()
}
