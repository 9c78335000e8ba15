//! Rollouts: the token rules completions are drawn under, batched generation from the policy
//! or the geometric mixture (docs/algorithms.md §1) with the log-probs the sampler recorded
//! ([`sample_recorded`]), and the scoring pass that turns completions into per-token log-probs under
//! the policy (graph-connected) and the reference (§0), or under the policy alone beside the
//! reference's recorded ones ([`score_with_recorded_reference`]).
//!
//! The rules are one [`TokenRules`] value ([`rules`], carried by the [`GenerateConfig`]) that
//! both [`sample`] and [`score`] apply, so every log-prob here is under the *constrained*
//! distribution the samples are drawn from: π_A(y_t | x, y_<t) = π(y_t | …) renormalised over
//! the tokens allowed at position t, at T = 1 without top-k/top-p (`sample::rules` module doc).
//! The length limit forces EOS inside that distribution (log-prob 0), never by appending one.
//! So log π_A(y) − log μ_A(y) on y ~ π_A (k1) estimates KL(π_A ‖ μ_A) ≥ 0 without bias, and
//! the objectives' log-ratios compare the policy we actually sample with the reference under the
//! same rules.

use candle_core::{Device, Tensor};
use mirrorplay_proto::v1::SamplingSpec;

use super::TrainError;
use crate::model::Model;
use crate::objectives::Completions;
use crate::sample::{
    generate, generate_mixture, generate_rows, score_constrained, GenerateConfig, Generation,
    RowKey, SamplingParams, TokenRules,
};
use crate::tasks::Task;

/// Sample indices of the counter-based streams (docs/architecture.md#randomness): y, y′, the
/// extra policy sample used only for KL metrics, the initial-policy samples an ensemble's
/// normalisation is fitted on (docs/algorithms.md §2), and evaluation samples.
pub const SAMPLE_Y: u64 = 0;
pub const SAMPLE_Y_PRIME: u64 = 1;
pub const SAMPLE_KL: u64 = 2;
pub const SAMPLE_NORM: u64 = 3;
pub const SAMPLE_EVAL_POLICY: u64 = 1000;
pub const SAMPLE_EVAL_REFERENCE: u64 = 1001;

/// The rules of a job's completions: a task's own vocabulary brings its rules
/// ([`Task::token_rules`]); otherwise the model's: stop at any of its EOS ids, never the pad
/// token (unless it is an EOS), no EOS first, at most `max_new_tokens` tokens with the last a
/// forced EOS (so `max_new_tokens` counts the EOS). Either way `[sampling] min_new_tokens`
/// raises the minimum: no EOS before that many tokens.
pub fn rules(
    task: Option<Task>,
    sampling: &SamplingSpec,
    eos_token_ids: &[u32],
    pad_token_id: Option<u32>,
) -> Result<TokenRules, TrainError> {
    let max_new_tokens = sampling.max_new_tokens as usize;
    // `[sampling] min_new_tokens` raises the rules' own minimum (never lowers it), up to the
    // position of the forced EOS: min = max then forces every completion to max tokens.
    let at_least = |mut rules: TokenRules| {
        let wanted = rules.min_new_tokens.max(sampling.min_new_tokens as usize);
        let cap = match rules.eos_at_limit {
            true => rules.max_new_tokens.saturating_sub(1),
            false => rules.max_new_tokens,
        };
        rules.min_new_tokens = wanted.min(cap.max(rules.min_new_tokens));
        rules
    };
    if let Some(rules) = task.and_then(|t| t.token_rules(max_new_tokens)) {
        return Ok(at_least(rules));
    }
    if eos_token_ids.is_empty() {
        return Err(TrainError::Invalid(
            "the policy names no EOS token (config.json or generation_config.json \
             `eos_token_id`), so completions cannot end"
                .into(),
        ));
    }
    Ok(at_least(TokenRules {
        eos_token_ids: eos_token_ids.to_vec(),
        forbidden_token_ids: pad_token_id
            .filter(|p| !eos_token_ids.contains(p))
            .into_iter()
            .collect(),
        min_new_tokens: 1,
        max_new_tokens,
        eos_at_limit: true,
    }))
}

/// The generation settings of step `step` under `rules`.
pub fn generate_config(
    rules: &TokenRules,
    sampling: &SamplingSpec,
    seed: u64,
    step: u64,
) -> GenerateConfig {
    GenerateConfig {
        params: SamplingParams {
            temperature: sampling.temperature,
            top_k: sampling.top_k as usize,
            top_p: sampling.top_p,
        },
        rules: rules.clone(),
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
    /// Row r from π^(1−β_r)·μ^β_r with β_r = `mixture_coefs[r]` (β = 0: from the policy),
    /// all rows in one decode pass ([`crate::sample::generate_rows`]): Nash-MD-PG's y ~ π and
    /// y′ ~ π_mix^β then read the policy's weights once per token, not twice.
    PerRow {
        policy: &'m Model,
        reference: &'m Model,
        mixture_coefs: &'m [f64],
    },
}

/// One completion per (prompt, key), drawn under `config.rules` (with the task's rules every
/// completion ends with its EOS: the length limit forces it as part of the draw).
pub fn sample(
    source: Source,
    prompts: &[Vec<u32>],
    keys: &[RowKey],
    config: &GenerateConfig,
) -> Result<Vec<Vec<u32>>, TrainError> {
    Ok(sample_recorded(source, prompts, keys, config)?.tokens)
}

/// [`sample`] with the log-probs the sampler recorded: log π_A(y_t | …) under the sampled
/// policy and, where the reference ran on the rows ([`Source::Mixture`], [`Source::PerRow`]),
/// log μ_A(y_t | …) — the constrained log-probs the scoring pass gives (`sample::generate`
/// module doc), from the decode's forward passes.
pub fn sample_recorded(
    source: Source,
    prompts: &[Vec<u32>],
    keys: &[RowKey],
    config: &GenerateConfig,
) -> Result<Generation, TrainError> {
    Ok(match source {
        Source::Policy(model) => generate(model, prompts, keys, config)?,
        Source::Mixture {
            policy,
            reference,
            mixture_coef,
        } => generate_mixture(policy, reference, mixture_coef, prompts, keys, config)?,
        Source::PerRow {
            policy,
            reference,
            mixture_coefs,
        } => generate_rows(policy, reference, mixture_coefs, prompts, keys, config)?,
    })
}

/// Stream keys of rows `rows` (global prompt indices) for sample index `sample`.
pub fn keys(rows: impl IntoIterator<Item = u64>, sample: u64) -> Vec<RowKey> {
    rows.into_iter()
        .map(|prompt| RowKey { prompt, sample })
        .collect()
}

/// Per-token log-probs of `completions` under `policy` (graph-connected when it is trainable)
/// and `reference` (detached), both constrained by `rules` — the rules the completions were
/// sampled under (`config.rules` of [`sample`]): log π_A(y_t | …) and log μ_A(y_t | …).
pub fn score(
    policy: &Model,
    reference: &Model,
    prompts: &[Vec<u32>],
    completions: &[Vec<u32>],
    rules: &TokenRules,
) -> Result<Completions, TrainError> {
    let p = score_constrained(policy, prompts, completions, rules)?;
    let r = score_constrained(reference, prompts, completions, rules)?;
    Ok(Completions {
        policy: p.logprobs,
        reference: r.logprobs.detach(),
        mask: p.mask,
    })
}

/// Per-token log-probs of `sampled` under `policy` (graph-connected when it is trainable) by
/// the scoring pass, and under the reference as the sampler recorded them (detached): the same
/// quantities [`score`] gives (the reference's up to rounding, its decode and the scoring
/// pass being different forwards), without the reference's scoring forward. Errors when the
/// sampler recorded no reference log-probs or their lengths are not the completions'.
pub fn score_with_recorded_reference(
    policy: &Model,
    prompts: &[Vec<u32>],
    sampled: &Generation,
    rules: &TokenRules,
) -> Result<Completions, TrainError> {
    let recorded = recorded_reference(sampled)?;
    let p = score_constrained(policy, prompts, &sampled.tokens, rules)?;
    let reference =
        padded(recorded, p.logprobs.dim(1)?, p.logprobs.device())?.to_dtype(p.logprobs.dtype())?;
    Ok(Completions {
        policy: p.logprobs,
        reference,
        mask: p.mask,
    })
}

/// The log-probs the sampler recorded, both models', as [`Completions`] (detached, f32): the
/// KL metrics' inputs on samples of π without any scoring pass. Errors as
/// [`score_with_recorded_reference`].
pub fn recorded(sampled: &Generation, device: &Device) -> Result<Completions, TrainError> {
    let reference = recorded_reference(sampled)?;
    let l = sampled.tokens.iter().map(Vec::len).max().unwrap_or(0);
    let ones: Vec<Vec<f32>> = sampled.tokens.iter().map(|t| vec![1.0; t.len()]).collect();
    Ok(Completions {
        policy: padded(&sampled.logprobs, l, device)?,
        reference: padded(reference, l, device)?,
        mask: padded(&ones, l, device)?,
    })
}

/// The sampler's reference log-probs, checked against the completions' lengths.
fn recorded_reference(sampled: &Generation) -> Result<&[Vec<f32>], TrainError> {
    let internal = |what: String| TrainError::Invalid(format!("internal: {what}"));
    let reference = sampled
        .ref_logprobs
        .as_deref()
        .ok_or_else(|| internal("the sampler recorded no reference log-probs".into()))?;
    let lengths_match = reference.len() == sampled.tokens.len()
        && sampled.logprobs.len() == sampled.tokens.len()
        && (sampled.tokens.iter().zip(reference).zip(&sampled.logprobs))
            .all(|((t, r), p)| t.len() == r.len() && t.len() == p.len());
    if !lengths_match {
        return Err(internal(
            "recorded log-probs do not match the completions' lengths".into(),
        ));
    }
    Ok(reference)
}

/// [rows, l] f32: each row right-padded with 0 to `l` (≥ every row's length).
fn padded(rows: &[Vec<f32>], l: usize, device: &Device) -> Result<Tensor, TrainError> {
    let values: Vec<f32> = rows
        .iter()
        .flat_map(|r| {
            r.iter()
                .copied()
                .chain(std::iter::repeat_n(0.0, l - r.len()))
        })
        .collect();
    Ok(Tensor::from_vec(values, (rows.len(), l), device)?)
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

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::model::init_random;
    use crate::tasks::goodhart_digits as gd;
    use crate::tasks::vocab::TinyShape;

    fn sampling(max_new_tokens: u32) -> SamplingSpec {
        SamplingSpec {
            max_new_tokens,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_new_tokens: 0,
        }
    }

    /// A one-layer Goodhart-Digits model's config.
    fn goodhart_tiny() -> crate::model::ModelConfig {
        let shape = TinyShape {
            hidden_size: 16,
            num_layers: 1,
            num_heads: 2,
            num_kv_heads: 1,
            intermediate_size: 32,
            initializer_range: 0.0,
        };
        Task::GoodhartDigits.tiny_model(shape).unwrap().unwrap().0
    }

    /// The rules reach both seams: every sample ends with a drawn EOS within the limit,
    /// forbidden ids never appear, and the forced EOS scores 0 under policy and reference.
    #[test]
    fn rules_force_eos_in_the_draw_and_in_the_scores() {
        let config = goodhart_tiny();
        let policy = init_random(&config, 1, true, &Device::Cpu).unwrap();
        let reference = init_random(&config, 2, false, &Device::Cpu).unwrap();
        let rules = rules(Some(Task::GoodhartDigits), &sampling(4), &[], None).unwrap();
        let config = generate_config(&rules, &sampling(4), 5, 0);
        let prompt = gd::Prompt {
            targets: [1, 2, 3, 4],
        };
        let prompts = vec![prompt.tokens().to_vec(); 64];
        let ys = sample(Source::Policy(&policy), &prompts, &keys(0..64, 0), &config).unwrap();
        let scored = score(&policy, &reference, &prompts, &ys, &config.rules).unwrap();
        let (p, r) = (
            scored.policy.to_vec2::<f32>().unwrap(),
            scored.reference.to_vec2::<f32>().unwrap(),
        );
        assert!(ys.iter().any(|y| y.len() == 4), "some rows reach the limit");
        for (i, y) in ys.iter().enumerate() {
            assert!(
                (2..=4).contains(&y.len()) && y.last() == Some(&gd::EOS),
                "{y:?}"
            );
            assert!(
                y[..y.len() - 1].iter().all(|&t| t < gd::NUM_SYMBOLS),
                "{y:?}"
            );
            if y.len() == 4 {
                assert_eq!((p[i][3], r[i][3]), (0.0, 0.0), "forced EOS of {y:?}");
            }
        }
    }

    /// `min_new_tokens` = `max_new_tokens` forces every completion to that length, the last
    /// token the forced EOS; a smaller one only raises the minimum (task rules included).
    #[test]
    fn min_new_tokens_forces_the_length() {
        let config = goodhart_tiny();
        let policy = init_random(&config, 1, false, &Device::Cpu).unwrap();
        let forced = SamplingSpec {
            min_new_tokens: 6,
            ..sampling(6)
        };
        let r = rules(Some(Task::GoodhartDigits), &forced, &[], None).unwrap();
        // No EOS before position 5, where the limit forces it.
        assert_eq!((r.min_new_tokens, r.max_new_tokens), (5, 6));
        let config = generate_config(&r, &forced, 5, 0);
        let prompts = vec![
            gd::Prompt {
                targets: [1, 2, 3, 4]
            }
            .tokens()
            .to_vec();
            32
        ];
        let ys = sample(Source::Policy(&policy), &prompts, &keys(0..32, 0), &config).unwrap();
        for y in &ys {
            assert_eq!(y.len(), 6, "{y:?}");
            assert_eq!(y[5], gd::EOS, "{y:?}");
            assert!(y[..5].iter().all(|&t| t < gd::NUM_SYMBOLS), "{y:?}");
        }
        // Without the minimum the same draws end early somewhere (so the check above bites).
        let free = generate_config(
            &rules(Some(Task::GoodhartDigits), &sampling(6), &[], None).unwrap(),
            &sampling(6),
            5,
            0,
        );
        let ys = sample(Source::Policy(&policy), &prompts, &keys(0..32, 0), &free).unwrap();
        assert!(
            ys.iter().any(|y| y.len() < 6),
            "no row ended early without the minimum"
        );
        let model = rules(
            None,
            &SamplingSpec {
                min_new_tokens: 3,
                ..sampling(32)
            },
            &[2],
            None,
        )
        .unwrap();
        assert_eq!((model.min_new_tokens, model.max_new_tokens), (3, 32));
    }

    /// A model without a task's vocabulary stops at its own EOS ids and never draws its pad.
    #[test]
    fn model_rules_use_the_models_eos_and_forbid_its_pad() {
        let r = rules(None, &sampling(32), &[2, 7], Some(0)).unwrap();
        assert_eq!(r.eos_token_ids, vec![2, 7]);
        assert_eq!(r.forbidden_token_ids, vec![0]);
        assert_eq!(
            (r.min_new_tokens, r.max_new_tokens, r.eos_at_limit),
            (1, 32, true)
        );
        let same = rules(Some(Task::ExactWords), &sampling(32), &[2], Some(2)).unwrap();
        assert!(same.forbidden_token_ids.is_empty(), "the pad is the EOS");
        assert!(rules(None, &sampling(32), &[], None).is_err());
    }
}
