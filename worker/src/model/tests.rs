//! Gradient tests of the decoder: central finite differences in f64 for every parameter kind,
//! and a non-zero gradient for every trainable parameter (catches ops without backward).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use serde_json::json;

use super::*;
use crate::rng::{Purpose, StreamKey};
use crate::sample::score_completions;

/// A tiny Llama with every parameter kind: biases on attention and MLP, untied head, GQA.
fn all_kinds_config() -> ModelConfig {
    let mut raw = ModelConfig::tiny_with(11, 8, 2, 2, 1, 12).raw;
    raw["attention_bias"] = json!(true);
    raw["mlp_bias"] = json!(true);
    raw["tie_word_embeddings"] = json!(false);
    ModelConfig::from_json(&raw, "test").unwrap()
}

/// Random weights with spread in every tensor (norms 1 ± 0.3, biases ± 0.3, matrices ± 0.4).
fn spread_tensors(config: &ModelConfig, seed: u64) -> BTreeMap<String, Tensor> {
    let mut s = StreamKey::new(seed, 0, 0, 0, Purpose::Init).stream();
    config
        .tensor_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let norm = name.ends_with("norm.weight");
            let (base, std) = if norm {
                (1.0, 0.3)
            } else if name.ends_with(".bias") {
                (0.0, 0.3)
            } else {
                (0.0, 0.4)
            };
            let values: Vec<f32> = (0..n).map(|_| (base + std * s.normal()) as f32).collect();
            (name, Tensor::from_vec(values, shape, &Device::Cpu).unwrap())
        })
        .collect()
}

/// A fixed random tensor of the given shape (f64).
fn noise(shape: &[usize], seed: u64) -> Tensor {
    let mut s = StreamKey::new(seed, 0, 0, 0, Purpose::Init).stream();
    let n: usize = shape.iter().product();
    Tensor::from_vec(
        (0..n).map(|_| s.normal()).collect::<Vec<f64>>(),
        shape,
        &Device::Cpu,
    )
    .unwrap()
}

fn batch() -> (Vec<Vec<u32>>, Vec<Vec<bool>>) {
    let ids = vec![vec![1, 4, 7, 9, 3, 5], vec![0, 0, 1, 10, 2, 6]];
    let valid = vec![vec![true; 6], vec![false, false, true, true, true, true]];
    (ids, valid)
}

/// A scalar that depends on every output: Σ over valid positions of log_softmax(logits) ⊙ C.
fn loss(model: &Model, coef: &Tensor) -> Tensor {
    let (ids, valid) = batch();
    let logits = model.logits(&ids, &valid).unwrap();
    let m: Vec<f64> = valid.iter().flatten().map(|&v| v as u8 as f64).collect();
    let m = Tensor::from_vec(m, (2, 6, 1), &Device::Cpu).unwrap();
    (log_softmax(&logits).unwrap() * coef)
        .unwrap()
        .broadcast_mul(&m)
        .unwrap()
        .sum_all()
        .unwrap()
}

#[test]
fn finite_differences_match_backprop_for_every_parameter_kind() {
    let config = all_kinds_config();
    let model = Model::new(config.clone(), spread_tensors(&config, 3), true)
        .unwrap()
        .to(DType::F64, &Device::Cpu)
        .unwrap();
    let coef = noise(&[2, 6, 11], 9);
    let grads = loss(&model, &coef).backward().unwrap();
    let vars = model.vars().unwrap();
    let kinds: std::collections::BTreeSet<String> = vars
        .keys()
        .map(|n| {
            n.split('.')
                .filter(|p| p.parse::<u32>().is_err())
                .collect::<Vec<_>>()
                .join(".")
        })
        .collect();
    assert!(kinds.len() >= 17, "parameter kinds covered: {kinds:?}");
    let h = 1e-5;
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let orig = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let n = orig.len();
        for &i in &[0, n / 2, n - 1] {
            let eval = |delta: f64| {
                let mut v = orig.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss(&model, &coef).to_scalar::<f64>().unwrap()
            };
            let fd = (eval(h) - eval(-h)) / (2.0 * h);
            var.set(&Tensor::from_vec(orig.clone(), var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            let tol = 1e-6 * (1.0 + fd.abs());
            assert!(
                (fd - g[i]).abs() < tol,
                "{name}[{i}]: finite difference {fd} vs backprop {}",
                g[i]
            );
        }
    }
}

fn assert_all_nonzero(model: &Model, loss: &Tensor) {
    let grads = loss.backward().unwrap();
    for (name, var) in model.vars().unwrap() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient reaches {name}"));
        let norm = g
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(
            norm > 0.0 && norm.is_finite(),
            "gradient of {name} is {norm}"
        );
    }
}

#[test]
fn every_trainable_parameter_gets_a_gradient() {
    let dev = Device::Cpu;
    // tied causal LM through the scoring pass (what the objectives use)
    let tiny = ModelConfig::tiny(16);
    let model = Model::new(tiny.clone(), spread_tensors(&tiny, 5), true).unwrap();
    let scored = score_completions(
        &model,
        &[vec![1, 4, 5], vec![1, 6]],
        &[vec![7, 8, 2], vec![9]],
    )
    .unwrap();
    assert_all_nonzero(&model, &scored.logprobs.sum_all().unwrap());
    // untied with every bias
    let all = all_kinds_config();
    let model = Model::new(all.clone(), spread_tensors(&all, 6), true).unwrap();
    let scored = score_completions(
        &model,
        &[vec![1, 4, 5], vec![1, 6]],
        &[vec![7, 8, 2], vec![9]],
    )
    .unwrap();
    assert_all_nonzero(&model, &scored.logprobs.sum_all().unwrap());
    // reward-model head
    let rm = tiny.with_classification_head(1);
    let model = Model::new(rm.clone(), spread_tensors(&rm, 7), true).unwrap();
    let (ids, valid) = batch();
    let ids: Vec<Vec<u32>> = ids
        .iter()
        .map(|r| r.iter().map(|&t| t.min(15)).collect())
        .collect();
    let scores = model.classify(&ids, &valid).unwrap();
    assert_eq!(scores.dims(), &[2, 1]);
    let w = Tensor::new(&[[1.0f32], [-0.7]], &dev).unwrap();
    assert_all_nonzero(&model, &(scores * w).unwrap().sum_all().unwrap());
}

#[test]
fn padding_and_batch_composition_do_not_change_logits() {
    let tiny = ModelConfig::tiny(16);
    let model = Model::new(tiny.clone(), spread_tensors(&tiny, 8), false).unwrap();
    let alone = model
        .logits(&[vec![1, 10, 2, 6]], &[vec![true; 4]])
        .unwrap();
    let (ids, valid) = batch();
    let batched = model
        .logits(&ids, &valid)
        .unwrap()
        .get(1)
        .unwrap()
        .narrow(0, 2, 4)
        .unwrap();
    let diff = (alone.squeeze(0).unwrap() - batched)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-4, "{diff}");
    // incremental decoding with a cache equals one pass
    let mut cache = KvCache::new();
    let a = model
        .forward_hidden(&[vec![1, 10]], &[vec![true; 2]], &mut cache)
        .unwrap();
    let b = model
        .forward_hidden(&[vec![2, 6]], &[vec![true; 2]], &mut cache)
        .unwrap();
    let both = model.lm_logits(&Tensor::cat(&[a, b], 1).unwrap()).unwrap();
    let diff = (both - alone)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-4, "{diff}");
    assert_eq!(cache.positions(), &[4]);
}

#[test]
fn frozen_copy_is_independent_of_training_updates() {
    let tiny = ModelConfig::tiny(16);
    let policy = init_random(&tiny, 1, true, &Device::Cpu).unwrap();
    let reference = policy.frozen_copy().unwrap();
    assert!(reference.vars().is_none());
    let var = &policy.vars().unwrap()["model.norm.weight"];
    var.set(&var.as_tensor().affine(2.0, 0.0).unwrap()).unwrap();
    let r = reference.tensors()["model.norm.weight"]
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(r, 64.0);
    let names: Vec<&String> = policy.vars().unwrap().keys().collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
}

/// The gradient of every parameter, flattened in name order, as f64.
fn flat_grads(model: &Model, loss: &Tensor) -> Vec<f64> {
    let grads = loss.backward().unwrap();
    let mut out = Vec::new();
    for (name, var) in model.vars().unwrap() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient reaches {name}"));
        assert_eq!(g.dtype(), DType::F32, "{name}: master gradient dtype");
        out.extend(
            g.to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap(),
        );
    }
    out
}

#[test]
fn half_precision_compute_trains_f32_master_weights() {
    // Mixed precision (`Model::for_compute`): bf16 and f16 forward passes over f32 Vars give
    // f32 log-probs close to the f32 ones, and f32 gradients for every master weight that
    // point the same way as the f32 gradients.
    let all = all_kinds_config();
    let model = Model::new(all.clone(), spread_tensors(&all, 6), true).unwrap();
    let prompts = [vec![1, 4, 5], vec![1, 6]];
    let completions = [vec![7, 8, 2], vec![9]];
    let full = score_completions(&model, &prompts, &completions).unwrap();
    let reference: Vec<f32> = full.logprobs.flatten_all().unwrap().to_vec1().unwrap();
    let g32 = flat_grads(&model, &full.logprobs.sum_all().unwrap());
    for (dtype, tol) in [(DType::BF16, 0.1f32), (DType::F16, 0.01)] {
        let compute = model.for_compute(dtype).unwrap();
        assert_eq!(compute.dtype(), dtype);
        let scored = score_completions(&compute, &prompts, &completions).unwrap();
        assert_eq!(scored.logprobs.dtype(), DType::F32, "{dtype:?}: log-probs");
        let got: Vec<f32> = scored.logprobs.flatten_all().unwrap().to_vec1().unwrap();
        let worst = got
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < tol, "{dtype:?}: log-probs off by {worst}");
        assert!(
            got.iter().zip(&reference).any(|(a, b)| a != b),
            "{dtype:?} computed in f32?"
        );
        let g = flat_grads(&model, &scored.logprobs.sum_all().unwrap());
        let dot: f64 = g.iter().zip(&g32).map(|(a, b)| a * b).sum();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let cosine = dot / (norm(&g) * norm(&g32));
        assert!(cosine > 0.99, "{dtype:?}: gradient cosine {cosine}");
    }
    // The f32 master weights themselves are untouched by the cast.
    assert!(model.tensors().values().all(|t| t.dtype() == DType::F32));
}
