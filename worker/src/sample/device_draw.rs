//! The draw of a whole batch with its logits left on the model's device (a GPU): the
//! few-passes draw of [`super::draw`] — the same distribution, the same uniform per row, the
//! same inverse CDF over blocks of [`WALK_BLOCK`] tokens — with the vocabulary-wide passes run
//! as tensor ops where the logits are. Per step and batch, two small copies reach the host, not
//! the logits: each row's block sums and log-sum-exps, then the one block of weights (and of
//! logits) that holds the row's token. At SmolLM2's vocabulary that is 96 + 2 and 3 · 512
//! floats per row instead of 49 152 (docs/architecture.md#sampling-on-the-device).
//!
//! It serves what the few-passes form serves (vocabularies of at least [`MIN_VOCAB`] tokens, a
//! temperature, no top-k or top-p); the decode loop keeps the host draw for the rest and for
//! CPU models, where the logits are already in host memory. `MIRRORPLAY_DEVICE_DRAW=1` runs it
//! on the CPU as well (tests, comparisons), `0` keeps the host draw on a GPU.
//!
//! Its sums are f32 on the device (the host draw's are f64), so its log-probs differ from the
//! host draw's in the last bits and a token could differ where a uniform falls within rounding
//! of a cumulative-probability boundary; the tests bound both. It is deterministic for a given
//! binary and device, as the device's reductions are.

use candle_core::{DType, Device, Tensor, D};

use super::draw::{Drawn, MIN_VOCAB, WALK_BLOCK};
use super::filter::SamplingParams;
use super::rules::Masks;
use crate::model::{ModelError, Result};

/// The environment variable that chooses where a batch is drawn: `1` on the logits' device
/// even for a CPU model, `0` on the host even for a GPU model; unset, on the device for
/// models off the CPU.
pub const DEVICE_DRAW_VAR: &str = "MIRRORPLAY_DEVICE_DRAW";

/// Whether the batch of a model on `device` is drawn there ([`DEVICE_DRAW_VAR`]).
pub fn draws_on_device(device: &Device) -> bool {
    static CHOICE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    let forced = *CHOICE.get_or_init(|| match std::env::var(DEVICE_DRAW_VAR).as_deref() {
        Ok("1") => Some(true),
        Ok("0") => Some(false),
        _ => None,
    });
    forced.unwrap_or(!device.is_cpu())
}

/// The additive masks of one generation on the device, and the vocabulary's padding to whole
/// blocks.
pub struct DeviceDraw {
    /// [4, blocks · WALK_BLOCK]: 0 where allowed, −∞ where forbidden and on the padding, one row
    /// per [`super::rules::Slot`] (its first `vocab` columns are the rules' masks).
    padded_masks: Tensor,
    vocab: usize,
    blocks: usize,
    temperature: f64,
}

/// A batch's tensors for the draw: the policy's logits [b, vocab] and, for a run with a
/// reference, its logits and each row's β (0: the policy's draw; ≥ 1: the reference's).
pub struct DeviceBatch<'a> {
    pub logits: &'a Tensor,
    pub reference: Option<(&'a Tensor, &'a [f64])>,
}

impl DeviceDraw {
    /// The draw for a generation under `masks` with `params` on `device`, or `None` when the
    /// few-passes form does not serve these settings (small vocabulary, temperature 0, top-k,
    /// top-p): then draw on the host.
    pub fn new(masks: &Masks, params: &SamplingParams, device: &Device) -> Result<Option<Self>> {
        let table = masks.additive_table();
        let vocab = table.len() / 4;
        let filtered = params.temperature <= 0.0
            || (params.top_k > 0 && params.top_k < vocab)
            || params.top_p < 1.0;
        if vocab < MIN_VOCAB || filtered {
            return Ok(None);
        }
        let blocks = vocab.div_ceil(WALK_BLOCK);
        let width = blocks * WALK_BLOCK;
        let padded: Vec<f32> = table
            .chunks(vocab)
            .flat_map(|row| {
                row.iter()
                    .copied()
                    .chain(std::iter::repeat_n(f32::NEG_INFINITY, width - vocab))
            })
            .collect();
        Ok(Some(Self {
            padded_masks: Tensor::from_vec(padded, (4, width), device)?,
            vocab,
            blocks,
            temperature: params.temperature,
        }))
    }

    /// Draws every row of `batch` at completion position `t` with its uniform `us[r]`: the
    /// token and its constrained log-probs, as [`super::draw::draw_row`] defines them.
    pub fn draw(
        &self,
        batch: DeviceBatch,
        masks: &Masks,
        t: usize,
        us: &[f64],
    ) -> Result<Vec<Drawn>> {
        let (b, vocab) = batch.logits.dims2()?;
        if vocab != self.vocab || us.len() != b {
            return Err(ModelError::Input(format!(
                "internal: device draw of {b} rows × {vocab} logits with {} uniforms, set up for a vocabulary of {}",
                us.len(),
                self.vocab
            )));
        }
        if b == 0 {
            return Ok(Vec::new());
        }
        let slot = masks.rules().slot(t) as usize;
        let padded_mask = self.padded_masks.narrow(0, slot, 1)?; // [1, blocks · WALK_BLOCK]
        let mask = padded_mask.narrow(1, 0, vocab)?; // [1, vocab]
        let x = batch.logits.to_dtype(DType::F32)?;
        let reference = match batch.reference {
            Some((r, betas)) if betas.len() == b => Some((r.to_dtype(DType::F32)?, betas)),
            Some((_, betas)) => {
                return Err(ModelError::Input(format!(
                    "internal: {} mixture coefficients for {b} rows",
                    betas.len()
                )))
            }
            None => None,
        };
        // Log-sum-exps over the allowed tokens: the recorded log-probs' normalisers.
        let allowed_p = logsumexp(&x.broadcast_add(&mask)?)?;
        let allowed_r = match &reference {
            Some((r, _)) => Some(logsumexp(&r.broadcast_add(&mask)?)?),
            None => None,
        };
        let s = match &reference {
            Some((r, betas)) => sampling_logits(&x, r, betas)?,
            None => x.clone(),
        };
        // The draw's weights exp((s − max)/T), 0 where forbidden and on the padding.
        let pad = self.blocks * WALK_BLOCK - vocab;
        let padded = |t: &Tensor| -> Result<Tensor> {
            Ok(if pad == 0 {
                t.clone()
            } else {
                t.pad_with_zeros(1, 0, pad)?
            })
        };
        let s = padded(&s)?.broadcast_add(&padded_mask)?;
        let max = s.max_keepdim(D::Minus1)?;
        let weights = (s.broadcast_sub(&max)? / self.temperature)?.exp()?;
        let block_sums = weights
            .reshape((b, self.blocks, WALK_BLOCK))?
            .sum(D::Minus1)?;
        // First copy: block sums and normalisers.
        let mut head = vec![block_sums, allowed_p];
        head.extend(allowed_r);
        let head = Tensor::cat(&head, 1)?.to_vec2::<f32>()?;
        let located: Vec<Located> = head
            .iter()
            .zip(us)
            .enumerate()
            .map(|(r, (row, &u))| locate_block(&row[..self.blocks], u, r))
            .collect::<Result<_>>()?;
        // Second copy: each row's block of weights, policy logits and reference logits.
        let ids: Vec<u32> = located
            .iter()
            .enumerate()
            .map(|(r, l)| (r * self.blocks + l.block) as u32)
            .collect();
        let ids = Tensor::from_vec(ids, b, x.device())?;
        let block_of = |t: &Tensor| -> Result<Tensor> {
            Ok(t.reshape((b * self.blocks, WALK_BLOCK))?
                .index_select(&ids, 0)?)
        };
        let mut parts = vec![block_of(&weights)?, block_of(&padded(&x)?)?];
        if let Some((r, _)) = &reference {
            parts.push(block_of(&padded(r)?)?);
        }
        let tail = Tensor::cat(&parts, 1)?.to_vec2::<f32>()?;
        let drawn = located
            .iter()
            .zip(head.iter().zip(&tail))
            .map(|(l, (head, tail))| {
                let offset = walk_block(&tail[..WALK_BLOCK], l);
                let token = l.block * WALK_BLOCK + offset;
                let lp = |logits: &[f32], lse: f32| (logits[offset] as f64 - lse as f64) as f32;
                Drawn {
                    token: token as u32,
                    logprob: lp(&tail[WALK_BLOCK..2 * WALK_BLOCK], head[self.blocks]),
                    ref_logprob: reference
                        .as_ref()
                        .map(|_| lp(&tail[2 * WALK_BLOCK..], head[self.blocks + 1])),
                }
            })
            .collect();
        Ok(drawn)
    }
}

/// logsumexp over the last dimension, kept: [b, n] → [b, 1].
fn logsumexp(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    Ok((x
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + max)?)
}

/// Each row's sampling logits, as the host draw forms them: the policy's logits for β = 0, the
/// reference's for β ≥ 1, and the geometric mixture (1 − β)·log π + β·log μ of the two
/// log-softmaxes between (docs/algorithms.md §1), as a·x + c·r + d per row.
fn sampling_logits(x: &Tensor, r: &Tensor, betas: &[f64]) -> Result<Tensor> {
    let b = betas.len();
    let (mut a, mut c, mut dp, mut dr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &beta in betas {
        let (ai, ci, mixed) = if beta <= 0.0 {
            (1.0, 0.0, false)
        } else if beta >= 1.0 {
            (0.0, 1.0, false)
        } else {
            (1.0 - beta, beta, true)
        };
        a.push(ai as f32);
        c.push(ci as f32);
        dp.push(if mixed { -(1.0 - beta) as f32 } else { 0.0 });
        dr.push(if mixed { -beta as f32 } else { 0.0 });
    }
    let dev = x.device();
    let column = |v: Vec<f32>| Tensor::from_vec(v, (b, 1), dev);
    let s = x
        .broadcast_mul(&column(a)?)?
        .add(&r.broadcast_mul(&column(c)?)?)?;
    if dp.iter().chain(&dr).all(|&d| d == 0.0) {
        // No mixed row (each row the policy's or the reference's logits as they are): the
        // normalisers' two vocabulary passes are not needed.
        return Ok(s);
    }
    let shift = (logsumexp(x)?.mul(&column(dp)?)? + logsumexp(r)?.mul(&column(dr)?)?)?;
    Ok(s.broadcast_add(&shift)?)
}

/// Where a row's token lies: its block, the cumulative weight before it and the target
/// u · Σ weights; `last` when the target is at or past the total by rounding (then the block
/// is the last one with weight, and the token its last token with weight).
#[derive(Debug, Clone, Copy)]
struct Located {
    block: usize,
    before: f64,
    target: f64,
    last: bool,
}

/// The block whose cumulative weight first exceeds u · Σ (f64 over the f32 block sums, in
/// order). Errors when no token has weight (every allowed token's logit is −∞ or NaN).
fn locate_block(sums: &[f32], u: f64, row: usize) -> Result<Located> {
    let total: f64 = sums.iter().map(|&s| s as f64).sum();
    if !(total > 0.0 && total.is_finite()) {
        return Err(ModelError::Input(format!(
            "row {row}: no allowed token has a finite logit (Σ weights = {total})"
        )));
    }
    let target = u * total;
    let mut before = 0.0;
    for (block, &s) in sums.iter().enumerate() {
        let s = s as f64;
        if s > 0.0 && target < before + s {
            return Ok(Located {
                block,
                before,
                target,
                last: false,
            });
        }
        before += s;
    }
    let block = sums.iter().rposition(|&s| s > 0.0).unwrap_or(0);
    Ok(Located {
        block,
        before,
        target,
        last: true,
    })
}

/// The token's offset in its block: the first whose cumulative weight exceeds the target, or
/// the block's last token with weight when the walk ends below it by rounding.
fn walk_block(weights: &[f32], at: &Located) -> usize {
    let last_with_weight = || weights.iter().rposition(|&w| w > 0.0).unwrap_or(0);
    if at.last {
        return last_with_weight();
    }
    let mut cum = at.before;
    for (v, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            cum += w as f64;
            if at.target < cum {
                return v;
            }
        }
    }
    last_with_weight()
}

#[cfg(test)]
#[path = "device_draw_tests.rs"]
mod tests;
