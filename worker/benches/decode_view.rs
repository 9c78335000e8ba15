//! The cost of a trainable policy's decoding view (BENCHMARKS.md, "The policy's packing kept
//! between steps"): every `sample::generate` call on a model being trained makes a new
//! `Model::for_decoding` view, whose first forward packs all 121 decode matrices of the
//! SmolLM2-135M shape (538 MB of f32), and drops it at the end. Each rep: update every weight
//! in place (as an optimizer step does; untimed), make the view and run one 8-row token through
//! it (timed: the packing, plus one decode step's matmuls), drop the view (timed).
//!
//!   cargo bench -p mirrorplay-worker --bench decode_view [-- REPS]
//!
//! Run it with `MIRRORPLAY_KEEP_PACKED=0` (fresh memory per view) and unset (the view packs
//! into the memory the previous view's copies used). Threads: RAYON_NUM_THREADS.

#[allow(dead_code)] // this bench uses only the shape helper and the reps argument
mod common;

use std::time::Instant;

use candle_core::Device;
use mirrorplay_worker::model::cache::KvCache;
use mirrorplay_worker::model::init_random;

fn main() -> anyhow::Result<()> {
    let reps = common::reps_arg(6);
    let policy = init_random(&common::smollm2_135m_shape(), 1, true, &Device::Cpu)?;
    let rows: Vec<Vec<u32>> = (0..8).map(|r| vec![3 + r]).collect();
    let valid = vec![vec![true]; 8];
    let keep = std::env::var("MIRRORPLAY_KEEP_PACKED").unwrap_or_else(|_| "unset".into());
    let (mut first_s, mut drop_s) = (Vec::new(), Vec::new());
    for rep in 0..=reps {
        for var in policy.vars().expect("trainable").values() {
            var.set(&(var.as_tensor() * 0.999)?)?;
        }
        let t0 = Instant::now();
        let view = policy.for_decoding()?;
        view.forward_hidden(&rows, &valid, &mut KvCache::new())?;
        let t1 = Instant::now();
        drop(view);
        let t2 = Instant::now();
        if rep > 0 {
            first_s.push((t1 - t0).as_secs_f64());
            drop_s.push((t2 - t1).as_secs_f64());
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let ms = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{:.0}", s * 1e3))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "decoding view, KEEP_PACKED={keep}: first forward (packing) {:.1} ms [{}], drop {:.1} ms [{}] (mean of {reps} after a warm-up)",
        mean(&first_s) * 1e3,
        ms(&first_s),
        mean(&drop_s) * 1e3,
        ms(&drop_s)
    );
    Ok(())
}
