//! The Bradley–Terry reward-model loss (Bradley & Terry 1952; as used for reward models by
//! Ouyang et al. 2022, Eq. 1; docs/algorithms.md §3).

use candle_core::{Result, Tensor};

use super::neg_log_sigmoid;

/// L = mean_b −log σ(r(x, y_w) − r(x, y_l)) for scalar rewards [B] of winners and losers.
pub fn bradley_terry_loss(reward_w: &Tensor, reward_l: &Tensor) -> Result<Tensor> {
    neg_log_sigmoid(&(reward_w - reward_l)?)?.mean_all()
}
