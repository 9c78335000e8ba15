//! Supervised fine-tuning (docs/algorithms.md §3, "SFT"): used to make reference policies.

use candle_core::{Result, Tensor};

/// Mean token cross-entropy over completion tokens: −Σ_{b,t} mask·ℓ / Σ_{b,t} mask, with ℓ the
/// policy's log-probs of the target tokens [B, T] (each token counts once, whatever its row).
pub fn sft_loss(policy_bt: &Tensor, mask_bt: &Tensor) -> Result<Tensor> {
    let num_tokens = mask_bt.sum_all()?;
    super::masked(policy_bt, mask_bt)?
        .sum_all()?
        .neg()?
        .broadcast_div(&num_tokens)
}
