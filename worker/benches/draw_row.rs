//! One row's draw (`sample::draw_row`, the few-passes form) over SmolLM2's 49 152-token
//! vocabulary at T = 1: a plain row and a mixture row (β = 0.125), with the token rules' usual
//! handful of forbidden ids, in µs per row on the calling thread (a decode step draws its rows
//! in parallel, one row per task). Prints a checksum of the drawn tokens so two builds can be
//! compared on the same draws.
//!
//! Usage: cargo bench -p mirrorplay-worker --bench draw_row [-- REPS]

#[allow(dead_code)] // this bench uses only the repetition argument
mod common;

use std::time::Instant;

use mirrorplay_worker::sample::{draw_row, SamplingParams};

fn main() {
    let reps = common::reps_arg(400);
    let vocab = 49_152usize;
    let row = |seed: usize| -> Vec<f32> {
        (0..vocab)
            .map(|i| ((i * 7919 + seed * 104_729) % 10_007) as f32 / 10_007.0 * 12.0 - 6.0)
            .collect()
    };
    let (logits, reference) = (row(1), row(2));
    let forbidden: Vec<bool> = (0..vocab).map(|v| v < 3 || v == vocab - 1).collect();
    let params = SamplingParams::default();
    println!("| row | µs per row (median of {reps}) | token checksum |");
    println!("|---|---|---|");
    for (label, mixed) in [
        ("plain", None),
        ("mixture β 0.125", Some((reference.as_slice(), 0.125))),
    ] {
        let mut times = Vec::with_capacity(reps);
        let mut checksum = 0u64;
        for r in 0..reps + 1 {
            let u = (r as f64 + 0.5) / (reps + 1) as f64;
            let t = Instant::now();
            let drawn = draw_row(&logits, mixed, &forbidden, &params, u).expect("a valid row");
            let elapsed = t.elapsed().as_secs_f64();
            checksum = checksum.wrapping_mul(31).wrapping_add(drawn.token as u64);
            if r > 0 {
                times.push(elapsed);
            }
        }
        times.sort_by(f64::total_cmp);
        println!(
            "| {label} | {:.1} | {checksum} |",
            times[times.len() / 2] * 1e6
        );
    }
}
