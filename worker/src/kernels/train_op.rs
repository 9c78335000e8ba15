//! candle glue of the training kernels: the linear projection, RMS norm, masked attention
//! softmax, rotary embedding and SwiGLU gate as custom ops **with a backward**, for a forward
//! that autograd tracks (docs/architecture.md#training-kernels). Their forwards are the
//! inference kernels' (`rowwise`; the projection is candle's own gemm call); their backwards are
//! `rowwise_grad`'s one-pass kernels and, for the projection, two gemm calls that write the
//! weight's gradient in the weight's own layout.
//!
//! Why: candle's autograd gives every node of a composed op a zero-filled gradient tensor plus
//! an add, and `x · Wᵀ` through `W.t()` costs a transposed (strided) add of the whole weight's
//! gradient per projection; one node per op, and a gradient already in W's layout, remove most
//! of that (BENCHMARKS.md#fused-training-ops).
//!
//! Every `try_*` returns `None` — use the composed ops — unless its operands are f32 on the CPU,
//! at least one is tracked by autograd (untracked operands take the inference kernels) and the
//! layout is the one the kernel takes. The decoder asks only for a model whose projections the
//! decoding kernels take (`rowwise_op::model_takes_kernels`), and [`try_linear`] only for a weight
//! of at least `skinny_op::MIN_WEIGHT_ELEMENTS`, so the tiny test models keep the composed ops
//! and their golden files.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

use super::rowwise_op::{self, Rope, SameShapeOp2};
use super::{contiguous_f32, kernel_err, rowwise, rowwise_grad, skinny_op};

/// Fewest rows [`try_linear`] takes: below, `ops::linear` multiplies the other way round.
const MIN_ROWS: usize = 17;

fn tracked_f32(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
        && ts.iter().any(|t| t.track_op())
}

/// `x · Wᵀ` for x [rows, in] and W [out, in], both contiguous, with a backward that computes
/// dX = dY · W and dW = dYᵀ · X (W's layout, no transposed add). Gated by the weight's size,
/// not the model's hidden size, so a small model's large LM head takes it too: its forward and
/// dX are candle's own calls, its dW the same products summed in the other orientation (not
/// guaranteed the same bits as candle's Xᵀ · dY).
pub fn try_linear(x: &Tensor, weight: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let (Ok((rows, inp)), Ok((_, w_in))) = (x.dims2(), weight.dims2()) else {
        return Ok(None);
    };
    if !tracked_f32(&[x, weight])
        || inp != w_in
        || rows < MIN_ROWS
        || weight.elem_count() < skinny_op::MIN_WEIGHT_ELEMENTS
        || !x.is_contiguous()
        || !weight.is_contiguous()
    {
        return Ok(None);
    }
    Ok(Some(x.apply_op2(weight, Linear)?))
}

struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "train-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name(), "x")?;
        let w = contiguous_f32(s2, l2, self.name(), "weight")?;
        let (rows, inp) = l1.shape().dims2()?;
        let (out, w_in) = l2.shape().dims2()?;
        if w_in != inp {
            candle_core::bail!("train-linear: x is [{rows}, {inp}] but the weight [{out}, {w_in}]");
        }
        let mut y = vec![0f32; rows * out];
        let threads = candle_core::utils::get_num_threads();
        let parallelism = match threads {
            0 | 1 => gemm::Parallelism::None,
            n => gemm::Parallelism::Rayon(n),
        };
        // SAFETY: y is [rows, out] row-major, x [rows, in] row-major and W [out, in] row-major
        // read as its transpose [in, out] (column stride `in`, row stride 1); every index the
        // strides reach lies inside the slices checked above. The same call (arguments and
        // strides) as candle's `x.matmul(&w.t())`, so the forward's bits are candle's.
        unsafe {
            gemm::gemm(
                rows,
                out,
                inp,
                y.as_mut_ptr(),
                1,
                out as isize,
                false,
                x.as_ptr(),
                1,
                inp as isize,
                w.as_ptr(),
                inp as isize,
                1,
                0f32,
                1f32,
                false,
                false,
                false,
                parallelism,
            );
        }
        Ok((CpuStorage::F32(y), Shape::from((rows, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = match x.track_op() {
            true => Some(grad.matmul(&w.detach())?),
            false => None,
        };
        let dw = match w.track_op() {
            true => Some(grad.t()?.matmul(&x.detach())?),
            false => None,
        };
        Ok((dx, dw))
    }
}

/// RMS norm over the last dimension (`model::ops::rms_norm`) of a contiguous x with the
/// weight [width].
pub fn try_rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Option<Tensor>> {
    let width = x.dims().last().copied().unwrap_or(0);
    if !tracked_f32(&[x, w]) || w.dims() != [width] || !x.is_contiguous() || !w.is_contiguous() {
        return Ok(None);
    }
    Ok(Some(x.apply_op2(w, RmsNorm { eps })?))
}

struct RmsNorm {
    eps: f64,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "train-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        rowwise_op::rms_norm_op(self.eps).cpu_fwd(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let eps = self.eps;
        let grads = FlatGrads {
            name: "train-rms-norm-grad",
            operands: ["x", "weight", "grad"],
            kernel: move |x: &[f32], w: &[f32], gy: &[f32]| {
                let mut out = vec![0f32; x.len() + w.len()];
                let (dx, dw) = out.split_at_mut(x.len());
                rowwise_grad::rms_norm_backward(x, w, eps, gy, dx, dw)?;
                Ok(out)
            },
        };
        let (dx, dw) = split_two(x.apply_op3_no_bwd(w, &grad.contiguous()?, &grads)?, x, w)?;
        Ok((Some(dx), w.track_op().then_some(dw)))
    }
}

/// `softmax(scores + mask)` over the last dimension for attention scores [b, kvh, g, t, s]
/// (contiguous) and the constant causal/padding mask [b, 1, 1, t, s].
pub fn try_masked_softmax(scores: &Tensor, mask: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let (Ok((b, _, _, t, s)), Ok(mask_dims)) = (scores.dims5(), mask.dims5()) else {
        return Ok(None);
    };
    if !tracked_f32(&[scores, mask])
        || mask.track_op()
        || mask_dims != (b, 1, 1, t, s)
        || !scores.is_contiguous()
        || !mask.is_contiguous()
    {
        return Ok(None);
    }
    Ok(Some(scores.apply_op2(mask, MaskedSoftmax)?))
}

struct MaskedSoftmax;

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "train-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, _, _, t, s) = l1.shape().dims5()?;
        rowwise_op::masked_softmax_op(b, t, s).cpu_fwd(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _mask: &Tensor,
        probs: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grads = SameShapeOp2 {
            name: "train-softmax-grad",
            operands: ["probabilities", "grad"],
            kernel: |p: &[f32], gp: &[f32], shape: &Shape, dz: &mut [f32]| {
                let width = shape.dims().last().copied().unwrap_or(0);
                rowwise_grad::softmax_backward(p, gp, width, dz)
            },
        };
        let dz = probs.apply_op2_no_bwd(&grad.contiguous()?, &grads)?;
        Ok((Some(dz), None))
    }
}

/// Rotary embedding (`model::ops::rope`) of x [b, h, t, d] — any strides — with the constant
/// cos, sin [b, 1, t, d/2]. Its backward is the rotation by −θ: the same kernel with −sin.
pub fn try_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let (Ok((b, _, t, d)), Ok(cs_dims)) = (x.dims4(), cos.dims4()) else {
        return Ok(None);
    };
    if !tracked_f32(&[x, cos, sin])
        || cos.track_op()
        || sin.track_op()
        || !d.is_multiple_of(2)
        || cs_dims != (b, 1, t, d / 2)
        || sin.dims() != cos.dims()
        || !cos.is_contiguous()
        || !sin.is_contiguous()
    {
        return Ok(None);
    }
    Ok(Some(x.apply_op3(cos, sin, TrainRope)?))
}

struct TrainRope;

impl CustomOp3 for TrainRope {
    fn name(&self) -> &'static str {
        "train-rope"
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
        Rope.cpu_fwd(s1, l1, s2, l2, s3, l3)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = grad.apply_op3_no_bwd(cos, &sin.neg()?, &Rope)?;
        Ok((Some(dx), None, None))
    }
}

/// `silu(gate) ⊙ up` (`model::ops::swiglu`) of two contiguous tensors of one shape.
pub fn try_swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if !tracked_f32(&[gate, up])
        || gate.dims() != up.dims()
        || !gate.is_contiguous()
        || !up.is_contiguous()
    {
        return Ok(None);
    }
    Ok(Some(gate.apply_op2(up, Swiglu)?))
}

struct Swiglu;

impl CustomOp2 for Swiglu {
    fn name(&self) -> &'static str {
        "train-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        rowwise_op::swiglu_op().cpu_fwd(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grads = FlatGrads {
            name: "train-swiglu-grad",
            operands: ["gate", "up", "grad"],
            kernel: |g: &[f32], u: &[f32], gy: &[f32]| {
                let mut out = vec![0f32; 2 * g.len()];
                let (dg, du) = out.split_at_mut(g.len());
                rowwise_grad::swiglu_backward(g, u, gy, dg, du)?;
                Ok(out)
            },
        };
        let (dg, du) = split_two(
            gate.apply_op3_no_bwd(up, &grad.contiguous()?, &grads)?,
            gate,
            up,
        )?;
        Ok((gate.track_op().then_some(dg), up.track_op().then_some(du)))
    }
}

/// A backward pass's one-pass kernel of three contiguous f32 operands that writes two
/// gradients into one flat buffer, `[first ‖ second]` ([`split_two`] takes them apart).
struct FlatGrads<F> {
    name: &'static str,
    operands: [&'static str; 3],
    kernel: F,
}

impl<F> CustomOp3 for FlatGrads<F>
where
    F: Fn(&[f32], &[f32], &[f32]) -> Result<Vec<f32>, rowwise::RowwiseError> + Send + Sync,
{
    fn name(&self) -> &'static str {
        self.name
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
        let [n1, n2, n3] = self.operands;
        let a = contiguous_f32(s1, l1, self.name, n1)?;
        let b = contiguous_f32(s2, l2, self.name, n2)?;
        let c = contiguous_f32(s3, l3, self.name, n3)?;
        let out = (self.kernel)(a, b, c).map_err(kernel_err)?;
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// The two gradients of a [`FlatGrads`] buffer as views shaped like `first` and `second`.
fn split_two(
    flat: Tensor,
    first: &Tensor,
    second: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    let n = first.elem_count();
    Ok((
        flat.narrow(0, 0, n)?.reshape(first.shape())?,
        flat.narrow(0, n, second.elem_count())?
            .reshape(second.shape())?,
    ))
}
