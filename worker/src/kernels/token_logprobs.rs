//! Log-probabilities of target tokens under masked logits, and their gradient: for each row n
//! of logits x [n, vocab], with the additive rule mask m (0 or −∞, one row of a small table per
//! position slot) and target token y_n,
//!
//!   out_n = x_{n,y} + m_{y} − lse_n,   lse_n = log Σ_j exp(x_{n,j} + m_j),
//!   ∂out_n/∂x_{n,j} = δ_{j,y} − exp(x_{n,j} + m_j − lse_n)
//!
//! — what the scoring pass of training takes as `gather(log_softmax(x + mask), y)`
//! (docs/algorithms.md §0), in one pass over each row forward and two backward, instead of
//! the mask tensor [n, vocab], the five full-size tensors of the composed log-softmax and their
//! gradients (SmolLM2's 49 152-token vocabulary: 50 MB each for 256 completion tokens).
//!
//! The exponentials are `kernels::exp`'s (vectorised, within 2 ulp) and each row's sum is f64
//! in `exp::sum_f64`'s fixed order: libm's scalar `expf` over the vocabulary, once forward and
//! twice backward, had been ≈ 4 % of the training pass's samples.
//!
//! Deterministic: each row is computed by one thread in a fixed order, whatever the split.

use std::cell::RefCell;

use rayon::prelude::*;

use super::exp;

/// Bad arguments.
#[derive(Debug, thiserror::Error)]
pub enum TokenLogprobsError {
    #[error("token log-probs: {what} has {found} elements, expected {expected}")]
    Length {
        what: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("token log-probs: row {row} has target {target} outside the vocabulary of {vocab}")]
    Target {
        row: usize,
        target: u32,
        vocab: usize,
    },
    #[error("token log-probs: row {row} uses mask slot {slot}, the table has {slots}")]
    Slot { row: usize, slot: u32, slots: usize },
}

/// The rows of one call: logits [n, vocab] row-major, per row a target and a mask slot into
/// `table` ([slots, vocab]; `None`: no mask).
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    pub logits: &'a [f32],
    pub vocab: usize,
    pub targets: &'a [u32],
    pub table: Option<&'a [f32]>,
    pub slots: &'a [u32],
}

impl Rows<'_> {
    fn n(&self) -> usize {
        self.targets.len()
    }

    fn check(&self) -> Result<(), TokenLogprobsError> {
        let (n, v) = (self.n(), self.vocab);
        let len = |what, found: usize, expected: usize| {
            if found == expected {
                Ok(())
            } else {
                Err(TokenLogprobsError::Length {
                    what,
                    found,
                    expected,
                })
            }
        };
        len("logits", self.logits.len(), n * v)?;
        if let Some(table) = self.table {
            len("slots", self.slots.len(), n)?;
            let slots = table.len().checked_div(v).unwrap_or(0);
            len("mask table", table.len(), slots * v)?;
            if let Some((row, &slot)) = self
                .slots
                .iter()
                .enumerate()
                .find(|(_, &s)| s as usize >= slots)
            {
                return Err(TokenLogprobsError::Slot { row, slot, slots });
            }
        }
        if let Some((row, &target)) = self
            .targets
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= v)
        {
            return Err(TokenLogprobsError::Target {
                row,
                target,
                vocab: v,
            });
        }
        Ok(())
    }

    /// Row n's logits and mask row (zeros when there is no table).
    fn row(&self, n: usize) -> (&[f32], Option<&[f32]>) {
        let v = self.vocab;
        let mask = self
            .table
            .map(|t| &t[self.slots[n] as usize * v..(self.slots[n] as usize + 1) * v]);
        (&self.logits[n * v..(n + 1) * v], mask)
    }

    /// (x + m at the target, lse) of row n.
    fn target_and_lse(&self, n: usize) -> (f32, f32) {
        let (x, m) = self.row(n);
        let target = x[self.targets[n] as usize] + m.map_or(0.0, |m| m[self.targets[n] as usize]);
        let lse = TERMS.with_borrow_mut(|terms| {
            terms.resize(x.len(), 0.0);
            let (max, sum) = shifted_exps(x, m, terms);
            match max {
                f32::NEG_INFINITY => f32::NEG_INFINITY,
                max => (max as f64 + sum.ln()) as f32,
            }
        });
        (target, lse)
    }
}

thread_local! {
    /// A row's exp terms in the forward pass, reused across rows and calls.
    static TERMS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Writes exp(x_j + m_j − max) into `out` (`kernels::exp`, vectorised) and returns (max, their
/// sum in f64 in `exp::sum_f64`'s fixed order); max = −∞ (and `out` zeros) when every token is
/// masked.
fn shifted_exps(x: &[f32], m: Option<&[f32]>, out: &mut [f32]) -> (f32, f64) {
    match m {
        Some(m) => out
            .iter_mut()
            .zip(x.iter().zip(m))
            .for_each(|(o, (x, m))| *o = x + m),
        None => out.copy_from_slice(x),
    }
    let max = super::reduce::max(out);
    if max == f32::NEG_INFINITY {
        out.fill(0.0);
        return (max, 0.0);
    }
    out.iter_mut().for_each(|o| *o -= max);
    exp::exp_in_place(out);
    (max, exp::sum_f64(out))
}

/// out[n] = log-probability of row n's target (see the module doc).
pub fn forward(rows: Rows, out: &mut [f32]) -> Result<(), TokenLogprobsError> {
    rows.check()?;
    if out.len() != rows.n() {
        return Err(TokenLogprobsError::Length {
            what: "out",
            found: out.len(),
            expected: rows.n(),
        });
    }
    out.par_iter_mut().enumerate().for_each(|(n, o)| {
        let (target, lse) = rows.target_and_lse(n);
        *o = target - lse;
    });
    Ok(())
}

/// grad_x[n][j] = grad[n] · (δ_{j,y_n} − softmax(x_n + m)_j): the gradient of Σ_n grad[n]·out[n].
pub fn backward(rows: Rows, grad: &[f32], grad_x: &mut [f32]) -> Result<(), TokenLogprobsError> {
    rows.check()?;
    let (n, v) = (rows.n(), rows.vocab);
    for (what, found, expected) in [("grad", grad.len(), n), ("grad_x", grad_x.len(), n * v)] {
        if found != expected {
            return Err(TokenLogprobsError::Length {
                what,
                found,
                expected,
            });
        }
    }
    if v == 0 {
        return Ok(());
    }
    grad_x.par_chunks_mut(v).enumerate().for_each(|(r, gx)| {
        let g = grad[r];
        let (x, m) = rows.row(r);
        // softmax_j = exp(x_j + m_j − max) / Σ: the terms in place, then one scale.
        let (max, sum) = shifted_exps(x, m, gx);
        if max != f32::NEG_INFINITY {
            let scale = (-(g as f64) / sum) as f32;
            gx.iter_mut().for_each(|o| *o *= scale);
        }
        gx[rows.targets[r] as usize] += g;
    });
    Ok(())
}
