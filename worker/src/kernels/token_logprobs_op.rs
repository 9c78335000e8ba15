//! candle glue of the target-token log-probabilities (`kernels::token_logprobs`): a custom op
//! on the logits with a backward, so the training forward takes it too (unlike the other
//! kernels, which are forward-only).
//!
//! The gate admits f32 logits on the CPU, contiguous, with a vocabulary of at least
//! [`MIN_VOCAB`] tokens: the tiny test models keep the composed `log_softmax` and `gather`, so
//! the golden files made with them do not move (docs/development.md#fixtures).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};

use super::token_logprobs::{backward, forward, Rows};

/// Smallest vocabulary the kernel takes.
pub const MIN_VOCAB: usize = 1024;

/// The targets and rule mask of one call (shared by the forward and backward ops).
#[derive(Debug)]
struct Targets {
    /// Target token per row, row-major over [b, l].
    ids: Vec<u32>,
    /// Additive mask table [slots, vocab] and each row's slot; `None`: no mask.
    mask: Option<(Vec<f32>, Vec<u32>)>,
}

impl Targets {
    fn rows<'a>(&'a self, logits: &'a [f32], vocab: usize) -> Rows<'a> {
        Rows {
            logits,
            vocab,
            targets: &self.ids,
            table: self.mask.as_ref().map(|(t, _)| t.as_slice()),
            slots: self.mask.as_ref().map_or(&[], |(_, s)| s.as_slice()),
        }
    }
}

/// log p(target) of each position for logits [b, l, vocab], targets [b][l] and optionally the
/// additive mask `table` [slots, vocab] with each position's slot (row-major over [b, l]):
/// `gather(log_softmax(logits + table[slot]), target)` as [b, l], with a backward. `None` when
/// the gate does not admit the logits.
pub fn try_token_logprobs(
    logits: &Tensor,
    targets: &[Vec<u32>],
    mask: Option<(Vec<f32>, Vec<u32>)>,
) -> candle_core::Result<Option<Tensor>> {
    let Ok((b, l, vocab)) = logits.dims3() else {
        return Ok(None);
    };
    if !logits.device().is_cpu()
        || logits.dtype() != DType::F32
        || !logits.is_contiguous()
        || vocab < MIN_VOCAB
    {
        return Ok(None);
    }
    if targets.len() != b || targets.iter().any(|t| t.len() != l) {
        candle_core::bail!("token log-probs: targets are not [{b}][{l}]");
    }
    let op = TokenLogprobs(Arc::new(Targets {
        ids: targets.iter().flatten().copied().collect(),
        mask,
    }));
    Ok(Some(logits.apply_op1(op)?))
}

/// Forward: logits [b, l, vocab] → [b, l].
struct TokenLogprobs(Arc<Targets>);

impl CustomOp1 for TokenLogprobs {
    fn name(&self) -> &'static str {
        "token-logprobs"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, len, vocab) = l.shape().dims3()?;
        let logits = super::contiguous_f32(s, l, self.name(), "logits")?;
        let mut out = vec![0f32; b * len];
        forward(self.0.rows(logits, vocab), &mut out).map_err(super::kernel_err)?;
        Ok((CpuStorage::F32(out), Shape::from((b, len))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(
            &grad,
            &TokenLogprobsGrad(self.0.clone()),
        )?))
    }
}

/// Backward: (logits [b, l, vocab], grad [b, l]) → grad of the logits.
struct TokenLogprobsGrad(Arc<Targets>);

impl CustomOp2 for TokenLogprobsGrad {
    fn name(&self) -> &'static str {
        "token-logprobs-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, len, vocab) = l1.shape().dims3()?;
        let logits = super::contiguous_f32(s1, l1, self.name(), "logits")?;
        let grad = super::contiguous_f32(s2, l2, self.name(), "grad")?;
        let mut grad_x = vec![0f32; b * len * vocab];
        backward(self.0.rows(logits, vocab), grad, &mut grad_x).map_err(super::kernel_err)?;
        Ok((CpuStorage::F32(grad_x), Shape::from((b, len, vocab))))
    }
}
