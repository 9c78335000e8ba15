//! The vectorised exp against f64's and across instruction sets.

use super::*;

/// Inputs over the whole range: a dense grid on [−90, 90], the special values, the edges.
fn inputs() -> Vec<f32> {
    let mut xs: Vec<f32> = (0..=360_000).map(|i| -90.0 + i as f32 * 5e-4).collect();
    xs.extend([
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        f32::MIN_POSITIVE,
        LOWEST,
        LOWEST.next_up(),
        LOWEST.next_down(),
        HIGHEST,
        HIGHEST.next_up(),
        f32::NEG_INFINITY,
        f32::INFINITY,
        f32::MAX,
        f32::MIN,
        std::f32::consts::LN_2 / 2.0,
        -std::f32::consts::LN_2 / 2.0,
    ]);
    xs
}

#[test]
fn exp_is_within_two_ulp_of_f64_on_the_normal_range() {
    let mut worst = 0f64;
    for x in inputs() {
        let got = exp(x);
        if x < LOWEST {
            assert_eq!(got.to_bits(), 0, "exp({x}) = {got}, expected +0");
        } else if x > HIGHEST {
            assert_eq!(got, f32::INFINITY, "exp({x})");
        } else {
            let want = (x as f64).exp();
            assert!(got.is_finite() && got >= 0.0, "exp({x}) = {got}");
            // One ulp of the f32 result, at least the smallest normal's (denormal results).
            let ulp = (want as f32).max(f32::MIN_POSITIVE);
            let ulp = (ulp.next_up() - ulp) as f64;
            let err = (got as f64 - want).abs() / ulp;
            worst = worst.max(err);
            assert!(
                err <= 2.0,
                "exp({x}) = {got}, f64 says {want}: {err:.2} ulp"
            );
        }
    }
    assert!(
        worst > 0.0,
        "every result exact: the comparison is not looking"
    );
    assert!(exp(f32::NAN).is_nan());
    assert_eq!(exp(0.0), 1.0);
}

#[test]
fn every_instruction_set_and_split_gives_the_same_bits() {
    let xs = inputs();
    let one_by_one: Vec<u32> = xs.iter().map(|&x| exp(x).to_bits()).collect();
    let mut whole = xs.clone();
    exp_in_place(&mut whole);
    let mut portable = xs.clone();
    exp_portable(&mut portable);
    // Odd pieces, so the vectorised body and its scalar remainder both see every input.
    let mut pieces = xs.clone();
    for piece in pieces.chunks_mut(37) {
        exp_in_place(piece);
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&whole),
        one_by_one,
        "{:?}",
        super::super::isa::detect()
    );
    assert_eq!(bits(&portable), one_by_one);
    assert_eq!(bits(&pieces), one_by_one);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        let mut avx2 = xs.clone();
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        unsafe { exp_avx2(&mut avx2) };
        assert_eq!(bits(&avx2), one_by_one);
    }
}

#[test]
fn sum_f64_adds_in_eight_lanes() {
    assert_eq!(sum_f64(&[]), 0.0);
    assert_eq!(sum_f64(&[1.5]), 1.5);
    let xs: Vec<f32> = (1..=100).map(|i| i as f32).collect();
    assert_eq!(sum_f64(&xs), 5050.0);
    // 1 in lane 0, 2^60 and −2^60 both in lane 1: added as lanes the 1 survives, where a
    // sequential sum 1 + 2^60 − 2^60 loses it.
    let mut xs = vec![0f32; 16];
    xs[0] = 1.0;
    xs[1] = 2f32.powi(60);
    xs[9] = -(2f32.powi(60));
    assert_eq!(sum_f64(&xs), 1.0);
}
