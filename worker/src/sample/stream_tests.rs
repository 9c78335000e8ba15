//! Streaming generation against the batched generator (same seed and row keys give the same
//! tokens, at T = 1 and filtered) and, greedy, against the argmax of a full forward pass
//! without a cache; the callback's order and its power to stop generation.

use super::tests::random_model;
use super::*;
use crate::model::{Model, ModelConfig, ModelError};

const VOCAB: usize = 12;

fn model(seed: u64) -> Model {
    random_model(ModelConfig::tiny_with(VOCAB, 16, 2, 4, 2, 32), 0.5, seed)
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![1, 5, 6],
        vec![1, 7],
        vec![1, 8, 9, 10, 11],
        vec![1],
        vec![1, 4, 4],
    ]
}

fn keys(n: usize) -> Vec<RowKey> {
    (0..n as u64)
        .map(|i| RowKey {
            prompt: 10 + i,
            sample: i % 3,
        })
        .collect()
}

fn config(params: SamplingParams, max_new_tokens: usize) -> GenerateConfig {
    GenerateConfig {
        params,
        rules: TokenRules {
            eos_token_ids: vec![2],
            forbidden_token_ids: vec![],
            min_new_tokens: 0,
            max_new_tokens,
            eos_at_limit: false,
        },
        seed: 9,
        step: 0,
    }
}

fn stream(m: &Model, prompt: &[u32], key: RowKey, c: &GenerateConfig) -> (Streamed, Vec<u32>) {
    let mut seen = Vec::new();
    let out = generate_stream(m, prompt, key, c, |tok| {
        seen.push(tok);
        Ok::<(), ModelError>(())
    })
    .unwrap();
    (out, seen)
}

#[test]
fn streamed_rows_equal_the_batched_generator_for_the_same_keys() {
    let m = model(3);
    let filtered = SamplingParams {
        temperature: 0.7,
        top_k: 6,
        top_p: 0.9,
    };
    for params in [SamplingParams::default(), filtered] {
        let c = config(params, 10);
        let batch = generate(&m, &prompts(), &keys(5), &c).unwrap();
        assert!(
            batch.tokens.iter().any(|t| t.len() > 3),
            "{:?}",
            batch.tokens
        );
        for (r, key) in keys(5).into_iter().enumerate() {
            let (out, seen) = stream(&m, &prompts()[r], key, &c);
            assert_eq!(out.tokens, batch.tokens[r], "row {r} {params:?}");
            assert_eq!(out.finished, batch.finished[r], "row {r}");
            assert_eq!(seen, out.tokens, "the callback saw every token in order");
        }
    }
    assert!(
        (0..5).any(|r| {
            let c = config(SamplingParams::default(), 10);
            stream(&m, &prompts()[r], keys(5)[r], &c).0.tokens
                != stream(
                    &m,
                    &prompts()[r],
                    RowKey {
                        prompt: 99,
                        sample: 0,
                    },
                    &c,
                )
                .0
                .tokens
        }),
        "another key draws differently"
    );
}

#[test]
fn greedy_streaming_is_the_argmax_of_a_full_forward() {
    let m = model(5);
    let greedy = SamplingParams {
        temperature: 0.0,
        ..Default::default()
    };
    let c = config(greedy, 7);
    for p in prompts() {
        let (out, _) = stream(
            &m,
            &p,
            RowKey {
                prompt: 0,
                sample: 0,
            },
            &c,
        );
        let mut ids = p.clone();
        let mut expected = Vec::new();
        while expected.len() < 7 {
            let logits = m.logits(&[ids.clone()], &[vec![true; ids.len()]]).unwrap();
            let last = logits.get(0).unwrap().get(ids.len() - 1).unwrap();
            let row = last.to_vec1::<f32>().unwrap();
            let best = (0..VOCAB)
                .max_by(|&x, &y| row[x].total_cmp(&row[y]))
                .unwrap() as u32;
            expected.push(best);
            ids.push(best);
            if best == 2 {
                break;
            }
        }
        assert_eq!(out.tokens, expected, "prompt {p:?}");
        assert_eq!(out.finished, expected.last() == Some(&2));
    }
}

#[test]
fn a_callback_error_stops_generation_and_limits_hold() {
    let m = model(3);
    let mut c = config(SamplingParams::default(), 10);
    c.rules.forbidden_token_ids = vec![2]; // no EOS: runs to the limit
    let mut calls = 0;
    let e = generate_stream(
        &m,
        &[1, 5],
        RowKey {
            prompt: 0,
            sample: 0,
        },
        &c,
        |_| {
            calls += 1;
            if calls == 3 {
                Err(ModelError::Input("reader went away".into()))
            } else {
                Ok(())
            }
        },
    )
    .unwrap_err();
    assert_eq!(calls, 3);
    assert_eq!(e.to_string(), "invalid input: reader went away");
    let (out, _) = stream(
        &m,
        &[1, 5],
        RowKey {
            prompt: 0,
            sample: 0,
        },
        &c,
    );
    assert_eq!(out.tokens.len(), 10);
    assert!(!out.finished);
    c.rules.max_new_tokens = 0;
    assert!(stream(
        &m,
        &[1, 5],
        RowKey {
            prompt: 0,
            sample: 0
        },
        &c
    )
    .0
    .tokens
    .is_empty());
    let e = generate_stream(
        &m,
        &[],
        RowKey {
            prompt: 0,
            sample: 0,
        },
        &c,
        |_| Ok::<(), ModelError>(()),
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "invalid input: the prompt is empty");
}
