//! Throughput of the decoding matmuls at the SmolLM2-135M projection shapes — the dot-product
//! kernel (`kernels::skinny`) and the panel kernel on packed weights (`kernels::packed`, plus
//! the time to pack) — in GFLOP/s and GB/s of weights streamed, for 1, 4, 8 and 16 input rows,
//! on one thread and on the pool (RAYON_NUM_THREADS). The weights of all shapes together (≈ 28 MB per layer's worth
//! × LAYERS) exceed the L3 cache, as in a real decode step.
//!
//! Usage: cargo bench -p mirrorplay-worker --bench skinny_matmul [-- REPS]

#[allow(dead_code)] // this bench uses only the repetition argument
mod common;

use std::time::Instant;

use mirrorplay_worker::kernels::isa::detect;
use mirrorplay_worker::kernels::packed::{self, PackedWeight};
use mirrorplay_worker::kernels::skinny::matmul_wt_with;

/// (name, n, k) of one decoder layer of SmolLM2-135M: q, k, v, o, gate, up, down.
const LAYER: [(&str, usize, usize); 7] = [
    ("q", 576, 576),
    ("k", 192, 576),
    ("v", 192, 576),
    ("o", 576, 576),
    ("gate", 1536, 576),
    ("up", 1536, 576),
    ("down", 576, 1536),
];
const LAYERS: usize = 30;

fn main() {
    let reps = common::reps_arg(5);
    let isa = detect();
    let weights: Vec<Vec<Vec<f32>>> = (0..LAYERS)
        .map(|l| {
            LAYER
                .iter()
                .enumerate()
                .map(|(i, &(_, n, k))| {
                    (0..n * k)
                        .map(|e| ((e * 31 + l * 7 + i) % 97) as f32 / 97.0 - 0.5)
                        .collect()
                })
                .collect()
        })
        .collect();
    let bytes: usize = LAYERS * LAYER.iter().map(|&(_, n, k)| n * k * 4).sum::<usize>();
    println!(
        "isa {isa:?} (the dot kernel runs AVX2 + FMA at most), threads {}, {LAYERS} layers, {:.0} MB of weights",
        rayon::current_num_threads(),
        bytes as f64 / 1e6
    );
    let t = Instant::now();
    let packed: Vec<Vec<PackedWeight>> = weights
        .iter()
        .map(|layer| {
            layer
                .iter()
                .zip(LAYER.iter())
                .map(|(w, &(_, n, k))| PackedWeight::pack(w, n, k).expect("shapes match"))
                .collect()
        })
        .collect();
    println!(
        "packing all weights: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    println!("| kernel | rows | parallel | ms per pass | GFLOP/s | weight GB/s |");
    println!("|---|---|---|---|---|---|");
    for rows in [1usize, 4, 8, 16] {
        for parallel in [false, true] {
            let x: Vec<f32> = (0..rows * 1536).map(|e| (e % 13) as f32 / 13.0).collect();
            let mut y = vec![0f32; rows * 1536];
            let dot = |y: &mut [f32]| {
                for layer in &weights {
                    for (w, &(_, n, k)) in layer.iter().zip(LAYER.iter()) {
                        matmul_wt_with(
                            &x[..rows * k],
                            rows,
                            w,
                            n,
                            k,
                            &mut y[..rows * n],
                            parallel,
                            isa,
                        )
                        .expect("shapes match");
                    }
                }
            };
            let panels = |y: &mut [f32]| {
                for layer in &packed {
                    for (w, &(_, n, k)) in layer.iter().zip(LAYER.iter()) {
                        packed::matmul_with(
                            &x[..rows * k],
                            rows,
                            w,
                            &mut y[..rows * n],
                            parallel,
                            isa,
                        )
                        .expect("shapes match");
                    }
                }
            };
            for (name, pass) in [
                ("dot (skinny)", &dot as &dyn Fn(&mut [f32])),
                ("panels (packed)", &panels),
            ] {
                pass(&mut y);
                let t = Instant::now();
                for _ in 0..reps {
                    pass(&mut y);
                }
                let secs = t.elapsed().as_secs_f64() / reps as f64;
                let flops = 2.0 * rows as f64 * bytes as f64 / 4.0;
                println!(
                    "| {name} | {rows} | {parallel} | {:.2} | {:.1} | {:.1} |",
                    secs * 1e3,
                    flops / secs / 1e9,
                    bytes as f64 / secs / 1e9
                );
            }
        }
    }
}
