//! TCP ring all-reduce bus bandwidth, W = 2 and 3 ranks as separate processes on loopback,
//! beside single-thread memcpy bandwidth measured in the same run.
//!
//!   cargo bench -p mirrorplay-worker --bench ring_allreduce
//!   RING_BENCH_SIZES_MIB=16,64 RING_BENCH_WORLDS=3 cargo bench ... # a subset
//!   RING_BENCH_BUCKET_MIB=16 RING_BENCH_PIECE_KIB=64              # tuning knobs
//!
//! Bus bandwidth = 2(W−1)/W · bytes / time (the bytes each rank sends and receives, per second;
//! nccl-tests' definition), from the median of the timed calls on rank 0. Two entry points:
//! `slice` (`TcpRing::all_reduce_slice` on a flat buffer: the ring itself) and `tensor`
//! (`Collective::all_reduce_sum` on one f32 tensor of that size: plus the copies out of and
//! back into a tensor). The target is at least 50 % of memcpy from 16 MiB up
//! (BENCHMARKS.md#tcp-ring-all-reduce). For context the table also gives one-way loopback TCP
//! throughput (two threads, one stream): no TCP transport can beat it.
//!
//! The parent spawns this binary once per rank with `RING_BENCH_CHILD=rank,world,dir`; the
//! children exchange listener addresses through files in `dir`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use mirrorplay_worker::collective::{Collective, RingListener, RingOptions, TcpRing};

const MIB: usize = 1 << 20;

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn sizes() -> Vec<usize> {
    env_list("RING_BENCH_SIZES_MIB", &[1, 4, 16, 64, 256])
}

/// Timed repetitions for a buffer of `bytes`: about 1 GiB of payload, between 3 and 20.
fn reps(bytes: usize) -> usize {
    (1024 * MIB / bytes).clamp(3, 20)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Best-of-5 single-thread copy of `bytes` (both buffers touched first), in bytes/s.
fn memcpy_bandwidth(bytes: usize) -> f64 {
    let src: Vec<u8> = (0..bytes).map(|i| i as u8).collect();
    let mut dst = vec![0u8; bytes];
    dst.copy_from_slice(&src);
    let best = (0..5)
        .map(|_| {
            let t = Instant::now();
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&dst);
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    bytes as f64 / best
}

/// Best-of-3 one-way loopback TCP throughput for `bytes` (a sender thread, this thread
/// receiving), in bytes/s: the ceiling of any TCP transport on this machine.
fn tcp_bandwidth(bytes: usize) -> f64 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let addr = listener.local_addr().expect("address");
    let sender = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let data = vec![1u8; bytes];
        for _ in 0..4 {
            s.write_all(&data).expect("send");
        }
    });
    let (mut r, _) = listener.accept().expect("accept");
    let mut buf = vec![0u8; bytes];
    let mut best = f64::INFINITY;
    for rep in 0..4 {
        let t = Instant::now();
        r.read_exact(&mut buf).expect("receive");
        if rep > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    sender.join().expect("sender");
    bytes as f64 / best
}

fn main() {
    if let Ok(spec) = std::env::var("RING_BENCH_CHILD") {
        if let Err(e) = child(&spec) {
            eprintln!("ring bench rank ({spec}): {e}");
            std::process::exit(1);
        }
        return;
    }
    let sizes = sizes();
    let worlds = env_list("RING_BENCH_WORLDS", &[2, 3]);
    let memcpy: Vec<f64> = sizes.iter().map(|&m| memcpy_bandwidth(m * MIB)).collect();
    let tcp: Vec<f64> = sizes.iter().map(|&m| tcp_bandwidth(m * MIB)).collect();
    let mut rows: BTreeMap<(usize, usize, String), f64> = BTreeMap::new();
    for &w in &worlds {
        for line in run_world(w).lines() {
            // "RESULT <mib> <mode> <seconds>"
            let f: Vec<&str> = line.split_whitespace().collect();
            if let ["RESULT", mib, mode, secs] = f.as_slice() {
                if let (Ok(mib), Ok(secs)) = (mib.parse(), secs.parse()) {
                    rows.insert((w, mib, mode.to_string()), secs);
                }
            }
        }
    }
    println!(
        "bucket {} MiB, piece {} KiB, {} CPUs",
        env_usize("RING_BENCH_BUCKET_MIB", 16),
        env_usize("RING_BENCH_PIECE_KIB", 64),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| size | memcpy GB/s | TCP 1-way GB/s | W | mode | median ms | bus GB/s | % of memcpy |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (i, &mib) in sizes.iter().enumerate() {
        for &w in &worlds {
            for mode in ["slice", "tensor"] {
                let Some(&secs) = rows.get(&(w, mib, mode.to_string())) else {
                    continue;
                };
                let bus = 2.0 * (w - 1) as f64 / w as f64 * (mib * MIB) as f64 / secs;
                println!(
                    "| {mib} MiB | {:.2} | {:.2} | {w} | {mode} | {:.2} | {:.2} | {:.0} % |",
                    memcpy[i] / 1e9,
                    tcp[i] / 1e9,
                    secs * 1e3,
                    bus / 1e9,
                    100.0 * bus / memcpy[i]
                );
            }
        }
    }
}

/// Runs `w` rank processes; returns rank 0's stdout.
fn run_world(w: usize) -> String {
    let dir = std::env::temp_dir().join(format!("ring-bench-{}-{w}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let exe = std::env::current_exe().expect("own path");
    let children: Vec<_> = (0..w)
        .map(|rank| {
            Command::new(&exe)
                .env("RING_BENCH_CHILD", format!("{rank},{w},{}", dir.display()))
                .stdout(if rank == 0 {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn a rank")
        })
        .collect();
    let mut out = String::new();
    for (rank, c) in children.into_iter().enumerate() {
        let o = c.wait_with_output().expect("wait for a rank");
        assert!(
            o.status.success(),
            "rank {rank} of {w} failed: {}",
            o.status
        );
        if rank == 0 {
            out = String::from_utf8_lossy(&o.stdout).into_owned();
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// Publishes this rank's address in `dir` and waits for everyone's.
fn rendezvous(dir: &Path, rank: usize, w: usize, me: SocketAddr) -> Vec<SocketAddr> {
    let path = |r: usize| -> PathBuf { dir.join(format!("rank{r}")) };
    let tmp = dir.join(format!("rank{rank}.tmp"));
    std::fs::write(&tmp, me.to_string()).expect("write address");
    std::fs::rename(&tmp, path(rank)).expect("publish address");
    let start = Instant::now();
    (0..w)
        .map(|r| loop {
            if let Ok(s) = std::fs::read_to_string(path(r)) {
                if let Ok(a) = s.parse() {
                    break a;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "rank {r} never came"
            );
            std::thread::sleep(Duration::from_millis(5));
        })
        .collect()
}

fn child(spec: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut it = spec.splitn(3, ',');
    let rank: usize = it.next().ok_or("rank")?.parse()?;
    let w: usize = it.next().ok_or("world")?.parse()?;
    let dir = PathBuf::from(it.next().ok_or("dir")?);
    let listener = RingListener::bind(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
    let peers = rendezvous(&dir, rank, w, listener.local_addr()?);
    let opts = RingOptions {
        timeout: Duration::from_secs(30),
        cancel: Arc::new(AtomicBool::new(false)),
        bucket_bytes: env_usize("RING_BENCH_BUCKET_MIB", 16) * MIB,
    };
    let mut ring: TcpRing = listener.connect(rank, &peers, 42, opts)?;
    ring.set_piece_bytes(env_usize("RING_BENCH_PIECE_KIB", 64) << 10);
    for mib in sizes() {
        let n = mib * MIB / 4;
        let mut data: Vec<f32> = (0..n).map(|i| ((i + rank) % 7) as f32).collect();
        let mut times = Vec::new();
        for rep in 0..=reps(mib * MIB) {
            ring.barrier()?;
            let t = Instant::now();
            ring.all_reduce_slice(&mut data)?;
            if rep > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        println!("RESULT {mib} slice {}", median(times));
        let mut map = BTreeMap::new();
        map.insert("g".to_string(), Tensor::from_vec(data, n, &Device::Cpu)?);
        let mut times = Vec::new();
        for rep in 0..=reps(mib * MIB) {
            ring.barrier()?;
            let t = Instant::now();
            ring.all_reduce_sum(&mut map)?;
            if rep > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        println!("RESULT {mib} tensor {}", median(times));
    }
    Ok(())
}
