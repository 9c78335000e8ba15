//! KL(π‖μ) estimators for logging (docs/algorithms.md §4; k1/k3 as named by Schulman 2020,
//! "Approximating KL Divergence"). Metrics only: callers pass detached tensors.

use candle_core::{Result, Tensor, D};

use super::{masked, Completions};

/// k1 per sequence: log π(y) − log μ(y) on y ~ π, [B]. Its batch mean estimates KL(π‖μ).
pub fn k1(y: &Completions) -> Result<Tensor> {
    y.log_ratio()
}

/// k3 per token: r − 1 − log r with r = μ(y_t)/π(y_t), [B, T], zero off the mask. Unbiased for
/// the per-token KL and always ≥ 0; average with [`masked_mean`].
pub fn k3(y: &Completions) -> Result<Tensor> {
    let log_r = (&y.reference - &y.policy)?;
    masked(&((log_r.exp()? - 1.0)? - &log_r)?, &y.mask)
}

/// Exact per-step KL Σ_v π(v) log(π(v)/μ(v)) from full log-softmaxed distributions
/// [B, T, V] of policy and reference (small vocabularies such as Goodhart-Digits), [B, T].
/// A token with π(v) = 0 contributes 0 (π·log π → 0).
pub fn exact_kl(policy_btv: &Tensor, reference_btv: &Tensor) -> Result<Tensor> {
    let p = policy_btv.exp()?;
    let terms = (&p * (policy_btv - reference_btv)?)?;
    // 0·(−∞ − x) is NaN; where π(v) = 0 the term is 0 by definition.
    let terms = p.gt(0.0)?.where_cond(&terms, &terms.zeros_like()?)?;
    terms.sum(D::Minus1)
}

/// Σ values·mask / Σ mask: the token mean of a [B, T] metric.
pub fn masked_mean(values_bt: &Tensor, mask_bt: &Tensor) -> Result<Tensor> {
    masked(values_bt, mask_bt)?
        .sum_all()?
        .broadcast_div(&mask_bt.sum_all()?)
}
