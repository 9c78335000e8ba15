//! The scoring pass: per-token log-probs log π(y_t | x, y_<t) of given completions under a model
//! (docs/algorithms.md §0), batched: prompts left-padded, completions right-padded, one forward
//! pass. With a trainable model the result stays connected to the graph, so a loss built on it
//! backpropagates into the model's `Var`s. Must not sample.
//!
//! Two distributions, both at T = 1 without top-k/top-p:
//! - [`score_completions`]: the model's unconstrained next-token distribution π (SFT on data,
//!   model numerics);
//! - [`score_constrained`]: π_A, the same renormalised over the tokens a [`TokenRules`] allows
//!   at each position (`rules` module doc), i.e. the distribution [`super::generate()`] samples
//!   from under those rules; completions outside the rules' support are an error.

use candle_core::Tensor;

use super::generate::left_pad;
use super::rules::{Masks, Slot, TokenRules};
use crate::kernels::token_logprobs_op;
use crate::model::{gather_last, log_softmax, KvCache, Model, ModelError, Result};

/// Per-token log-probs of a batch of completions.
#[derive(Debug, Clone)]
pub struct Scored {
    /// [b, L] in the model's dtype; 0 at padding (L = longest completion).
    pub logprobs: Tensor,
    /// [b, L], 1 for completion tokens and 0 for padding (same dtype).
    pub mask: Tensor,
}

impl Scored {
    /// Σ_t log π(y_t|…) per row: log π(y|x), [b].
    pub fn sequence_logprobs(&self) -> Result<Tensor> {
        Ok(self.logprobs.sum(1)?)
    }
}

/// Log-probs of `completions[r]` after `prompts[r]` under `model` (prompts must be non-empty),
/// unconstrained: log π(y_t | x, y_<t).
pub fn score_completions(
    model: &Model,
    prompts: &[Vec<u32>],
    completions: &[Vec<u32>],
) -> Result<Scored> {
    score(model, prompts, completions, None)
}

/// Log-probs of `completions[r]` after `prompts[r]` under `model` constrained by `rules`:
/// log π_A(y_t | x, y_<t) = logit(y_t) − logsumexp of the logits over the allowed set A_t
/// (0 for a forced token). Each completion must lie in the rules' support
/// ([`Masks::check`]), as every completion [`super::generate()`] draws under them does.
pub fn score_constrained(
    model: &Model,
    prompts: &[Vec<u32>],
    completions: &[Vec<u32>],
    rules: &TokenRules,
) -> Result<Scored> {
    let masks = rules.masks(model.config().vocab_size)?;
    for (row, c) in completions.iter().enumerate() {
        masks.check(row, c)?;
    }
    score(model, prompts, completions, Some(&masks))
}

/// Each position's mask slot, row-major over [b, l]: a completion position gets its rule
/// slot, padding the unconstrained one.
fn mask_slots(masks: &Masks, lengths: &[usize], l: usize) -> Vec<u32> {
    lengths
        .iter()
        .flat_map(|&len| {
            (0..l).map(move |t| match t < len {
                true => masks.rules().slot(t) as u32,
                false => Slot::Free as u32,
            })
        })
        .collect()
}

/// The additive logit masks [b, l, vocab] of a scored batch: each position gets its slot's row
/// of [`Masks::additive_table`].
fn additive_masks(masks: &Masks, lengths: &[usize], l: usize, model: &Model) -> Result<Tensor> {
    let vocab = model.config().vocab_size;
    let dev = model.device();
    let table = Tensor::from_vec(masks.additive_table(), (4, vocab), dev)?;
    let idx = Tensor::from_vec(mask_slots(masks, lengths, l), lengths.len() * l, dev)?;
    Ok(table
        .index_select(&idx, 0)?
        .reshape((lengths.len(), l, vocab))?
        .to_dtype(model.logits_dtype())?)
}

fn score(
    model: &Model,
    prompts: &[Vec<u32>],
    completions: &[Vec<u32>],
    masks: Option<&Masks>,
) -> Result<Scored> {
    let b = prompts.len();
    if completions.len() != b || b == 0 {
        return Err(ModelError::Input(format!(
            "{b} prompts and {} completions (need as many, at least one)",
            completions.len()
        )));
    }
    if let Some(r) = prompts.iter().position(Vec::is_empty) {
        return Err(ModelError::Input(format!("prompt {r} is empty")));
    }
    let (dev, dtype) = (model.device().clone(), model.logits_dtype());
    let l = completions.iter().map(Vec::len).max().unwrap_or(0);
    let mask_rows: Vec<Vec<bool>> = completions
        .iter()
        .map(|c| (0..l).map(|i| i < c.len()).collect())
        .collect();
    let mask_values: Vec<f32> = mask_rows
        .iter()
        .flatten()
        .map(|&v| v as u8 as f32)
        .collect();
    let mask = Tensor::from_vec(mask_values, (b, l), &dev)?.to_dtype(dtype)?;
    if l == 0 {
        return Ok(Scored {
            logprobs: mask.clone(),
            mask,
        });
    }
    let (mut ids, mut valid) = left_pad(prompts);
    let p = ids[0].len();
    let targets: Vec<Vec<u32>> = completions
        .iter()
        .map(|c| (0..l).map(|i| c.get(i).copied().unwrap_or(0)).collect())
        .collect();
    for r in 0..b {
        ids[r].extend_from_slice(&targets[r][..l - 1]);
        valid[r].extend_from_slice(&mask_rows[r][..l - 1]);
    }
    let hidden = model.forward_hidden(&ids, &valid, &mut KvCache::new())?;
    // Position p−1+i predicts completion token i.
    let mut logits = model.lm_logits(&hidden.narrow(1, p - 1, l)?)?;
    let lengths: Vec<usize> = completions.iter().map(Vec::len).collect();
    // One pass per row forward and two backward where the kernel takes the logits
    // (`kernels::token_logprobs`); else the composed mask, log-softmax and gather.
    let fused_mask = masks.map(|m| (m.additive_table(), mask_slots(m, &lengths, l)));
    let logp = match token_logprobs_op::try_token_logprobs(&logits, &targets, fused_mask)? {
        Some(logp) => logp,
        None => {
            if let Some(masks) = masks {
                logits = (logits + additive_masks(masks, &lengths, l, model)?)?;
            }
            gather_last(&log_softmax(&logits)?, &targets)?
        }
    };
    let logprobs = (logp * &mask)?;
    Ok(Scored { logprobs, mask })
}

/// Sequence-classification outputs [b, num_labels] of prompt + completion pairs (reward models,
/// docs/algorithms.md §2: the scalar head read at the final token), batched with left padding.
/// Graph-connected for a trainable model (Bradley–Terry training).
pub fn classify_completions(
    model: &Model,
    prompts: &[Vec<u32>],
    completions: &[Vec<u32>],
) -> Result<Tensor> {
    let (ids, valid) = joined_left_padded(prompts, completions)?;
    model.classify(&ids, &valid)
}

/// The pooled final hidden states [b, hidden] of prompt + completion pairs: what
/// [`classify_completions`] feeds the head (a shared backbone's features, docs/algorithms.md §3).
pub fn pooled_completions(
    model: &Model,
    prompts: &[Vec<u32>],
    completions: &[Vec<u32>],
) -> Result<Tensor> {
    let (ids, valid) = joined_left_padded(prompts, completions)?;
    model.pooled(&ids, &valid)
}

/// Left-padded token ids and their validity mask, one row each.
type Padded = (Vec<Vec<u32>>, Vec<Vec<bool>>);

/// prompt + completion per row, left-padded; a row with no tokens at all is an error.
fn joined_left_padded(prompts: &[Vec<u32>], completions: &[Vec<u32>]) -> Result<Padded> {
    if completions.len() != prompts.len() {
        return Err(ModelError::Input(format!(
            "{} prompts and {} completions",
            prompts.len(),
            completions.len()
        )));
    }
    let joined: Vec<Vec<u32>> = prompts
        .iter()
        .zip(completions)
        .map(|(p, c)| p.iter().chain(c).copied().collect())
        .collect();
    if let Some(r) = joined.iter().position(Vec::is_empty) {
        return Err(ModelError::Input(format!(
            "row {r} has neither prompt nor completion tokens"
        )));
    }
    Ok(left_pad(&joined))
}
