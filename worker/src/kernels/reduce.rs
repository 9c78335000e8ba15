//! The largest element of an f32 slice, vectorised: the shift of every softmax and log-sum-exp
//! over a row (the sampler's 49 152-token rows, the token log-probs, the fused attention's
//! scores). A scalar `f32::max` fold is one dependent chain (≈ 4 cycles per element); sixteen
//! lanes break it, and since a maximum is exact in any order the result is the fold's.

/// max over `xs` as `xs.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))` gives it (a NaN is
/// passed over; −∞ for an empty slice or one of NaNs), on the widest instruction set the CPU
/// has. Only a ±0 tie may come out with the other sign, which no `exp(x − max)` can tell apart.
pub fn max(xs: &[f32]) -> f32 {
    match super::isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the features the function is compiled for.
        super::isa::Isa::Avx512 => unsafe { max_avx512(xs) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        super::isa::Isa::Avx2Fma => unsafe { max_avx2(xs) },
        _ => max_in_lanes(xs),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_avx512(xs: &[f32]) -> f32 {
    max_in_lanes(xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn max_avx2(xs: &[f32]) -> f32 {
    max_in_lanes(xs)
}

/// The loop every build runs: sixteen running maxima (element i in lane i mod 16), then the
/// tail and the lanes folded. Inlined, so a caller compiled for a wider instruction set (the
/// fused attention) gets it at that width.
#[inline(always)]
pub(crate) fn max_in_lanes(xs: &[f32]) -> f32 {
    // `x > a` is false for a NaN x, so a NaN never replaces a lane's value (as in `f32::max`).
    let larger = |a: f32, x: f32| if x > a { x } else { a };
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = xs.chunks_exact(16);
    for chunk in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(chunk) {
            *l = larger(*l, x);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &x| larger(a, x));
    lanes.iter().fold(tail, |a, &x| larger(a, x))
}

#[cfg(test)]
#[path = "reduce_tests.rs"]
mod tests;
