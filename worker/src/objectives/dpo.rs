//! Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback", §3;
//! the DPO loss of Rafailov et al. 2023, Eq. 7; docs/algorithms.md §3).

use candle_core::{Result, Tensor};

use super::{labelled_pair_loss, neg_log_sigmoid, Labels, PairBatch};

/// Online DPO: L = −log σ(τ·h(y_w, y_l)) on y, y′ ~ sg π, τ = `kl_coef`, batch mean.
/// `Labels::Hard` takes y_w = y when p ≥ ½ (ties → first); `Labels::Soft` is
/// p·L(y, y′) + (1 − p)·L(y′, y).
pub fn online_dpo_loss(batch: &PairBatch, kl_coef: f64, labels: Labels) -> Result<Tensor> {
    labelled_pair_loss(batch, labels, |h_wl| neg_log_sigmoid(&(h_wl * kl_coef)?))
}
