//! Online IPO and IPO-MD (Calandriello et al. 2024, "Human Alignment of Large Language Models
//! through Online Preference Optimisation", §4 online IPO, §5 IPO-MD; docs/algorithms.md §3).

use candle_core::{Result, Tensor};

use super::PairBatch;

/// Online IPO with soft labels: L = mean_b (h(y, y′) − (p − ½)/τ)², τ = `kl_coef`.
///
/// Online IPO draws y, y′ ~ sg π; IPO-MD is this same loss on y, y′ ~ sg π_mix^β (only the
/// sampler differs). It equals p·(h(y,y′) − 1/(2τ))² + (1−p)·(h(y′,y) − 1/(2τ))² − p(1−p)/τ²,
/// so its gradient is that of the soft-label IPO loss; the paper's implementation is τ× this up
/// to a constant (Calandriello et al. 2024, §4).
pub fn ipo_loss(batch: &PairBatch, kl_coef: f64) -> Result<Tensor> {
    if kl_coef.is_nan() || kl_coef <= 0.0 {
        candle_core::bail!("ipo_loss: kl_coef must be > 0, found {kl_coef}");
    }
    let target = batch.pref.affine(1.0 / kl_coef, -0.5 / kl_coef)?;
    (batch.h()? - target)?.sqr()?.mean_all()
}
