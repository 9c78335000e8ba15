//! Skinny matmul for decoding: `y = x · Wᵀ` with x [rows, k] of a few rows (one per sequence of
//! the batch), W [n, k] in the row-major layout of torch's `nn.Linear`, y [rows, n], all f32.
//!
//! At decode time a linear layer is memory-bound: every weight is read once per token and used
//! for `rows` multiply-adds. The kernel therefore streams W exactly once: the columns n, in
//! blocks of 4 weight rows, are cut into about 16 pieces per thread on rayon's global pool (the
//! one candle-core's gemm runs on: no extra threads); the caller runs every piece no other
//! thread took, so a descheduled thread on a loaded machine never holds a call up. Each
//! block of 4 weight rows stays in L1 while every input row is multiplied against it (the input
//! rows, ≤ 16 · k floats, stay in L2); a single input row takes the weight rows one at a time,
//! so W is one sequential stream.
//!
//! Why hand-written rather than candle's gemm (the `gemm` crate): at the SmolLM2-135M shape
//! candle's CPU matmul reached 22.3 tokens/s at batch 1 against a memory roofline of ≈ 45
//! (docs/architecture.md#decoding-kernels, BENCHMARKS.md#decoding-kernels): a general gemm
//! packs or re-reads operands for few rows, and its threading is tuned for square shapes.
//!
//! Deterministic: each output element is computed by exactly one thread, in a fixed order that
//! does not depend on the chunking (see `skinny_simd`), so results are the same for any number
//! of threads and any timing on a given binary and machine.

use super::disjoint::DisjointOut;
use super::isa::supported;
pub use super::isa::{detect, Isa};

use super::skinny_simd::block_portable;

/// Weight rows per micro-kernel block.
const COLS_PER_BLOCK: usize = 4;
/// Input rows per micro-kernel block (4 weight rows × 2 input rows = 8 accumulators + 4 weight
/// registers: fits AVX2's 16 registers).
const ROWS_PER_BLOCK: usize = 2;

/// Bad arguments (lengths that do not match the shape).
#[derive(Debug, thiserror::Error)]
pub enum SkinnyError {
    #[error("skinny matmul: {what} has {found} elements, expected {expected} for rows = {rows}, n = {n}, k = {k}")]
    Length {
        what: &'static str,
        found: usize,
        expected: usize,
        rows: usize,
        n: usize,
        k: usize,
    },
}

/// `y[r][j] = Σ_i x[r][i] · w[j][i]` on the machine's best kernel and candle's threads.
pub fn matmul_wt(
    x: &[f32],
    rows: usize,
    w: &[f32],
    n: usize,
    k: usize,
    y: &mut [f32],
) -> Result<(), SkinnyError> {
    matmul_wt_with(x, rows, w, n, k, y, true, detect())
}

/// [`matmul_wt`] on the calling thread alone (`parallel` false) or on the pool, with the given
/// kernel level (`Avx512` and `Avx2Fma` both run the AVX2 + FMA kernel; a level the CPU lacks
/// falls back to the next it has). For tests.
#[allow(clippy::too_many_arguments)]
pub fn matmul_wt_with(
    x: &[f32],
    rows: usize,
    w: &[f32],
    n: usize,
    k: usize,
    y: &mut [f32],
    parallel: bool,
    isa: Isa,
) -> Result<(), SkinnyError> {
    let check = |what, found: usize, expected: usize| {
        if found == expected {
            Ok(())
        } else {
            Err(SkinnyError::Length {
                what,
                found,
                expected,
                rows,
                n,
                k,
            })
        }
    };
    check("x", x.len(), rows * k)?;
    check("w", w.len(), n * k)?;
    check("y", y.len(), rows * n)?;
    if rows == 0 || n == 0 {
        return Ok(());
    }
    // The dot-product kernel's widest path is AVX2 + FMA (AVX-512 machines take it too).
    let avx2 = matches!(supported(isa), Isa::Avx512 | Isa::Avx2Fma);
    let blocks = n.div_ceil(COLS_PER_BLOCK);
    let out = DisjointOut::new(y);
    let cols = Columns { x, rows, w, n, k };
    // Block b is columns [4·b, min(4·b + 4, n)); blocks never share a column.
    super::for_each_block(blocks, n * k, parallel, |b| {
        let j1 = ((b + 1) * COLS_PER_BLOCK).min(n);
        cols.compute(b * COLS_PER_BLOCK, j1, avx2, out);
    });
    Ok(())
}

/// The operands of one call.
struct Columns<'a> {
    x: &'a [f32],
    rows: usize,
    w: &'a [f32],
    n: usize,
    k: usize,
}

impl Columns<'_> {
    /// Computes y[.., j0..j1] (every row).
    ///
    /// One input row takes the weight rows one at a time: W is then read as one sequential
    /// stream, which the hardware prefetcher follows; four rows side by side (four streams
    /// 4·k floats apart) decoded 25–35 % slower at batch 1 on the development VM, where nothing
    /// is reused across them anyway (BENCHMARKS.md#decoding-kernels). The per-element sum is
    /// the same either way, so results do not change.
    fn compute(&self, j0: usize, j1: usize, avx2: bool, out: DisjointOut) {
        let mut j = j0;
        while self.rows > 1 && j + COLS_PER_BLOCK <= j1 {
            self.block_cols::<COLS_PER_BLOCK>(j, avx2, out);
            j += COLS_PER_BLOCK;
        }
        while j < j1 {
            self.block_cols::<1>(j, avx2, out);
            j += 1;
        }
    }

    /// Columns j..j+C, every row, in input-row blocks of `ROWS_PER_BLOCK` then single rows.
    fn block_cols<const C: usize>(&self, j: usize, avx2: bool, out: DisjointOut) {
        let w = &self.w[j * self.k..(j + C) * self.k];
        let mut r = 0;
        while r + ROWS_PER_BLOCK <= self.rows {
            self.block::<C, ROWS_PER_BLOCK>(w, r, j, avx2, out);
            r += ROWS_PER_BLOCK;
        }
        while r < self.rows {
            self.block::<C, 1>(w, r, j, avx2, out);
            r += 1;
        }
    }

    fn block<const C: usize, const R: usize>(
        &self,
        w: &[f32],
        r: usize,
        j: usize,
        avx2: bool,
        out: DisjointOut,
    ) {
        let k = self.k;
        let x = &self.x[r * k..(r + R) * k];
        let mut acc = [[0f32; C]; R];
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: `avx2` is true only when the CPU has AVX2 and FMA; w holds C rows of k
            // and x holds R rows of k (slices of exactly that length above).
            unsafe { super::skinny_simd::block_avx2::<C, R>(w, x, k, &mut acc) };
        } else {
            block_portable::<C, R>(w, x, k, &mut acc);
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = avx2;
            block_portable::<C, R>(w, x, k, &mut acc);
        }
        for (dr, acc_r) in acc.iter().enumerate() {
            for (dc, &v) in acc_r.iter().enumerate() {
                // SAFETY: column j + dc lies in this chunk's range [j0, j1), which no other
                // chunk writes.
                unsafe { out.write((r + dr) * self.n + j + dc, v) };
            }
        }
    }
}
