//! Helpers shared by the crate's unit tests.

/// Runs `f` to completion on a fresh current-thread runtime (for sync tests of async code).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime")
        .block_on(f)
}

/// `len` reproducible values in [lo, hi) from a 64-bit LCG seeded by `seed`.
pub fn uniform(len: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// The bit patterns of an f32 tensor's elements (for bit-for-bit comparisons).
pub fn bits(t: &candle_core::Tensor) -> Vec<u32> {
    t.flatten_all()
        .expect("flatten")
        .to_vec1::<f32>()
        .expect("an f32 tensor")
        .iter()
        .map(|x| x.to_bits())
        .collect()
}
