//! Backward passes of the fused row-wise kernels (`rowwise`), so the training forward can take
//! them too (`train_op`): RMS norm, the masked attention softmax and the SwiGLU gate, each one
//! pass over plain f32 slices where candle's autograd would run the 2–9 ops of the composed
//! forward backwards, each allocating, zero-filling and adding a gradient tensor
//! (docs/architecture.md#training-kernels). Rotary embedding needs no kernel of its own: its
//! backward is the same rotation by −θ (`train_op`).
//!
//! Deterministic like the forward kernels: every output row is computed by one thread in a
//! fixed order, and the one reduction across rows (the norm weight's gradient) sums fixed
//! blocks of rows in block order, whatever the thread count.

use rayon::prelude::*;

use super::rowwise::{check, check_rows, dot_f64, RowwiseError};

/// Rows per block of the norm weight's gradient: each block's partial sum is formed on one
/// thread, then the blocks are added in order (a fixed tree, so any thread count gives the
/// same bits).
const ROWS_PER_BLOCK: usize = 32;

/// Gradient of `y = x · w · s(x)`, `s(x) = 1 / sqrt(mean(x²) + eps)` per row (Zhang &
/// Sennrich 2019, eq. 4), given dL/dy `gy`: with `n` the row width and `c = Σⱼ gyⱼ·wⱼ·xⱼ`,
///
/// ```text
/// dx = s · (gy ⊙ w) − x · s³ · c / n
/// dw = Σ_rows gy ⊙ x · s
/// ```
///
/// `dx` has x's length, `dw` w's.
pub fn rms_norm_backward(
    x: &[f32],
    w: &[f32],
    eps: f64,
    gy: &[f32],
    dx: &mut [f32],
    dw: &mut [f32],
) -> Result<(), RowwiseError> {
    let width = w.len();
    check("rms_norm_backward", "gy", gy.len(), x.len())?;
    check("rms_norm_backward", "dx", dx.len(), x.len())?;
    check("rms_norm_backward", "dw", dw.len(), width)?;
    check_rows(
        "rms_norm_backward",
        "x (a whole number of rows of the weight's length)",
        x.len(),
        width,
    )?;
    let rows = x.len() / width;
    let blocks = rows.div_ceil(ROWS_PER_BLOCK);
    // Each block writes its rows of dx and returns its partial dw (f64, summed in block order).
    let block = |b: usize, dx_block: &mut [f32]| -> Vec<f64> {
        let mut partial = vec![0f64; width];
        for (i, out) in dx_block.chunks_mut(width).enumerate() {
            let r = b * ROWS_PER_BLOCK + i;
            let (xr, gr) = (
                &x[r * width..(r + 1) * width],
                &gy[r * width..(r + 1) * width],
            );
            // The forward kernel's own mean of squares (`rowwise::dot_f64`).
            let s = 1.0 / (dot_f64(xr, xr) / width as f64 + eps).sqrt();
            let c: f64 = xr
                .iter()
                .zip(gr)
                .zip(w)
                .map(|((&xv, &g), &wv)| g as f64 * wv as f64 * xv as f64)
                .sum();
            let k = s * s * s * c / width as f64;
            for j in 0..width {
                let (xv, g) = (xr[j] as f64, gr[j] as f64);
                out[j] = (s * g * w[j] as f64 - xv * k) as f32;
                partial[j] += g * xv * s;
            }
        }
        partial
    };
    let chunk = ROWS_PER_BLOCK * width;
    let partials: Vec<Vec<f64>> = if x.len() >= super::rowwise::MIN_ELEMENTS_TO_SPLIT {
        dx.par_chunks_mut(chunk)
            .enumerate()
            .map(|(b, d)| block(b, d))
            .collect()
    } else {
        dx.chunks_mut(chunk)
            .enumerate()
            .map(|(b, d)| block(b, d))
            .collect()
    };
    debug_assert_eq!(partials.len(), blocks);
    for (j, out) in dw.iter_mut().enumerate() {
        *out = partials.iter().map(|p| p[j]).sum::<f64>() as f32;
    }
    Ok(())
}

/// Gradient of row-wise `p = softmax(z)` given dL/dp `gp` (the mask is a constant): per row,
/// `dz = p ⊙ (gp − Σⱼ gpⱼ·pⱼ)`. A fully masked row (all p = 0) gets zeros.
pub fn softmax_backward(
    p: &[f32],
    gp: &[f32],
    width: usize,
    dz: &mut [f32],
) -> Result<(), RowwiseError> {
    check("softmax_backward", "gp", gp.len(), p.len())?;
    check("softmax_backward", "dz", dz.len(), p.len())?;
    check_rows(
        "softmax_backward",
        "p (a whole number of rows)",
        p.len(),
        width,
    )?;
    super::rowwise::for_each_row(dz, width, |r, out| {
        let (pr, gr) = (
            &p[r * width..(r + 1) * width],
            &gp[r * width..(r + 1) * width],
        );
        let dot = dot_f64(pr, gr) as f32;
        for ((o, &pv), &g) in out.iter_mut().zip(pr).zip(gr) {
            *o = pv * (g - dot);
        }
    });
    Ok(())
}

/// Gradient of `y = silu(g) ⊙ u` (Shazeer 2020, eq. 6) given dL/dy `gy`, with σ the logistic
/// function: `dg = gy · u · σ(g) · (1 + g · (1 − σ(g)))`, `du = gy · g · σ(g)`.
pub fn swiglu_backward(
    g: &[f32],
    u: &[f32],
    gy: &[f32],
    dg: &mut [f32],
    du: &mut [f32],
) -> Result<(), RowwiseError> {
    check("swiglu_backward", "up", u.len(), g.len())?;
    check("swiglu_backward", "gy", gy.len(), g.len())?;
    check("swiglu_backward", "dg", dg.len(), g.len())?;
    check("swiglu_backward", "du", du.len(), g.len())?;
    const PIECE: usize = 4096;
    let piece = |at: usize, dg: &mut [f32], du: &mut [f32]| {
        let n = dg.len();
        let (g, u, gy) = (&g[at..at + n], &u[at..at + n], &gy[at..at + n]);
        // σ(v) = 1 / (1 + e^(−v)), e^(−v) by the vectorised exp into du as scratch.
        for (o, &v) in du.iter_mut().zip(g) {
            *o = -v;
        }
        super::exp::exp_in_place(du);
        for i in 0..n {
            let sig = 1.0 / (1.0 + du[i]);
            let silu = g[i] * sig;
            dg[i] = gy[i] * u[i] * sig * (1.0 + g[i] * (1.0 - sig));
            du[i] = gy[i] * silu;
        }
    };
    if g.len() >= super::rowwise::MIN_ELEMENTS_TO_SPLIT {
        dg.par_chunks_mut(PIECE)
            .zip(du.par_chunks_mut(PIECE))
            .enumerate()
            .for_each(|(i, (a, b))| piece(i * PIECE, a, b));
    } else {
        dg.chunks_mut(PIECE)
            .zip(du.chunks_mut(PIECE))
            .enumerate()
            .for_each(|(i, (a, b))| piece(i * PIECE, a, b));
    }
    Ok(())
}
