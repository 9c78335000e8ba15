//! Reward-model scoring throughput (BENCHMARKS.md#reward-model-scoring-throughput): a random
//! SmolLM2-135M-shaped `LlamaForSequenceClassification` (one label, f32, CPU) scores B sequences
//! of L prompt+completion tokens with `sample::classify_completions`, the path
//! `preference::RewardModel` takes (batches of 16). Warm-up once, then REPS timed reps.
//!
//! Also an ensemble of K members scoring the same batch:
//! - "K independent members": K separately initialised models, each a full forward (what an
//!   ensemble costs today);
//! - "shared backbone": `reward::shared_heads::SharedHeads`, member 0's backbone with the K
//!   heads stacked (what a `shared_backbone = true` ensemble scores with), against one member
//!   through `RewardModelJudge`, the same batching.
//!
//! `bench/reward_scoring_peer.py`'s peer runs the same workload in transformers;
//! `bench/reward_scoring.sh` runs both interleaved.
//!
//!   cargo bench -p mirrorplay-worker --bench reward_scoring
//!
//! Env: B (16), L (128; the first L/2 tokens are the prompt, the rest the completion), REPS (3),
//! K (5; 0 skips the ensemble figures), K_REPS (1: reps of the K-member and shared-backbone timings). Token ids: row r, position i → 3 + (r·131 + i·7) mod 49000.
//! BREAKDOWN=1 also times the decoder's linear layers alone (every `*_proj` weight applied to
//! [B·L, in] rows, as `ops::linear` does in the forward), to see where the forward's time goes.
//! Threads: candle's CPU backend reads RAYON_NUM_THREADS.

#[allow(dead_code)] // this bench uses only the shape helper
mod common;

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use common::smollm2_135m_shape;
use mirrorplay_worker::model::{init_random, ops, Model};
use mirrorplay_worker::preference::reward_model::RewardModelJudge;
use mirrorplay_worker::preference::{Judge, PromptRow};
use mirrorplay_worker::reward::shared_heads::SharedHeads;
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
    // candle's element-wise pool as the worker binary sizes it (kernels::pools).
    mirrorplay_worker::kernels::pools::settle_at_start();
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

    // A shared backbone (`reward::shared_heads`, what `shared_backbone = true` ensembles score
    // with): member 0's backbone with the K members' heads stacked, one forward pass for all K,
    // through the same batching as one member (`RewardModelJudge`, batches of 16); compared
    // with that one member in the same reps.
    let heads: Vec<Tensor> = members
        .iter()
        .map(|m| m.tensors()["score.weight"].clone())
        .collect();
    let shared = SharedHeads::new(&members[0], &heads).unwrap();
    let row = |ids: &Vec<u32>| PromptRow {
        ids: ids.clone(),
        task: None,
        truncated: false,
    };
    let prompt_rows: Vec<PromptRow> = prompts.iter().map(row).collect();
    let refs: Vec<&PromptRow> = prompt_rows.iter().collect();
    let single = RewardModelJudge::new(
        members[0].detached().unwrap(),
        None,
        config.vocab_size,
        None,
        "member 0",
    )
    .unwrap();
    let (mut together, mut alone) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..k_reps {
        let t = Instant::now();
        let s = shared.member_scores(&refs, &completions).unwrap();
        assert_eq!((s.len(), s[0].len()), (k, b));
        together += t.elapsed();
        let t = Instant::now();
        assert_eq!(single.scores(&refs, &completions).unwrap().len(), b);
        alone += t.elapsed();
    }
    let n = k_reps as u32;
    let (together, alone) = (together / n, alone / n);
    println!(
        "mirrorplay K={k} shared backbone (reps={k_reps}): {:.3} s/batch, {:.2} sequences/s, {:.4}x one member (same reps)",
        together.as_secs_f64(),
        seqs(together),
        together.as_secs_f64() / alone.as_secs_f64()
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
