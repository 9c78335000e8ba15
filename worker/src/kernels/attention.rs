//! Fused attention for the inference forward (scoring, prefill, decoding): softmax(q·Kᵀ·scale +
//! mask)·V per query head over its key/value head (grouped-query attention), straight from the
//! rotated queries and the KV cache's strided views into the layout the output projection reads,
//! [b, t, heads·d] — instead of the scaled copy of q, the two batched products on strided views,
//! the scores and probabilities tensors and the transposing copy of the output that the
//! train-safe composition in `model::decoder` takes (docs/architecture.md#decoding-kernels).
//!
//! One work unit is one (sequence, key/value head): its keys are transposed once into a scratch
//! [d][s] so the score rows are axpy sweeps over contiguous keys, and the (query position, query
//! head) rows of its group run in blocks of [`ROWS`], position-major — so a decode step's one
//! position puts the group's heads (3 in SmolLM2) in one block, whose rows share every loaded
//! key and value. Keys after the last one any row of a block may see (causal masking, trailing
//! padding) are skipped: their probability is exactly 0 either way.
//!
//! Deterministic everywhere: a score is one fused multiply-add chain over the head dimension in
//! order, the softmax and the output chains over keys run in order, and the SIMD builds run the
//! same code with `f32::mul_add` — so results are the same for any thread count, timing and
//! instruction set, and a row's result does not depend on the other rows of its batch. A query
//! row whose keys are all masked gets zeros (the composed ops give NaN); the decoder never makes
//! one (a query always sees itself).

use rayon::prelude::*;

use super::disjoint::DisjointOut;

/// Query rows per block (their score rows share each loaded key column).
const ROWS: usize = 4;
/// Below this many score elements (b · heads · t · s) a call runs on the calling thread. A
/// decode step of SmolLM2-135M's shape at batch 8 has 8 · 9 · s (1 152 at 16 keys): its 24
/// units are worth splitting from there on (`decode_attention` bench, BENCHMARKS.md
/// "Decoding attention over the pool").
const MIN_SCORES_TO_SPLIT: usize = 1 << 10;

/// The dimensions of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Sequences.
    pub b: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Query rows per sequence (new tokens).
    pub t: usize,
    /// Keys per sequence (cached + new).
    pub s: usize,
    /// Head dimension.
    pub d: usize,
}

/// A [b, kv_heads, s, d] operand with the last dimension contiguous: element (bi, h, j, e) is
/// `data[offset + bi·strides[0] + h·strides[1] + j·strides[2] + e]` (the KV cache's views).
#[derive(Debug, Clone, Copy)]
pub struct Strided<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub strides: [usize; 3],
}

impl Strided<'_> {
    /// Row (bi, h, j): its d elements.
    fn row(&self, bi: usize, h: usize, j: usize, d: usize) -> &[f32] {
        let at = self.offset + bi * self.strides[0] + h * self.strides[1] + j * self.strides[2];
        &self.data[at..at + d]
    }

    /// The largest index read plus one, for a bounds check up front.
    fn end(&self, dims: &Dims) -> usize {
        if dims.b == 0 || dims.kv_heads == 0 || dims.s == 0 || dims.d == 0 {
            return 0;
        }
        self.offset
            + (dims.b - 1) * self.strides[0]
            + (dims.kv_heads - 1) * self.strides[1]
            + (dims.s - 1) * self.strides[2]
            + dims.d
    }
}

/// Bad arguments.
#[derive(Debug, thiserror::Error)]
pub enum AttentionError {
    #[error("fused attention: {what} has {found} elements, expected {expected} for {dims:?}")]
    Length {
        what: &'static str,
        found: usize,
        expected: usize,
        dims: Dims,
    },
    #[error("fused attention: {heads} query heads do not share {kv_heads} key/value heads evenly")]
    Heads { heads: usize, kv_heads: usize },
}

/// `out[bi, i, h·d + e] = Σ_j softmax_j(q[bi,h,i]·k[bi,h/g,j]·scale + mask[bi,i,j]) · v[bi,h/g,j,e]`
/// for q contiguous [b, heads, t, d], k and v [b, kv_heads, s, d] strided, the additive mask
/// [b, t, s] (0 or −∞) and out [b, t, heads·d].
pub fn attention(
    q: &[f32],
    k: Strided,
    v: Strided,
    mask: &[f32],
    dims: Dims,
    scale: f32,
    out: &mut [f32],
) -> Result<(), AttentionError> {
    let Dims {
        b,
        heads,
        kv_heads,
        t,
        s,
        d,
    } = dims;
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(AttentionError::Heads { heads, kv_heads });
    }
    let check = |what, found: usize, expected: usize| {
        if found == expected {
            Ok(())
        } else {
            Err(AttentionError::Length {
                what,
                found,
                expected,
                dims,
            })
        }
    };
    check("q", q.len(), b * heads * t * d)?;
    check("mask", mask.len(), b * t * s)?;
    check("out", out.len(), b * t * heads * d)?;
    for (what, x) in [("k", &k), ("v", &v)] {
        let end = x.end(&dims);
        if end > x.data.len() {
            return Err(AttentionError::Length {
                what,
                found: x.data.len(),
                expected: end,
                dims,
            });
        }
    }
    if out.is_empty() {
        return Ok(());
    }
    let dst = DisjointOut::new(out);
    let unit = |u: usize| {
        let args = Unit {
            q,
            k,
            v,
            mask,
            dims,
            scale,
            bi: u / kv_heads,
            kh: u % kv_heads,
            out: dst,
        };
        run_unit(&args);
    };
    let units = b * kv_heads;
    if b * heads * t * s >= MIN_SCORES_TO_SPLIT {
        (0..units).into_par_iter().for_each(unit);
    } else {
        (0..units).for_each(unit);
    }
    Ok(())
}

/// One (sequence, key/value head) and everything it needs.
struct Unit<'a> {
    q: &'a [f32],
    k: Strided<'a>,
    v: Strided<'a>,
    mask: &'a [f32],
    dims: Dims,
    scale: f32,
    bi: usize,
    kh: usize,
    out: DisjointOut,
}

/// Runs a unit on the best instruction set the CPU has (the same arithmetic on each).
fn run_unit(u: &Unit) {
    match super::isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the features the function is compiled for.
        super::isa::Isa::Avx512 => unsafe { unit_avx512(u) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        super::isa::Isa::Avx2Fma => unsafe { unit_avx2(u) },
        _ => unit_body(u),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn unit_avx512(u: &Unit) {
    unit_body(u)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn unit_avx2(u: &Unit) {
    unit_body(u)
}

/// The unit's work: transpose its keys, then every block of query rows of its query heads.
#[inline(always)]
fn unit_body(u: &Unit) {
    let Dims {
        heads,
        kv_heads,
        t,
        s,
        d,
        ..
    } = u.dims;
    let group = heads / kv_heads;
    // Taken out and put back rather than borrowed in a closure: a closure would not inherit
    // the unit's instruction set (`run_unit`), and its FMAs would become library calls.
    let mut scratch = SCRATCH.take();
    {
        let Scratch {
            kt,
            scores,
            acc,
            qs,
        } = &mut scratch;
        // Every element read below is written first (Kᵀ whole by the transpose, a block's
        // scores, scaled queries and outputs before their use), so stale contents never leak.
        for (buf, len) in [
            (&mut *kt, d * s),
            (scores, ROWS * s),
            (acc, ROWS * d),
            (qs, ROWS * d),
        ] {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
        }
        // Kᵀ [d][s]: a score row is then a sweep over contiguous keys per head dimension.
        let first_key = u.k.offset + u.bi * u.k.strides[0] + u.kh * u.k.strides[1];
        super::transpose::keys(u.k.data, first_key, u.k.strides[2], s, d, kt);
        // Rows (position i, head h), position-major: rows in a block see nearly the same keys.
        let mut next = 0;
        while next < t * group {
            let rows = ROWS.min(t * group - next);
            let block_rows: [Row; ROWS] = std::array::from_fn(|r| {
                let q = next + r.min(rows - 1);
                Row {
                    h: u.kh * group + q % group,
                    i: q / group,
                }
            });
            block(u, &block_rows[..rows], kt, scores, qs, acc);
            next += rows;
        }
    }
    SCRATCH.set(scratch);
}

/// A unit's scratch (Kᵀ, a block's scores, scaled queries and outputs), kept per thread so a
/// decode step's ≈ 700 units allocate and zero nothing.
#[derive(Default)]
struct Scratch {
    kt: Vec<f32>,
    scores: Vec<f32>,
    acc: Vec<f32>,
    qs: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = const {
        std::cell::RefCell::new(Scratch {
            kt: Vec::new(),
            scores: Vec::new(),
            acc: Vec::new(),
            qs: Vec::new(),
        })
    };
}

/// One query row of a unit: head h at position i.
#[derive(Clone, Copy)]
struct Row {
    h: usize,
    i: usize,
}

/// Scores of keys j0..j0+J for R query rows (scaled queries `qs`, [R][d]) with the
/// accumulators in registers: score[r][j] = the FMA chain of q[r][e] · Kᵀ[e][j] in order of e
/// from 0, as the general sweep computes it (which kept the scores in memory between e's).
#[inline(always)]
fn scores_in_registers<const J: usize, const R: usize>(
    qs: &[f32],
    kt: &[f32],
    s: usize,
    d: usize,
    j0: usize,
    scores: &mut [f32],
) {
    let mut a = [[0f32; J]; R];
    for e in 0..d {
        let kcol: &[f32; J] = kt[e * s + j0..e * s + j0 + J]
            .try_into()
            .expect("J keys of a Kᵀ row");
        for (r, ar) in a.iter_mut().enumerate() {
            let qe = qs[r * d + e];
            for (x, &k) in ar.iter_mut().zip(kcol) {
                *x = qe.mul_add(k, *x);
            }
        }
    }
    for (r, ar) in a.iter().enumerate() {
        scores[r * s + j0..r * s + j0 + J].copy_from_slice(ar);
    }
}

/// The output phase of [`block`] for R rows of head dimension D, with the accumulators in
/// registers: the same chains (in order of j from 0) as the general loop, which kept them in
/// memory, each FMA waiting on the store of the one before (that loop was the hottest part of
/// decoding's attention at batch 8).
#[inline(always)]
fn weighted_values<const D: usize, const R: usize>(
    u: &Unit,
    seen: usize,
    scores: &[f32],
    acc: &mut [f32],
) {
    let s = u.dims.s;
    let mut a = [[0f32; D]; R];
    for j in 0..seen {
        let vj: &[f32; D] =
            u.v.row(u.bi, u.kh, j, D)
                .try_into()
                .expect("a value row has D elements");
        for (r, ar) in a.iter_mut().enumerate() {
            let p = scores[r * s + j];
            for (x, &v) in ar.iter_mut().zip(vj) {
                *x = p.mul_add(v, *x);
            }
        }
    }
    for (r, ar) in a.iter().enumerate() {
        acc[r * D..(r + 1) * D].copy_from_slice(ar);
    }
}

/// A block of query rows (at most [`ROWS`]): scores, masked softmax, the weighted sum of values.
#[inline(always)]
fn block(
    u: &Unit,
    block_rows: &[Row],
    kt: &[f32],
    scores: &mut [f32],
    qs: &mut [f32],
    acc: &mut [f32],
) {
    let Dims { heads, t, s, d, .. } = u.dims;
    let rows = block_rows.len();
    let mask_row = |r: usize| {
        let i = block_rows[r].i;
        &u.mask[(u.bi * t + i) * s..(u.bi * t + i + 1) * s]
    };
    // Keys any row of the block may see: the rest have probability exactly 0.
    let seen = (0..rows)
        .map(|r| {
            mask_row(r)
                .iter()
                .rposition(|&m| m != f32::NEG_INFINITY)
                .map_or(0, |j| j + 1)
        })
        .max()
        .unwrap_or(0);
    // The scaled queries (as the composed path scales q before its product).
    for (r, &Row { h, i }) in block_rows.iter().enumerate() {
        let q = &u.q[((u.bi * heads + h) * t + i) * d..][..d];
        for (o, &x) in qs[r * d..(r + 1) * d].iter_mut().zip(q) {
            *o = x * u.scale;
        }
    }
    // Scores: for each head dimension e, score[r][j] += q[r][e] · Kᵀ[e][j] (in order of e).
    // Keys in register blocks of 64, then 16, then the rest one sweep per e.
    let mut j0 = 0;
    while seen - j0 >= 16 {
        let keys = if seen - j0 >= 64 { 64 } else { 16 };
        match (keys, rows) {
            (64, 1) => scores_in_registers::<64, 1>(qs, kt, s, d, j0, scores),
            (64, 2) => scores_in_registers::<64, 2>(qs, kt, s, d, j0, scores),
            (64, 3) => scores_in_registers::<64, 3>(qs, kt, s, d, j0, scores),
            (64, 4) => scores_in_registers::<64, 4>(qs, kt, s, d, j0, scores),
            (16, 1) => scores_in_registers::<16, 1>(qs, kt, s, d, j0, scores),
            (16, 2) => scores_in_registers::<16, 2>(qs, kt, s, d, j0, scores),
            (16, 3) => scores_in_registers::<16, 3>(qs, kt, s, d, j0, scores),
            (16, 4) => scores_in_registers::<16, 4>(qs, kt, s, d, j0, scores),
            // Any other block height (none today: ROWS = 4): the sweep below takes every key.
            _ => break,
        }
        j0 += keys;
    }
    for r in 0..rows {
        scores[r * s + j0..r * s + seen].fill(0.0);
    }
    for e in 0..d {
        let kcol = &kt[e * s + j0..e * s + seen];
        for r in 0..rows {
            let qe = qs[r * d + e];
            for (sc, &kv) in scores[r * s + j0..r * s + seen].iter_mut().zip(kcol) {
                *sc = qe.mul_add(kv, *sc);
            }
        }
    }
    // Masked softmax per row over the keys it may see (the rest are −∞ → 0).
    for r in 0..rows {
        let row = &mut scores[r * s..r * s + seen];
        for (x, &m) in row.iter_mut().zip(mask_row(r)) {
            *x += m;
        }
        let max = super::reduce::max_in_lanes(row);
        if max == f32::NEG_INFINITY {
            row.fill(0.0);
            continue;
        }
        // `kernels::exp` inline: this body is compiled under the unit's instruction set
        // (`run_unit`), so the loop vectorises without a second dispatch per row.
        for x in row.iter_mut() {
            *x = super::exp::exp(*x - max);
        }
    }
    // Each row's sum is one chain in order of j; the block's rows run side by side.
    let mut sums = [0f32; ROWS];
    for j in 0..seen {
        for (r, sum) in sums.iter_mut().enumerate().take(rows) {
            *sum += scores[r * s + j];
        }
    }
    // A row with a visible key sums to at least 1 (its maximum's term is exp(0)); a row with
    // none was zeroed above and stays so.
    for r in (0..rows).filter(|&r| sums[r] > 0.0) {
        for x in scores[r * s..r * s + seen].iter_mut() {
            *x /= sums[r];
        }
    }
    // Output: acc[r][e] += p[r][j] · v[j][e] (in order of j).
    match (d, rows) {
        (64, 1) => weighted_values::<64, 1>(u, seen, scores, acc),
        (64, 2) => weighted_values::<64, 2>(u, seen, scores, acc),
        (64, 3) => weighted_values::<64, 3>(u, seen, scores, acc),
        (64, 4) => weighted_values::<64, 4>(u, seen, scores, acc),
        _ => {
            acc[..rows * d].fill(0.0);
            for j in 0..seen {
                let vj = u.v.row(u.bi, u.kh, j, d);
                for r in 0..rows {
                    let p = scores[r * s + j];
                    for (a, &x) in acc[r * d..(r + 1) * d].iter_mut().zip(vj) {
                        *a = p.mul_add(x, *a);
                    }
                }
            }
        }
    }
    for (r, &Row { h, i }) in block_rows.iter().enumerate() {
        let at = ((u.bi * t + i) * heads + h) * d;
        // SAFETY: elements (bi, i, h, ..) of the unit's query heads belong to this unit alone.
        unsafe { u.out.write_slice(at, &acc[r * d..(r + 1) * d]) };
    }
}
