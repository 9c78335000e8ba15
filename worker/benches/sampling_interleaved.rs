//! Mixture/plain sampling cost measured interleaved: plain, mixture, plain, mixture, … in one
//! process, so machine load drifts hit both alike (the criterion groups of `sampling.rs` run
//! minutes apart). Prints one table row per (model, batch): tokens/s of each and the ratio of
//! their total times. The target: mixture ≤ 2.2× plain
//! (BENCHMARKS.md#sampling-throughput-model-core).
//!
//!   cargo bench -p mirrorplay-worker --bench sampling_interleaved --profile dev
//!   cargo bench ... -- tiny        # only the tiny model (the SmolLM2 shape takes minutes)
//!
//! Env: REPS (default 20 tiny / 2 SmolLM2-shaped), NEW_TOKENS (64 tiny / 32 SmolLM2-shaped),
//! BATCHES (default `1,8`: the batch sizes to run, e.g. `8` alone for a profile of batch 8),
//! BENCH_DEVICE (`cpu` default, or `cuda:N` in a build with the `cuda` feature), BENCH_DTYPE
//! (`f32` default, or `bf16`: the models' compute dtype). With a GPU, `MIRRORPLAY_DEVICE_DRAW=0`
//! against unset compares the host draw with the draw on the device (bench/gpu-check.sh).

mod common;

use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use common::{smollm2_135m_shape, workload};
use mirrorplay_worker::model::{init_random, ModelConfig};
use mirrorplay_worker::sample::{generate, generate_mixture};

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// BENCH_DEVICE: `cpu` or `cuda:N`.
fn bench_device() -> Device {
    match std::env::var("BENCH_DEVICE").as_deref() {
        Err(_) | Ok("cpu") => Device::Cpu,
        Ok(other) => {
            let ordinal = other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("BENCH_DEVICE `{other}`: expected cpu or cuda:N"));
            Device::new_cuda(ordinal).unwrap_or_else(|e| panic!("BENCH_DEVICE {other}: {e}"))
        }
    }
}

/// BENCH_DTYPE: `f32` or `bf16`.
fn bench_dtype() -> DType {
    match std::env::var("BENCH_DTYPE").as_deref() {
        Err(_) | Ok("f32") => DType::F32,
        Ok("bf16") => DType::BF16,
        Ok(other) => panic!("BENCH_DTYPE `{other}`: expected f32 or bf16"),
    }
}

fn main() {
    // candle's element-wise pool as the worker binary sizes it (kernels::pools).
    mirrorplay_worker::kernels::pools::settle_at_start();
    let (device, dtype) = (bench_device(), bench_dtype());
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let batches: Vec<usize> = std::env::var("BATCHES")
        .unwrap_or_else(|_| "1,8".into())
        .split(',')
        .map(|b| match b.trim().parse() {
            Ok(n) if n > 0 => n,
            _ => panic!("BATCHES: `{b}` is not a positive batch size"),
        })
        .collect();
    println!("| model | batch × new tokens × reps | plain tokens/s | mixture tokens/s | mixture/plain time |");
    println!("|---|---|---|---|---|");
    for (label, config, reps, new_tokens) in [
        (
            "tiny",
            ModelConfig::tiny(32),
            env_or("REPS", 20),
            env_or("NEW_TOKENS", 64),
        ),
        (
            "smollm2-135m-shape",
            smollm2_135m_shape(),
            env_or("REPS", 2),
            env_or("NEW_TOKENS", 32),
        ),
    ] {
        if !filter.is_empty() && !filter.iter().any(|f| label.contains(f.as_str())) {
            continue;
        }
        let model = |seed| {
            let m = init_random(&config, seed, false, &device).unwrap();
            if dtype == DType::F32 {
                m
            } else {
                m.to(dtype, &device).unwrap()
            }
        };
        let (policy, reference) = (model(1), model(2));
        let label = if device.is_cpu() && dtype == DType::F32 {
            label.to_string()
        } else {
            let name = std::env::var("BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
            format!("{label} ({name}, {dtype:?})")
        };
        for &batch in &batches {
            let (prompts, keys, gen) = workload(batch, new_tokens);
            // One untimed round of each (allocations, caches), then alternate.
            generate(&policy, &prompts, &keys, &gen).unwrap();
            generate_mixture(&policy, &reference, 0.125, &prompts, &keys, &gen).unwrap();
            let (mut plain, mut mixture) = (Duration::ZERO, Duration::ZERO);
            for _ in 0..reps {
                let t = Instant::now();
                generate(&policy, &prompts, &keys, &gen).unwrap();
                plain += t.elapsed();
                let t = Instant::now();
                generate_mixture(&policy, &reference, 0.125, &prompts, &keys, &gen).unwrap();
                mixture += t.elapsed();
            }
            let tokens = (batch * new_tokens * reps) as f64;
            println!(
                "| {label} | {batch} × {new_tokens} × {reps} | {:.1} | {:.1} | {:.2}× |",
                tokens / plain.as_secs_f64(),
                tokens / mixture.as_secs_f64(),
                mixture.as_secs_f64() / plain.as_secs_f64()
            );
        }
    }
}
