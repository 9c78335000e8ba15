//! Sampling at a vocabulary large enough for `draw::draw_row`'s few-passes form (SmolLM2's
//! path, not the tiny models'): the recorded log-probs (plain, mixture and per-row decodes)
//! against the constrained scoring pass,
//! and the streaming generator against the batched one, with forbidden tokens, a mixture and a
//! temperature.

use super::draw::MIN_VOCAB;
use super::tests::{max_diff, random_model};
use super::*;
use crate::model::{Model, ModelConfig, ModelError};

const VOCAB: usize = MIN_VOCAB + 512;

/// Matrices N(0, 0.6²): peaked enough that rows differ, flat enough that EOS is rare.
fn model(seed: u64) -> Model {
    random_model(ModelConfig::tiny_with(VOCAB, 16, 2, 4, 2, 32), 0.6, seed)
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![1, 500, 6],
        vec![1, 1200],
        vec![1, 8, 900, 10, 11],
        vec![1],
    ]
}

fn keys() -> Vec<RowKey> {
    (0..4u64)
        .map(|i| RowKey {
            prompt: 7 + i,
            sample: i % 2,
        })
        .collect()
}

fn config(temperature: f64) -> GenerateConfig {
    GenerateConfig {
        params: SamplingParams {
            temperature,
            ..Default::default()
        },
        rules: TokenRules {
            eos_token_ids: vec![2],
            forbidden_token_ids: (1000..1400).chain([0, 3]).collect(),
            min_new_tokens: 2,
            max_new_tokens: 9,
            eos_at_limit: true,
        },
        seed: 5,
        step: 1,
    }
}

#[test]
fn recorded_logprobs_are_the_constrained_scores() {
    let (policy, reference) = (model(11), model(12));
    for temperature in [1.0, 0.8] {
        let c = config(temperature);
        let gen = generate_mixture(&policy, &reference, 0.3, &prompts(), &keys(), &c).unwrap();
        assert!(gen.tokens.iter().all(|t| t.len() >= 3));
        for t in gen.tokens.iter().flatten() {
            assert!(
                !c.rules.forbidden_token_ids.contains(t),
                "drew forbidden {t}"
            );
        }
        let sp = score_constrained(&policy, &prompts(), &gen.tokens, &c.rules).unwrap();
        let sr = score_constrained(&reference, &prompts(), &gen.tokens, &c.rules).unwrap();
        assert!(max_diff(&sp, &gen.logprobs) < 1e-4, "T = {temperature}");
        assert!(max_diff(&sr, gen.ref_logprobs.as_ref().unwrap()) < 1e-4);
        let plain = generate(&policy, &prompts(), &keys(), &c).unwrap();
        let sp = score_constrained(&policy, &prompts(), &plain.tokens, &c.rules).unwrap();
        assert!(max_diff(&sp, &plain.logprobs) < 1e-4);
        assert_ne!(plain.tokens, gen.tokens, "the mixture draws differently");
        // Plain rows beside mixture rows (Nash-MD-PG's layout) record the reference too.
        let rows = generate_rows(
            &policy,
            &reference,
            &[0.0, 0.3, 0.0, 0.3],
            &prompts(),
            &keys(),
            &c,
        )
        .unwrap();
        assert_eq!(rows.tokens[0], plain.tokens[0]);
        assert_eq!(rows.tokens[1], gen.tokens[1]);
        let sr = score_constrained(&reference, &prompts(), &rows.tokens, &c.rules).unwrap();
        assert!(max_diff(&sr, rows.ref_logprobs.as_ref().unwrap()) < 1e-4);
    }
}

#[test]
fn streamed_rows_equal_the_batched_rows() {
    let m = model(13);
    let filtered = SamplingParams {
        temperature: 1.0,
        top_k: 50,
        top_p: 1.0,
    };
    for params in [config(1.0).params, config(0.7).params, filtered] {
        let c = GenerateConfig {
            params,
            ..config(1.0)
        };
        let batch = generate(&m, &prompts(), &keys(), &c).unwrap();
        for (r, key) in keys().into_iter().enumerate() {
            let out =
                generate_stream(&m, &prompts()[r], key, &c, |_| Ok::<(), ModelError>(())).unwrap();
            assert_eq!(out.tokens, batch.tokens[r], "row {r} {params:?}");
        }
    }
}

#[test]
fn the_device_draw_decodes_as_the_host_draw() {
    use super::generate::run_drawing;
    let (policy32, reference32) = (model(11), model(12));
    // bf16 compute too (CUDA's dtype; its logits reach the draw upcast to f32).
    let half = |m: &Model| m.for_compute(candle_core::DType::BF16).unwrap();
    let (policy16, reference16) = (half(&policy32), half(&reference32));
    let models = [(&policy32, &reference32), (&policy16, &reference16)];
    // Six rows, two prompts repeated (their prefill rows are shared and copied out).
    let prompts: Vec<Vec<u32>> = [prompts(), prompts()[..2].to_vec()].concat();
    let keys: Vec<RowKey> = (0..6u64)
        .map(|i| RowKey {
            prompt: 3 + i,
            sample: i % 2,
        })
        .collect();
    let betas = [0.0, 0.3, 1.0, 0.3, 0.0, 0.7];
    for ((policy, reference), temperature) in models.into_iter().flat_map(|m| [(m, 1.0), (m, 0.8)])
    {
        let c = config(temperature);
        let masks = c.rules.masks(VOCAB).unwrap();
        let on_device = super::device_draw::DeviceDraw::new(&masks, &c.params, policy.device());
        assert!(
            on_device.unwrap().is_some(),
            "these settings are drawn on the device"
        );
        for with_reference in [false, true] {
            let run = |device: bool| {
                let r = with_reference.then_some((reference, &betas[..]));
                run_drawing(policy, r, &prompts, &keys, &c, device).unwrap()
            };
            let (host, device) = (run(false), run(true));
            let what = format!(
                "{:?}, T {temperature}, reference {with_reference}",
                policy.dtype()
            );
            assert_eq!(device.tokens, host.tokens, "{what}");
            assert_eq!(device.finished, host.finished, "{what}");
            assert!(rows_diff(&device.logprobs, &host.logprobs) < 2e-5, "{what}");
            match (&device.ref_logprobs, &host.ref_logprobs) {
                (Some(d), Some(h)) => assert!(rows_diff(d, h) < 2e-5, "{what}"),
                (d, h) => assert_eq!(d.is_some(), h.is_some(), "{what}"),
            }
            assert!(host.tokens.iter().all(|t| t.len() >= 3), "{what}");
        }
    }
}

/// The largest difference between two sets of log-prob rows of the same lengths.
fn rows_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

#[test]
fn streamed_rows_equal_the_batched_rows_with_the_device_draw() {
    use super::generate::run_drawing;
    use super::stream::generate_stream_drawing;
    let m = model(13);
    for temperature in [1.0, 0.7] {
        let c = config(temperature);
        let batch = run_drawing(&m, None, &prompts(), &keys(), &c, true).unwrap();
        for (r, key) in keys().into_iter().enumerate() {
            let out = generate_stream_drawing(&m, &prompts()[r], key, &c, true, |_| {
                Ok::<(), ModelError>(())
            })
            .unwrap();
            assert_eq!(out.tokens, batch.tokens[r], "row {r}, T {temperature}");
        }
    }
}
