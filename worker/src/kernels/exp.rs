//! exp(x) over f32 slices, vectorised and deterministic: the sampler's weights over a large
//! vocabulary (`sample::draw`), where one scalar f64 `exp` per token was the largest cost of a
//! decode step outside the matmuls (docs/architecture.md#decoding-kernels); also the fused
//! row-wise kernels' SwiGLU gate and softmax (`rowwise`) and the fused attention's softmax
//! (`attention`), where libm's scalar `expf` was ≈ 2 % of a batch-8 decode step.
//!
//! The method is Cephes' `expf` (S. L. Moshier, Cephes Math Library, `expf.c`): n = round(x·log₂e),
//! r = x − n·ln 2 with ln 2 split in two parts, exp(r) by a degree-7 polynomial, times 2ⁿ put
//! into the exponent bits; relative error within 2 ulp on the normal range (the test bounds
//! it against f64). Every step is one IEEE operation or a fused multiply-add (`f32::mul_add`),
//! so the AVX-512 and AVX2 builds of [`exp_in_place`] and the portable one give the same bits:
//! results depend on the input alone, never on the instruction set or the split of a slice.
//! Inputs below ln(f32::MIN_POSITIVE) ≈ −87.34 (−∞ included) give 0 (denormals flushed), inputs
//! above 127.5·ln 2 ≈ 88.38 give +∞ (exp is finite up to 88.72, but 2ⁿ would leave the exponent
//! field; the sampler only passes x ≤ 0), and NaN stays NaN.

/// Below this exp(x) is under the smallest normal f32: the result is 0 (denormals flushed).
const LOWEST: f32 = -87.336_54;
/// Above this n would be 128, outside the exponent field: the result is +∞.
const HIGHEST: f32 = 88.376_26;
const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 = LN2_HI + LN2_LO, LN2_HI with few enough bits that n·LN2_HI is exact (Cephes' C1, C2).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5·2²³ + 127: adding it rounds to an integer and leaves n + 127 in the low mantissa bits.
const ROUND_BIAS: f32 = 12_582_912.0 + 127.0;
/// Cephes' coefficients of exp(r) ≈ 1 + r + r²·P(r) on |r| ≤ ln(2)/2.
const P: [f32; 6] = [
    1.987_569_2e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5e-1, // Cephes: 5.0000001201e-1, which is 0.5 in f32
];

/// exp(x) by the method above, for one element.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // n + 127 with n the nearest integer to x·log₂e (ties to even), and n itself.
    let biased = x.mul_add(LOG2_E, ROUND_BIAS);
    let n = biased - ROUND_BIAS;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let p = P[1..].iter().fold(P[0], |acc, &c| acc.mul_add(r, c));
    let y = p.mul_add(r * r, r) + 1.0;
    // 2ⁿ: the low 9 bits of `biased`'s pattern are n + 127 ∈ [1, 254] here, shifted into the
    // exponent field (bit 8 is 0, so the sign stays positive).
    let scale = f32::from_bits(biased.to_bits() << 23);
    if x < LOWEST {
        0.0
    } else if x > HIGHEST {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        y * scale
    }
}

/// `xs[i] = exp(xs[i])` for every element, on the widest instruction set the CPU has.
pub fn exp_in_place(xs: &mut [f32]) {
    match super::isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the features the function is compiled for.
        super::isa::Isa::Avx512 => unsafe { exp_avx512(xs) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        super::isa::Isa::Avx2Fma => unsafe { exp_avx2(xs) },
        _ => exp_portable(xs),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn exp_avx512(xs: &mut [f32]) {
    exp_portable(xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_avx2(xs: &mut [f32]) {
    exp_portable(xs)
}

/// The loop every build runs (vectorised by the compiler under the features above).
#[inline(always)]
fn exp_portable(xs: &mut [f32]) {
    for x in xs {
        *x = exp(*x);
    }
}

/// Σ xs as f64, in a fixed order that vectorises: eight lane sums (element i goes to lane
/// i mod 8), then the lanes added in order. The same result on every machine.
pub fn sum_f64(xs: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += x as f64;
        }
    }
    for (lane, &x) in lanes.iter_mut().zip(tail) {
        *lane += x as f64;
    }
    lanes.iter().sum()
}

#[cfg(test)]
#[path = "exp_tests.rs"]
mod tests;
