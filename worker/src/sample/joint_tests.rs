//! One decode pass for rows of different sources ([`generate_rows`]): row for row it draws what
//! separate [`generate`] and [`generate_mixture`] calls draw, as rows finish at different steps
//! and plain, β = 1 and 0 < β < 1 rows share the batch; plain rows draw the policy's tokens and
//! record the reference's log-probs of them; bad coefficients are errors.
//!
//! Bits versus tokens: a row's tokens do not depend on its batch (bar a uniform within rounding
//! of a boundary, generate.rs module doc), but its log-probs are the same bits only where the
//! forward pass is batch-invariant. The matmul on packed weights, which generation uses for
//! the prefill and every step, is (`kernels::packed` module doc); candle's gemm, which the tiny
//! models use, rounds a row differently with the batch's row count, and left padding to a
//! longer prompt changes the attention sums' grouping. So the bit-for-bit test runs a model the
//! kernels' gate takes and groups whose longest prompt is the call's; the other test compares
//! tokens exactly and log-probs to rounding on a tiny model with mismatched padding and more
//! rows.

use super::tests::{config_with as config, random_model};
use super::*;
use crate::kernels::skinny_op;
use crate::model::{Model, ModelConfig};

/// A model every linear layer of which the skinny kernel takes (each weight has at least
/// `skinny_op::MIN_WEIGHT_ELEMENTS`), so decoding is batch-invariant bit for bit.
fn skinny_model(seed: u64) -> Model {
    let m = random_model(ModelConfig::tiny_with(256, 192, 2, 4, 4, 384), 0.1, seed);
    let smallest = m
        .tensors()
        .values()
        .filter(|t| t.rank() == 2)
        .map(|t| t.elem_count())
        .min()
        .unwrap();
    assert!(
        smallest >= skinny_op::MIN_WEIGHT_ELEMENTS,
        "the skinny kernel's gate changed: a {smallest}-element weight keeps candle's gemm"
    );
    m
}

/// A tiny model (candle's gemm), peaked distributions.
fn tiny_model(seed: u64) -> Model {
    random_model(ModelConfig::tiny_with(12, 16, 2, 4, 2, 32), 0.5, seed)
}

/// Row r's key: its own prompt index, sample 0 for a plain row and 1 for a mixture row (as
/// Nash-MD-PG's y and y′).
fn keys(betas: &[f64]) -> Vec<RowKey> {
    (0..betas.len() as u64)
        .map(|r| RowKey {
            prompt: 100 + r,
            sample: (betas[r as usize] > 0.0) as u64,
        })
        .collect()
}

/// One row of a generation, with its floats as bits (so −0.0 ≠ 0.0 and NaN = NaN).
#[derive(Debug, PartialEq, Eq)]
struct Row {
    tokens: Vec<u32>,
    logprobs: Vec<u32>,
    ref_logprobs: Option<Vec<u32>>,
    finished: bool,
}

fn row(g: &Generation, r: usize) -> Row {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect();
    Row {
        tokens: g.tokens[r].clone(),
        logprobs: bits(&g.logprobs[r]),
        ref_logprobs: g.ref_logprobs.as_ref().map(|all| bits(&all[r])),
        finished: g.finished[r],
    }
}

/// Each row as a separate call over the rows of its β would draw it: [`generate_mixture`] with
/// that β, β = 0 included (the policy's draw, both models' log-probs recorded: what
/// [`generate_rows`] records for a plain row).
fn separately(
    policy: &Model,
    reference: &Model,
    betas: &[f64],
    prompts: &[Vec<u32>],
    config: &GenerateConfig,
) -> Vec<Row> {
    let keys = keys(betas);
    let mut rows: Vec<Option<Row>> = (0..betas.len()).map(|_| None).collect();
    let mut groups: Vec<f64> = betas.to_vec();
    groups.sort_by(f64::total_cmp);
    groups.dedup();
    for beta in groups {
        let members: Vec<usize> = (0..betas.len()).filter(|&r| betas[r] == beta).collect();
        let p: Vec<Vec<u32>> = members.iter().map(|&r| prompts[r].clone()).collect();
        let k: Vec<RowKey> = members.iter().map(|&r| keys[r]).collect();
        let g = generate_mixture(policy, reference, beta, &p, &k, config).unwrap();
        for (i, &r) in members.iter().enumerate() {
            rows[r] = Some(row(&g, i));
        }
    }
    rows.into_iter().map(Option::unwrap).collect()
}

fn joint(
    policy: &Model,
    reference: &Model,
    betas: &[f64],
    prompts: &[Vec<u32>],
    config: &GenerateConfig,
) -> Generation {
    generate_rows(policy, reference, betas, prompts, &keys(betas), config).unwrap()
}

/// What makes the comparison a test of the bookkeeping: rows end at different steps, a plain
/// row ends while a mixture row goes on, and a mixture row ends while a later one goes on (so
/// both models' batches lose a row before another's and the rows after it move up).
fn assert_rows_finish_at_different_steps(g: &Generation, betas: &[f64]) {
    let len = |r: usize| g.tokens[r].len();
    let mixed: Vec<usize> = (0..betas.len()).filter(|&r| betas[r] > 0.0).collect();
    let plain: Vec<usize> = (0..betas.len()).filter(|&r| betas[r] == 0.0).collect();
    assert!(
        plain
            .iter()
            .any(|&p| mixed.iter().any(|&m| len(p) < len(m))),
        "no plain row ends before a mixture row: {:?}",
        g.tokens
    );
    assert!(
        mixed
            .iter()
            .any(|&a| mixed.iter().any(|&b| a < b && len(a) < len(b))),
        "no mixture row ends before a later one: {:?}",
        g.tokens
    );
}

/// Plain rows, β = 1 rows and 0 < β < 1 rows, grouped as Nash-MD-PG lays out y and y′ and
/// interleaved: every row is the separate calls' row, bit for bit.
#[test]
fn joint_rows_are_the_separate_calls_rows_bit_for_bit() {
    assert!(
        skinny_op::enabled(),
        "{} = 0 turns off the batch-invariant decoding matmul this test needs",
        skinny_op::ENABLE_VAR
    );
    let (policy, reference) = (skinny_model(1), skinny_model(2));
    // 38 of 256 ids end a row: rows stop after a few tokens, at different steps.
    let c = config((2..40).collect(), 16);
    let layouts: [&[f64]; 3] = [
        &[0.0, 0.0, 0.0, 0.0, 0.4, 1.0, 0.4, 1.0],
        &[0.4, 0.0, 1.0, 0.0, 0.4, 0.0, 1.0, 0.0],
        &[1.0, 0.4, 0.0, 0.4, 1.0, 0.0, 0.4, 0.0],
    ];
    for betas in layouts {
        // Prompts of two and three tokens, the first row of each β's a three-token one (so a
        // separate call left-pads as the joint call does), and 8 rows: a 24-row prefill, past
        // the skinny kernel's 16 rows, which the packed weights' kernel takes too.
        let prompts: Vec<Vec<u32>> = (0..8)
            .map(|r| {
                let len = if betas[..r].contains(&betas[r]) { 2 } else { 3 };
                (0..len).map(|i| 50 + 13 * r as u32 + i).collect()
            })
            .collect();
        let g = joint(&policy, &reference, betas, &prompts, &c);
        assert_rows_finish_at_different_steps(&g, betas);
        let want = separately(&policy, &reference, betas, &prompts, &c);
        for (r, want) in want.iter().enumerate() {
            assert_eq!(&row(&g, r), want, "{betas:?}: row {r}");
        }
    }
}

/// Nash-MD-PG's layout — y's rows and y′'s rows start from the same prompts — prefills each
/// distinct prompt once and copies its cache rows (`generate::prefill`): every row is still
/// the separate calls' row (which see no duplicate), bit for bit, for the plain and the
/// mixture rows, with rows finishing at different steps after the copy.
#[test]
fn duplicate_prompts_share_one_prefill_bit_for_bit() {
    assert!(skinny_op::enabled(), "{} = 0", skinny_op::ENABLE_VAR);
    let (policy, reference) = (skinny_model(1), skinny_model(2));
    let c = config((2..40).collect(), 16);
    let distinct: Vec<Vec<u32>> = (0..4u32)
        .map(|r| (0..2 + r % 2).map(|i| 60 + 17 * r + i).collect())
        .collect();
    let prompts: Vec<Vec<u32>> = distinct.iter().chain(&distinct).cloned().collect();
    let betas = [0.0, 0.0, 0.0, 0.0, 0.4, 0.4, 0.4, 0.4];
    let g = joint(&policy, &reference, &betas, &prompts, &c);
    assert_rows_finish_at_different_steps(&g, &betas);
    assert_ne!(g.tokens[0], g.tokens[4], "y and y′ of one prompt differ");
    for (r, want) in separately(&policy, &reference, &betas, &prompts, &c)
        .iter()
        .enumerate()
    {
        assert_eq!(&row(&g, r), want, "row {r}");
    }
    // And a plain generation with every prompt twice is each half's generation.
    let keys = |first: u64| -> Vec<RowKey> {
        (first..first + 4)
            .map(|prompt| RowKey { prompt, sample: 0 })
            .collect()
    };
    let both_keys: Vec<RowKey> = keys(0).into_iter().chain(keys(10)).collect();
    let twice = generate(&policy, &prompts, &both_keys, &c).unwrap();
    for (half, first) in [(0, 0), (4, 10)] {
        let alone = generate(&policy, &distinct, &keys(first), &c).unwrap();
        for r in 0..4 {
            assert_eq!(row(&twice, half + r), row(&alone, r), "row {}", half + r);
        }
    }
}

/// Where the forward pass is not batch-invariant (a tiny model on candle's gemm, 24 rows, y′
/// prompts padded to y's longer ones), the tokens are still the separate calls' tokens and the
/// log-probs agree to rounding.
#[test]
fn joint_rows_draw_the_separate_calls_tokens_with_any_kernels() {
    let (policy, reference) = (tiny_model(1), tiny_model(2));
    let c = config(vec![2], 12);
    let betas: Vec<f64> = (0..24)
        .map(|r| match r {
            0..12 => 0.0,
            12..18 => 0.3,
            _ => 1.0,
        })
        .collect();
    let prompts: Vec<Vec<u32>> = (0..24u32)
        .map(|r| {
            let len = if r < 12 { 1 + r % 5 } else { 1 + r % 3 };
            (0..len).map(|i| 1 + (3 * r + i) % 11).collect()
        })
        .collect();
    let g = joint(&policy, &reference, &betas, &prompts, &c);
    assert_rows_finish_at_different_steps(&g, &betas);
    let close = |a: &[u32], b: &[u32]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(&x, &y)| (f32::from_bits(x) - f32::from_bits(y)).abs() < 1e-5)
    };
    for (r, want) in separately(&policy, &reference, &betas, &prompts, &c)
        .iter()
        .enumerate()
    {
        let got = row(&g, r);
        assert_eq!(
            (&got.tokens, got.finished),
            (&want.tokens, want.finished),
            "row {r}"
        );
        assert!(close(&got.logprobs, &want.logprobs), "row {r}");
        let (a, b) = (
            got.ref_logprobs.unwrap(),
            want.ref_logprobs.clone().unwrap(),
        );
        assert!(close(&a, &b), "row {r}");
    }
}

/// The same β for every row is [`generate_mixture`] (the same batch, so the same bits on any
/// kernels), β = 1 included.
#[test]
fn one_coefficient_for_every_row_is_generate_mixture() {
    let (policy, reference) = (tiny_model(3), tiny_model(4));
    let c = config(vec![2], 10);
    let prompts: Vec<Vec<u32>> = vec![vec![1, 5, 6], vec![1, 7], vec![1, 8, 9, 10, 11], vec![1]];
    for beta in [0.25, 1.0] {
        let betas = [beta; 4];
        let want =
            generate_mixture(&policy, &reference, beta, &prompts, &keys(&betas), &c).unwrap();
        assert_eq!(joint(&policy, &reference, &betas, &prompts, &c), want);
    }
}

/// β = 0 rows are plain: they draw what [`generate`] draws, with its policy log-probs, and
/// record the reference's log-probs of those tokens — the reference's constrained log-probs
/// the scoring pass gives (to rounding: the decode and the scoring pass are different
/// forwards), with a forced EOS at 0. The reference runs on every row, so one it cannot run
/// (here one that fails on any token past the first position) is an error even when no row
/// mixes.
#[test]
fn plain_rows_draw_the_policys_tokens_and_record_the_reference() {
    let (policy, reference) = (tiny_model(5), tiny_model(6));
    let mut c = config(vec![2], 8);
    c.rules.eos_at_limit = true;
    let prompts: Vec<Vec<u32>> = vec![vec![1, 5, 6], vec![1, 7], vec![1, 8, 9]];
    let betas = [0.0; 3];
    let g = joint(&policy, &reference, &betas, &prompts, &c);
    let alone = generate(&policy, &prompts, &keys(&betas), &c).unwrap();
    assert_eq!(
        (&g.tokens, &g.logprobs, &g.finished),
        (&alone.tokens, &alone.logprobs, &alone.finished)
    );
    assert!(
        g.tokens.iter().any(|t| t.len() == 8),
        "a row reaches the limit"
    );
    let scored = score_constrained(&reference, &prompts, &g.tokens, &c.rules).unwrap();
    let scored = scored.logprobs.to_vec2::<f32>().unwrap();
    for (r, recorded) in g.ref_logprobs.as_ref().unwrap().iter().enumerate() {
        assert_eq!(recorded.len(), g.tokens[r].len(), "row {r}");
        for (t, &lr) in recorded.iter().enumerate() {
            assert!((lr - scored[r][t]).abs() < 1e-5, "row {r} token {t}");
        }
        if g.tokens[r].len() == 8 {
            assert_eq!(
                (g.tokens[r][7], recorded[7]),
                (2, 0.0),
                "row {r}'s forced EOS"
            );
        }
    }
    let mut config_ref = ModelConfig::tiny_with(12, 16, 2, 4, 2, 32);
    config_ref.sliding_window = Some(1);
    let unusable = random_model(config_ref, 0.5, 6);
    let err = generate_rows(&policy, &unusable, &betas, &prompts, &keys(&betas), &c).unwrap_err();
    assert!(err.to_string().contains("sliding_window"), "{err}");
}

/// Bad coefficients and vocabularies are errors that say what is wrong, never panics.
#[test]
fn bad_coefficients_are_errors() {
    let (policy, reference) = (tiny_model(7), tiny_model(8));
    let c = config(vec![2], 4);
    let prompts = vec![vec![1u32, 5], vec![1, 6]];
    let k = keys(&[0.0, 0.0]);
    let message = |betas: &[f64]| {
        generate_rows(&policy, &reference, betas, &prompts, &k, &c)
            .unwrap_err()
            .to_string()
    };
    assert!(message(&[0.5]).contains("1 mixture coefficients for 2 prompts"));
    assert!(message(&[0.0, -0.1]).contains("row 1 must be in [0, 1], got -0.1"));
    assert!(message(&[1.5, 0.0]).contains("row 0 must be in [0, 1], got 1.5"));
    assert!(message(&[0.0, f64::NAN]).contains("got NaN"));
    let other = tiny_model_vocab(13);
    let err = generate_rows(&policy, &other, &[0.0, 0.5], &prompts, &k, &c).unwrap_err();
    assert!(err
        .to_string()
        .contains("vocabulary 12 differs from the reference's 13"));
    // The one-coefficient entry still refuses a bad β with no rows to apply it to.
    let err = generate_mixture(&policy, &reference, 1.5, &[], &[], &c).unwrap_err();
    assert!(err
        .to_string()
        .contains("mixture_coef must be in [0, 1], got 1.5"));
}

fn tiny_model_vocab(vocab: usize) -> Model {
    random_model(ModelConfig::tiny_with(vocab, 16, 2, 4, 2, 32), 0.5, 9)
}
