//! One row's draw in the decode loop: from a row of policy logits (and, for a mixture row, the
//! reference's row and β) to the token and its recorded log-probs.
//!
//! Two ways, one distribution (docs/algorithms.md §0, §1):
//! - **composed** (vocabularies under [`MIN_VOCAB`] tokens, temperature 0, top-k, top-p): the
//!   functions of `filter` and `rules` one after another — `log_softmax_row` of each model,
//!   `mix_logprobs`, `apply_mask`, `token_distribution`, `draw`, `constrained_logprobs`. The
//!   tiny models' golden metrics are these bits.
//! - **few passes** (the rest: large vocabularies sampled at a temperature without filters): the
//!   same quantities with fewer sweeps of the vocabulary and no allocation. The constrained
//!   log-prob needs no unconstrained log-softmax, since log p_A(y) = x_y − logsumexp over the
//!   allowed tokens of x (the unconstrained normaliser cancels); at T = 1 the draw's weights
//!   exp(x − max) are exactly that sum's terms, so a plain row costs one `exp` pass instead of
//!   three, a mixture row three instead of five. At SmolLM2's 49 152-token vocabulary the
//!   composed form was ≈ 10 % of a decode step's samples (BENCHMARKS.md, "Decoding kernels").
//!   The `exp` passes are f32 and vectorised (`kernels::exp`, within 2 ulp), their sums f64 in
//!   a fixed order; the draw finds the token's block of [`WALK_BLOCK`] tokens from the blocks'
//!   sums and walks that block alone.
//!   Rounding differs from the composed form in the last bits (f32 terms, summation order), so
//!   the choice depends on the vocabulary alone, never on the batch; the test
//!   `few_passes_agree_with_the_composition` bounds the difference.
//!
//! Both are deterministic for a given binary and machine, and the streaming generator draws
//! through this function too, so a streamed row gets the batched generator's tokens.

use std::cell::RefCell;

use super::filter::{
    apply_mask, draw, log_softmax_row, mix_logprobs, token_distribution, SamplingParams,
};
use super::rules::constrained_logprobs;
use crate::kernels::{exp, reduce};
use crate::model::{ModelError, Result};

/// Vocabularies at least this large take the few-passes form (the token log-prob kernel's
/// threshold too, `kernels::token_logprobs_op::MIN_VOCAB`).
pub const MIN_VOCAB: usize = crate::kernels::token_logprobs_op::MIN_VOCAB;

/// One row's draw at one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drawn {
    pub token: u32,
    /// log π_A(token) under the policy, constrained by the rules.
    pub logprob: f32,
    /// The same under the reference (a mixture row).
    pub ref_logprob: Option<f32>,
}

/// Draws a row's next token from its policy logits, or for a mixture row (`reference` =
/// Some((reference logits, β))) from the geometric mixture (docs/algorithms.md §1; β ≥ 1 is
/// the reference alone, β = 0 the policy alone), under the mask `forbidden`, with the row's
/// uniform `u`; records the token's constrained log-probs under the policy and, for a mixture
/// row, the reference. Errors when every token is masked or the lengths differ.
pub fn draw_row(
    logits: &[f32],
    reference: Option<(&[f32], f64)>,
    forbidden: &[bool],
    params: &SamplingParams,
    u: f64,
) -> Result<Drawn> {
    let n = logits.len();
    if forbidden.len() != n || reference.is_some_and(|(r, _)| r.len() != n) {
        return Err(ModelError::Input(format!(
            "internal: {n} logits, a mask of {} and a reference row of {:?}",
            forbidden.len(),
            reference.map(|(r, _)| r.len())
        )));
    }
    if forbidden.iter().all(|&f| f) {
        return Err(ModelError::Input("every token is masked".into()));
    }
    let filtered =
        params.temperature <= 0.0 || (params.top_k > 0 && params.top_k < n) || params.top_p < 1.0;
    if n < MIN_VOCAB || filtered {
        composed(logits, reference, forbidden, params, u)
    } else {
        Ok(few_passes(
            logits,
            reference,
            forbidden,
            params.temperature,
            u,
        ))
    }
}

/// The `filter`/`rules` composition.
fn composed(
    logits: &[f32],
    reference: Option<(&[f32], f64)>,
    forbidden: &[bool],
    params: &SamplingParams,
    u: f64,
) -> Result<Drawn> {
    let lp = log_softmax_row(logits);
    let lr = reference.map(|(r, _)| log_softmax_row(r));
    let mut mixed: Vec<f64> = match (reference, &lr) {
        (Some((r, beta)), _) if beta >= 1.0 => r.iter().map(|&x| x as f64).collect(),
        (Some((_, beta)), Some(lr)) if beta > 0.0 => mix_logprobs(&lp, lr, beta),
        _ => logits.iter().map(|&x| x as f64).collect(),
    };
    apply_mask(&mut mixed, forbidden);
    if mixed.iter().all(|x| *x == f64::NEG_INFINITY) {
        return Err(ModelError::Input("every token is masked".into()));
    }
    let token = draw(&token_distribution(&mixed, params), u) as u32;
    let constrained = |l: &[f64]| constrained_logprobs(l, forbidden)[token as usize] as f32;
    Ok(Drawn {
        token,
        logprob: constrained(&lp),
        ref_logprob: lr.as_deref().map(constrained),
    })
}

/// A row's log-sum-exps: over every token (the log-softmax's normaliser) and over the allowed
/// tokens (the constrained distribution's).
#[derive(Debug, Clone, Copy)]
struct Normalisers {
    all: f64,
    allowed: f64,
}

thread_local! {
    /// A row's exp terms, reused across rows and steps (no allocation per token).
    static TERMS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Both log-sum-exps of `x` in one `exp` pass (f32 terms exp(x − max) by `kernels::exp`, summed
/// in f64), shifted by the maximum over every token; when the allowed tokens' terms all
/// underflow at that shift (allowed logits ≈ 87 below the maximum), the allowed sum is redone
/// at its own maximum.
fn normalisers(x: &[f32], forbidden: &[bool]) -> Normalisers {
    let max = reduce::max(x);
    let (all, allowed) = TERMS.with_borrow_mut(|terms| {
        terms.clear();
        terms.extend(x.iter().map(|&v| v - max));
        exp::exp_in_place(terms);
        let all = exp::sum_f64(terms);
        for (t, &f) in terms.iter_mut().zip(forbidden) {
            if f {
                *t = 0.0;
            }
        }
        (all, exp::sum_f64(terms))
    });
    let max = max as f64;
    let allowed = if allowed > 0.0 {
        max + allowed.ln()
    } else {
        allowed_lse(x, forbidden)
    };
    Normalisers {
        all: max + all.ln(),
        allowed,
    }
}

/// logsumexp of `x` over the allowed tokens, at their own maximum.
fn allowed_lse(x: &[f32], forbidden: &[bool]) -> f64 {
    let allowed = || {
        x.iter()
            .zip(forbidden)
            .filter(|(_, &f)| !f)
            .map(|(&v, _)| v as f64)
    };
    let max = allowed().fold(f64::NEG_INFINITY, f64::max);
    max + allowed().map(|v| (v - max).exp()).sum::<f64>().ln()
}

/// Tokens per block of the draw's cumulative walk: blocks' sums locate the token's block, then
/// one block is walked token by token.
pub(super) const WALK_BLOCK: usize = 512;

thread_local! {
    /// The draw's weights exp((s − max)/T) per token and their blocks' sums, reused across rows
    /// and steps.
    static WEIGHTS: RefCell<(Vec<f32>, Vec<f64>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// max of s(v) over the allowed tokens (−∞ when none is), as `f64::max` folds it, in eight
/// running maxima: one dependent chain cost ≈ 4 cycles per token of a 49 152-token row, and a
/// maximum is exact in any order.
fn allowed_max(n: usize, s: impl Fn(usize) -> f64, forbidden: &[bool]) -> f64 {
    // `x > a` is false for a NaN x, so a NaN never replaces a lane's value (as in `f64::max`).
    let larger = |a: f64, x: f64| if x > a { x } else { a };
    let at = |v: usize| {
        if forbidden[v] {
            f64::NEG_INFINITY
        } else {
            s(v)
        }
    };
    let mut lanes = [f64::NEG_INFINITY; 8];
    let whole = n - n % 8;
    for first in (0..whole).step_by(8) {
        for (k, lane) in lanes.iter_mut().enumerate() {
            *lane = larger(*lane, at(first + k));
        }
    }
    let tail = (whole..n).fold(f64::NEG_INFINITY, |a, v| larger(a, at(v)));
    lanes.iter().fold(tail, |a, &x| larger(a, x))
}

/// The token whose cumulative weight first exceeds u·Σweights (inverse CDF in vocabulary
/// order over the allowed tokens) for sampling logits `s(v)`, and logsumexp of s over the
/// allowed tokens when `temperature` is 1 (None otherwise). The weights are f32 terms of
/// `kernels::exp` (0 for forbidden tokens and those ≈ 87 below the maximum, which are never
/// drawn); Σweights and the cumulative sums are f64, in a fixed order: each block's sum by
/// `exp::sum_f64`, the blocks in order, and within the token's block one token at a time.
fn draw_weighted(
    n: usize,
    s: impl Fn(usize) -> f64,
    forbidden: &[bool],
    temperature: f64,
    u: f64,
) -> (usize, Option<f64>) {
    let max = allowed_max(n, &s, forbidden);
    WEIGHTS.with_borrow_mut(|(weights, blocks)| {
        weights.clear();
        weights.extend((0..n).map(|v| {
            if forbidden[v] {
                f32::NEG_INFINITY
            } else {
                ((s(v) - max) / temperature) as f32
            }
        }));
        exp::exp_in_place(weights);
        blocks.clear();
        blocks.extend(weights.chunks(WALK_BLOCK).map(exp::sum_f64));
        let total: f64 = blocks.iter().sum();
        let lse = (temperature == 1.0).then(|| max + total.ln());
        let target = u * total;
        let mut cum = 0.0;
        for (b, &block_sum) in blocks.iter().enumerate() {
            if target >= cum + block_sum {
                cum += block_sum;
                continue;
            }
            // The token is in this block, unless the token-by-token sum rounds below the
            // block's: then the walk goes on into the next block.
            let first = b * WALK_BLOCK;
            for (v, &w) in weights[first..].iter().enumerate().take(WALK_BLOCK) {
                if w > 0.0 {
                    cum += w as f64;
                    if target < cum {
                        return (first + v, lse);
                    }
                }
            }
        }
        // u·Σ at or past the end by rounding: the last token with weight (the maximum's
        // weight is 1, so there is one).
        let last = weights.iter().rposition(|&w| w > 0.0).unwrap_or(0);
        (last, lse)
    })
}

/// The few-passes form (module doc). The caller has checked the lengths and that some token
/// is allowed.
fn few_passes(
    logits: &[f32],
    reference: Option<(&[f32], f64)>,
    forbidden: &[bool],
    temperature: f64,
    u: f64,
) -> Drawn {
    let n = logits.len();
    let at = |x: &[f32], v: usize| x[v] as f64;
    match reference {
        Some((r, beta)) if beta > 0.0 => {
            let (p_lse, r_lse) = (normalisers(logits, forbidden), normalisers(r, forbidden));
            let token = if beta >= 1.0 {
                draw_weighted(n, |v| at(r, v), forbidden, temperature, u).0
            } else {
                let mixed =
                    |v| (1.0 - beta) * (at(logits, v) - p_lse.all) + beta * (at(r, v) - r_lse.all);
                draw_weighted(n, mixed, forbidden, temperature, u).0
            };
            Drawn {
                token: token as u32,
                logprob: (at(logits, token) - p_lse.allowed) as f32,
                ref_logprob: Some((at(r, token) - r_lse.allowed) as f32),
            }
        }
        // A plain row, or β = 0 (the policy's draw, both models' log-probs recorded: the
        // reference's normaliser in one vectorised `exp` pass, as a mixture row's).
        _ => {
            let (token, lse) = draw_weighted(n, |v| at(logits, v), forbidden, temperature, u);
            let lse = lse.unwrap_or_else(|| allowed_lse(logits, forbidden));
            Drawn {
                token: token as u32,
                logprob: (at(logits, token) - lse) as f32,
                ref_logprob: reference
                    .map(|(r, _)| (at(r, token) - normalisers(r, forbidden).allowed) as f32),
            }
        }
    }
}

#[cfg(test)]
#[path = "draw_tests.rs"]
mod tests;
