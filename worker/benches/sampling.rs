//! Sampling throughput (tokens/s): plain vs geometric-mixture sampling (two models, two KV
//! caches), batch 1 and 8, 64 new tokens from 16-token prompts, no EOS stop.
//!
//! Models: the tiny synthetic-task config and a random model shaped like SmolLM2-135M (hidden
//! 576, 30 layers, 9 heads / 3 KV heads, MLP 1536, vocab 49152, tied), f32 on CPU.
//!
//!   cargo bench -p mirrorplay-worker --bench sampling            # everything
//!   cargo bench -p mirrorplay-worker --bench sampling -- tiny    # only the tiny model
//!
//! The target: mixture sampling costs at most 2.2× plain sampling
//! (BENCHMARKS.md#sampling-throughput-model-core).

use std::time::Duration;

mod common;

use candle_core::Device;
use common::{smollm2_135m_shape, workload};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mirrorplay_worker::model::{init_random, ModelConfig};
use mirrorplay_worker::sample::{generate, generate_mixture};

const NEW_TOKENS: usize = 64;

fn bench(c: &mut Criterion) {
    for (label, config, samples) in [
        ("tiny", ModelConfig::tiny(32), 30),
        ("smollm2-135m-shape", smollm2_135m_shape(), 10),
    ] {
        let policy = init_random(&config, 1, false, &Device::Cpu).unwrap();
        let reference = init_random(&config, 2, false, &Device::Cpu).unwrap();
        let mut group = c.benchmark_group(format!("sampling/{label}"));
        group
            .sample_size(samples)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5));
        for batch in [1usize, 8] {
            let (prompts, keys, gen) = workload(batch, NEW_TOKENS);
            group.throughput(Throughput::Elements((batch * NEW_TOKENS) as u64));
            group.bench_function(format!("b{batch}/plain"), |b| {
                b.iter(|| generate(&policy, &prompts, &keys, &gen).unwrap())
            });
            group.bench_function(format!("b{batch}/mixture"), |b| {
                b.iter(|| {
                    generate_mixture(&policy, &reference, 0.125, &prompts, &keys, &gen).unwrap()
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
