//! DARE (Yu et al. 2024, "Language Models are Super Mario: Absorbing Abilities from Homologous
//! Models as a Free Lunch", §3 "Drop And REscale"): drop each entry of τ_i with probability
//! 1 − ρ_i, rescale the rest, then add (`dare_linear`) or run TIES' election (`dare_ties`).
//!
//! Masks are a pure function of (seed, tensor index, model index, flat element index): entry e of
//! tensor t for model i is kept iff `uniform(Stream::at(StreamKey::new(seed, 0, t, i, Dare), e))
//! < ρ_i`, so they do not depend on chunking or the number of workers.
//!
//! Pass structure:
//! - `rescale = inv_density | none`: one write sweep ([`dare_chunk`]).
//! - `rescale = l1`: a statistics sweep first. Each chunk reports, per model, [`L1Partial`]
//!   (Σ|τ_i| and Σ|m_i⊙τ_i| in f64, in element order); the coordinator adds the partials of a
//!   tensor **in chunk order** (so the sum, hence the output bytes, do not depend on which worker
//!   did what) and turns them into one [`Scale`] per (tensor, model) with [`Scale::l1`].

use super::ties::elect;
use super::{Chunk, Dare, Rescale};
use crate::rng::{Purpose, Stream, StreamKey};

/// m_i for the elements `start..start + out.len()` of tensor `tensor_index`, model
/// `model_index`: Bernoulli(ρ) from the counter-based stream (ρ ≥ 1 keeps all, ρ = 0 none).
/// DARE's "drop" step (Yu et al. 2024 §3: each delta entry is dropped with probability
/// p = 1 − ρ); element e keeps iff the 53-bit uniform of `Stream::at(key, e)` is below ρ.
pub fn mask(
    seed: u64,
    tensor_index: u64,
    model_index: u64,
    density: f64,
    start: u64,
    out: &mut [bool],
) {
    let key = StreamKey::new(seed, 0, tensor_index, model_index, Purpose::Dare);
    for (j, m) in out.iter_mut().enumerate() {
        let u = (Stream::at(key, start + j as u64) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        *m = u < density;
    }
}

/// How the kept entries of one (tensor, model) are rescaled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// τ/ρ (`inv_density`: Yu et al. 2024 §3, "rescale by 1/(1 − p)", as their code divides
    /// the masked delta by 1 − drop_rate).
    Divide(f32),
    /// τ·f with f = ‖τ‖₁/‖m⊙τ‖₁ (`l1`, mergekit `rescaled_masked_tensor(norm=l1)`).
    Multiply(f32),
    /// τ (`none`).
    Keep,
}

/// One chunk's share of the L1 norms of one (tensor, model), for `rescale = l1`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct L1Partial {
    /// Σ|τ_i| over the chunk (f64, element order).
    pub tau: f64,
    /// Σ|m_i⊙τ_i| over the chunk.
    pub masked: f64,
}

impl L1Partial {
    /// Adds a later chunk's partial. Combine a tensor's partials in chunk order.
    pub fn add(&mut self, other: &L1Partial) {
        self.tau += other.tau;
        self.masked += other.masked;
    }
}

impl Scale {
    /// The scale of model `i` for `inv_density` and `none` (no statistics needed); `None` for
    /// `l1`, which needs [`Scale::l1`].
    pub fn direct(p: &Dare, i: usize) -> Option<Scale> {
        match p.rescale {
            Rescale::InvDensity => Some(Scale::Divide(p.density[i] as f32)),
            Rescale::None => Some(Scale::Keep),
            Rescale::L1 => None,
        }
    }

    /// The `l1` scale of model `model` from a tensor's summed partials: ‖τ‖₁/‖m⊙τ‖₁, except
    /// that, as mergekit, when either norm is below 1e-7 the masked values are kept as they are
    /// (an all-zero task vector, or everything dropped), with a warning.
    pub fn l1(tensor: &str, model: usize, norms: &L1Partial) -> Scale {
        const EPS: f64 = 1e-7;
        if norms.tau < EPS || norms.masked < EPS {
            tracing::warn!(
                tensor,
                model,
                l1 = norms.tau,
                masked_l1 = norms.masked,
                "DARE l1: norm below 1e-7, no rescaling"
            );
            Scale::Keep
        } else {
            Scale::Multiply((norms.tau / norms.masked) as f32)
        }
    }

    #[inline]
    fn apply(self, t: f32) -> f32 {
        match self {
            Scale::Divide(rho) => t / rho,
            Scale::Multiply(f) => t * f,
            Scale::Keep => t,
        }
    }
}

/// Statistics sweep for `rescale = l1`: per model, the chunk's [`L1Partial`].
pub fn l1_partials(chunk: &Chunk, masks: &[&[bool]]) -> Vec<L1Partial> {
    (0..chunk.models.len())
        .map(|i| {
            let mut p = L1Partial::default();
            for (e, &m) in masks[i].iter().enumerate() {
                let a = chunk.tau(i, e).abs() as f64;
                p.tau += a;
                if m {
                    p.masked += a;
                }
            }
            p
        })
        .collect()
}

/// δ̃_i = scale(m_i⊙τ_i): the dropped entries are 0 (so ρ = 0 gives δ̃ = 0, never 0/0).
#[inline]
pub fn rescaled(t: f32, kept: bool, scale: Scale) -> f32 {
    if kept {
        scale.apply(t)
    } else {
        0.0
    }
}

/// The write sweep. `dare_linear`: θ = θ_base + λ·Σ_i w_i·δ̃_i. `dare_ties`: θ = θ_base +
/// λ·elect(w_i·δ̃_i) (TIES' election, normalised only if asked, as mergekit). `masks` and
/// `scales` have one entry per model. Returns the entries kept per model.
pub fn dare_chunk(
    p: &Dare,
    scales: &[Scale],
    masks: &[&[bool]],
    chunk: &Chunk,
    out: &mut [f32],
) -> Vec<u64> {
    let n = chunk.models.len();
    let mut d = vec![0.0f32; n];
    for (e, o) in out.iter_mut().enumerate() {
        for i in 0..n {
            d[i] = p.weights[i] * rescaled(chunk.tau(i, e), masks[i][e], scales[i]);
        }
        let merged = match p.ties {
            None => d.iter().sum::<f32>(),
            Some(normalize) => elect(&d, &p.weights, normalize),
        };
        *o = chunk.base[e] + p.lambda * merged;
    }
    masks
        .iter()
        .map(|m| m.iter().filter(|&&k| k).count() as u64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_do_not_depend_on_chunking() {
        let mut whole = vec![false; 1000];
        mask(7, 3, 1, 0.3, 0, &mut whole);
        let mut parts = vec![false; 1000];
        for s in (0..1000).step_by(77) {
            let end = (s + 77).min(1000);
            mask(7, 3, 1, 0.3, s as u64, &mut parts[s..end]);
        }
        assert_eq!(whole, parts);
        let mut other = vec![false; 1000];
        mask(7, 3, 2, 0.3, 0, &mut other);
        assert_ne!(whole, other, "models get different masks");
        let mut all = vec![false; 10];
        mask(7, 3, 1, 1.0, 0, &mut all);
        assert!(all.iter().all(|&k| k));
        mask(7, 3, 1, 0.0, 0, &mut all);
        assert!(all.iter().all(|&k| !k));
    }

    /// Kept fraction within 3σ of ρ, and the mean of the rescaled delta equals the delta within
    /// 3σ (inv_density is unbiased: E[m·τ/ρ] = τ).
    #[test]
    fn kept_fraction_and_unbiased_mean() {
        let n = 200_000usize;
        for (i, rho) in [0.1f64, 0.5, 0.9].into_iter().enumerate() {
            let mut m = vec![false; n];
            mask(11, 0, i as u64, rho, 0, &mut m);
            let kept = m.iter().filter(|&&k| k).count() as f64;
            let sd = (n as f64 * rho * (1.0 - rho)).sqrt();
            assert!(
                (kept - n as f64 * rho).abs() < 3.0 * sd,
                "rho {rho}: kept {kept}"
            );
            let tau = 0.25f32;
            let mean: f64 = m
                .iter()
                .map(|&k| rescaled(tau, k, Scale::Divide(rho as f32)) as f64)
                .sum::<f64>()
                / n as f64;
            // sd of one draw: τ·sqrt((1 − ρ)/ρ); of the mean: that / sqrt(n).
            let sd_mean = tau as f64 * ((1.0 - rho) / rho).sqrt() / (n as f64).sqrt();
            assert!(
                (mean - tau as f64).abs() < 3.0 * sd_mean,
                "rho {rho}: mean {mean}"
            );
        }
    }

    #[test]
    fn l1_scale_and_guards() {
        assert_eq!(
            Scale::l1(
                "t",
                0,
                &L1Partial {
                    tau: 6.0,
                    masked: 2.0
                }
            ),
            Scale::Multiply(3.0)
        );
        assert_eq!(
            Scale::l1(
                "t",
                0,
                &L1Partial {
                    tau: 0.0,
                    masked: 0.0
                }
            ),
            Scale::Keep
        );
        assert_eq!(
            Scale::l1(
                "t",
                0,
                &L1Partial {
                    tau: 1.0,
                    masked: 0.0
                }
            ),
            Scale::Keep
        );
        assert_eq!(rescaled(2.0, false, Scale::Divide(0.0)), 0.0);
        assert_eq!(rescaled(2.0, true, Scale::Divide(0.5)), 4.0);
    }
}
