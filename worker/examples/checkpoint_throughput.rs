//! Checkpoint throughput to the local store (benchmark; run by
//! `bench/checkpoint-throughput.sh`): a SmolLM2-135M-shaped model (hidden 576, 30 layers, 9
//! heads, 3 KV heads, intermediate 1536, vocab 49152, tied embeddings; random f32 weights) plus
//! its AdamW state, checkpointed to DIR (fsync included), alternated with `dd bs=8M
//! conv=fdatasync` of the same number of bytes to the same directory.
//!
//! Usage: checkpoint_throughput DIR [TRIALS]

use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::Device;
use mirrorplay_worker::checkpoint::{latest_valid, CheckpointOptions, Checkpointer, Retention};
use mirrorplay_worker::io::Location;
use mirrorplay_worker::model::{init_random, ModelConfig};
use mirrorplay_worker::optim::{AdamW, AdamWConfig, Decay, Schedule};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir =
        std::path::PathBuf::from(args.get(1).map(String::as_str).unwrap_or("/tmp/ckpt-bench"));
    let trials: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    std::fs::create_dir_all(&dir)?;
    let config = ModelConfig::tiny_with(49152, 576, 30, 9, 3, 1536);
    let t = Instant::now();
    let model = init_random(&config, 1, true, &Device::Cpu)?;
    let params = model.vars().expect("trainable").clone();
    let schedule = Schedule {
        lr: 1e-3,
        warmup_steps: 0,
        total_steps: 1,
        decay: Decay::Constant,
    };
    let opt = AdamW::new(&params, AdamWConfig::default(), schedule)?;
    eprintln!(
        "model: {} parameters, built in {:.1} s",
        config.num_parameters(),
        t.elapsed().as_secs_f64()
    );
    let aux = Default::default();
    println!("| trial | bytes | snapshot (s) | checkpoint (s) | checkpoint MB/s | dd (s) | dd MB/s | ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for trial in 0..trials {
        let out_dir = dir.join(format!("run-{trial}"));
        let output = Location::parse(out_dir.to_str().expect("utf-8 path"))?;
        let mut ckpt = Checkpointer::new(
            &output,
            CheckpointOptions {
                every: 1,
                total_steps: 0,
                retention: Retention::default(),
                config_hash: "bench".into(),
                world_size: 1,
                timeout: Some(Duration::from_secs(3600)),
            },
        );
        let t0 = Instant::now();
        ckpt.save(0, &model, &aux, &opt).await?;
        let snapshot = t0.elapsed().as_secs_f64();
        let committed = ckpt.wait().await?.expect("committed");
        let secs = t0.elapsed().as_secs_f64();
        let bytes = committed.bytes;
        // Sanity: it verifies.
        assert_eq!(latest_valid(&output).await?.map(|p| p.step), Some(0));
        std::fs::remove_dir_all(&out_dir)?;

        let count = bytes.div_ceil(8 << 20);
        let dd_file = dir.join("dd.bin");
        let t1 = Instant::now();
        let status = Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", dd_file.display()))
            .args([
                "bs=8M",
                &format!("count={count}"),
                "conv=fdatasync",
                "status=none",
            ])
            .status()?;
        let dd = t1.elapsed().as_secs_f64();
        anyhow::ensure!(status.success(), "dd failed");
        let dd_bytes = count * (8 << 20);
        std::fs::remove_file(&dd_file)?;
        let (mbs, dd_mbs) = (bytes as f64 / secs / 1e6, dd_bytes as f64 / dd / 1e6);
        ratios.push(mbs / dd_mbs);
        println!(
            "| {trial} | {bytes} | {snapshot:.2} | {secs:.2} | {mbs:.0} | {dd:.2} | {dd_mbs:.0} | {:.0} % |",
            100.0 * mbs / dd_mbs
        );
    }
    ratios.sort_by(|a, b| a.total_cmp(b));
    println!("median ratio: {:.0} %", 100.0 * ratios[ratios.len() / 2]);
    Ok(())
}
