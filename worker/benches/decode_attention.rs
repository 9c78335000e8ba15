//! The fused attention (`kernels::attention`) at a decode step of SmolLM2-135M's shape: 9 query
//! heads over 3 key/value heads of dimension 64, one new token per sequence, 8 sequences,
//! against caches of 16 to 256 keys (with spare capacity, as the KV cache's views have), in µs
//! per layer call, on rayon's pool (RAYON_NUM_THREADS), called from a pool thread.
//!
//! Usage: cargo bench -p mirrorplay-worker --bench decode_attention [-- REPS]

#[allow(dead_code)] // this bench uses only the repetition argument
mod common;

use std::time::Instant;

use mirrorplay_worker::kernels::attention::{attention, Dims, Strided};

fn main() {
    let reps = common::reps_arg(2000);
    let (b, heads, kv_heads, t, d) = (8usize, 9usize, 3usize, 1usize, 64usize);
    println!(
        "threads {}, b {b}, heads {heads}/{kv_heads}, d {d}",
        rayon::current_num_threads()
    );
    println!("| keys | µs per call |");
    println!("|---|---|");
    for s in [16usize, 48, 80, 144, 256] {
        let cap = s + 32;
        let q: Vec<f32> = (0..b * heads * t * d)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let kv: Vec<f32> = (0..b * kv_heads * cap * d)
            .map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let mask = vec![0f32; b * t * s];
        let mut out = vec![0f32; b * t * heads * d];
        let view = Strided {
            data: &kv,
            offset: 0,
            strides: [kv_heads * cap * d, cap * d, d],
        };
        let dims = Dims {
            b,
            heads,
            kv_heads,
            t,
            s,
            d,
        };
        let per_call = rayon::scope(|_| {
            attention(&q, view, view, &mask, dims, 0.125, &mut out).expect("shapes match");
            let start = Instant::now();
            for _ in 0..reps {
                attention(&q, view, view, &mask, dims, 0.125, &mut out).expect("shapes match");
            }
            start.elapsed().as_secs_f64() / reps as f64
        });
        println!("| {s} | {:.1} |", per_call * 1e6);
    }
}
