//! Train-safe tensor ops composed from candle-core primitives that all have a backward pass
//! (docs/architecture.md#devices: candle's fused rms_norm / softmax_last_dim / rope kernels have
//! none, so gradients would silently stop there). Everything here works for any float dtype and any
//! rank ≥ 1 (the last dimension is the one normalised). Must not hold state. The one exception
//! to "composed from candle primitives" is `linear`, which calls `crate::kernels`: on the
//! no-gradient decoding path the decoding kernels (gated so they never run where a gradient is
//! needed), and for a tracked f32 forward on the CPU the training projection, whose backward
//! is its own.

use candle_core::{DType, Result, Tensor, D};

use crate::kernels::packed_op::PackedSlot;

/// `x · w / sqrt(mean(x², last dim) + eps)` (Zhang & Sennrich 2019, "Root Mean Square Layer
/// Normalization", eq. 4; transformers' `LlamaRMSNorm`, which normalises in f32).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = if dtype == DType::F64 {
        x.clone()
    } else {
        x.to_dtype(DType::F32)?
    };
    let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xf.broadcast_div(&(ms + eps)?.sqrt()?)?.to_dtype(dtype)?;
    normed.broadcast_mul(weight)
}

/// Numerically stable `log_softmax` over the last dimension: x − max − log Σ exp(x − max).
/// The max is detached (it cancels mathematically), so the gradient is exact.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// `softmax` over the last dimension, composed (exp of shifted values over their sum).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// `x · Wᵀ (+ b)` for x [.., in] and W [out, in] (the layout of torch's `nn.Linear`).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    linear_with(x, weight, bias, None)
}

/// [`linear`], on W's packed copy in `packed` (the slot and the most rows it may take) when
/// given and the gate admits the operands (`kernels::packed_op`: frozen models and the views
/// `Model::for_decoding` makes).
pub fn linear_with(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    packed: Option<(&PackedSlot, usize)>,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (in_dim, out_dim) = (dims[dims.len() - 1], weight.dim(0)?);
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.reshape((rows, in_dim))?;
    // A few rows without autograd, unless opted out: with a packed copy (generation,
    // `Model::for_decoding`) the panel kernel, else the skinny kernel; both stream W once on all
    // cores and have no backward, so their gate refuses any operand autograd tracks and training
    // keeps the matmuls below (docs/architecture.md#decoding-kernels).
    let kernel = if crate::kernels::skinny_op::enabled() {
        let on_packed = match packed {
            Some((slot, max_rows)) => {
                crate::kernels::packed_op::try_matmul_wt(&x2, weight, slot, max_rows)?
            }
            None => None,
        };
        match on_packed {
            Some(y) => Some(y),
            None => crate::kernels::skinny_op::try_matmul_wt(&x2, weight)?,
        }
    } else {
        None
    };
    // For a few rows (W·xᵀ)ᵀ is faster on CPU than x·Wᵀ: the gemm then streams W instead of
    // repacking it (SmolLM2-135M shape, batch 8: ~1.4× tokens/s,
    // BENCHMARKS.md#sampling-throughput-model-core).
    let y = if let Some(y) = kernel {
        y
    } else if let Some(y) = crate::kernels::train_op::try_linear(&x2, weight)? {
        // A tracked forward of many rows (training): one op whose backward writes W's gradient
        // in W's layout (docs/architecture.md#training-kernels).
        y
    } else if rows <= 16 {
        weight.matmul(&x2.t()?)?.t()?
    } else {
        x2.matmul(&weight.t()?)?
    };
    let y = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out_dims = dims;
    *out_dims.last_mut().expect("rank >= 1") = out_dim;
    y.reshape(out_dims)
}

/// Rotary position embedding in the "rotate half" layout transformers uses (Su et al. 2021,
/// "RoFormer", §3.4.2): out = x·cos + rotate_half(x)·sin with rotate_half(x) = [−x₂, x₁], where
/// x₁, x₂ are the two halves of the head dimension. `cos`, `sin` are [b, 1, t, head_dim/2] and
/// broadcast over heads.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let a = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let b = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Tensor::cat(&[a, b], D::Minus1)
}

/// SwiGLU feed-forward gate (Shazeer 2020, "GLU Variants Improve Transformer", eq. 6):
/// silu(gate) ⊙ up, with silu(x) = x·σ(x).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn values_match_hand_computation() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1.0f64, 2.0, 3.0], [0.0, 0.0, 0.0]], &dev)?;
        let ls = log_softmax(&x)?.to_vec2::<f64>()?;
        let z = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((ls[0][0] - (1.0 - z)).abs() < 1e-12);
        assert!((ls[1][2] + 3f64.ln()).abs() < 1e-12);
        let sm = softmax(&x)?.to_vec2::<f64>()?;
        assert!((sm[0][2] - (3.0 - z).exp()).abs() < 1e-12);
        let w = Tensor::new(&[1.0f64, 2.0, 0.5], &dev)?;
        let n = rms_norm(&x, &w, 0.0)?.to_vec2::<f64>()?;
        let rms = (14.0f64 / 3.0).sqrt();
        assert!((n[0][1] - 4.0 / rms).abs() < 1e-12);
        // rope at angle θ rotates pairs (x_i, x_{i+half})
        let v = Tensor::new(&[[[[1.0f64, 0.0]]]], &dev)?;
        let th = 0.3f64;
        let r = rope(
            &v,
            &Tensor::new(&[[[[th.cos()]]]], &dev)?,
            &Tensor::new(&[[[[th.sin()]]]], &dev)?,
        )?;
        let r = r.flatten_all()?.to_vec1::<f64>()?;
        assert!((r[0] - th.cos()).abs() < 1e-12 && (r[1] - th.sin()).abs() < 1e-12);
        Ok(())
    }

    #[test]
    fn gradients_flow_through_every_op() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::new(&[[0.5f64, -1.0, 2.0, 0.25]], &dev)?;
        let w = Var::new(&[1.0f64, 2.0, 3.0, 4.0], &dev)?;
        let c = Tensor::new(&[[[[0.9f64, 0.1]]]], &dev)?;
        let s = Tensor::new(&[[[[0.2f64, 0.7]]]], &dev)?;
        let y = rms_norm(x.as_tensor(), w.as_tensor(), 1e-6)?;
        let y = rope(&y.reshape((1, 1, 1, 4))?, &c, &s)?.reshape((1, 4))?;
        let y = (log_softmax(&y)? + softmax(&y)?)?;
        let y = swiglu(&y, &y)?;
        let loss = (y * Tensor::new(&[[1.0f64, -2.0, 3.0, 0.5]], &dev)?)?.sum_all()?;
        let grads = loss.backward()?;
        for v in [&x, &w] {
            let g = grads
                .get(v.as_tensor())
                .expect("gradient")
                .abs()?
                .sum_all()?
                .to_scalar::<f64>()?;
            assert!(g > 0.0);
        }
        Ok(())
    }
}
