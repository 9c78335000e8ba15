//! NCCL correctness check on a GPU machine (used by `bench/gpu-check.sh`): W ranks, one thread
//! and one GPU each (W = 1, or the number of GPUs), all-reduce odd-sized f32 tensors (several
//! buckets), compare with an f64 sum computed here and across ranks bit for bit, then f64 sums,
//! broadcast and barrier; prints the all-reduce bus bandwidth of a 256 MiB buffer.
//!
//!   cargo run --release --features cuda,nccl -p mirrorplay-worker --example nccl_check -- 2
//!
//! Exits non-zero on any mismatch. Needs GPUs: it cannot run on a machine without one.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use mirrorplay_worker::collective::nccl::Nccl;
use mirrorplay_worker::collective::Collective;

fn value(rank: usize, t: usize, i: usize) -> f32 {
    let x = ((rank * 7919 + t * 104_729 + i * 31) % 2003) as f32;
    (x - 1001.0) / 7.0
}

const SHAPES: &[(&str, &[usize])] = &[
    ("a", &[7]),
    ("b.tiny", &[1]),
    ("c.matrix", &[5, 13]),
    ("d.big", &[3_000_017]),
    ("e.odd", &[3, 3, 37]),
];

fn rank_main(rank: usize, world: usize, id: Vec<u8>) -> Result<(Vec<Vec<u32>>, f64)> {
    let device = Device::new_cuda(rank)?;
    let cancel = Arc::new(AtomicBool::new(false));
    let mut nccl = Nccl::new(rank, world, &id, rank, Duration::from_secs(60), cancel)?;
    // Small buckets so that the big tensor spans several and the small ones are packed.
    nccl.set_bucket_bytes(4 << 20);
    let mut m = BTreeMap::new();
    for (t, (name, dims)) in SHAPES.iter().enumerate() {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|i| value(rank, t, i)).collect();
        m.insert(name.to_string(), Tensor::from_vec(v, *dims, &device)?);
    }
    nccl.all_reduce_sum(&mut m)?;
    let mut bits = Vec::new();
    for (t, (name, dims)) in SHAPES.iter().enumerate() {
        let got = &m[*name];
        if got.dims() != *dims {
            bail!("rank {rank}: {name} has shape {:?}", got.dims());
        }
        let v = got.flatten_all()?.to_vec1::<f32>()?;
        for (i, g) in v.iter().enumerate() {
            let exact: f64 = (0..world).map(|r| value(r, t, i) as f64).sum();
            let scale: f64 = (0..world).map(|r| value(r, t, i).abs() as f64).sum();
            if (*g as f64 - exact).abs() > 4.0 * f32::EPSILON as f64 * scale {
                bail!("rank {rank}: {name}[{i}] = {g}, expected {exact}");
            }
        }
        bits.push(v.iter().map(|x| x.to_bits()).collect());
    }
    let mut f = vec![0.5 * (rank + 1) as f64, 1e16, 1.0 / 3.0];
    nccl.all_reduce_sum_f64(&mut f)?;
    let want: Vec<f64> = (0..3)
        .map(|i| {
            let local = |r: usize| [0.5 * (r + 1) as f64, 1e16, 1.0 / 3.0][i];
            (1..world).fold(local(0), |acc, r| acc + local(r))
        })
        .collect();
    if f.iter()
        .map(|x| x.to_bits())
        .ne(want.iter().map(|x| x.to_bits()))
    {
        bail!("rank {rank}: f64 sums {f:?}, expected {want:?}");
    }
    let mut b = BTreeMap::new();
    b.insert("w".to_string(), Tensor::full(rank as f32, (4, 4), &device)?);
    b.insert(
        "h".to_string(),
        Tensor::full(rank as f32 + 1.0, 3, &device)?.to_dtype(DType::BF16)?,
    );
    nccl.broadcast(&mut b)?;
    if b["w"].flatten_all()?.to_vec1::<f32>()? != vec![0.0; 16]
        || b["h"].to_dtype(DType::F32)?.to_vec1::<f32>()? != vec![1.0; 3]
    {
        bail!("rank {rank}: broadcast did not copy rank 0's values");
    }
    nccl.barrier()?;
    // Bus bandwidth of one 256 MiB tensor (default buckets), median of 5 after a warm-up.
    nccl.set_bucket_bytes(mirrorplay_worker::collective::nccl::NCCL_BUCKET_BYTES);
    let n = 64 << 20;
    let mut times = Vec::new();
    for rep in 0..6 {
        let mut g = BTreeMap::new();
        g.insert("g".to_string(), Tensor::ones(n, DType::F32, &device)?);
        device.synchronize()?;
        nccl.barrier()?;
        let t = Instant::now();
        nccl.all_reduce_sum(&mut g)?;
        device.synchronize()?;
        if rep > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let bus = 2.0 * (world - 1) as f64 / world as f64 * (4 * n) as f64 / times[times.len() / 2];
    Ok((bits, bus))
}

fn main() -> Result<()> {
    let world: usize = match std::env::args().nth(1) {
        Some(w) => w.parse().context("world size")?,
        None => 1,
    };
    let id = Nccl::unique_id()?;
    let results: Vec<Result<(Vec<Vec<u32>>, f64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let id = id.clone();
                s.spawn(move || rank_main(rank, world, id))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a rank panicked")))
            })
            .collect()
    });
    let mut first: Option<Vec<Vec<u32>>> = None;
    for (rank, r) in results.into_iter().enumerate() {
        let (bits, bus) = r.with_context(|| format!("rank {rank}"))?;
        println!(
            "rank {rank}: all-reduce 256 MiB bus bandwidth {:.1} GB/s",
            bus / 1e9
        );
        match &first {
            None => first = Some(bits),
            Some(f) if *f != bits => bail!("rank {rank}'s sums differ in bits from rank 0's"),
            Some(_) => {}
        }
    }
    println!("nccl-check OK: world {world}, sums within f32 rounding of f64 and bit-identical across ranks; f64 sums, broadcast, barrier");
    Ok(())
}
