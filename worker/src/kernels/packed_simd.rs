//! Micro-kernels of [`super::packed`]: `np` consecutive panels against `r` input rows,
//! `tile[dr·np + dp][c] = Σ_i x[dr][i] · panel_dp[i][c]`, for AVX-512, AVX2 + FMA and a
//! portable fallback.
//!
//! Every output element is the same fused multiply-add chain, i = 0..k in order from 0, in
//! every kernel and every block shape (`f32::mul_add` is the fused operation), so the three
//! agree bit for bit and blocking never changes a result (docs/architecture.md
//! #decoding-kernels). Block shapes keep the accumulators in registers: AVX-512 has 32, so up
//! to 8 rows × 3 panels (24 accumulators, 3 weight registers, 1 broadcast) or 4 × 4; AVX2 has
//! 16 and a panel takes two, so up to 4 rows × 1 panel or 2 rows × 2 panels.

use super::packed::{Isa, PANEL};

/// Tile capacity: the most (row, panel) pairs of any block shape dispatched below.
pub(super) const MAX_TILE: usize = 32;

/// Panels per group (the unit of work split over threads) for a call of `rows` rows.
pub(super) fn panels_per_group(isa: Isa, rows: usize) -> usize {
    match isa {
        Isa::Avx512 if rows >= 8 => 3,
        Isa::Avx512 => 4,
        Isa::Avx2Fma if rows <= 2 => 2,
        Isa::Avx2Fma | Isa::Portable => 1,
    }
}

/// Rows of the next block when `remaining` rows are left (at least 1, at most `remaining`).
pub(super) fn rows_per_block(isa: Isa, remaining: usize) -> usize {
    match isa {
        Isa::Avx512 if remaining >= 8 => 8,
        Isa::Avx512 if remaining >= 4 => 4,
        Isa::Avx2Fma if remaining > 2 => remaining.min(4),
        Isa::Portable => remaining.min(4),
        _ => remaining,
    }
}

/// Runs the block on `isa` (which the caller has checked the CPU supports). `panels` holds
/// `np` panels of `PANEL·k`, `x` holds `r` rows of `k`; `np · r ≤ MAX_TILE`.
pub(super) fn block(
    isa: Isa,
    panels: &[f32],
    np: usize,
    x: &[f32],
    r: usize,
    k: usize,
    tile: &mut [[f32; PANEL]; MAX_TILE],
) {
    assert!(
        panels.len() == np * PANEL * k && x.len() == r * k && np * r <= MAX_TILE && np >= 1,
        "packed micro-kernel: operand lengths do not match the block"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller checked the CPU has AVX-512F; lengths are asserted above.
        Isa::Avx512 => unsafe { avx512::by_panels(panels.as_ptr(), np, x.as_ptr(), r, k, tile) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller checked the CPU has AVX2 and FMA; lengths are asserted above.
        Isa::Avx2Fma => unsafe { avx2::by_panels(panels.as_ptr(), np, x.as_ptr(), r, k, tile) },
        // SAFETY: lengths are asserted above.
        _ => unsafe { portable::by_panels(panels.as_ptr(), np, x.as_ptr(), r, k, tile) },
    }
}

/// The body of each module's `by_panels`: runs `kernel::<C, R>` for the block shapes the policy
/// above produces, and any other shape one (panel, row) at a time (the same chains, so the same
/// results).
macro_rules! by_panels_body {
    ($panels:ident, $np:ident, $x:ident, $r:ident, $k:ident, $tile:ident) => {
        match ($np, $r) {
            (1, 1) => kernel::<1, 1>($panels, $x, $k, $tile),
            (1, 2) => kernel::<1, 2>($panels, $x, $k, $tile),
            (1, 3) => kernel::<1, 3>($panels, $x, $k, $tile),
            (1, 4) => kernel::<1, 4>($panels, $x, $k, $tile),
            (1, 5) => kernel::<1, 5>($panels, $x, $k, $tile),
            (1, 6) => kernel::<1, 6>($panels, $x, $k, $tile),
            (1, 7) => kernel::<1, 7>($panels, $x, $k, $tile),
            (1, 8) => kernel::<1, 8>($panels, $x, $k, $tile),
            (2, 1) => kernel::<2, 1>($panels, $x, $k, $tile),
            (2, 2) => kernel::<2, 2>($panels, $x, $k, $tile),
            (2, 3) => kernel::<2, 3>($panels, $x, $k, $tile),
            (2, 4) => kernel::<2, 4>($panels, $x, $k, $tile),
            (2, 8) => kernel::<2, 8>($panels, $x, $k, $tile),
            (3, 1) => kernel::<3, 1>($panels, $x, $k, $tile),
            (3, 2) => kernel::<3, 2>($panels, $x, $k, $tile),
            (3, 3) => kernel::<3, 3>($panels, $x, $k, $tile),
            (3, 4) => kernel::<3, 4>($panels, $x, $k, $tile),
            (3, 8) => kernel::<3, 8>($panels, $x, $k, $tile),
            (4, 1) => kernel::<4, 1>($panels, $x, $k, $tile),
            (4, 2) => kernel::<4, 2>($panels, $x, $k, $tile),
            (4, 3) => kernel::<4, 3>($panels, $x, $k, $tile),
            (4, 4) => kernel::<4, 4>($panels, $x, $k, $tile),
            (np, r) => {
                for dp in 0..np {
                    for dr in 0..r {
                        let mut one = [[0f32; PANEL]; MAX_TILE];
                        kernel::<1, 1>($panels.add(dp * PANEL * $k), $x.add(dr * $k), $k, &mut one);
                        $tile[dr * np + dp] = one[0];
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{MAX_TILE, PANEL};

    /// Blocks of this many rows or more prefetch each panel's stream [`PREFETCH_LINES`] cache
    /// lines (one line = one k-step of a panel) ahead into L1. At 8 rows a k-step takes 8 FMAs
    /// per weight line and the hardware prefetcher alone no longer keeps the stream at memory
    /// speed: on the 2-vCPU Intel Xeon (Sapphire Rapids) VM, 8 rows × 3 panels cold (1.4 GB of
    /// weights, 2 threads) read 15–17 GB/s without the hint and 19.5–21 with it, where one row
    /// reads 19–23 either way (the hint costs one row a little, so it starts at 4 rows, which
    /// gained too, less consistently). BENCHMARKS.md, "Prefetching the 8-row stream".
    const PREFETCH_FROM_ROWS: usize = 4;

    /// How far ahead the hint reaches, in k-steps (32 lines = 2 KiB per panel). The first probe
    /// found 32 and 64 no better than 16; decoding itself, later on the same VM model (family
    /// 6 model 207) in its faster spells, ran faster at 32 than at 16 in all five alternating
    /// rounds (batch 8 plain +2.3–3.7 %, mixture too), 48 level with 32, prefetching into L2
    /// (`T1`) at 32–128 lines and no hint at all slower (BENCHMARKS.md, "The 8-row stream's
    /// prefetch distance, and the peers in a fast spell"). On a 2-vCPU Zen 5 VM 32 was again the
    /// best of 0, 16, 32 and 64 (no hint 13–23 % slower; BENCHMARKS.md, "A Zen 5 VM").
    const PREFETCH_LINES: usize = 32;

    /// # Safety
    /// AVX-512F; `panels` holds `np·PANEL·k` floats and `x` holds `r·k`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn by_panels(
        panels: *const f32,
        np: usize,
        x: *const f32,
        r: usize,
        k: usize,
        tile: &mut [[f32; PANEL]; MAX_TILE],
    ) {
        // SAFETY: forwarded contract; every shape indexes inside the operands.
        unsafe { by_panels_body!(panels, np, x, r, k, tile) }
    }

    /// C panels × R rows; tile[r·C + c] = row r against panel c.
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel<const C: usize, const R: usize>(
        panels: *const f32,
        x: *const f32,
        k: usize,
        tile: &mut [[f32; PANEL]; MAX_TILE],
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        for i in 0..k {
            if R >= PREFETCH_FROM_ROWS {
                for c in 0..C {
                    // A hint only: an address past the panels never faults, and wrapping_add
                    // keeps the pointer arithmetic defined.
                    let ahead = panels.wrapping_add(c * PANEL * k + (i + PREFETCH_LINES) * PANEL);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                }
            }
            // SAFETY: i < k, so row i of panel c and element i of row r are in bounds.
            let w: [__m512; C] = std::array::from_fn(|c| unsafe {
                _mm512_loadu_ps(panels.add(c * PANEL * k + i * PANEL))
            });
            for (r, acc_r) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                let xb = _mm512_set1_ps(unsafe { *x.add(r * k + i) });
                for (c, a) in acc_r.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(w[c], xb, *a);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (c, a) in acc_r.iter().enumerate() {
                // SAFETY: a tile entry holds PANEL floats; r·C + c < MAX_TILE (R·C ≤ 32).
                unsafe { _mm512_storeu_ps(tile[r * C + c].as_mut_ptr(), *a) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{MAX_TILE, PANEL};

    /// # Safety
    /// AVX2 and FMA; `panels` holds `np·PANEL·k` floats and `x` holds `r·k`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn by_panels(
        panels: *const f32,
        np: usize,
        x: *const f32,
        r: usize,
        k: usize,
        tile: &mut [[f32; PANEL]; MAX_TILE],
    ) {
        // SAFETY: forwarded contract; every shape indexes inside the operands.
        unsafe { by_panels_body!(panels, np, x, r, k, tile) }
    }

    /// C panels × R rows, each panel as two 8-lane halves; tile[r·C + c] = row r, panel c.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn kernel<const C: usize, const R: usize>(
        panels: *const f32,
        x: *const f32,
        k: usize,
        tile: &mut [[f32; PANEL]; MAX_TILE],
    ) {
        let mut acc = [[[_mm256_setzero_ps(); 2]; C]; R];
        for i in 0..k {
            // SAFETY: i < k, so row i of panel c (both halves) is in bounds.
            let w: [[__m256; 2]; C] = std::array::from_fn(|c| unsafe {
                let p = panels.add(c * PANEL * k + i * PANEL);
                [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))]
            });
            for (r, acc_r) in acc.iter_mut().enumerate() {
                // SAFETY: element i of row r is in bounds.
                let xb = _mm256_set1_ps(unsafe { *x.add(r * k + i) });
                for (c, a) in acc_r.iter_mut().enumerate() {
                    a[0] = _mm256_fmadd_ps(w[c][0], xb, a[0]);
                    a[1] = _mm256_fmadd_ps(w[c][1], xb, a[1]);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (c, a) in acc_r.iter().enumerate() {
                let out = tile[r * C + c].as_mut_ptr();
                // SAFETY: a tile entry holds PANEL = 16 floats.
                unsafe {
                    _mm256_storeu_ps(out, a[0]);
                    _mm256_storeu_ps(out.add(8), a[1]);
                }
            }
        }
    }
}

mod portable {
    use super::{MAX_TILE, PANEL};

    /// # Safety
    /// `panels` holds `np·PANEL·k` floats and `x` holds `r·k`.
    pub(super) unsafe fn by_panels(
        panels: *const f32,
        np: usize,
        x: *const f32,
        r: usize,
        k: usize,
        tile: &mut [[f32; PANEL]; MAX_TILE],
    ) {
        // SAFETY: forwarded contract; every shape indexes inside the operands.
        unsafe { by_panels_body!(panels, np, x, r, k, tile) }
    }

    /// C panels × R rows with `f32::mul_add` (the same fused operation as the SIMD kernels).
    unsafe fn kernel<const C: usize, const R: usize>(
        panels: *const f32,
        x: *const f32,
        k: usize,
        tile: &mut [[f32; PANEL]; MAX_TILE],
    ) {
        // SAFETY: the caller's contract: C panels of PANEL·k and R rows of k.
        let (panels, x) = unsafe {
            (
                std::slice::from_raw_parts(panels, C * PANEL * k),
                std::slice::from_raw_parts(x, R * k),
            )
        };
        let mut acc = [[[0f32; PANEL]; C]; R];
        for i in 0..k {
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let xv = x[r * k + i];
                for (c, a) in acc_r.iter_mut().enumerate() {
                    let w = &panels[c * PANEL * k + i * PANEL..][..PANEL];
                    for (l, al) in a.iter_mut().enumerate() {
                        *al = w[l].mul_add(xv, *al);
                    }
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (c, a) in acc_r.iter().enumerate() {
                tile[r * C + c] = *a;
            }
        }
    }
}
