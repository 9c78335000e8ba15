//! Streaming generation (`sample::generate_stream`, one row, a callback per token) on a random
//! SmolLM2-135M-shaped model: tokens/s of 64 new tokens after a 16-token prompt, the median and
//! best of REPS runs, f32 on the CPU with RAYON_NUM_THREADS threads (BENCHMARKS.md "Prefill on
//! the panel kernel").
//!
//! Usage: cargo bench -p mirrorplay-worker --bench stream_decode [-- REPS]

mod common;

use std::time::Instant;

use candle_core::Device;
use common::{smollm2_135m_shape, workload};
use mirrorplay_worker::model::{init_random, ModelError};
use mirrorplay_worker::sample::generate_stream;

fn main() {
    let reps = common::reps_arg(7);
    let model = init_random(&smollm2_135m_shape(), 1, false, &Device::Cpu).expect("model");
    let (prompts, keys, config) = workload(1, 64);
    let run = || {
        generate_stream::<ModelError, _>(&model, &prompts[0], keys[0], &config, |_| Ok(()))
            .expect("generation")
    };
    run();
    let mut secs: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64()
        })
        .collect();
    secs.sort_by(f64::total_cmp);
    println!(
        "stream, batch 1, 64 new tokens, {reps} reps, threads {}: median {:.1} tokens/s, best {:.1}",
        rayon::current_num_threads(),
        64.0 / secs[reps / 2],
        64.0 / secs[0]
    );
}
