//! `draw_row`'s few-passes form against the composition it replaces and against hand-computed
//! values.

use super::*;

/// A small deterministic generator (xorshift), so the tests need no random crate.
struct Xorshift(u64);

impl Xorshift {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn few_passes_agree_with_the_composition() {
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    let betas = [None, Some(0.0), Some(0.125), Some(0.5), Some(1.0)];
    let mut compared = 0;
    for vocab in [MIN_VOCAB, 5000] {
        for case in 0..60 {
            let mut row = || -> Vec<f32> {
                (0..vocab)
                    .map(|_| ((rng.uniform() - 0.5) * 16.0) as f32)
                    .collect()
            };
            let (logits, reference) = (row(), row());
            // No mask, about 30 % and about 90 % of the tokens forbidden (token 0 never).
            let share = [0.0, 0.3, 0.9][case % 3];
            let forbidden: Vec<bool> = (0..vocab).map(|v| v > 0 && rng.uniform() < share).collect();
            let params = SamplingParams {
                temperature: [1.0, 0.7, 1.6][case / 3 % 3],
                ..Default::default()
            };
            let mixed = betas[case % betas.len()].map(|b| (reference.as_slice(), b));
            let u = rng.uniform();
            let fast = few_passes(&logits, mixed, &forbidden, params.temperature, u);
            let slow = composed(&logits, mixed, &forbidden, &params, u).unwrap();
            assert_eq!(fast.token, slow.token, "vocab {vocab} case {case}");
            let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * b.abs().max(1.0);
            assert!(
                close(fast.logprob, slow.logprob),
                "vocab {vocab} case {case}: {} vs {}",
                fast.logprob,
                slow.logprob
            );
            match (fast.ref_logprob, slow.ref_logprob) {
                (Some(a), Some(b)) => assert!(close(a, b), "case {case}: {a} vs {b}"),
                (a, b) => assert_eq!(a, b, "case {case}"),
            }
            compared += 1;
        }
    }
    assert_eq!(compared, 120);
}

#[test]
fn large_vocabularies_take_the_few_passes_and_match_hand_computed_values() {
    // 1024 equal logits but token 5, three times as likely: p(5) = 3/1026, and with tokens
    // 512.. forbidden, p_A(5) = 3/514.
    let mut logits = vec![0f32; 1024];
    logits[5] = 3f32.ln();
    let params = SamplingParams::default();
    let open = vec![false; 1024];
    let d = draw_row(&logits, None, &open, &params, 0.0).unwrap();
    assert_eq!(d.token, 0);
    assert!((d.logprob as f64 - (1.0f64 / 1026.0).ln()).abs() < 1e-6);
    // Inverse CDF in vocabulary order: tokens 0..4 hold 5/1026, token 5 the next 3/1026.
    let at = |u: f64, forbidden: &[bool]| draw_row(&logits, None, forbidden, &params, u).unwrap();
    assert_eq!(at(4.9 / 1026.0, &open).token, 4);
    assert_eq!(at(5.1 / 1026.0, &open).token, 5);
    assert_eq!(at(7.9 / 1026.0, &open).token, 5);
    assert_eq!(at(8.1 / 1026.0, &open).token, 6);
    let half: Vec<bool> = (0..1024).map(|v| v >= 512).collect();
    let d = at(5.5 / 514.0, &half);
    assert_eq!(d.token, 5);
    assert!((d.logprob as f64 - (3.0f64 / 514.0).ln()).abs() < 1e-6);
    assert!(at(0.999_999, &half).token < 512);
    // β = 1 draws from the reference alone and records both log-probs.
    let reference = vec![0f32; 1024];
    let d = draw_row(
        &logits,
        Some((&reference, 1.0)),
        &half,
        &params,
        5.5 / 512.0,
    )
    .unwrap();
    assert_eq!(d.token, 5);
    assert!((d.ref_logprob.unwrap() as f64 - (1.0f64 / 512.0).ln()).abs() < 1e-6);
    assert!((d.logprob as f64 - (3.0f64 / 514.0).ln()).abs() < 1e-6);
}

#[test]
fn the_walk_finds_tokens_in_any_block_of_the_vocabulary() {
    // 2000 equal logits: token v holds [v/2000, (v+1)/2000) of the inverse CDF, over four
    // blocks of WALK_BLOCK = 512 tokens (the last one partial).
    let logits = vec![0.25f32; 2000];
    let open = vec![false; 2000];
    let params = SamplingParams::default();
    for v in [0usize, 511, 512, 1023, 1500, 1536, 1999] {
        let u = (v as f64 + 0.5) / 2000.0;
        let d = draw_row(&logits, None, &open, &params, u).unwrap();
        assert_eq!(d.token as usize, v, "u = {u}");
        assert!(
            (d.logprob as f64 + 2000f64.ln()).abs() < 1e-5,
            "{}",
            d.logprob
        );
    }
    // Forbidding blocks 1 and 2 whole: the cumulative mass skips them.
    let gaps: Vec<bool> = (0..2000).map(|v| (512..1536).contains(&v)).collect();
    let d = draw_row(&logits, None, &gaps, &params, 600.5 / 976.0).unwrap();
    assert_eq!(d.token, 1536 + 600 - 512);
    assert_eq!(
        draw_row(&logits, None, &gaps, &params, 0.999_999_9)
            .unwrap()
            .token,
        1999
    );
}

#[test]
fn allowed_tokens_far_below_a_forbidden_maximum_still_normalise() {
    // The only large logit is forbidden; the allowed ones sit 1000 below it, where exp at the
    // overall maximum underflows to 0.
    let mut logits = vec![-1000f32; 2048];
    logits[0] = 0.0;
    let forbidden: Vec<bool> = (0..2048).map(|v| v == 0).collect();
    let reference = logits.clone();
    let d = draw_row(
        &logits,
        Some((&reference, 0.5)),
        &forbidden,
        &SamplingParams::default(),
        0.5,
    )
    .unwrap();
    assert_ne!(d.token, 0);
    let uniform = -(2047f64).ln();
    assert!((d.logprob as f64 - uniform).abs() < 1e-5, "{}", d.logprob);
    assert!((d.ref_logprob.unwrap() as f64 - uniform).abs() < 1e-5);
}

#[test]
fn bad_rows_are_errors() {
    let params = SamplingParams::default();
    for vocab in [2, MIN_VOCAB] {
        let logits = vec![0f32; vocab];
        let err = draw_row(&logits, None, &vec![true; vocab], &params, 0.5).unwrap_err();
        assert!(err.to_string().contains("every token is masked"), "{err}");
        let err = draw_row(&logits, None, &[false], &params, 0.5).unwrap_err();
        assert!(err.to_string().contains("a mask of 1"), "{err}");
    }
}

#[test]
fn the_allowed_maximum_is_the_filtered_fold_at_every_tail_length() {
    // Lengths around the eight lanes; the largest value on a forbidden token must be skipped.
    for n in [1usize, 7, 8, 9, 15, 16, 17, 49_152] {
        let values: Vec<f64> = (0..n).map(|v| ((v * 7919) % 1013) as f64 * 0.01).collect();
        for at in [0, n / 2, n - 1] {
            let mut forbidden = vec![false; n];
            let mut s = values.clone();
            s[at] = 99.0;
            forbidden[at] = true;
            let folded = (0..n)
                .filter(|&v| !forbidden[v])
                .map(|v| s[v])
                .fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(
                allowed_max(n, |v| s[v], &forbidden),
                folded,
                "n {n}, at {at}"
            );
            forbidden[at] = false;
            assert_eq!(allowed_max(n, |v| s[v], &forbidden), 99.0, "n {n}, at {at}");
        }
    }
    let nan_and_all_forbidden = allowed_max(3, |v| [f64::NAN, 1.0, 2.0][v], &[false, true, true]);
    assert_eq!(nan_and_all_forbidden, f64::NEG_INFINITY);
}
