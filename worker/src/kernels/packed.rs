//! Decoding matmul on weights packed into column panels: `y = x · Wᵀ` for x [rows, k] — a few
//! rows per decoded token, or a prefill's prompt tokens — and W [n, k] (torch's `nn.Linear`
//! layout), with W repacked once per generation into panels of [`PANEL`] output columns, each
//! panel stored k-major ([k][PANEL]). The 8-row × 3-panel AVX-512 block that keeps the weight
//! stream at memory speed for a decode step also multiplies at the machine's sgemm rate for a
//! prefill of 64–1024 rows (BENCHMARKS.md#prefill-on-the-panel-kernel).
//!
//! Why a second decoding kernel beside [`super::skinny`]: the dot-product form there streams W
//! at memory speed for one row, but for 4–8 rows it re-reads each block of weight rows from L1
//! once per pair of input rows and reduces lanes horizontally per output, and the memory stream
//! stalls while it computes: 9.6 GB/s at 4 rows and 7.7 GB/s at 8 rows on one core of the
//! development VM (AMD EPYC, Zen 4), against 25 GB/s at one row. In the panel form every weight
//! is loaded once, as one sequential stream, and multiplied into all rows at once
//! (`acc[r][0..16] += x[r][i] · panel[i][0..16]`, a broadcast of x and no horizontal sums):
//! 27.7 GB/s at 4 rows and 21.7 GB/s at 8 rows on the same core with AVX-512
//! (BENCHMARKS.md#packed-decoding-weights). Packing costs one pass over W, paid once per
//! `sample::generate` call for each model (`Model::for_decoding`).
//!
//! Deterministic everywhere: each output element is one fused multiply-add chain over
//! i = 0..k in order starting from 0 — on AVX-512, AVX2 and the portable path alike (the
//! portable path uses `f32::mul_add`) — so results are the same for any row count, blocking,
//! thread count, timing, instruction set and machine. In particular a row's output does not
//! depend on which rows share its batch.

use rayon::prelude::*;

use super::disjoint::DisjointOut;
use super::isa::supported;
pub use super::isa::{detect, Isa};

/// Output columns per panel (one AVX-512 register, two AVX2 registers of f32).
pub const PANEL: usize = 16;

/// Most rows of x one parallel pass over the panels takes (a 1024 × 1536 f32 block is 6 MiB:
/// it stays in the last-level cache while every panel group re-reads it). At 4096 rows in one
/// pass the kernel fell from ≈ 205 to 165–190 GFLOP/s on the development VM
/// (BENCHMARKS.md#prefill-on-the-panel-kernel).
const ROWS_PER_PASS: usize = 1024;

/// Bad arguments.
#[derive(Debug, thiserror::Error)]
pub enum PackedError {
    #[error("packed matmul: {what} has {found} elements, expected {expected} (rows = {rows}, n = {n}, k = {k})")]
    Length {
        what: &'static str,
        found: usize,
        expected: usize,
        rows: usize,
        n: usize,
        k: usize,
    },
}

/// W [n, k] repacked into ⌈n / 16⌉ panels; panel p holds columns 16p..16p+16 of Wᵀ, k-major:
/// `data[p·16k + i·16 + c] = W[16p + c][i]` (zero where 16p + c ≥ n).
#[derive(Debug, Clone)]
pub struct PackedWeight {
    n: usize,
    k: usize,
    data: Vec<f32>,
}

impl PackedWeight {
    /// Packs a row-major W [n, k] (panels in parallel on rayon's pool).
    pub fn pack(w: &[f32], n: usize, k: usize) -> Result<Self, PackedError> {
        if w.len() != n * k {
            return Err(PackedError::Length {
                what: "W",
                found: w.len(),
                expected: n * k,
                rows: 0,
                n,
                k,
            });
        }
        if k == 0 {
            return Ok(PackedWeight {
                n,
                k,
                data: Vec::new(),
            });
        }
        Self::pack_stacked(&[w], k)
    }

    /// Packs the row-major matrices `parts` (each [n_i, k]) stacked along their rows, as one
    /// W [Σ n_i, k] — e.g. a layer's q, k and v projections, so that one call computes all
    /// three. Columns are independent chains, so each part's outputs are the bits a call on
    /// that part alone gives.
    pub fn pack_stacked(parts: &[&[f32]], k: usize) -> Result<Self, PackedError> {
        Self::pack_stacked_into(parts, k, Vec::new())
    }

    /// [`PackedWeight::pack_stacked`] into `buffer` when it has exactly the packed length (a
    /// buffer an earlier copy of the same shape gave back through [`PackedWeight::into_data`],
    /// whose pages are already mapped), else into fresh memory. Every element is written, so
    /// the result does not depend on the buffer's contents.
    pub fn pack_stacked_into(
        parts: &[&[f32]],
        k: usize,
        buffer: Vec<f32>,
    ) -> Result<Self, PackedError> {
        let mut n = 0;
        for part in parts {
            let rows = part.len().checked_div(k).unwrap_or(0);
            if rows * k != part.len() {
                return Err(PackedError::Length {
                    what: "W",
                    found: part.len(),
                    expected: (rows + 1) * k,
                    rows: 0,
                    n: rows,
                    k,
                });
            }
            n += rows;
        }
        // Every row of the stack, in order.
        let rows: Vec<&[f32]> = parts
            .iter()
            .flat_map(|part| part.chunks_exact(k.max(1)))
            .collect();
        let len = Self::packed_len(n, k);
        let mut data = if buffer.len() == len {
            buffer
        } else {
            vec![0f32; len]
        };
        if k > 0 {
            data.par_chunks_mut(PANEL * k)
                .enumerate()
                .for_each(|(p, panel)| {
                    pack_panel(&rows[p * PANEL..(p * PANEL + PANEL).min(n)], panel)
                });
        }
        Ok(PackedWeight { n, k, data })
    }

    /// Output columns (W's rows).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input columns (W's columns).
    pub fn k(&self) -> usize {
        self.k
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    /// Elements of the packed copy of a W [n, k]: whole panels of 16 columns.
    pub fn packed_len(n: usize, k: usize) -> usize {
        n.div_ceil(PANEL) * PANEL * k
    }

    /// The packed elements' buffer, for [`PackedWeight::pack_stacked_into`] to reuse.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }
}

/// Fills one panel from its (at most 16) rows of W, writing it sequentially (16 read streams):
/// faster than reading rows sequentially and writing columns with a 64-byte stride. Columns
/// past the last row (the last panel of a W whose n is not a multiple of 16) are set to 0.
fn pack_panel(rows: &[&[f32]], panel: &mut [f32]) {
    if rows.len() < PANEL {
        panel.fill(0.0);
    }
    for (i, out) in panel.chunks_exact_mut(PANEL).enumerate() {
        for (o, row) in out.iter_mut().zip(rows) {
            *o = row[i];
        }
    }
}

/// `y[r][j] = Σ_i x[r][i] · W[j][i]` on the machine's best kernel and rayon's pool.
pub fn matmul(x: &[f32], rows: usize, w: &PackedWeight, y: &mut [f32]) -> Result<(), PackedError> {
    matmul_with(x, rows, w, y, true, detect())
}

/// [`matmul`] on the calling thread alone (`parallel` false) or on the pool, with the given
/// kernel (one the CPU lacks falls back to the next it has). For tests and benchmarks.
pub fn matmul_with(
    x: &[f32],
    rows: usize,
    w: &PackedWeight,
    y: &mut [f32],
    parallel: bool,
    isa: Isa,
) -> Result<(), PackedError> {
    let (n, k) = (w.n, w.k);
    let check = |what, found: usize, expected: usize| {
        if found == expected {
            Ok(())
        } else {
            Err(PackedError::Length {
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
    check("y", y.len(), rows * n)?;
    if rows == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        y.fill(0.0);
        return Ok(());
    }
    let isa = supported(isa);
    // Long inputs (a prefill of many prompt tokens) go in passes of ROWS_PER_PASS rows, so the
    // rows a panel group re-reads stay in cache; rows are independent, so results do not change.
    for (x, y) in x
        .chunks(ROWS_PER_PASS * k)
        .zip(y.chunks_mut(ROWS_PER_PASS * n))
    {
        let rows = x.len() / k;
        let out = DisjointOut::new(y);
        let groups = w
            .panels()
            .div_ceil(super::packed_simd::panels_per_group(isa, rows));
        super::for_each_block(groups, n * k, parallel, |g| {
            compute_group(x, rows, w, g, isa, out)
        });
    }
    Ok(())
}

/// Panel group g (panels_per_group panels), every row, in row blocks the micro-kernels take.
fn compute_group(x: &[f32], rows: usize, w: &PackedWeight, g: usize, isa: Isa, out: DisjointOut) {
    let per_group = super::packed_simd::panels_per_group(isa, rows);
    let p0 = g * per_group;
    let p1 = (p0 + per_group).min(w.panels());
    let k = w.k;
    let mut r = 0;
    while r < rows {
        let block_rows = super::packed_simd::rows_per_block(isa, rows - r);
        let mut tile = [[0f32; PANEL]; super::packed_simd::MAX_TILE];
        let panels = &w.data[p0 * PANEL * k..p1 * PANEL * k];
        super::packed_simd::block(
            isa,
            panels,
            p1 - p0,
            &x[r * k..(r + block_rows) * k],
            block_rows,
            k,
            &mut tile,
        );
        for dr in 0..block_rows {
            for dp in 0..p1 - p0 {
                let j0 = (p0 + dp) * PANEL;
                let cols = PANEL.min(w.n - j0);
                let at = (r + dr) * w.n + j0;
                let panel = &tile[dr * (p1 - p0) + dp];
                // SAFETY: columns of panels p0..p1 belong to this group alone.
                unsafe {
                    if cols == PANEL {
                        out.write_array(at, panel);
                    } else {
                        out.write_slice(at, &panel[..cols]);
                    }
                }
            }
        }
        r += block_rows;
    }
}
