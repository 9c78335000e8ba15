//! The optional `sft_coef` regulariser (RPO: Liu et al. 2024, "Provably Mitigating
//! Overoptimization in RLHF: Your SFT Loss is Implicitly an Adversarial Regularizer", §4;
//! docs/algorithms.md §3). Applies to IPO, IPO-MD, DPO and SLiC, never to Nash-MD-PG.

use candle_core::{Result, Tensor};

use super::PairBatch;

/// NLL(y_w) = −(1/|y_w|) Σ_t log π(y_w,t), averaged over the batch, with y_w = y when p ≥ ½
/// (under hard and soft labels alike) and y′ otherwise. The objective adds `sft_coef ·` this.
pub fn winner_nll(batch: &PairBatch) -> Result<Tensor> {
    let per_token =
        |c: &super::Completions| -> Result<Tensor> { c.policy_logp()?.neg()? / c.lengths()? };
    let w = batch.y_wins()?;
    let nll =
        ((&w * per_token(&batch.y)?)? + (w.affine(-1.0, 1.0)? * per_token(&batch.y_prime)?)?)?;
    nll.mean_all()
}
