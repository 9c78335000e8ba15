//! Nash-MD-PG (Munos et al. 2023, "Nash Learning from Human Feedback", App. F;
//! docs/algorithms.md §3).

use candle_core::{Result, Tensor, D};

use super::{masked, Completions};

/// Which stop-gradient KL coefficient multiplies the policy's token log-probs
/// (docs/algorithms.md §3, `nash_kl_grad`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NashKlGrad {
    /// τ·sg(Σ_s (ℓ_s − ℓ_s^ref))·Σ_t ℓ_t: the paper's estimator (default).
    #[default]
    Sequence,
    /// τ·Σ_t sg(Σ_{s≥t} (ℓ_s − ℓ_s^ref))·ℓ_t: reward-to-go form.
    ToGo,
    /// τ·Σ_t sg(ℓ_t − ℓ_t^ref)·ℓ_t: TRL's per-token form (biased).
    Token,
}

/// Nash-MD-PG loss on y ~ π against y′ ~ sg π_mix^β, whose only role is p = P(y ≻ y′).
///
/// The paper's ascent direction is ĝ = ∇log π(y)·(p − ½ − τ·(log π(y) − log μ(y)))
/// (Munos et al. 2023, App. F); the loss is built so that ∇L = −ĝ (for `Sequence`):
/// L = mean_b [−(p − ½)·Σ_t ℓ_t + τ·KL-term], τ = `kl_coef`, with the KL-term chosen by
/// `kl_grad`. The loss value itself is not meaningful, only its gradient.
pub fn nash_md_pg_loss(
    y: &Completions,
    pref: &Tensor,
    kl_coef: f64,
    kl_grad: NashKlGrad,
) -> Result<Tensor> {
    let logp_bt = masked(&y.policy, &y.mask)?;
    let seq_logp = logp_bt.sum(D::Minus1)?;
    let advantage = pref.affine(1.0, -0.5)?.detach();
    let pg = (advantage * &seq_logp)?.neg()?;
    let diff_bt = masked(&(&y.policy - &y.reference)?, &y.mask)?.detach();
    let kl_term = match kl_grad {
        NashKlGrad::Sequence => (diff_bt.sum(D::Minus1)? * &seq_logp)?,
        NashKlGrad::ToGo => {
            // Σ_{s≥t} d_s = Σ_s d_s − Σ_{s<t} d_s = total − cumsum_t + d_t.
            let total = diff_bt.sum_keepdim(D::Minus1)?;
            let to_go = (total.broadcast_sub(&diff_bt.cumsum(D::Minus1)?)? + &diff_bt)?;
            (to_go * &logp_bt)?.sum(D::Minus1)?
        }
        NashKlGrad::Token => (diff_bt * &logp_bt)?.sum(D::Minus1)?,
    };
    (pg + (kl_term * kl_coef)?)?.mean_all()
}
