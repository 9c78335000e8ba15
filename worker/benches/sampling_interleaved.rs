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
//! BATCHES (default `1,8`: the batch sizes to run, e.g. `8` alone for a profile of batch 8).

mod common;

use std::time::{Duration, Instant};

use candle_core::Device;
use common::{smollm2_135m_shape, workload};
use mirrorplay_worker::model::{init_random, ModelConfig};
use mirrorplay_worker::sample::{generate, generate_mixture};

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
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
        let policy = init_random(&config, 1, false, &Device::Cpu).unwrap();
        let reference = init_random(&config, 2, false, &Device::Cpu).unwrap();
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
