//! AdamW's per-parameter update as one pass over f32 slices on the CPU: reads θ, g, m, v once
//! and writes the new θ, m, v, where the composition of candle ops in [`super::adamw`] sweeps
//! the parameter about twelve times and allocates a buffer per op (the optimizer was ≈ 8× its
//! memory floor in the self-play step, BENCHMARKS.md#self-play-step-vs-trl-nashmdtrainer).
//!
//! Bit-identical to the composition: the same f32 operations in the same order, each rounded
//! as candle rounds it (an affine op is `x · f32(mul) + f32(add)`, unfused), so checkpoints and
//! golden files do not move (a test compares the two bit for bit). Elements are independent,
//! so the split over rayon's pool cannot change a result.

use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Storage, Tensor};
use rayon::prelude::*;

/// The step's scalars exactly as the composed update passes them to candle (f64, rounded to
/// f32 per op, as candle's affine does).
#[derive(Debug, Clone, Copy)]
pub(super) struct Coefficients {
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
    let (mut new_p, mut new_m, mut new_v) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
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
            new_p.par_chunks_mut(PIECE),
            new_m.par_chunks_mut(PIECE),
            new_v.par_chunks_mut(PIECE),
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
    let shape = p.shape().clone();
    let dev = p.device();
    Ok(Some((
        Tensor::from_vec(new_p, shape.clone(), dev)?,
        Tensor::from_vec(new_m, shape.clone(), dev)?,
        Tensor::from_vec(new_v, shape, dev)?,
    )))
}

/// The update of [`super::adamw::AdamW::step`] element by element (PyTorch's order):
/// θ ← θ·(1 − lr·λ); m ← m + (g − m)(1 − β1); v ← v·β2 + (1 − β2)·g·g;
/// θ ← θ − lr/(1 − β1^t) · m / (sqrt(v)/sqrt(1 − β2^t) + ε). Each line of the three element
/// functions below mirrors one candle op.
#[allow(clippy::too_many_arguments)]
fn update(
    p: &[f32],
    g: &[f32],
    m: &[f32],
    v: &[f32],
    k: Coefficients,
    out_p: &mut [f32],
    out_m: &mut [f32],
    out_v: &mut [f32],
) {
    for i in 0..p.len() {
        let m_new = first_moment(g[i], m[i], k);
        let v_new = second_moment(g[i], v[i], k);
        out_p[i] = new_param(p[i], m_new, v_new, k);
        out_m[i] = m_new;
        out_v[i] = v_new;
    }
}

/// candle's affine: `x · f32(mul) + f32(add)`, unfused.
fn affine(x: f32, mul: f64, add: f64) -> f32 {
    x * (mul as f32) + (add as f32)
}

/// m ← m + (g − m)(1 − β1).
fn first_moment(g: f32, m: f32, k: Coefficients) -> f32 {
    m + affine(g - m, k.one_minus_beta1, 0.0)
}

/// v ← v·β2 + (1 − β2)·g·g.
fn second_moment(g: f32, v: f32, k: Coefficients) -> f32 {
    affine(v, k.beta2, 0.0) + affine(g, k.one_minus_beta2, 0.0) * g
}

/// θ·(1 − lr·λ) − lr/(1 − β1^t) · m / (sqrt(v)/sqrt(1 − β2^t) + ε), with the new moments.
fn new_param(p: f32, m: f32, v: f32, k: Coefficients) -> f32 {
    let p = match k.decay {
        Some(d) => affine(p, d, 0.0),
        None => p,
    };
    let denom = affine(v.sqrt(), k.inv_bias_correction2_sqrt, k.eps);
    p + affine(m / denom, k.neg_step_size, 0.0)
}

/// [`try_update`] without allocating: m and v are updated in place (from g), then θ in place
/// (from the new m and v) — three passes, each a candle in-place op holding the storages'
/// locks, the same bits as the one-pass form. The optimizer takes it when no snapshot holds
/// its moments: fresh buffers per step cost more than the update (page faults on 3 × the
/// model's size, ≈ 0.9 s of SmolLM2-135M's 1.1 s step update). Returns false, touching
/// nothing, for operands [`try_update`] would refuse.
pub(super) fn try_update_in_place(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    k: Coefficients,
) -> candle_core::Result<bool> {
    let all = [p, g, m, v];
    if !all
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous())
        || all.iter().any(|t| t.shape() != p.shape())
    {
        return Ok(false);
    }
    m.inplace_op2(g, &InPlace::FirstMoment(k))?;
    v.inplace_op2(g, &InPlace::SecondMoment(k))?;
    p.inplace_op3(m, v, &InPlace::Param(k))?;
    Ok(true)
}

/// The three in-place passes of [`try_update_in_place`].
enum InPlace {
    /// dst m, source g.
    FirstMoment(Coefficients),
    /// dst v, source g.
    SecondMoment(Coefficients),
    /// dst θ, sources the new m and v.
    Param(Coefficients),
}

/// The f32 elements of a contiguous CPU operand.
fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((a, b))) => Ok(&data[a..b]),
        _ => candle_core::bail!("adamw in place: an operand is not contiguous f32"),
    }
}

fn f32_slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> candle_core::Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((a, b))) => Ok(&mut data[a..b]),
        _ => candle_core::bail!("adamw in place: the destination is not contiguous f32"),
    }
}

impl InplaceOp2 for InPlace {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let g = f32_slice(s2, l2)?;
        let dst = f32_slice_mut(s1, l1)?;
        if g.len() != dst.len() {
            candle_core::bail!(
                "adamw in place: {} gradients for {} moments",
                g.len(),
                dst.len()
            );
        }
        match *self {
            InPlace::FirstMoment(k) => each_with(dst, g, |g, m| first_moment(g, m, k)),
            InPlace::SecondMoment(k) => each_with(dst, g, |g, v| second_moment(g, v, k)),
            InPlace::Param(_) => candle_core::bail!("adamw in place: θ takes two sources"),
        }
        Ok(())
    }
}

/// `dst[i] = f(g[i], dst[i])` on rayon's pool (generic, so `f` inlines and vectorises).
fn each_with(dst: &mut [f32], g: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    dst.par_chunks_mut(PIECE)
        .zip(g.par_chunks(PIECE))
        .for_each(|(d, g)| {
            for (d, &g) in d.iter_mut().zip(g) {
                *d = f(g, *d);
            }
        });
}

impl InplaceOp3 for InPlace {
    fn name(&self) -> &'static str {
        "adamw-param"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let InPlace::Param(k) = *self else {
            candle_core::bail!("adamw in place: a moment takes one source");
        };
        let (m, v) = (f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let dst = f32_slice_mut(s1, l1)?;
        if m.len() != dst.len() || v.len() != dst.len() {
            candle_core::bail!(
                "adamw in place: moments of {} and {} for {} weights",
                m.len(),
                v.len(),
                dst.len()
            );
        }
        dst.par_chunks_mut(PIECE)
            .zip(m.par_chunks(PIECE).zip(v.par_chunks(PIECE)))
            .for_each(|(d, (m, v))| {
                for ((d, &m), &v) in d.iter_mut().zip(m).zip(v) {
                    *d = new_param(*d, m, v, k);
                }
            });
        Ok(())
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
        for decay in [None, Some(1.0 - 1e-3 * 0.01)] {
            let (beta1, beta2, t, lr) = (0.9f64, 0.999f64, 3, 1e-3f64);
            let k = Coefficients {
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
            assert!(bits(&fused.0) == bits(&composed.0), "θ differs ({decay:?})");
            assert!(bits(&fused.1) == bits(&composed.1), "m differs ({decay:?})");
            assert!(bits(&fused.2) == bits(&composed.2), "v differs ({decay:?})");
            // And it moved: θ changed, v grew where g ≠ 0.
            assert!(bits(&fused.0) != bits(&p));
        }
        Ok(())
    }

    #[test]
    fn the_in_place_update_is_bit_identical_to_the_composed_one() -> candle_core::Result<()> {
        let n = 2 * PIECE + 333;
        let dev = Device::Cpu;
        let fresh = |seed, lo, hi| Tensor::from_vec(values(n, seed, lo, hi), n, &dev);
        for decay in [None, Some(1.0 - 1e-3 * 0.01)] {
            let k = Coefficients {
                decay,
                one_minus_beta1: 0.1,
                beta2: 0.999,
                one_minus_beta2: 0.001,
                inv_bias_correction2_sqrt: 1.0 / (1.0 - 0.999f64.powi(4)).sqrt(),
                eps: 1e-8,
                neg_step_size: -1e-3 / (1.0 - 0.9f64.powi(4)),
            };
            let (p, g) = (fresh(1, -0.5, 0.5)?, fresh(2, -1e-2, 1e-2)?);
            let (m, v) = (fresh(3, -1e-3, 1e-3)?, fresh(4, 0.0, 1e-5)?);
            let composed = super::super::adamw::composed_update(&p, &g, &m, &v, k)?;
            let before = bits(&p);
            assert!(try_update_in_place(&p, &g, &m, &v, k)?);
            assert!(bits(&p) == bits(&composed.0), "θ differs ({decay:?})");
            assert!(bits(&m) == bits(&composed.1), "m differs ({decay:?})");
            assert!(bits(&v) == bits(&composed.2), "v differs ({decay:?})");
            assert!(bits(&p) != before, "θ moved");
        }
        // Operands the one-pass form refuses are refused here too, untouched.
        let a = Tensor::ones((4, 6), DType::F32, &dev)?;
        let k = Coefficients {
            decay: None,
            one_minus_beta1: 0.1,
            beta2: 0.999,
            one_minus_beta2: 0.001,
            inv_bias_correction2_sqrt: 1.0,
            eps: 1e-8,
            neg_step_size: -1e-3,
        };
        let strided = a.t()?;
        assert!(!try_update_in_place(&a, &strided, &a, &a, k)?);
        assert!(bits(&a) == bits(&Tensor::ones((4, 6), DType::F32, &dev)?));
        Ok(())
    }

    #[test]
    fn other_operands_take_the_composed_path() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let k = Coefficients {
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
