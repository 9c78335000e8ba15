//! The device draw (run here on CPU tensors, the same candle ops a GPU runs) against the host's
//! few-passes draw, `draw_row`: the same tokens, log-probs within f32 rounding.

use super::*;
use crate::sample::draw::draw_row;
use crate::sample::rules::TokenRules;
use crate::test_support::uniform;

/// `rows` rows of `vocab` logits in [−8, 8), from seed `seed`.
fn logits(rows: usize, vocab: usize, seed: u64) -> Vec<Vec<f32>> {
    uniform(rows * vocab, seed, -8.0, 8.0)
        .chunks(vocab)
        .map(<[f32]>::to_vec)
        .collect()
}

fn rules(vocab: usize) -> TokenRules {
    TokenRules {
        eos_token_ids: vec![2],
        // A run of forbidden ids across a block boundary, and a few scattered ones.
        forbidden_token_ids: (500..530).chain([0, 3, vocab as u32 - 1]).collect(),
        min_new_tokens: 2,
        max_new_tokens: 6,
        eos_at_limit: true,
    }
}

fn tensor(rows: &[Vec<f32>]) -> Tensor {
    let (b, n) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, n), &Device::Cpu).unwrap()
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 2e-5 * b.abs().max(1.0)
}

#[test]
fn draws_the_host_draws_tokens_and_log_probs() {
    let mut compared = 0;
    // A whole number of blocks, and one with a padded last block.
    for vocab in [3 * WALK_BLOCK, MIN_VOCAB + 700] {
        let masks = rules(vocab).masks(vocab).unwrap();
        for temperature in [1.0, 0.7] {
            let params = SamplingParams {
                temperature,
                ..Default::default()
            };
            let draw = DeviceDraw::new(&masks, &params, &Device::Cpu)
                .unwrap()
                .expect("the few-passes settings");
            // Positions 0 (EOS forbidden), 3 (open) and 5 (EOS forced).
            for t in [0, 3, 5] {
                // Without a reference, and with rows of β 0, 0.3, 1 and 0.7.
                for with_reference in [false, true] {
                    let betas = [0.0, 0.3, 1.0, 0.7];
                    let seed = compared as u64;
                    let (x, r) = (logits(4, vocab, seed), logits(4, vocab, seed + 1));
                    let (xt, rt) = (tensor(&x), tensor(&r));
                    for draw_seed in 0..10 {
                        let us: Vec<f64> = uniform(4, seed * 10 + draw_seed, 0.0, 1.0)
                            .into_iter()
                            .map(f64::from)
                            .collect();
                        let batch = DeviceBatch {
                            logits: &xt,
                            reference: with_reference.then_some((&rt, &betas[..])),
                        };
                        let got = draw.draw(batch, &masks, t, &us).unwrap();
                        for row in 0..4 {
                            let mixed = with_reference.then(|| (r[row].as_slice(), betas[row]));
                            let want =
                                draw_row(&x[row], mixed, masks.at(t), &params, us[row]).unwrap();
                            let what = format!("vocab {vocab} T {temperature} t {t} row {row}");
                            assert_eq!(got[row].token, want.token, "{what}");
                            assert!(
                                close(got[row].logprob, want.logprob),
                                "{what}: {} vs {}",
                                got[row].logprob,
                                want.logprob
                            );
                            match (got[row].ref_logprob, want.ref_logprob) {
                                (Some(a), Some(b)) => assert!(close(a, b), "{what}: {a} vs {b}"),
                                (a, b) => assert_eq!(a, b, "{what}"),
                            }
                            if t == 5 {
                                assert_eq!(got[row].token, 2, "{what}: EOS is forced");
                            }
                            compared += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(compared, 2 * 2 * 3 * 2 * 10 * 4);
}

#[test]
fn the_ends_of_the_distribution_are_drawn() {
    // u = 0 takes the first allowed token with weight, u just below 1 the last.
    let vocab = MIN_VOCAB;
    let masks = rules(vocab).masks(vocab).unwrap();
    let draw = DeviceDraw::new(&masks, &SamplingParams::default(), &Device::Cpu)
        .unwrap()
        .unwrap();
    let x = tensor(&[vec![0.0; vocab]]);
    let first = draw.draw(
        DeviceBatch {
            logits: &x,
            reference: None,
        },
        &masks,
        3,
        &[0.0],
    );
    assert_eq!(
        first.unwrap()[0].token,
        1,
        "0 and 3 are forbidden, 1 is the first allowed"
    );
    let last = draw.draw(
        DeviceBatch {
            logits: &x,
            reference: None,
        },
        &masks,
        3,
        &[1.0 - 1e-12],
    );
    assert_eq!(
        last.unwrap()[0].token as usize,
        vocab - 2,
        "the last id is forbidden"
    );
}

#[test]
fn a_row_without_an_allowed_finite_logit_is_an_error() {
    let vocab = MIN_VOCAB;
    let masks = rules(vocab).masks(vocab).unwrap();
    let draw = DeviceDraw::new(&masks, &SamplingParams::default(), &Device::Cpu)
        .unwrap()
        .unwrap();
    let x = tensor(&[vec![0.5; vocab], vec![f32::NEG_INFINITY; vocab]]);
    let err = draw
        .draw(
            DeviceBatch {
                logits: &x,
                reference: None,
            },
            &masks,
            3,
            &[0.5, 0.5],
        )
        .unwrap_err();
    assert!(err.to_string().contains("row 1"), "{err}");
}

#[test]
fn only_the_few_passes_settings_are_drawn_on_the_device() {
    let vocab = MIN_VOCAB;
    let masks = rules(vocab).masks(vocab).unwrap();
    let with = |params: SamplingParams| {
        DeviceDraw::new(&masks, &params, &Device::Cpu)
            .unwrap()
            .is_some()
    };
    assert!(with(SamplingParams::default()));
    assert!(!with(SamplingParams {
        temperature: 0.0,
        ..Default::default()
    }));
    assert!(!with(SamplingParams {
        top_k: 5,
        ..Default::default()
    }));
    assert!(!with(SamplingParams {
        top_p: 0.9,
        ..Default::default()
    }));
    let small = rules(64).masks(64).unwrap();
    assert!(
        DeviceDraw::new(&small, &SamplingParams::default(), &Device::Cpu)
            .unwrap()
            .is_none()
    );
}
