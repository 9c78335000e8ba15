//! AdamW's per-parameter update as one pass over f32 slices on the CPU: reads θ, g, m, v once
//! and writes the new θ, m, v, where the composition of candle ops in [`super::adamw`] sweeps
//! the parameter about twelve times and allocates a buffer per op (the optimizer was ≈ 8× its
//! memory floor in the self-play step, BENCHMARKS.md#self-play-step-vs-trl-nashmdtrainer).
//!
//! Bit-identical to the composition: the same f32 operations in the same order, each rounded
//! as candle rounds it (an affine op is `x · f32(mul) + f32(add)`, unfused), so checkpoints and
//! golden files do not move (a test compares the two bit for bit). Elements are independent,
//! so the split over rayon's pool cannot change a result.

use std::mem::MaybeUninit;

use candle_core::{DType, Storage, Tensor};
use rayon::prelude::*;

/// The step's scalars exactly as the composed update passes them to candle (f64, rounded to
/// f32 per op, as candle's affine does).
#[derive(Debug, Clone, Copy)]
pub(super) struct Coefficients {
    /// The gradient's scale (global-norm clipping's coefficient, `Gradients::clip_coefficient`)
    /// when it is not applied yet: g ← g · scale first, as `Gradients::scale` computes it.
    pub grad_scale: Option<f64>,
    /// `1 − lr·λ` when weight decay is on.
    pub decay: Option<f64>,
    /// `1 − β1`.
    pub one_minus_beta1: f64,
    pub beta2: f64,
    /// `1 − β2`.
    pub one_minus_beta2: f64,
    /// `1 / sqrt(1 − β2^t)`.
    pub inv_bias_correction2_sqrt: f64,
    pub eps: f64,
    /// `−lr / (1 − β1^t)`.
    pub neg_step_size: f64,
}

/// Elements per piece of the parallel split.
const PIECE: usize = 1 << 14;

/// The new (θ, m, v) for f32 CPU tensors of one shape, all contiguous; `None` when the
/// operands are anything else (then the caller composes candle ops).
pub(super) fn try_update(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    k: Coefficients,
) -> candle_core::Result<Option<(Tensor, Tensor, Tensor)>> {
    let all = [p, g, m, v];
    if !all
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous())
        || all.iter().any(|t| t.shape() != p.shape())
    {
        return Ok(None);
    }
    let n = p.elem_count();
    // Outputs without a zero fill: the pass below writes every element (a memset of the three
    // parameter-sized buffers was ≈ 16 % of the optimizer phase's samples at SmolLM2-135M).
    let (mut new_p, mut new_m, mut new_v): (Vec<f32>, Vec<f32>, Vec<f32>) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    {
        let guards: Vec<_> = all.iter().map(|t| t.storage_and_layout()).collect();
        let mut slices: Vec<&[f32]> = Vec::with_capacity(4);
        for (storage, layout) in &guards {
            let Storage::Cpu(candle_core::CpuStorage::F32(data)) = &**storage else {
                return Ok(None);
            };
            let Some((a, b)) = layout.contiguous_offsets() else {
                return Ok(None);
            };
            slices.push(&data[a..b]);
        }
        let [p, g, m, v] = [slices[0], slices[1], slices[2], slices[3]];
        (
            new_p.spare_capacity_mut()[..n].par_chunks_mut(PIECE),
            new_m.spare_capacity_mut()[..n].par_chunks_mut(PIECE),
            new_v.spare_capacity_mut()[..n].par_chunks_mut(PIECE),
        )
            .into_par_iter()
            .enumerate()
            .for_each(|(i, (op, om, ov))| {
                let at = i * PIECE;
                let end = at + op.len();
                update(
                    &p[at..end],
                    &g[at..end],
                    &m[at..end],
                    &v[at..end],
                    k,
                    op,
                    om,
                    ov,
                );
            });
    }
    // SAFETY: the chunks above cover 0..n of each buffer's capacity, and `update` writes every
    // element of the chunks it is given.
    unsafe {
        new_p.set_len(n);
        new_m.set_len(n);
        new_v.set_len(n);
    }
    let shape = p.shape().clone();
    let dev = p.device();
    Ok(Some((
        Tensor::from_vec(new_p, shape.clone(), dev)?,
        Tensor::from_vec(new_m, shape.clone(), dev)?,
        Tensor::from_vec(new_v, shape, dev)?,
    )))
}

/// The update of [`super::adamw::AdamW::step`] element by element (PyTorch's order):
/// g ← g·scale (clipping, when pending); θ ← θ·(1 − lr·λ); m ← m + (g − m)(1 − β1);
/// v ← v·β2 + (1 − β2)·g·g;
/// θ ← θ − lr/(1 − β1^t) · m / (sqrt(v)/sqrt(1 − β2^t) + ε). Each line mirrors one candle op.
/// Writes every element of `out_p`, `out_m` and `out_v` (of p's length).
#[allow(clippy::too_many_arguments)]
fn update(
    p: &[f32],
    g: &[f32],
    m: &[f32],
    v: &[f32],
    k: Coefficients,
    out_p: &mut [MaybeUninit<f32>],
    out_m: &mut [MaybeUninit<f32>],
    out_v: &mut [MaybeUninit<f32>],
) {
    assert!(
        [
            g.len(),
            m.len(),
            v.len(),
            out_p.len(),
            out_m.len(),
            out_v.len()
        ]
        .iter()
        .all(|&len| len == p.len()),
        "adamw update: operand lengths differ"
    );
    let affine = |x: f32, mul: f64, add: f64| x * (mul as f32) + (add as f32);
    for i in 0..p.len() {
        let gi = match k.grad_scale {
            Some(scale) => affine(g[i], scale, 0.0),
            None => g[i],
        };
        let (mi, vi) = (m[i], v[i]);
        let pi = match k.decay {
            Some(d) => affine(p[i], d, 0.0),
            None => p[i],
        };
        let m_new = mi + affine(gi - mi, k.one_minus_beta1, 0.0);
        let v_new = affine(vi, k.beta2, 0.0) + affine(gi, k.one_minus_beta2, 0.0) * gi;
        let denom = affine(v_new.sqrt(), k.inv_bias_correction2_sqrt, k.eps);
        out_p[i].write(pi + affine(m_new / denom, k.neg_step_size, 0.0));
        out_m[i].write(m_new);
        out_v[i].write(v_new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{bits, uniform as values};
    use candle_core::Device;

    #[test]
    fn the_fused_update_is_bit_identical_to_the_composed_one() -> candle_core::Result<()> {
        // More than one piece, not a multiple of it; moments at step-3-like magnitudes, a
        // zero and a negative zero among the gradients.
        let n = 3 * PIECE + 777;
        let dev = Device::Cpu;
        let mut gv = values(n, 2, -1e-2, 1e-2);
        gv[5] = 0.0;
        gv[6] = -0.0;
        let p = Tensor::from_vec(values(n, 1, -0.5, 0.5), n, &dev)?;
        let g = Tensor::from_vec(gv, p.shape(), &dev)?;
        let m = Tensor::from_vec(values(n, 3, -1e-3, 1e-3), p.shape(), &dev)?;
        let v = Tensor::from_vec(values(n, 4, 0.0, 1e-5), p.shape(), &dev)?;
        let cases = [None, Some(1.0 - 1e-3 * 0.01)]
            .into_iter()
            .flat_map(|decay| [(decay, None), (decay, Some(0.37))]);
        for (decay, grad_scale) in cases {
            let (beta1, beta2, t, lr) = (0.9f64, 0.999f64, 3, 1e-3f64);
            let k = Coefficients {
                grad_scale,
                decay,
                one_minus_beta1: 1.0 - beta1,
                beta2,
                one_minus_beta2: 1.0 - beta2,
                inv_bias_correction2_sqrt: 1.0 / (1.0 - beta2.powi(t)).sqrt(),
                eps: 1e-8,
                neg_step_size: -lr / (1.0 - beta1.powi(t)),
            };
            let fused = try_update(&p, &g, &m, &v, k)?.expect("f32, contiguous, CPU");
            let composed = super::super::adamw::composed_update(&p, &g, &m, &v, k)?;
            let case = format!("decay {decay:?}, gradient scale {grad_scale:?}");
            assert!(bits(&fused.0) == bits(&composed.0), "θ differs ({case})");
            assert!(bits(&fused.1) == bits(&composed.1), "m differs ({case})");
            assert!(bits(&fused.2) == bits(&composed.2), "v differs ({case})");
            // And it moved: θ changed, v grew where g ≠ 0.
            assert!(bits(&fused.0) != bits(&p));
        }
        Ok(())
    }

    #[test]
    fn other_operands_take_the_composed_path() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let k = Coefficients {
            grad_scale: None,
            decay: None,
            one_minus_beta1: 0.1,
            beta2: 0.999,
            one_minus_beta2: 0.001,
            inv_bias_correction2_sqrt: 1.0,
            eps: 1e-8,
            neg_step_size: -1e-3,
        };
        let a = Tensor::ones((4, 6), DType::F32, &dev)?;
        let strided = a.t()?;
        assert!(try_update(&strided, &strided, &strided, &strided, k)?.is_none());
        let d = a.to_dtype(DType::F64)?;
        assert!(try_update(&d, &d, &d, &d, k)?.is_none());
        let other = Tensor::ones((6, 4), DType::F32, &dev)?;
        assert!(try_update(&a, &other, &a, &a, k)?.is_none());
        Ok(())
    }
}
