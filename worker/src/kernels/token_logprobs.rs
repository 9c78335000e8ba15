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
//! Deterministic: each row is computed by one thread in index order, whatever the split.

use rayon::prelude::*;

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
        let masked = |j: usize| x[j] + m.map_or(0.0, |m| m[j]);
        let mut max = f32::NEG_INFINITY;
        for j in 0..x.len() {
            max = max.max(masked(j));
        }
        let target = masked(self.targets[n] as usize);
        if max == f32::NEG_INFINITY {
            return (target, f32::NEG_INFINITY);
        }
        let mut sum = 0f32;
        for j in 0..x.len() {
            sum += (masked(j) - max).exp();
        }
        (target, max + sum.ln())
    }
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
        let (_, lse) = rows.target_and_lse(r);
        let (x, m) = rows.row(r);
        if lse == f32::NEG_INFINITY {
            gx.fill(0.0);
        } else {
            for (j, o) in gx.iter_mut().enumerate() {
                let p = (x[j] + m.map_or(0.0, |m| m[j]) - lse).exp();
                *o = -g * p;
            }
        }
        gx[rows.targets[r] as usize] += g;
    });
    Ok(())
}
