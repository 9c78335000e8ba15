//! candle glue of the fused row-wise kernels (`rowwise`): forward-only custom ops, each tried
//! by `model::decoder` before its train-safe composition (docs/architecture.md#decoding-kernels).
//!
//! Every `try_*` returns `None` — use the composed ops — unless its operands are f32 on the CPU
//! in the layout the kernel takes and none is tracked by autograd (the ops have no backward, so
//! a training forward keeps the composed ops and its gradients). The decoder asks only for a
//! model whose projections the skinny matmul takes ([`model_takes_kernels`]), so the tiny test
//! models keep the composed ops and their golden files.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

use super::rowwise::{self, Strided4};
use super::{contiguous_f32, skinny_op};

/// Whether a model of this hidden size decodes on the kernels: when the skinny matmul is on and
/// takes its attention projections (a [hidden, hidden] weight).
pub fn model_takes_kernels(hidden_size: usize) -> bool {
    skinny_op::enabled() && hidden_size * hidden_size >= skinny_op::MIN_WEIGHT_ELEMENTS
}

fn plain_f32(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op())
}

/// RMS norm over the last dimension (`model::ops::rms_norm`) by the fused kernel.
pub fn try_rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Option<Tensor>> {
    let width = x.dims().last().copied().unwrap_or(0);
    if !plain_f32(&[x, w]) || w.dims() != [width] || !x.is_contiguous() || !w.is_contiguous() {
        return Ok(None);
    }
    Ok(Some(x.apply_op2_no_bwd(w, &rms_norm_op(eps))?))
}

/// `softmax(scores + mask)` over the last dimension for attention scores [b, kvh, g, t, s] and
/// the causal/padding mask [b, 1, 1, t, s], by the fused kernel.
pub fn try_masked_softmax(scores: &Tensor, mask: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let (Ok((b, _, _, t, s)), Ok(mask_dims)) = (scores.dims5(), mask.dims5()) else {
        return Ok(None);
    };
    if !plain_f32(&[scores, mask])
        || mask_dims != (b, 1, 1, t, s)
        || !scores.is_contiguous()
        || !mask.is_contiguous()
    {
        return Ok(None);
    }
    Ok(Some(
        scores.apply_op2_no_bwd(mask, &masked_softmax_op(b, t, s))?,
    ))
}

/// Rotary embedding (`model::ops::rope`) of x [b, h, t, d] — any strides, e.g. the per-head
/// transposed view — with cos, sin [b, 1, t, d/2], by the fused kernel; the result is
/// contiguous.
pub fn try_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let (Ok((b, _, t, d)), Ok(cs_dims)) = (x.dims4(), cos.dims4()) else {
        return Ok(None);
    };
    if !plain_f32(&[x, cos, sin])
        || !d.is_multiple_of(2)
        || cs_dims != (b, 1, t, d / 2)
        || sin.dims() != cos.dims()
        || !cos.is_contiguous()
        || !sin.is_contiguous()
    {
        return Ok(None);
    }
    Ok(Some(x.apply_op3_no_bwd(cos, sin, &Rope)?))
}

pub(super) struct Rope;

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = s1 else {
            candle_core::bail!("fused-rope: x is not f32");
        };
        let cos = contiguous_f32(s2, l2, self.name(), "cos")?;
        let sin = contiguous_f32(s3, l3, self.name(), "sin")?;
        let (b, h, t, d) = l1.shape().dims4()?;
        let st = l1.stride();
        let layout = Strided4 {
            dims: [b, h, t, d],
            strides: [st[0], st[1], st[2], st[3]],
            offset: l1.start_offset(),
        };
        let mut y = vec![0f32; b * h * t * d];
        rowwise::rope(x, layout, cos, sin, &mut y).map_err(super::kernel_err)?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
}

/// `silu(gate) ⊙ up` (`model::ops::swiglu`) by the fused kernel.
pub fn try_swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if !plain_f32(&[gate, up])
        || gate.dims() != up.dims()
        || !gate.is_contiguous()
        || !up.is_contiguous()
    {
        return Ok(None);
    }
    Ok(Some(gate.apply_op2_no_bwd(up, &swiglu_op())?))
}

/// The kernel of a [`SameShapeOp2`]: `kernel(lhs, rhs, lhs shape, out)`.
pub(super) trait SameShapeKernel:
    Fn(&[f32], &[f32], &Shape, &mut [f32]) -> Result<(), rowwise::RowwiseError> + Send + Sync
{
}

impl<F> SameShapeKernel for F where
    F: Fn(&[f32], &[f32], &Shape, &mut [f32]) -> Result<(), rowwise::RowwiseError> + Send + Sync
{
}

/// The RMS-norm kernel as an op on (x, weight) (the training op's forward too, `train_op`).
pub(super) fn rms_norm_op(eps: f64) -> SameShapeOp2<impl SameShapeKernel> {
    SameShapeOp2 {
        name: "fused-rms-norm",
        operands: ["x", "weight"],
        kernel: move |x: &[f32], w: &[f32], _: &Shape, y: &mut [f32]| {
            rowwise::rms_norm(x, w, eps, y)
        },
    }
}

/// The masked-softmax kernel as an op on (scores [b, kvh, g, t, s], mask [b, 1, 1, t, s]),
/// with (b, t, s) as the caller read them from the scores' shape (the training op's forward
/// too).
pub(super) fn masked_softmax_op(
    b: usize,
    t: usize,
    s: usize,
) -> SameShapeOp2<impl SameShapeKernel> {
    SameShapeOp2 {
        name: "fused-masked-softmax",
        operands: ["scores", "mask"],
        kernel: move |scores: &[f32], mask: &[f32], _: &Shape, y: &mut [f32]| {
            rowwise::masked_softmax(scores, mask, b, t, s, y)
        },
    }
}

/// The SwiGLU kernel as an op on (gate, up) (the training op's forward too).
pub(super) fn swiglu_op() -> SameShapeOp2<impl SameShapeKernel> {
    SameShapeOp2 {
        name: "fused-swiglu",
        operands: ["gate", "up"],
        kernel: |gate: &[f32], up: &[f32], _: &Shape, y: &mut [f32]| rowwise::swiglu(gate, up, y),
    }
}

/// A forward-only op of two contiguous f32 operands whose result has the first one's shape:
/// `kernel(lhs, rhs, lhs shape, out)`.
pub(super) struct SameShapeOp2<F> {
    pub(super) name: &'static str,
    pub(super) operands: [&'static str; 2],
    pub(super) kernel: F,
}

impl<F: SameShapeKernel> CustomOp2 for SameShapeOp2<F> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let a = contiguous_f32(s1, l1, self.name, self.operands[0])?;
        let b = contiguous_f32(s2, l2, self.name, self.operands[1])?;
        let mut y = vec![0f32; a.len()];
        (self.kernel)(a, b, l1.shape(), &mut y).map_err(super::kernel_err)?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
}
