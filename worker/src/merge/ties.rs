//! TIES-merging (Yadav et al. 2023, "TIES-Merging: Resolving Interference When Merging Models",
//! §3), as mergekit's `ties` computes it (`sparsify.magnitude` + `get_mask(method="sum")` in
//! `generalized_task_arithmetic.py`), with ties at the threshold broken toward the lower flat
//! index (mergekit's unstable argsort leaves that order unspecified).
//!
//! Pass structure, per unit (a tensor by default, the whole model with `Scope::Global`) and task:
//! 1. rounds `High`, `Low` of a [`radix::Selection`](super::radix::Selection) of |τ_i| at rank
//!    `d − k_i` → [`TopK`] (threshold v, how many elements equal to v are kept);
//! 2. only if [`TopK::needs_census`]: a census round, each chunk reports [`count_equal`]; the
//!    coordinator turns the counts, in flat order, into each chunk's `equal_before`;
//! 3. the write sweep, [`ties_chunk`].
//!
//! A unit that fits one chunk skips the rounds: [`ties_local`] does all of it in memory.

use super::radix::{select_in_memory, NanAt, OrderStat};
use super::{Chunk, MergeError, Result, Ties};

/// k_i = int(density_i · d) (f64, truncated): the number of entries of task i kept in a unit of
/// `d` elements (Yadav et al. 2023 §3, "Trim"; mergekit `sparsify.magnitude`). `None` when
/// density ≥ 1 (keep all, as mergekit); k = 0 is an error (docs/algorithms.md §5, "TIES";
/// mergekit 0.1.5 keeps max(1, k) instead).
pub fn keep_count(unit: &str, model: usize, density: f64, d: u64) -> Result<Option<u64>> {
    if density >= 1.0 {
        return Ok(None);
    }
    let k = super::trunc_index(density * d as f64) as u64;
    if k == 0 {
        return Err(MergeError::Tensor {
            tensor: unit.to_string(),
            reason: format!(
                "TIES keeps int({density}·{d}) = 0 entries of model {model}; raise its density"
            ),
        });
    }
    Ok(Some(k.min(d)))
}

/// The ascending 0-based rank of the k-th largest of d values: d − k.
pub fn threshold_rank(d: u64, k: u64) -> u64 {
    d - k
}

/// Which entries of one task a unit keeps: every |τ| > `threshold`, and of the `equal` entries
/// with |τ| = `threshold` the first `keep_equal` in flat order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopK {
    pub threshold: f32,
    pub keep_equal: u64,
    pub equal: u64,
}

impl TopK {
    /// From the order statistic of |τ| at [`threshold_rank`]`(d, k)`: `d − below − equal`
    /// entries are above the threshold, all kept; `k` minus those are kept among the equal ones.
    pub fn new(d: u64, k: u64, stat: &OrderStat) -> TopK {
        let greater = d - stat.below - stat.equal;
        TopK {
            threshold: stat.value,
            keep_equal: k - greater,
            equal: stat.equal,
        }
    }

    /// Whether some entries equal to the threshold are dropped, so that each chunk must know how
    /// many equal entries precede it (a census round). Otherwise `equal_before` may be 0.
    pub fn needs_census(&self) -> bool {
        self.keep_equal < self.equal
    }
}

/// What a chunk needs for one task: the unit's [`TopK`] (`None` keeps all) and how many entries
/// with |τ| equal to the threshold precede the chunk in the unit's flat order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Keep {
    pub topk: Option<TopK>,
    pub equal_before: u64,
}

/// Census round: how many entries of task `i` in this chunk have |τ_i| = `threshold`.
pub fn count_equal(chunk: &Chunk, i: usize, threshold: f32) -> u64 {
    (0..chunk.len())
        .filter(|&e| chunk.tau(i, e).abs() == threshold)
        .count() as u64
}

/// τ̂_i: τ_i where kept, 0 elsewhere; returns how many entries were kept.
pub fn sparsify(keep: &Keep, chunk: &Chunk, i: usize, out: &mut [f32]) -> u64 {
    let mut kept = 0;
    let mut equal_seen = keep.equal_before;
    for (e, o) in out.iter_mut().enumerate() {
        let t = chunk.tau(i, e);
        let take = match &keep.topk {
            None => true,
            Some(k) => {
                let a = t.abs();
                if a > k.threshold {
                    true
                } else if a == k.threshold {
                    equal_seen += 1;
                    equal_seen <= k.keep_equal
                } else {
                    false
                }
            }
        };
        *o = if take { t } else { 0.0 };
        kept += take as u64;
    }
    kept
}

/// TIES' election and disjoint mean for one element (Yadav et al. 2023 §3, steps "Elect" and
/// "Disjoint Merge"; mergekit `get_mask(method="sum")` and `GTATask.execute`): with
/// D_i = w_i·τ̂_i, s = +1 if Σ_i D_i ≥ 0 else −1; the agreeing tasks are those with
/// sign(D_i) = s (zeros never agree); returns Σ_agree D_i, divided by Σ_agree w_i (1 where that
/// is 0) when `normalize`.
#[inline]
pub fn elect(d: &[f32], weights: &[f32], normalize: bool) -> f32 {
    let sum: f32 = d.iter().sum();
    let s = if sum >= 0.0 { 1.0 } else { -1.0 };
    let (mut mixed, mut divisor) = (0.0f32, 0.0f32);
    for (&di, &w) in d.iter().zip(weights) {
        if super::sign(di) == s {
            mixed += di;
            divisor += w;
        }
    }
    if !normalize {
        return mixed;
    }
    if divisor == 0.0 {
        divisor = 1.0;
    }
    mixed / divisor
}

/// The write sweep: θ = θ_base + λ·elect(w_i·τ̂_i) for every element of the chunk. `keep` has
/// one entry per model. Returns the entries kept per model.
pub fn ties_chunk(p: &Ties, keep: &[Keep], chunk: &Chunk, out: &mut [f32]) -> Vec<u64> {
    let n = chunk.models.len();
    let mut sparse = vec![vec![0.0f32; chunk.len()]; n];
    let kept = (0..n)
        .map(|i| sparsify(&keep[i], chunk, i, &mut sparse[i]))
        .collect();
    let mut d = vec![0.0f32; n];
    for (e, o) in out.iter_mut().enumerate() {
        for i in 0..n {
            d[i] = p.weights[i] * sparse[i][e];
        }
        *o = chunk.base[e] + p.lambda * elect(&d, &p.weights, p.normalize);
    }
    kept
}

/// A whole unit held as one chunk (a tensor no larger than the chunk size, per-tensor scope):
/// the order statistics in memory, then [`ties_chunk`]. Same result as the rounds.
pub fn ties_local(p: &Ties, chunk: &Chunk, out: &mut [f32]) -> Result<Vec<u64>> {
    chunk.check()?;
    let d = chunk.len() as u64;
    if d == 0 {
        return Ok(vec![0; chunk.models.len()]);
    }
    let mut keep = Vec::with_capacity(chunk.models.len());
    let mut abs = vec![0.0f32; chunk.len()];
    for (i, &density) in p.density.iter().enumerate() {
        let topk = match keep_count(chunk.tensor, i, density, d)? {
            None => None,
            Some(k) => {
                for (e, a) in abs.iter_mut().enumerate() {
                    *a = chunk.tau(i, e).abs();
                }
                let (stats, _) = select_in_memory(&abs, &[threshold_rank(d, k)])
                    .map_err(|NanAt(_)| nan_tau(chunk.tensor, i))?;
                Some(TopK::new(d, k, &stats[0]))
            }
        };
        keep.push(Keep {
            topk,
            equal_before: 0,
        });
    }
    Ok(ties_chunk(p, &keep, chunk, out))
}

/// The error for a NaN task vector (unreachable from finite-checked inputs, whose differences
/// are at worst infinite).
pub(crate) fn nan_tau(tensor: &str, i: usize) -> MergeError {
    MergeError::Nan {
        tensor: tensor.to_string(),
        input: super::Input::Other(format!("the task vector of model {i}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::Scope;

    #[test]
    fn election_by_hand() {
        // D = (2, −1, 0): sum 1 ≥ 0 → s = +1; only task 0 agrees.
        assert_eq!(elect(&[2.0, -1.0, 0.0], &[1.0, 1.0, 1.0], false), 2.0);
        assert_eq!(elect(&[2.0, -1.0, 0.0], &[0.5, 1.0, 1.0], true), 4.0);
        // D = (−2, 1, 0.5): sum −0.5 → s = −1.
        assert_eq!(elect(&[-2.0, 1.0, 0.5], &[2.0, 1.0, 1.0], true), -1.0);
        // all zero: sum 0 → s = +1, nobody agrees, divisor 0 → 1.
        assert_eq!(elect(&[0.0, 0.0], &[1.0, 1.0], true), 0.0);
    }

    #[test]
    fn ties_at_threshold_go_to_the_lower_flat_index() {
        // |τ| = 1, 3, 3, 2, 3. k = int(0.6·5) = 3: threshold 3, none greater, 3 equal, all kept.
        // k = int(0.4·5) = 2: two of the three 3s, those at flat indices 1 and 2.
        let base = [0.0f32; 5];
        let m = [1.0f32, -3.0, 3.0, 2.0, 3.0];
        let models: [&[f32]; 1] = [&m];
        let chunk = Chunk::whole(&base, &models);
        let p = |density| Ties {
            scope: Scope::PerTensor,
            density: vec![density],
            weights: vec![1.0],
            normalize: true,
            lambda: 1.0,
        };
        let mut out = [0.0; 5];
        assert_eq!(ties_local(&p(0.6), &chunk, &mut out).unwrap(), vec![3]);
        assert_eq!(out, [0.0, -3.0, 3.0, 0.0, 3.0]);
        assert_eq!(ties_local(&p(0.4), &chunk, &mut out).unwrap(), vec![2]);
        assert_eq!(out, [0.0, -3.0, 3.0, 0.0, 0.0]);
        assert!(ties_local(&p(0.1), &chunk, &mut out)
            .unwrap_err()
            .to_string()
            .contains("model 0"));
        assert_eq!(ties_local(&p(1.0), &chunk, &mut out).unwrap(), vec![5]);
    }
}
