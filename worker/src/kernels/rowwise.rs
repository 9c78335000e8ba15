//! Fused row-wise kernels of the inference forward (sampling, scoring): RMS norm, the masked
//! attention softmax, rotary embedding and the SwiGLU gate, each one pass over plain f32 slices
//! instead of the 2–7 candle ops (each allocating and sweeping the tensor) their train-safe
//! compositions in `model::ops` take (docs/architecture.md#decoding-kernels).
//!
//! Deterministic: every output row is computed by one thread in a fixed order, whatever the
//! split over rayon's pool, so results are the same for any thread count on a given binary and
//! machine. They are not bit-identical to the composed ops (different summation order): the
//! model only takes them where it takes the skinny matmul (see `rowwise_op`).

use rayon::prelude::*;

/// Below this many elements a call runs on the calling thread: waking the pool costs more.
pub(super) const MIN_ELEMENTS_TO_SPLIT: usize = 1 << 15;

/// Bad arguments (lengths that do not match the shape).
#[derive(Debug, thiserror::Error)]
pub enum RowwiseError {
    #[error("{kernel}: {what} has {found} elements, expected {expected}")]
    Length {
        kernel: &'static str,
        what: &'static str,
        found: usize,
        expected: usize,
    },
}

pub(super) fn check(
    kernel: &'static str,
    what: &'static str,
    found: usize,
    expected: usize,
) -> Result<(), RowwiseError> {
    if found == expected {
        Ok(())
    } else {
        Err(RowwiseError::Length {
            kernel,
            what,
            found,
            expected,
        })
    }
}

/// That `len` elements are a whole number of rows of `width` (`width` > 0).
pub(super) fn check_rows(
    kernel: &'static str,
    what: &'static str,
    len: usize,
    width: usize,
) -> Result<(), RowwiseError> {
    if width == 0 || !len.is_multiple_of(width) {
        return Err(RowwiseError::Length {
            kernel,
            what,
            found: len,
            expected: width.max(1) * (len / width.max(1)),
        });
    }
    Ok(())
}

/// Runs `f(row index, output row)` over the rows of `y` (rows of `width`), on the pool when
/// the call is large enough.
pub(super) fn for_each_row(
    y: &mut [f32],
    width: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    if width == 0 {
        return;
    }
    if y.len() >= MIN_ELEMENTS_TO_SPLIT {
        y.par_chunks_mut(width)
            .enumerate()
            .for_each(|(r, row)| f(r, row));
    } else {
        y.chunks_mut(width)
            .enumerate()
            .for_each(|(r, row)| f(r, row));
    }
}

/// Σ a[i]·b[i] in f64 with four accumulators in a fixed order.
pub(super) fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; 4];
    let mut chunks_a = a.chunks_exact(4);
    let mut chunks_b = b.chunks_exact(4);
    for (ca, cb) in (&mut chunks_a).zip(&mut chunks_b) {
        for l in 0..4 {
            acc[l] += ca[l] as f64 * cb[l] as f64;
        }
    }
    let mut s = (acc[0] + acc[2]) + (acc[1] + acc[3]);
    for (&x, &y) in chunks_a.remainder().iter().zip(chunks_b.remainder()) {
        s += x as f64 * y as f64;
    }
    s
}

/// RMS norm of each row of `x` (rows of `w.len()`): `y = x · w / sqrt(mean(x²) + eps)` (Zhang
/// & Sennrich 2019, eq. 4; the formula of `model::ops::rms_norm`), the mean in f64.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f64, y: &mut [f32]) -> Result<(), RowwiseError> {
    let width = w.len();
    check("rms_norm", "y", y.len(), x.len())?;
    check_rows(
        "rms_norm",
        "x (a whole number of rows of the weight's length)",
        x.len(),
        width,
    )?;
    for_each_row(y, width, |r, out| {
        let row = &x[r * width..(r + 1) * width];
        let scale = (1.0 / (dot_f64(row, row) / width as f64 + eps).sqrt()) as f32;
        for ((o, &v), &g) in out.iter_mut().zip(row).zip(w) {
            *o = v * scale * g;
        }
    });
    Ok(())
}

/// Softmax over the last dimension of attention scores plus an additive mask:
/// `y = softmax(scores + mask)` row by row, where scores are [b, heads, t, s] flattened (any
/// number of heads per batch row) and the mask is [b, t, s] (broadcast over the heads).
/// Rows whose every entry is −∞ give zeros, as a fully masked row should contribute nothing.
pub fn masked_softmax(
    scores: &[f32],
    mask: &[f32],
    b: usize,
    t: usize,
    s: usize,
    y: &mut [f32],
) -> Result<(), RowwiseError> {
    check("masked_softmax", "mask", mask.len(), b * t * s)?;
    check("masked_softmax", "y", y.len(), scores.len())?;
    let per_batch = scores.len().checked_div(b).unwrap_or(0);
    if b == 0
        || t == 0
        || s == 0
        || per_batch * b != scores.len()
        || !per_batch.is_multiple_of(t * s)
    {
        return Err(RowwiseError::Length {
            kernel: "masked_softmax",
            what: "scores (b · heads · t · s)",
            found: scores.len(),
            expected: b * t * s * (per_batch / (t * s)).max(1),
        });
    }
    let rows_per_batch = per_batch / s;
    for_each_row(y, s, |r, out| {
        let (bi, ti) = (r / rows_per_batch, r % t);
        let row = &scores[r * s..(r + 1) * s];
        let m = &mask[(bi * t + ti) * s..(bi * t + ti + 1) * s];
        let mut max = f32::NEG_INFINITY;
        for (o, (&v, &mv)) in out.iter_mut().zip(row.iter().zip(m)) {
            *o = v + mv;
            max = max.max(*o);
        }
        if max == f32::NEG_INFINITY {
            out.fill(0.0);
            return;
        }
        for o in out.iter_mut() {
            *o -= max;
        }
        super::exp::exp_in_place(out);
        let sum = out.iter().fold(0f32, |acc, &o| acc + o);
        let inv = 1.0 / sum;
        for o in out.iter_mut() {
            *o *= inv;
        }
    });
    Ok(())
}

/// Where the elements of a [b, h, t, d] tensor lie in its storage (a strided view allowed:
/// the per-head view `[b, t, h, d] → transpose(1, 2)` is what the decoder hands over).
#[derive(Debug, Clone, Copy)]
pub struct Strided4 {
    pub dims: [usize; 4],
    pub strides: [usize; 4],
    pub offset: usize,
}

/// Rotary position embedding, "rotate half" layout (Su et al. 2021, RoFormer §3.4.2; the
/// formula of `model::ops::rope`): for x [b, h, t, d] (strided) and cos, sin [b, t, d/2]
/// (contiguous), `y[.., i] = x₁·cos − x₂·sin`, `y[.., d/2 + i] = x₂·cos + x₁·sin`; y is
/// [b, h, t, d] contiguous.
pub fn rope(
    x: &[f32],
    layout: Strided4,
    cos: &[f32],
    sin: &[f32],
    y: &mut [f32],
) -> Result<(), RowwiseError> {
    let [b, h, t, d] = layout.dims;
    let half = d / 2;
    check("rope", "cos", cos.len(), b * t * half)?;
    check("rope", "sin", sin.len(), b * t * half)?;
    check("rope", "y", y.len(), b * h * t * d)?;
    let [s0, s1, s2, s3] = layout.strides;
    let last = layout.offset
        + [b, h, t, d]
            .iter()
            .zip([s0, s1, s2, s3])
            .map(|(&n, st)| n.saturating_sub(1) * st)
            .sum::<usize>();
    if b * h * t * d > 0 && last >= x.len() {
        return Err(RowwiseError::Length {
            kernel: "rope",
            what: "x (storage shorter than its layout)",
            found: x.len(),
            expected: last + 1,
        });
    }
    for_each_row(y, d, |r, out| {
        let (bi, hi, ti) = (r / (h * t), (r / t) % h, r % t);
        let base = layout.offset + bi * s0 + hi * s1 + ti * s2;
        let cs = (bi * t + ti) * half;
        for i in 0..half {
            let (x1, x2) = (x[base + i * s3], x[base + (half + i) * s3]);
            let (c, sn) = (cos[cs + i], sin[cs + i]);
            out[i] = x1 * c - x2 * sn;
            out[half + i] = x2 * c + x1 * sn;
        }
    });
    Ok(())
}

/// SwiGLU gate (Shazeer 2020, eq. 6; `model::ops::swiglu`): `y = silu(gate) ⊙ up` with
/// silu(v) = v / (1 + e^(−v)), element by element; e^(−v) by the vectorised
/// [`super::exp::exp_in_place`] (within 2 ulp; libm's scalar `expf` per element was ≈ 2 % of a
/// batch-8 decode step).
pub fn swiglu(gate: &[f32], up: &[f32], y: &mut [f32]) -> Result<(), RowwiseError> {
    check("swiglu", "up", up.len(), gate.len())?;
    check("swiglu", "y", y.len(), gate.len())?;
    const PIECE: usize = 4096;
    for_each_row(y, PIECE, |r, out| {
        let at = r * PIECE;
        let (gate, up) = (&gate[at..at + out.len()], &up[at..at + out.len()]);
        for (o, &v) in out.iter_mut().zip(gate) {
            *o = -v;
        }
        super::exp::exp_in_place(out);
        for ((o, &v), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = v / (1.0 + *o) * u;
        }
    });
    Ok(())
}
