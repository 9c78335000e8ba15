//! The training pass of a self-play step alone (BENCHMARKS.md#self-play-step-vs-trl-nashmdtrainer):
//! a random SmolLM2-135M-shaped policy (trainable) scores B completions of NEW tokens after
//! 16-token prompts with the graph on (`sample::score_constrained`, the path of
//! `train::rollout::score`), the frozen reference scores them without, and the sum of the
//! policy's log-probs is backpropagated. Prints seconds per phase for each rep (forward, backward,
//! reference), so a profiler can be pointed at this alone.
//!
//!   cargo bench -p mirrorplay-worker --bench train_pass -- [REPS]
//!
//! Env: B (4), NEW (64). Threads: candle's CPU backend reads RAYON_NUM_THREADS. With MATMULS=1
//! it times instead, per projection shape of the model at B·(16 + NEW) rows, candle's matmul in
//! the layouts of a training step — the forward x·Wᵀ, dX = dY·W, dW as Xᵀ·dY (what candle's
//! autograd computes for `x.matmul(&w.t())`) and as dYᵀ·X (W's layout, `kernels::train_op`) —
//! and the zero-fill plus transposed add that brings Xᵀ·dY into W's layout; beside the forward,
//! the same product on a contiguous copy of Wᵀ, as W·Xᵀ ([out, rows]), and that transposed back.

mod common;

use std::time::Instant;

use candle_core::Device;
use common::{reps_arg, smollm2_135m_shape, workload};
use mirrorplay_worker::model::init_random;
use mirrorplay_worker::sample::score_constrained;

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    // candle's element-wise pool as the worker binary sizes it (kernels::pools).
    mirrorplay_worker::kernels::pools::settle_at_start();
    let (b, new) = (env_or("B", 4), env_or("NEW", 64));
    if env_or("MATMULS", 0) == 1 {
        return matmuls(b * (new + 16));
    }
    let reps = reps_arg(3);
    let config = smollm2_135m_shape();
    let dev = Device::Cpu;
    let policy = init_random(&config, 1, true, &dev)?;
    let reference = init_random(&config, 1, false, &dev)?;
    let (prompts, _, gen) = workload(b, new);
    let completions: Vec<Vec<u32>> = (0..b)
        .map(|r| {
            (0..new)
                .map(|i| 4 + ((r * 131 + i * 7) % 49000) as u32)
                .collect()
        })
        .collect();
    for rep in 0..=reps {
        let t = Instant::now();
        let scored = score_constrained(&policy, &prompts, &completions, &gen.rules)?;
        let loss = scored.logprobs.sum_all()?;
        let forward = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let grads = loss.backward()?;
        let backward = t.elapsed().as_secs_f64();
        drop(grads);
        let t = Instant::now();
        let r = score_constrained(&reference, &prompts, &completions, &gen.rules)?;
        r.logprobs.sum_all()?.to_scalar::<f32>()?;
        let reference_s = t.elapsed().as_secs_f64();
        let label = if rep == 0 { "warm-up" } else { "timed" };
        println!(
            "rep {rep} ({label}): forward {forward:.3} s, backward {backward:.3} s, reference {reference_s:.3} s"
        );
    }
    Ok(())
}

/// The MATMULS=1 report: GFLOP/s of each product, milliseconds of the fill and add.
fn matmuls(rows: usize) -> anyhow::Result<()> {
    use candle_core::{DType, Tensor};
    let dev = Device::Cpu;
    for (out, inp) in [
        (576, 576),
        (192, 576),
        (1536, 576),
        (576, 1536),
        (49152, 576),
    ] {
        let x = Tensor::randn(0f32, 1.0, (rows, inp), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (out, inp), &dev)?;
        let dy = Tensor::randn(0f32, 1.0, (rows, out), &dev)?;
        let time = |f: &dyn Fn() -> candle_core::Result<Tensor>| -> anyhow::Result<f64> {
            f()?;
            let t = Instant::now();
            for _ in 0..5 {
                f()?;
            }
            Ok(t.elapsed().as_secs_f64() / 5.0)
        };
        let flop = 2.0 * (rows * out * inp) as f64 / 1e9;
        let fwd = time(&|| x.matmul(&w.t()?))?;
        let wt = w.t()?.contiguous()?;
        let fwd_wt = time(&|| x.matmul(&wt))?;
        let fwd_swapped = time(&|| w.matmul(&x.t()?))?;
        let fwd_swapped_back = time(&|| w.matmul(&x.t()?)?.t()?.contiguous())?;
        let dx = time(&|| dy.matmul(&w.t()?.t()?))?;
        let dwt = time(&|| x.t()?.matmul(&dy))?;
        let dw = time(&|| dy.t()?.matmul(&x))?;
        let zeros = time(&|| Tensor::zeros((inp, out), DType::F32, &dev))?;
        let g = x.t()?.matmul(&dy)?;
        let add_t = time(&|| Tensor::zeros((out, inp), DType::F32, &dev)?.add(&g.t()?))?;
        println!("[{out}x{inp}] x{rows}: fwd {:.1} (on Wᵀ contiguous {:.1}, as W·Xᵀ {:.1}, transposed back {:.1}) dX {:.1} dWt {:.1} dW {:.1} GFLOP/s; zeros {:.2} ms, zeros+strided add {:.2} ms",
            flop / fwd, flop / fwd_wt, flop / fwd_swapped, flop / fwd_swapped_back, flop / dx, flop / dwt, flop / dw, zeros * 1e3, add_t * 1e3);
    }
    Ok(())
}
