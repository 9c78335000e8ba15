//! An ensemble whose members share one frozen backbone (`shared_backbone = true`,
//! docs/algorithms.md §3, "Shared backbone"): the K one-label `score` heads stacked into one
//! [K, hidden] head, so one forward pass of the backbone scores every member. Loading checks,
//! tensor by tensor, that every member's backbone is bit-identical to the first member's, so a
//! manifest that claims sharing wrongly is refused instead of scored with the wrong backbone.

use candle_core::Tensor;

use super::member::HEAD;
use super::RewardError;
use crate::model::{Model, Tokenizer};
use crate::preference::reward_model::{RewardModelJudge, BATCH};
use crate::preference::PromptRow;
use crate::sample::classify_completions;
use crate::train::models::Loaded;

pub struct SharedHeads {
    /// The shared backbone with the K stacked heads (`num_labels` = K).
    model: Model,
    members: usize,
}

/// What each member is checked against (see `RewardModelJudge::check`).
pub struct Checks<'a> {
    pub vocab_size: usize,
    pub policy_tokenizer: Option<&'a Tokenizer>,
}

/// Builds [`SharedHeads`] one member at a time (only the first member's backbone is kept).
pub struct Builder {
    first: Model,
    first_source: String,
    heads: Vec<Tensor>,
}

impl Builder {
    /// Starts from member 0 (checked as a one-label reward model).
    pub fn new(first: Loaded, source: String, checks: &Checks<'_>) -> Result<Self, RewardError> {
        check(&first, &source, checks)?;
        let head = head_of(&first.model, &source)?;
        Ok(Builder {
            first: first.model,
            first_source: source,
            heads: vec![head],
        })
    }

    /// Adds the next member: its backbone must equal member 0's bit for bit.
    pub fn push(
        &mut self,
        member: Loaded,
        source: &str,
        checks: &Checks<'_>,
    ) -> Result<(), RewardError> {
        check(&member, source, checks)?;
        let (ours, theirs) = (self.first.tensors(), member.model.tensors());
        let names = |m: &std::collections::BTreeMap<String, Tensor>| {
            m.keys().filter(|n| *n != HEAD).cloned().collect::<Vec<_>>()
        };
        if names(ours) != names(theirs) {
            return Err(not_shared(
                source,
                &self.first_source,
                "its tensor names differ",
            ));
        }
        for name in names(ours) {
            if !bit_equal(&ours[&name], &theirs[&name])? {
                return Err(not_shared(
                    source,
                    &self.first_source,
                    &format!("tensor `{name}` differs"),
                ));
            }
        }
        self.heads.push(head_of(&member.model, source)?);
        Ok(())
    }

    pub fn build(self) -> Result<SharedHeads, RewardError> {
        SharedHeads::new(&self.first, &self.heads)
    }
}

impl SharedHeads {
    /// `backbone` (a sequence classifier; its own head is replaced) with the one-label `heads`
    /// ([1, hidden] each) stacked; no checks (see [`Builder`]).
    pub fn new(backbone: &Model, heads: &[Tensor]) -> Result<SharedHeads, RewardError> {
        let members = heads.len();
        let mut tensors = backbone.tensors().clone();
        tensors.insert(HEAD.into(), Tensor::cat(heads, 0)?);
        let config = backbone.config().with_classification_head(members);
        Ok(SharedHeads {
            model: Model::new(config, tensors, false)?,
            members,
        })
    }

    pub fn len(&self) -> usize {
        self.members
    }

    pub fn is_empty(&self) -> bool {
        self.members == 0
    }

    /// Every member's raw scores, `[member][row]`, from one forward pass per batch.
    pub fn member_scores(
        &self,
        prompts: &[&PromptRow],
        completions: &[Vec<u32>],
    ) -> Result<Vec<Vec<f64>>, RewardError> {
        let mut out = vec![Vec::with_capacity(completions.len()); self.members];
        for start in (0..completions.len()).step_by(BATCH) {
            let end = (start + BATCH).min(completions.len());
            let ids: Vec<Vec<u32>> = prompts[start..end].iter().map(|p| p.ids.clone()).collect();
            let rows = classify_completions(&self.model, &ids, &completions[start..end])?
                .to_dtype(candle_core::DType::F32)?
                .to_vec2::<f32>()?;
            for row in rows {
                for (k, v) in row.into_iter().enumerate() {
                    out[k].push(f64::from(v));
                }
            }
        }
        Ok(out)
    }
}

fn check(member: &Loaded, source: &str, checks: &Checks<'_>) -> Result<(), RewardError> {
    Ok(RewardModelJudge::check(
        &member.model,
        member.tokenizer.as_ref(),
        checks.vocab_size,
        checks.policy_tokenizer,
        source,
    )?)
}

fn head_of(model: &Model, source: &str) -> Result<Tensor, RewardError> {
    model
        .tensors()
        .get(HEAD)
        .cloned()
        .ok_or_else(|| RewardError::Invalid(format!("{source}: no `{HEAD}` tensor")))
}

fn not_shared(source: &str, first: &str, why: &str) -> RewardError {
    RewardError::Invalid(format!(
        "{source}: the manifest says the members share one backbone, but {why} from member 0's \
         ({first})"
    ))
}

/// Same shape, dtype and bits (NaN payloads included).
fn bit_equal(a: &Tensor, b: &Tensor) -> Result<bool, RewardError> {
    if a.shape() != b.shape() || a.dtype() != b.dtype() {
        return Ok(false);
    }
    let bits = |t: &Tensor| -> Result<Vec<u32>, RewardError> {
        let t = t.flatten_all()?.to_dtype(candle_core::DType::F32)?;
        Ok(t.to_vec1::<f32>()?.into_iter().map(f32::to_bits).collect())
    };
    Ok(bits(a)? == bits(b)?)
}

#[cfg(test)]
#[path = "shared_heads_tests.rs"]
mod tests;
