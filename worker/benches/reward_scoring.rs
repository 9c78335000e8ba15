//! Reward-model scoring throughput (BENCHMARKS.md#reward-model-scoring-throughput): a random
//! SmolLM2-135M-shaped `LlamaForSequenceClassification` (one label, f32, CPU) scores B sequences
//! of L prompt+completion tokens with `sample::classify_completions`, the path
//! `preference::RewardModel` takes (batches of 16). Warm-up once, then REPS timed reps.
//!
//! Also an ensemble of K members scoring the same batch:
//! - "K independent members": K separately initialised models, each a full forward (what an
//!   ensemble costs today);
//! - "shared backbone (projection)": ONE backbone forward (`Model::forward_hidden`) plus K
//!   one-label heads on the pooled hidden states. This is a projection of what a
//!   shared-backbone ensemble would cost; no such ensemble is built.
//!
//! `bench/reward_scoring_peer.py`'s peer runs the same workload in transformers;
//! `bench/reward_scoring.sh` runs both interleaved.
//!
//!   cargo bench -p mirrorplay-worker --bench reward_scoring
//!
//! Env: B (16), L (128; the first L/2 tokens are the prompt, the rest the completion), REPS (3),
//! K (5; 0 skips the ensemble figures), K_REPS (1: reps of the K-member and projection timings). Token ids: row r, position i → 3 + (r·131 + i·7) mod 49000.
//! BREAKDOWN=1 also times the decoder's linear layers alone (every `*_proj` weight applied to
//! [B·L, in] rows, as `ops::linear` does in the forward), to see where the forward's time goes.
//! Threads: candle's CPU backend reads RAYON_NUM_THREADS.

#[allow(dead_code)] // this bench uses only the shape helper
mod common;

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use common::smollm2_135m_shape;
use mirrorplay_worker::model::{init_random, ops, KvCache, Model};
use mirrorplay_worker::sample::classify_completions;

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Row r, position i → 3 + (r·131 + i·7) mod 49000 (the peer uses the same pattern).
fn token_ids(b: usize, l: usize) -> Vec<Vec<u32>> {
    (0..b)
        .map(|r| {
            (0..l)
                .map(|i| (3 + (r * 131 + i * 7) % 49000) as u32)
                .collect()
        })
        .collect()
}

fn time(reps: usize, mut f: impl FnMut()) -> Duration {
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed() / reps as u32
}

fn main() {
    let (b, l, reps, k, k_reps) = (
        env_or("B", 16),
        env_or("L", 128),
        env_or("REPS", 3),
        env_or("K", 5),
        env_or("K_REPS", 1),
    );
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into());
    let config = smollm2_135m_shape().with_classification_head(1);
    let rows = token_ids(b, l);
    let prompts: Vec<Vec<u32>> = rows.iter().map(|r| r[..l / 2].to_vec()).collect();
    let completions: Vec<Vec<u32>> = rows.iter().map(|r| r[l / 2..].to_vec()).collect();
    let members: Vec<Model> = (0..k.max(1) as u64)
        .map(|seed| init_random(&config, 1 + seed, false, &Device::Cpu).unwrap())
        .collect();
    let score = |m: &Model| {
        let s = classify_completions(m, &prompts, &completions).unwrap();
        assert_eq!(s.dims(), [b, 1]);
    };

    score(&members[0]); // warm-up: allocations, caches
    let one = time(reps, || score(&members[0]));
    let seqs = |d: Duration| b as f64 / d.as_secs_f64();
    println!(
        "mirrorplay single: B={b} L={l} reps={reps} threads={threads}: {:.3} s/batch, {:.2} sequences/s",
        one.as_secs_f64(),
        seqs(one)
    );
    if env_or("BREAKDOWN", 0) == 1 {
        breakdown(&members[0], b * l, one);
    }
    if k == 0 {
        return;
    }

    // K independent members: K full forwards (each member once per rep). The ratio compares
    // with member 0's forward of the same rep, adjacent in time (the load here drifts).
    let (mut independent, mut first) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..k_reps {
        for (i, m) in members.iter().enumerate() {
            let t = Instant::now();
            score(m);
            let d = t.elapsed();
            independent += d;
            if i == 0 {
                first += d;
            }
        }
    }
    let independent = independent / k_reps as u32;
    println!(
        "mirrorplay K={k} independent members (reps={k_reps}): {:.3} s/batch, {:.2} sequences/s, {:.2}x member 0 in the same reps",
        independent.as_secs_f64(),
        seqs(independent),
        independent.as_secs_f64() / (first / k_reps as u32).as_secs_f64()
    );

    // Projection of a shared backbone: one forward_hidden, pool at the last token, K heads;
    // compared with one member = the same backbone + 1 head, timed in the same reps.
    let heads: Vec<Tensor> = members
        .iter()
        .map(|m| m.tensors()["score.weight"].clone())
        .collect();
    let valid: Vec<Vec<bool>> = rows.iter().map(|r| vec![true; r.len()]).collect();
    let last = Tensor::new(
        (0..b).map(|r| (r * l + l - 1) as u32).collect::<Vec<_>>(),
        &Device::Cpu,
    )
    .unwrap();
    let (mut backbone, mut head_time, mut one_head) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..k_reps {
        let t = Instant::now();
        let hidden = members[0]
            .forward_hidden(&rows, &valid, &mut KvCache::new())
            .unwrap();
        let pooled = hidden
            .reshape((b * l, hidden.dim(2).unwrap()))
            .unwrap()
            .index_select(&last, 0)
            .unwrap();
        backbone += t.elapsed();
        let t = Instant::now();
        for w in &heads {
            let s = pooled.matmul(&w.t().unwrap()).unwrap();
            assert_eq!(s.dims(), [b, 1]);
        }
        head_time += t.elapsed();
        let t = Instant::now();
        pooled.matmul(&heads[0].t().unwrap()).unwrap();
        one_head += t.elapsed();
    }
    let n = k_reps as u32;
    let (backbone, head_time, one_head) = (backbone / n, head_time / n, one_head / n);
    let shared = backbone + head_time;
    println!(
        "mirrorplay K={k} shared backbone (PROJECTION, not built; reps={k_reps}): {:.3} s/batch ({:.3} s backbone + {:.6} s {k} heads), {:.2} sequences/s, {:.4}x one member (backbone + 1 head, same reps)",
        shared.as_secs_f64(),
        backbone.as_secs_f64(),
        head_time.as_secs_f64(),
        seqs(shared),
        shared.as_secs_f64() / (backbone + one_head).as_secs_f64()
    );
}

fn breakdown(model: &Model, rows: usize, forward: Duration) {
    let projections: Vec<&Tensor> = model
        .tensors()
        .iter()
        .filter(|(name, _)| name.ends_with("_proj.weight"))
        .map(|(_, w)| w)
        .collect();
    let inputs: Vec<Tensor> = projections
        .iter()
        .map(|w| {
            let n = w.dim(1).unwrap();
            Tensor::arange(0f32, (rows * n) as f32, &Device::Cpu)
                .unwrap()
                .affine(1e-7, -0.5)
                .unwrap()
                .reshape((rows, n))
                .unwrap()
        })
        .collect();
    let run = || {
        for (x, w) in inputs.iter().zip(&projections) {
            ops::linear(x, w, None).unwrap();
        }
    };
    run();
    let linear = time(1, run);
    // The same products with each weight pre-transposed to a contiguous [in, out] (x·Wᵀ with
    // Wᵀ materialised once), to see whether the gemm's handling of the strided Wᵀ costs time.
    let transposed: Vec<Tensor> = projections
        .iter()
        .map(|w| w.t().unwrap().contiguous().unwrap())
        .collect();
    let run_t = || {
        for (x, wt) in inputs.iter().zip(&transposed) {
            x.matmul(wt).unwrap();
        }
    };
    run_t();
    let linear_t = time(1, run_t);
    println!(
        "mirrorplay breakdown: {} projections at {rows} rows with contiguous pre-transposed weights: {:.3} s",
        projections.len(),
        linear_t.as_secs_f64()
    );
    println!(
        "mirrorplay breakdown: {} projections at {rows} rows: {:.3} s ({:.0} % of one member's {:.3} s forward; the rest: attention, norms, RoPE, embedding)",
        projections.len(),
        linear.as_secs_f64(),
        100.0 * linear.as_secs_f64() / forward.as_secs_f64(),
        forward.as_secs_f64()
    );
}
