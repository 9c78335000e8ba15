//! Micro-kernels of [`super::skinny`]: a block of `C` weight rows against `R` input rows,
//! `out[r][c] = Σ_i x[r][i] · w[c][i]`, for AVX2 + FMA and a portable fallback.
//!
//! Every output element is computed the same way whatever the block it falls in: eight lane
//! sums over the 8-wide chunks of k in order, a fixed reduction tree of the lanes
//! ((l0+l4, l1+l5, l2+l6, l3+l7) → pairs → one), then the k mod 8 tail in order. So results do
//! not depend on `C`, `R`, the split over threads or thread timing (docs/architecture.md
//! #decoding-kernels). The AVX2 path fuses multiply-add, the fallback does not: the two differ
//! in the last bits, and a machine always takes the same one.

/// Lanes per chunk of k (one AVX2 register of f32).
pub(super) const LANES: usize = 8;

/// The fixed lane reduction both paths use.
#[inline(always)]
fn reduce_lanes(l: [f32; LANES]) -> f32 {
    let a = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    let b = [a[0] + a[2], a[1] + a[3]];
    b[0] + b[1]
}

/// Portable micro-kernel (the compiler vectorises the lane loops). `w` holds `C` rows of `k`,
/// `x` holds `R` rows of `k`.
#[inline(always)]
pub(super) fn block_portable<const C: usize, const R: usize>(
    w: &[f32],
    x: &[f32],
    k: usize,
    out: &mut [[f32; C]; R],
) {
    let body = k / LANES * LANES;
    let mut acc = [[[0f32; LANES]; C]; R];
    let mut i = 0;
    while i < body {
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let xr = &x[r * k + i..r * k + i + LANES];
            for (c, acc_rc) in acc_r.iter_mut().enumerate() {
                let wc = &w[c * k + i..c * k + i + LANES];
                for l in 0..LANES {
                    acc_rc[l] += xr[l] * wc[l];
                }
            }
        }
        i += LANES;
    }
    for r in 0..R {
        for c in 0..C {
            let mut s = reduce_lanes(acc[r][c]);
            for i in body..k {
                s += x[r * k + i] * w[c * k + i];
            }
            out[r][c] = s;
        }
    }
}

/// AVX2 + FMA micro-kernel, same contract as [`block_portable`].
///
/// # Safety
/// The CPU must support AVX2 and FMA; `w.len() >= C·k` and `x.len() >= R·k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn block_avx2<const C: usize, const R: usize>(
    w: &[f32],
    x: &[f32],
    k: usize,
    out: &mut [[f32; C]; R],
) {
    use std::arch::x86_64::*;
    debug_assert!(w.len() >= C * k && x.len() >= R * k);
    let body = k / LANES * LANES;
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut i = 0;
    while i < body {
        // SAFETY: i + 8 <= body <= k, so every load stays inside row c of w / row r of x.
        let wv: [__m256; C] =
            std::array::from_fn(|c| unsafe { _mm256_loadu_ps(wp.add(c * k + i)) });
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            let xv = unsafe { _mm256_loadu_ps(xp.add(r * k + i)) };
            for (c, acc_rc) in acc_r.iter_mut().enumerate() {
                *acc_rc = _mm256_fmadd_ps(wv[c], xv, *acc_rc);
            }
        }
        i += LANES;
    }
    for r in 0..R {
        for c in 0..C {
            let mut lanes = [0f32; LANES];
            // SAFETY: `lanes` holds exactly 8 f32.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r][c]) };
            let mut s = reduce_lanes(lanes);
            for i in body..k {
                s = x[r * k + i].mul_add(w[c * k + i], s);
            }
            out[r][c] = s;
        }
    }
}
