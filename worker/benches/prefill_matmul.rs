//! The prefill's matmuls at the SmolLM2-135M projection shapes: candle's gemm (`x · Wᵀ`, what
//! the prefill ran on before) against the panel kernel on packed weights (`kernels::packed`,
//! what it runs on now), in GFLOP/s, for 16 to 4096 input rows (prompt tokens × sequences), on
//! rayon's pool (RAYON_NUM_THREADS), called from a pool thread as generation calls it.
//!
//! Usage: cargo bench -p mirrorplay-worker --bench prefill_matmul [-- REPS]

#[allow(dead_code)] // this bench uses only the repetition argument
mod common;

use std::time::Instant;

use candle_core::{Device, Tensor};
use mirrorplay_worker::kernels::packed::{matmul, PackedWeight};

/// (name, n, k): one layer's stacked q|k|v, o, stacked gate|up and down.
const SHAPES: [(&str, usize, usize); 4] = [
    ("qkv", 960, 576),
    ("o", 576, 576),
    ("gate|up", 3072, 576),
    ("down", 576, 1536),
];

fn main() {
    let reps = common::reps_arg(20);
    println!("threads {}", rayon::current_num_threads());
    println!("| shape | rows | candle GFLOP/s | packed GFLOP/s | packed / candle |");
    println!("|---|---|---|---|---|");
    for rows in [16usize, 64, 128, 1024, 4096] {
        for &(name, n, k) in &SHAPES {
            let w: Vec<f32> = (0..n * k)
                .map(|e| ((e * 31) % 97) as f32 / 97.0 - 0.5)
                .collect();
            let x: Vec<f32> = (0..rows * k)
                .map(|e| ((e * 7) % 13) as f32 / 13.0 - 0.5)
                .collect();
            let wt = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).expect("shape");
            let xt = Tensor::from_vec(x.clone(), (rows, k), &Device::Cpu).expect("shape");
            let packed = PackedWeight::pack(&w, n, k).expect("shape");
            let mut y = vec![0f32; rows * n];
            let reps = (reps * 128 / rows).max(2);
            let (candle, panels) = rayon::scope(|_| {
                let time = |f: &mut dyn FnMut()| {
                    f();
                    let t = Instant::now();
                    for _ in 0..reps {
                        f();
                    }
                    t.elapsed().as_secs_f64() / reps as f64
                };
                let candle = time(&mut || {
                    let wtt = wt.t().expect("2-d");
                    std::hint::black_box(xt.matmul(&wtt).expect("shapes match"));
                });
                let panels = time(&mut || matmul(&x, rows, &packed, &mut y).expect("shapes match"));
                (candle, panels)
            });
            let flop = 2.0 * (rows * n * k) as f64;
            println!(
                "| {name} {n}×{k} | {rows} | {:.1} | {:.1} | {:.2}× |",
                flop / candle / 1e9,
                flop / panels / 1e9,
                candle / panels
            );
        }
    }
}
