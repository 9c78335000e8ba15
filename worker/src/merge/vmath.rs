//! exp and tanh in f32 written for the auto-vectoriser: straight-line code of IEEE adds,
//! multiplies, divides, compares and integer bit operations (no libm call, no branch), so a loop
//! over a slice that calls them compiles to SIMD, and every lane computes bit for bit what the
//! scalar code computes. No fused multiply-add is used: results do not depend on the CPU, so
//! workers on different machines agree on every β (their counts are added together).
//!
//! [`simd_fn!`] compiles a function of such loops for AVX2 and for the x86-64 baseline SSE2 and
//! calls the one the CPU runs — the same operations, so the same bits.
//!
//! Both functions follow Cephes (S. L. Moshier, "Methods and Programs for Mathematical
//! Functions", 1989; `expf.c`, `tanhf.c`): relative error about 1e-7 (1–2 ulp), tested below
//! against f64.

/// e^x for finite x; the argument is clamped to [−87, 88] (e^88 ≈ 1.65e38, e^−87 ≈ 1.6e−38,
/// both normal), so x > 88 gives e^88 where libm would give up to f32::MAX or ∞. PCB calls it
/// with n·x² ≤ n (n models) and with 2|y| in tanh, where anything past 88 gives tanh = ±1 anyway.
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes' coefficients as published
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Adding 1.5·2^23 rounds a value of magnitude < 2^22 to the nearest integer, which then sits
    // in the low mantissa bits: k comes out as an integer without a float-to-int conversion.
    const MAGIC: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let shifted = x * LOG2E + MAGIC;
    let kf = shifted - MAGIC;
    let k = shifted.to_bits() as i32 - MAGIC.to_bits() as i32;
    // r = x − k·ln 2, with ln 2 split so that k·C1 is exact (Cody–Waite).
    let r = x - kf * 0.693_359_375;
    let r = r - kf * -2.121_944_4e-4;
    let z = r * r;
    let p = ((((1.987_569_1e-4f32 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 5.000_000_1e-1;
    let y = p * z + r + 1.0;
    // 2^k for k in [−126, 127]: the exponent field alone.
    y * f32::from_bits(((k + 127) as u32) << 23)
}

/// |x| below which [`tanh`] is [`tanh_poly`].
pub const TANH_POLY_BELOW: f32 = 0.625;

/// tanh(x) for finite x: an odd minimax polynomial for |x| < [`TANH_POLY_BELOW`], else
/// sign(x)·(1 − 2/(e^{2|x|} + 1)); both are computed and one is selected (no branch).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let large = (1.0 - 2.0 / (exp(2.0 * a) + 1.0)).copysign(x);
    if a < TANH_POLY_BELOW {
        tanh_poly(x)
    } else {
        large
    }
}

/// [`tanh`]'s polynomial alone: equal to it for |x| < [`TANH_POLY_BELOW`] (a loop whose
/// arguments are all that small can skip the exponential).
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes' coefficients as published
pub fn tanh_poly(x: f32) -> f32 {
    let z = x * x;
    let p = (((-5.704_988_7e-3f32 * z + 2.063_908_9e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1)
        * z
        - 3.333_328_2e-1;
    p * z * x + x
}

/// Defines a function whose body is compiled twice, for AVX2 (8 lanes) and for the x86-64
/// baseline SSE2 (4 lanes), and picks one at each call by the running CPU (std caches the CPUID
/// answer). Put the vectorisable loops in the body and call only `#[inline(always)]` helpers
/// such as [`exp`] and [`tanh`] from them. Without `fma` in the feature list both versions
/// perform the same IEEE operations, so they return the same bits.
///
/// ```text
/// simd_fn! {
///     /// Docs.
///     pub fn name(a: &[f32], out: &mut [f32]) { ... }
/// }
/// ```
#[macro_export]
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the running CPU supports AVX2 (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}

#[cfg(test)]
mod tests {
    /// Relative error against f64 over a geometric grid of magnitudes, both signs.
    fn worst(f: impl Fn(f32) -> f32, g: impl Fn(f64) -> f64, from: f32, to: f32) -> f64 {
        let mut worst = 0f64;
        let mut x = from;
        while x < to {
            for v in [x, -x] {
                let want = g(v as f64);
                let got = f(v) as f64;
                if want != 0.0 {
                    worst = worst.max(((got - want) / want).abs());
                }
            }
            x *= 1.0007;
        }
        worst
    }

    #[test]
    fn exp_is_accurate_to_a_few_ulp() {
        let w = worst(super::exp, f64::exp, 1e-10, 87.0);
        eprintln!("exp: worst relative error {w:e}");
        assert!(w < 2.5e-7, "exp: worst relative error {w}");
        assert_eq!(super::exp(0.0), 1.0);
        assert_eq!(super::exp(-0.0), 1.0);
        // Clamped, finite and normal at both ends.
        assert_eq!(super::exp(1000.0), super::exp(88.0));
        assert!(super::exp(88.0).is_finite());
        assert!(super::exp(-1000.0).is_normal());
    }

    #[test]
    fn tanh_is_accurate_to_a_few_ulp() {
        let w = worst(super::tanh, f64::tanh, 1e-12, 30.0);
        eprintln!("tanh: worst relative error {w:e}");
        assert!(w < 3e-7, "tanh: worst relative error {w}");
        assert_eq!(super::tanh(0.0), 0.0);
        assert_eq!(super::tanh(-0.0), 0.0);
        assert_eq!(super::tanh(100.0), 1.0);
        assert_eq!(super::tanh(-1e30), -1.0);
    }

    /// The SIMD lanes compute what the scalar code computes: a vectorised loop under
    /// [`simd_fn!`] against element-by-element calls kept scalar by `black_box`.
    #[test]
    fn vectorised_loops_match_scalar_bits() {
        let xs: Vec<f32> = (0..10_000)
            .map(|i| ((i as f32) * 0.731).sin() * 10f32.powi(i % 9 - 6))
            .collect();
        crate::simd_fn! {
            fn both(xs: &[f32], out: &mut [f32]) {
                for (o, &x) in out.iter_mut().zip(xs) {
                    *o = super::exp(x * 3.0) * super::tanh(x);
                }
            }
        }
        let mut vector = vec![0f32; xs.len()];
        both(&xs, &mut vector);
        for (i, &x) in xs.iter().enumerate() {
            let x = std::hint::black_box(x);
            let scalar = super::exp(x * 3.0) * super::tanh(x);
            assert_eq!(vector[i].to_bits(), scalar.to_bits(), "x = {x}");
        }
    }
}
