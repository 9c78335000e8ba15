//! Training objectives (docs/algorithms.md §3) and the KL metrics of §4, each a pure function on
//! candle tensors so that gradients flow back into the policy's per-token log-probs.
//!
//! This module only does arithmetic on log-probs: it never runs a model, samples, or decides
//! preferences. Conventions shared by every function here:
//! - log-probs are per completion token, shape [B, T] (`_bt`), gathered at the sampled tokens,
//!   unfiltered at temperature 1; the policy's are graph-connected, the reference's detached;
//! - `mask` is [B, T] in the log-probs' dtype, 1 on completion tokens (EOS included) and 0 on
//!   prompt and padding positions (whatever values sit there are ignored, even −∞ or NaN);
//!   every row has at least one completion token;
//! - preferences `pref` are p = P(y ≻ y′) as a detached [B] tensor;
//! - every loss is averaged over the batch and returned as a scalar tensor.

pub mod bradley_terry;
pub mod dpo;
pub mod ipo;
pub mod kl;
pub mod nash_md;
pub mod rpo;
pub mod sft;
pub mod slic;

use candle_core::{Result, Tensor, D};

pub use bradley_terry::bradley_terry_loss;
pub use dpo::online_dpo_loss;
pub use ipo::ipo_loss;
pub use kl::{exact_kl, k1, k3, masked_mean};
pub use nash_md::{nash_md_pg_loss, NashKlGrad};
pub use rpo::winner_nll;
pub use sft::sft_loss;
pub use slic::online_slic_loss;

/// One completion per row: its per-token log-probs under the policy (graph-connected) and the
/// reference (detached), and which positions are completion tokens.
#[derive(Debug, Clone)]
pub struct Completions {
    /// log π(y_t | x, y_<t), [B, T].
    pub policy: Tensor,
    /// log μ(y_t | x, y_<t), [B, T]; detached.
    pub reference: Tensor,
    /// 1 on completion tokens, 0 on prompt and padding, [B, T].
    pub mask: Tensor,
}

impl Completions {
    /// log π(y|x) = Σ_t mask·log π(y_t | x, y_<t) (docs/algorithms.md §0), [B].
    pub fn policy_logp(&self) -> Result<Tensor> {
        masked(&self.policy, &self.mask)?.sum(D::Minus1)
    }

    /// log μ(y|x), [B].
    pub fn reference_logp(&self) -> Result<Tensor> {
        masked(&self.reference, &self.mask)?.sum(D::Minus1)
    }

    /// log π(y) − log μ(y), [B] (graph-connected through the policy).
    pub fn log_ratio(&self) -> Result<Tensor> {
        masked(&(&self.policy - &self.reference)?, &self.mask)?.sum(D::Minus1)
    }

    /// Number of completion tokens |y| per row, [B].
    pub fn lengths(&self) -> Result<Tensor> {
        self.mask.sum(D::Minus1)
    }
}

/// Two completions y, y′ of the same prompts and the preference p = P(y ≻ y′ | x).
#[derive(Debug, Clone)]
pub struct PairBatch {
    pub y: Completions,
    pub y_prime: Completions,
    /// p, [B]; detached.
    pub pref: Tensor,
}

impl PairBatch {
    /// h(y, y′) = [log π(y) − log μ(y)] − [log π(y′) − log μ(y′)] (docs/algorithms.md §0), [B].
    pub fn h(&self) -> Result<Tensor> {
        self.y.log_ratio()? - self.y_prime.log_ratio()?
    }

    /// 1 where y is the winner (p ≥ ½, so ties go to the first sample), else 0, [B].
    /// Hard labels and the RPO winner both use this rule (docs/algorithms.md §3).
    pub fn y_wins(&self) -> Result<Tensor> {
        self.pref.ge(0.5)?.to_dtype(self.pref.dtype())
    }
}

/// How DPO and SLiC turn p into a target (docs/algorithms.md §3, `labels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Labels {
    /// The winner is y when p ≥ ½ (ties → first): L(y_w, y_l).
    #[default]
    Hard,
    /// p·L(y, y′) + (1 − p)·L(y′, y), as the IPO-MD paper ran its baselines.
    Soft,
}

/// A self-play algorithm (config `algorithm`, docs/algorithms.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `online_ipo`: [`ipo_loss`] on y, y′ ~ sg π.
    OnlineIpo,
    /// `ipo_md`: [`ipo_loss`] on y, y′ ~ sg π_mix^β.
    IpoMd,
    /// `nash_md`: [`nash_md_pg_loss`] on y ~ π, y′ ~ sg π_mix^β.
    NashMd,
    /// `online_dpo`: [`online_dpo_loss`].
    OnlineDpo,
    /// `slic`: [`online_slic_loss`].
    Slic,
}

impl Algorithm {
    /// Whether the loss reads y′'s log-probs under π and μ. Nash-MD-PG's does not (y′ only
    /// sets the preference p), so the training loop scores y alone for it.
    pub fn reads_y_prime_logprobs(self) -> bool {
        self != Algorithm::NashMd
    }
}

/// Everything that decides a self-play loss; the coordinator resolves defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Objective {
    pub algorithm: Algorithm,
    /// τ.
    pub kl_coef: f64,
    /// Nash-MD-PG only.
    pub nash_kl_grad: NashKlGrad,
    /// DPO and SLiC only.
    pub labels: Labels,
    /// Weight of the RPO term [`winner_nll`]; must be 0 for Nash-MD-PG.
    pub sft_coef: f64,
}

impl Objective {
    /// The batch-mean loss of this objective, `+ sft_coef · NLL(y_w)` when `sft_coef` ≠ 0.
    pub fn loss(&self, batch: &PairBatch) -> Result<Tensor> {
        let loss = match self.algorithm {
            Algorithm::OnlineIpo | Algorithm::IpoMd => ipo_loss(batch, self.kl_coef)?,
            Algorithm::NashMd => {
                if self.sft_coef != 0.0 {
                    candle_core::bail!(
                        "sft_coef = {} is not defined for nash_md (docs/algorithms.md §3)",
                        self.sft_coef
                    );
                }
                return nash_md_pg_loss(&batch.y, &batch.pref, self.kl_coef, self.nash_kl_grad);
            }
            Algorithm::OnlineDpo => online_dpo_loss(batch, self.kl_coef, self.labels)?,
            Algorithm::Slic => online_slic_loss(batch, self.kl_coef, self.labels)?,
        };
        if self.sft_coef == 0.0 {
            return Ok(loss);
        }
        loss + (winner_nll(batch)? * self.sft_coef)?
    }
}

/// Applies `per_pair`, a loss of the signed log-ratio margin h(y_w, y_l) per row, under hard or
/// soft labels, and averages over the batch. Shared by DPO and SLiC.
fn labelled_pair_loss(
    batch: &PairBatch,
    labels: Labels,
    per_pair: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let h = batch.h()?;
    let per_row = match labels {
        Labels::Hard => {
            // sign = +1 when y wins, −1 otherwise; h(y_w, y_l) = sign·h(y, y′).
            let sign = batch.y_wins()?.affine(2.0, -1.0)?;
            per_pair(&(h * sign)?)?
        }
        Labels::Soft => {
            let forward = per_pair(&h)?;
            let backward = per_pair(&h.neg()?)?;
            let p = &batch.pref;
            ((p * forward)? + (p.affine(-1.0, 1.0)? * backward)?)?
        }
    };
    per_row.mean_all()
}

/// `x` where `mask` > 0 and exactly 0 elsewhere, whatever `x` holds there (padding may carry
/// −∞ or NaN log-probs, and −∞·0 would be NaN); no gradient reaches the masked positions.
pub(crate) fn masked(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    mask.gt(0.0)?.where_cond(x, &x.zeros_like()?)
}

/// −log σ(x) = softplus(−x), elementwise, finite and with the exact gradient −σ(−x) everywhere,
/// including x = 0 (candle's `relu`/`abs` take the gradient 1 at 0, so the usual
/// `relu(−x) + log1p(exp(−|x|))` would be wrong exactly where h = 0, i.e. at the first step).
pub(crate) fn neg_log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let zeros = x.zeros_like()?;
    let positive = x.gt(0.0)?;
    // Each branch sees only inputs where it is stable, so neither produces inf or NaN, even in
    // the gradient of the branch that where_cond discards.
    let x_pos = positive.where_cond(x, &zeros)?;
    let x_neg = positive.where_cond(&zeros, x)?;
    // x > 0: log(1 + e^{−x});  x ≤ 0: −x + log(1 + e^{x}).
    let on_pos = (x_pos.neg()?.exp()? + 1.0)?.log()?;
    let on_neg = ((x_neg.exp()? + 1.0)?.log()? - &x_neg)?;
    positive.where_cond(&on_pos, &on_neg)
}

#[cfg(test)]
mod tests;
