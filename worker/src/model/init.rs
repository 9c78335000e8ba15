//! Random initialisation of a model from a seed, for tiny synthetic-task models, tests and
//! benchmarks: weight matrices N(0, std²) (transformers' `initializer_range`, default 0.02),
//! norm weights 1, biases 0. Each tensor draws from its own counter-based stream keyed by
//! (seed, hash of its name), so adding a tensor never changes another's values.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use super::config::ModelConfig;
use super::decoder::Model;
use super::error::Result;
use crate::rng::{Purpose, StreamKey};

/// FNV-1a of a tensor name (stable across runs and platforms).
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The named f32 weights of a random model (std from `initializer_range`, default 0.02).
pub fn random_tensors(
    config: &ModelConfig,
    seed: u64,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let std = config
        .raw
        .get("initializer_range")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.02);
    random_tensors_std(config, seed, std, device)
}

/// As [`random_tensors`] with an explicit standard deviation for the matrices.
pub fn random_tensors_std(
    config: &ModelConfig,
    seed: u64,
    std: f64,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (name, shape) in config.tensor_shapes() {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            normal_values(&name, n, seed, std)
        };
        out.insert(name, Tensor::from_vec(values, shape, device)?);
    }
    Ok(out)
}

/// The weight matrix `name` of shape `shape` drawn as [`random_tensors_std`] draws it: the
/// same values a random model of any config holding that tensor gets (e.g. a new reward head).
pub fn random_matrix(
    name: &str,
    shape: &[usize],
    seed: u64,
    std: f64,
    device: &Device,
) -> Result<Tensor> {
    let n = shape.iter().product();
    Ok(Tensor::from_vec(
        normal_values(name, n, seed, std),
        shape,
        device,
    )?)
}

/// n draws of N(0, std²) from the stream of tensor `name`.
fn normal_values(name: &str, n: usize, seed: u64, std: f64) -> Vec<f32> {
    let mut s = StreamKey::new(seed, 0, name_hash(name), 0, Purpose::Init).stream();
    (0..n).map(|_| (s.normal() * std) as f32).collect()
}

/// A random model (f32 on `device`); `trainable` makes its weights `Var`s.
pub fn init_random(
    config: &ModelConfig,
    seed: u64,
    trainable: bool,
    device: &Device,
) -> Result<Model> {
    Model::new(
        config.clone(),
        random_tensors(config, seed, device)?,
        trainable,
    )
}
