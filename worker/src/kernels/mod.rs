//! Hand-written CPU kernels for the shapes where candle's general kernels leave speed on the
//! table (docs/architecture.md#decoding-kernels). Each kernel works on plain slices, has a
//! portable fallback, and is deterministic for a given binary and machine; the candle glue
//! decides when a kernel may replace a candle op (never where a gradient is needed).

pub mod attention;
pub mod attention_op;
mod disjoint;
pub mod exp;
pub mod isa;
pub mod packed;
pub mod packed_op;
mod packed_simd;
pub mod pools;
pub mod reduce;
pub mod rowwise;
mod rowwise_grad;
pub mod rowwise_op;
pub mod skinny;
pub mod skinny_op;
mod skinny_simd;
pub mod token_logprobs;
pub mod token_logprobs_op;
pub mod train_op;
mod transpose;

#[cfg(test)]
mod attention_tests;
#[cfg(test)]
mod packed_tests;
#[cfg(test)]
mod rowwise_tests;
#[cfg(test)]
mod skinny_tests;
#[cfg(test)]
mod token_logprobs_tests;
#[cfg(test)]
mod train_op_tests;

/// Below this many weight elements (256 KiB of f32) a matmul kernel's call runs on the calling
/// thread: waking the pool costs about as much as the work.
const MIN_WEIGHTS_TO_SPLIT: usize = 1 << 16;
/// Pieces per thread a parallel call is cut into, so idle threads can take a late one's share.
/// 16 rather than 8: a batch-8 decode step's 121 calls end with a shorter tail on one thread
/// (plain decoding +1–3 % in six of six rounds on the Intel VM, 32 and 64 level with 16,
/// batch 1 unchanged: BENCHMARKS.md, "The 8-row stream's prefetch distance, and the peers in a
/// fast spell").
const PIECES_PER_THREAD: usize = 16;

/// `f(b)` for every output block b in 0..blocks of a matmul kernel over a weight of `weights`
/// elements (the skinny and packed kernels): on the calling thread when `parallel` is false or
/// the weight is small, else in about [`PIECES_PER_THREAD`] stealable pieces per thread on
/// rayon's global pool (where candle's gemm runs). The caller runs every piece no other thread
/// took, so a descheduled thread on a loaded machine never holds the call up (a fixed split per
/// thread, and candle's spinning barrier pool, did: BENCHMARKS.md#decoding-kernels). Blocks
/// never share an output element, so the split cannot change a result.
fn for_each_block(blocks: usize, weights: usize, parallel: bool, f: impl Fn(usize) + Sync + Send) {
    use rayon::prelude::*;
    if parallel && weights >= MIN_WEIGHTS_TO_SPLIT {
        let pieces = rayon::current_num_threads() * PIECES_PER_THREAD;
        let min_len = blocks.div_ceil(pieces).max(1);
        (0..blocks)
            .into_par_iter()
            .with_min_len(min_len)
            .for_each(f);
    } else {
        (0..blocks).for_each(f);
    }
}

/// The f32 elements of a contiguous CPU operand of a custom op, or an error naming the op and
/// the operand (the glue modules' common first step).
fn contiguous_f32<'a>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
    op: &str,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let candle_core::CpuStorage::F32(v) = storage else {
        candle_core::bail!("{op}: {what} is not f32");
    };
    let Some((a, b)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: {what} is not contiguous");
    };
    Ok(&v[a..b])
}

/// A kernel's argument error as candle's, for the glue modules' `cpu_fwd`s (the kernel's own
/// message, which names the operand and the lengths).
fn kernel_err(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}
