//! The fused attention's key transpose (`super::attention`): Kᵀ[e][j] = K[j][e] for the s keys
//! of one (sequence, key/value head), read from rows `stride` apart. Pure data movement, so
//! every path gives the same Kᵀ; on AVX-512 whole 16 × 16 tiles are transposed in registers
//! (16 loads, 64 shuffles, 16 stores) instead of one scalar load and one scattered store per
//! element, which were a third of decoding's attention time at batch 8
//! (BENCHMARKS.md#prefill-on-the-panel-kernel).

/// Kᵀ (`kt`, [d][s]) of the keys `src[base + j·stride..][..d]` for j in 0..s.
///
/// Panics if a key row or `kt` is out of bounds (the attention entry checks its operands first).
pub(super) fn keys(src: &[f32], base: usize, stride: usize, s: usize, d: usize, kt: &mut [f32]) {
    assert!(
        kt.len() >= d * s,
        "key transpose: Kᵀ holds {} < {d}·{s}",
        kt.len()
    );
    if s == 0 || d == 0 {
        return;
    }
    assert!(
        base + (s - 1) * stride + d <= src.len(),
        "key transpose: key rows end past the buffer"
    );
    #[cfg(target_arch = "x86_64")]
    if super::isa::detect() == super::isa::Isa::Avx512 {
        let (full_s, full_d) = (s / 16 * 16, d / 16 * 16);
        for j0 in (0..full_s).step_by(16) {
            for e0 in (0..full_d).step_by(16) {
                // SAFETY: AVX-512F is present; rows j0..j0+16 and columns e0..e0+16 lie inside
                // src (asserted above: j < s, e < d) and Kᵀ rows e0..e0+16, columns j0..j0+16
                // inside kt.
                unsafe { avx512::tile(src.as_ptr().add(base), stride, j0, e0, s, kt.as_mut_ptr()) };
            }
        }
        scalar(src, base, stride, (0, s), (full_d, d), s, kt);
        scalar(src, base, stride, (full_s, s), (0, full_d), s, kt);
        return;
    }
    scalar(src, base, stride, (0, s), (0, d), s, kt);
}

/// Keys j0..j1, dimensions e0..e1, one element at a time.
fn scalar(
    src: &[f32],
    base: usize,
    stride: usize,
    (j0, j1): (usize, usize),
    (e0, e1): (usize, usize),
    s: usize,
    kt: &mut [f32],
) {
    for j in j0..j1 {
        let row = &src[base + j * stride..];
        for e in e0..e1 {
            kt[e * s + j] = row[e];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// The 16 × 16 tile of keys j0.., dimensions e0..: rows `src + (j0 + i)·stride + e0`, written
    /// to `kt + (e0 + c)·s + j0`.
    ///
    /// # Safety
    /// AVX-512F; the tile lies inside both operands.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile(
        src: *const f32,
        stride: usize,
        j0: usize,
        e0: usize,
        s: usize,
        kt: *mut f32,
    ) {
        // SAFETY: the caller's contract covers every row read and column written below.
        unsafe {
            let r: [__m512; 16] =
                std::array::from_fn(|i| _mm512_loadu_ps(src.add((j0 + i) * stride + e0)));
            // Pairs of rows interleaved per 128-bit lane: t[2p] = (r2p[4L], r2p+1[4L], r2p[4L+1],
            // r2p+1[4L+1]) in lane L, t[2p+1] the same for elements 4L+2, 4L+3.
            let t: [__m512; 16] = std::array::from_fn(|i| {
                let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
                if i % 2 == 0 {
                    _mm512_unpacklo_ps(a, b)
                } else {
                    _mm512_unpackhi_ps(a, b)
                }
            });
            // Groups of four rows: u[4g + m] holds element 4L + m of rows 4g..4g+4 in lane L.
            let u: [__m512; 16] = std::array::from_fn(|i| {
                let (g, m) = (i / 4, i % 4);
                let (a, b) = (
                    _mm512_castps_pd(t[4 * g + m / 2]),
                    _mm512_castps_pd(t[4 * g + 2 + m / 2]),
                );
                _mm512_castpd_ps(if m % 2 == 0 {
                    _mm512_unpacklo_pd(a, b)
                } else {
                    _mm512_unpackhi_pd(a, b)
                })
            });
            for m in 0..4 {
                // Lanes (0, 2) and (1, 3) of groups 0|1 and 2|3, then across them: column m,
                // 8 + m, 4 + m and 12 + m of the tile.
                let a = _mm512_shuffle_f32x4::<0x88>(u[m], u[4 + m]);
                let b = _mm512_shuffle_f32x4::<0xdd>(u[m], u[4 + m]);
                let c = _mm512_shuffle_f32x4::<0x88>(u[8 + m], u[12 + m]);
                let d = _mm512_shuffle_f32x4::<0xdd>(u[8 + m], u[12 + m]);
                let column = |col: usize| kt.add((e0 + col) * s + j0);
                _mm512_storeu_ps(column(m), _mm512_shuffle_f32x4::<0x88>(a, c));
                _mm512_storeu_ps(column(8 + m), _mm512_shuffle_f32x4::<0xdd>(a, c));
                _mm512_storeu_ps(column(4 + m), _mm512_shuffle_f32x4::<0x88>(b, d));
                _mm512_storeu_ps(column(12 + m), _mm512_shuffle_f32x4::<0xdd>(b, d));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_gives_the_scalar_transpose_for_full_and_partial_tiles() {
        // s and d below, at and past multiples of 16; rows padded apart (a cache's capacity).
        for &(s, d) in &[
            (1, 1),
            (15, 16),
            (16, 16),
            (17, 64),
            (80, 64),
            (33, 72),
            (48, 8),
        ] {
            let stride = d + 5;
            let base = 3;
            let src: Vec<f32> = (0..base + s * stride).map(|i| i as f32).collect();
            let mut got = vec![f32::NAN; d * s];
            keys(&src, base, stride, s, d, &mut got);
            let mut want = vec![f32::NAN; d * s];
            scalar(&src, base, stride, (0, s), (0, d), s, &mut want);
            assert_eq!(got, want, "s {s} d {d}");
            for j in 0..s {
                for e in 0..d {
                    assert_eq!(want[e * s + j], src[base + j * stride + e]);
                }
            }
        }
    }
}
