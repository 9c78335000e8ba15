//! Online SLiC (hinge; Zhao et al. 2023 "SLiC-HF" Eq. 1, in the form of Tang et al. 2024
//! "Generalized Preference Optimization", §3; docs/algorithms.md §3).

use candle_core::{Result, Tensor};

use super::{labelled_pair_loss, Labels, PairBatch};

/// Online SLiC: L = max(0, 1 − τ·h(y_w, y_l)), τ = `kl_coef`, batch mean; labels as in DPO.
/// At the kink (τ·h = 1) the gradient is 0, as PyTorch's `relu` takes it.
pub fn online_slic_loss(batch: &PairBatch, kl_coef: f64, labels: Labels) -> Result<Tensor> {
    labelled_pair_loss(batch, labels, |h_wl| {
        let margin = h_wl.affine(-kl_coef, 1.0)?;
        margin.gt(0.0)?.where_cond(&margin, &margin.zeros_like()?)
    })
}
