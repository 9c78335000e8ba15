//! Sampling tests: the mixture's special cases and one-step distribution, KV-cached log-probs
//! against a full recomputation, masks and stopping, and independence of batch composition.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use super::filter::{log_softmax_row, mixed_logits, token_distribution};
use super::*;
use crate::model::{Model, ModelConfig};
use crate::rng::{Purpose, StreamKey};

const VOCAB: usize = 12;

/// A tiny model with peaked distributions (matrices N(0, 0.5²)), frozen.
fn model(seed: u64) -> Model {
    random_model(ModelConfig::tiny_with(VOCAB, 16, 2, 4, 2, 32), 0.5, seed)
}

/// A frozen model of `config` with matrices N(0, std²) from `seed` and unit norms.
pub(super) fn random_model(config: ModelConfig, std: f64, seed: u64) -> Model {
    let mut s = StreamKey::new(seed, 0, 0, 0, Purpose::Init).stream();
    let tensors: BTreeMap<String, Tensor> = config
        .tensor_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let norm = name.ends_with("norm.weight");
            let values: Vec<f32> = (0..n)
                .map(|_| if norm { 1.0 } else { (std * s.normal()) as f32 })
                .collect();
            (name, Tensor::from_vec(values, shape, &Device::Cpu).unwrap())
        })
        .collect();
    Model::new(config, tensors, false).unwrap()
}

fn prompts() -> Vec<Vec<u32>> {
    vec![vec![1, 5, 6], vec![1, 7], vec![1, 8, 9, 10, 11], vec![1]]
}

fn keys(n: usize) -> Vec<RowKey> {
    (0..n as u64)
        .map(|i| RowKey {
            prompt: 100 + i,
            sample: i % 2,
        })
        .collect()
}

fn config(max_new_tokens: usize) -> GenerateConfig {
    config_with(vec![2], max_new_tokens)
}

/// Stops at any id in `eos`, at most `max_new_tokens`, no forced EOS; T = 1, seed 42, step 3.
pub(super) fn config_with(eos: Vec<u32>, max_new_tokens: usize) -> GenerateConfig {
    GenerateConfig {
        params: SamplingParams::default(),
        rules: TokenRules {
            eos_token_ids: eos,
            forbidden_token_ids: vec![],
            min_new_tokens: 0,
            max_new_tokens,
            eos_at_limit: false,
        },
        seed: 42,
        step: 3,
    }
}

#[test]
fn mixture_with_beta_zero_or_one_is_plain_sampling() {
    let (policy, reference) = (model(1), model(2));
    let c = config(12);
    let p = generate(&policy, &prompts(), &keys(4), &c).unwrap();
    let r = generate(&reference, &prompts(), &keys(4), &c).unwrap();
    assert_ne!(
        p.tokens, r.tokens,
        "the two models should sample differently"
    );
    let m0 = generate_mixture(&policy, &reference, 0.0, &prompts(), &keys(4), &c).unwrap();
    assert_eq!(m0.tokens, p.tokens);
    assert_eq!(m0.logprobs, p.logprobs);
    assert_eq!(m0.finished, p.finished);
    let m1 = generate_mixture(&policy, &reference, 1.0, &prompts(), &keys(4), &c).unwrap();
    assert_eq!(m1.tokens, r.tokens);
    assert_eq!(m1.ref_logprobs.as_ref().unwrap(), &r.logprobs);
}

#[test]
fn one_step_mixture_distribution_is_the_normalised_geometric_mixture() {
    let (policy, reference) = (model(3), model(4));
    let beta = 0.3;
    let prompt = vec![vec![1u32, 5, 9]];
    let last = |m: &Model| -> Vec<f32> {
        m.logits(&prompt, &[vec![true; 3]])
            .unwrap()
            .get(0)
            .unwrap()
            .get(2)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (lp, lr) = (last(&policy), last(&reference));
    // independently: π^(1−β)·μ^β from probabilities, normalised
    let soft = |l: &[f32]| {
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        l.iter()
            .map(|&x| (x as f64).exp() / z)
            .collect::<Vec<f64>>()
    };
    let (pp, pr) = (soft(&lp), soft(&lr));
    let un: Vec<f64> = pp
        .iter()
        .zip(&pr)
        .map(|(a, b)| a.powf(1.0 - beta) * b.powf(beta))
        .collect();
    let z: f64 = un.iter().sum();
    let expected: Vec<f64> = un.iter().map(|u| u / z).collect();
    let got = token_distribution(&mixed_logits(&lp, &lr, beta), &SamplingParams::default());
    for (g, e) in got.iter().zip(&expected) {
        assert!((g - e).abs() < 1e-9, "{got:?} vs {expected:?}");
    }
    // empirical frequencies of the sampler over many stream keys
    let n = 4000;
    let many = vec![prompt[0].clone(); n];
    let gen = generate_mixture(&policy, &reference, beta, &many, &keys(n), &config(1)).unwrap();
    let mut counts = [0usize; VOCAB];
    gen.tokens.iter().for_each(|t| counts[t[0] as usize] += 1);
    for (v, (&c, &p)) in counts.iter().zip(&expected).enumerate() {
        let f = c as f64 / n as f64;
        let sd = (p * (1.0 - p) / n as f64).sqrt();
        assert!(
            (f - p).abs() < 5.0 * sd + 2e-3,
            "token {v}: frequency {f} vs probability {p}"
        );
    }
    // the recorded log-probs are the policy's and the reference's at T = 1
    let (slp, slr) = (log_softmax_row(&lp), log_softmax_row(&lr));
    for (r, t) in gen.tokens.iter().enumerate().take(50) {
        assert!((gen.logprobs[r][0] as f64 - slp[t[0] as usize]).abs() < 1e-5);
        assert!(
            (gen.ref_logprobs.as_ref().unwrap()[r][0] as f64 - slr[t[0] as usize]).abs() < 1e-5
        );
    }
}

pub(super) fn max_diff(scored: &Scored, rows: &[Vec<f32>]) -> f32 {
    let got = scored.logprobs.to_vec2::<f32>().unwrap();
    let mut worst = 0f32;
    for (g, r) in got.iter().zip(rows) {
        for (i, &x) in r.iter().enumerate() {
            worst = worst.max((g[i] - x).abs());
        }
        assert!(
            g[r.len()..].iter().all(|&x| x == 0.0),
            "padding must score 0"
        );
    }
    worst
}

#[test]
fn kv_cached_logprobs_equal_recomputing_the_prefix() {
    let (policy, reference) = (model(5), model(6));
    let c = GenerateConfig {
        params: SamplingParams {
            temperature: 0.8,
            top_k: 8,
            top_p: 0.95,
        },
        ..config(10)
    };
    let gen = generate_mixture(&policy, &reference, 0.4, &prompts(), &keys(4), &c).unwrap();
    assert!(gen.tokens.iter().any(|t| t.len() > 3));
    let sp = score_completions(&policy, &prompts(), &gen.tokens).unwrap();
    let sr = score_completions(&reference, &prompts(), &gen.tokens).unwrap();
    assert!(max_diff(&sp, &gen.logprobs) < 1e-5);
    assert!(max_diff(&sr, gen.ref_logprobs.as_ref().unwrap()) < 1e-5);
    // a trainable policy samples the same tokens, and its graph-connected scores agree
    let trainable = policy.trainable_copy().unwrap();
    let plain = generate(&trainable, &prompts(), &keys(4), &config(10)).unwrap();
    assert_eq!(
        plain,
        generate(&policy, &prompts(), &keys(4), &config(10)).unwrap()
    );
    let s = score_completions(&trainable, &prompts(), &plain.tokens).unwrap();
    assert!(s.logprobs.sum_all().unwrap().backward().is_ok());
    assert!(max_diff(&s, &plain.logprobs) < 1e-5);
    let mask = s.mask.to_vec2::<f32>().unwrap();
    for (m, t) in mask.iter().zip(&plain.tokens) {
        assert_eq!(m.iter().sum::<f32>() as usize, t.len());
    }
}

#[test]
fn rows_do_not_depend_on_batch_composition() {
    let policy = model(7);
    let c = config(8);
    let all = generate(&policy, &prompts(), &keys(4), &c).unwrap();
    for (r, key) in keys(4).into_iter().enumerate() {
        let alone = generate(&policy, &[prompts()[r].clone()], &[key], &c).unwrap();
        assert_eq!(alone.tokens[0], all.tokens[r], "row {r}");
    }
    // a different sample index or step changes the draws
    let other = generate(
        &policy,
        &prompts(),
        &keys(4),
        &GenerateConfig {
            step: 4,
            ..c.clone()
        },
    )
    .unwrap();
    assert_ne!(other.tokens, all.tokens);
}

#[test]
fn masks_stopping_and_greedy() {
    let policy = model(8);
    let mut c = config(6);
    c.rules.min_new_tokens = 1;
    c.rules.forbidden_token_ids = vec![0, 1, 3];
    let many: Vec<Vec<u32>> = (0..64).map(|i| vec![1, 4 + (i % 8) as u32]).collect();
    let gen = generate(&policy, &many, &keys(64), &c).unwrap();
    for (t, &fin) in gen.tokens.iter().zip(&gen.finished) {
        assert_ne!(t[0], 2, "EOS is forbidden at step 1");
        assert!(t.iter().all(|x| ![0, 1, 3].contains(x)));
        assert_eq!(fin, t.last() == Some(&2));
        assert!(fin || t.len() == 6);
        assert!(
            t[..t.len() - 1].iter().all(|&x| x != 2),
            "stops at the first EOS"
        );
    }
    assert!(gen.finished.iter().any(|&f| f) && gen.finished.iter().any(|&f| !f));
    // greedy = top_k 1 = argmax of the recomputed logits
    let g = GenerateConfig {
        params: SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        ..config(5)
    };
    let k1 = GenerateConfig {
        params: SamplingParams {
            top_k: 1,
            ..Default::default()
        },
        ..config(5)
    };
    let a = generate(&policy, &prompts(), &keys(4), &g).unwrap();
    let b = generate(&policy, &prompts(), &keys(4), &k1).unwrap();
    assert_eq!(a.tokens, b.tokens);
    for (p, t) in prompts().iter().zip(&a.tokens) {
        let ids = vec![p
            .iter()
            .chain(&t[..t.len() - 1])
            .copied()
            .collect::<Vec<u32>>()];
        let n = ids[0].len();
        let logits = policy
            .logits(&ids, &[vec![true; n]])
            .unwrap()
            .get(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (i, &tok) in t.iter().enumerate() {
            let row = &logits[p.len() - 1 + i];
            let best = (0..VOCAB)
                .max_by(|&x, &y| row[x].total_cmp(&row[y]))
                .unwrap();
            assert_eq!(tok as usize, best);
        }
    }
}

#[test]
fn classify_completions_reads_the_last_token_of_each_pair() {
    let config = ModelConfig::tiny_with(VOCAB, 16, 1, 2, 1, 16).with_classification_head(1);
    let rm = crate::model::init_random(&config, 3, false, &Device::Cpu).unwrap();
    let batched =
        classify_completions(&rm, &[vec![1, 5], vec![1, 6, 7]], &[vec![8, 2], vec![]]).unwrap();
    let alone = rm.classify(&[vec![1, 5, 8, 2]], &[vec![true; 4]]).unwrap();
    let (a, b) = (
        batched.to_vec2::<f32>().unwrap(),
        alone.to_vec2::<f32>().unwrap(),
    );
    assert!((a[0][0] - b[0][0]).abs() < 1e-6);
    assert_eq!(a.len(), 2);
}
