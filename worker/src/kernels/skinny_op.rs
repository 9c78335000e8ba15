//! candle glue of the skinny matmul: `x · Wᵀ` as a forward-only `CustomOp2`, and the gate that
//! decides when it may replace candle's matmul (docs/architecture.md#decoding-kernels).
//!
//! The gate admits only the decoding case: f32 on the CPU, both operands contiguous, x of
//! 1..=[`MAX_ROWS`] rows, W of at least [`MIN_WEIGHT_ELEMENTS`], and neither operand tracked
//! by autograd (the op has no backward, so the training path keeps candle's ops). The panel
//! kernel on packed weights (`packed_op`) shares the gate, with the row limit its caller gives
//! ([`admits_rows`]: none in a decoding view, so the prefill too), and the switch [`enabled`];
//! generation takes that one, and this one serves the few-row forwards of models without
//! packed copies (e.g. scoring short batches on a trainable model's detached view).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

use super::skinny;

/// Most rows (sequences decoded together) the kernel takes; more is a gemm's job.
pub const MAX_ROWS: usize = 16;

/// Smallest weight matrix (elements, 128 KiB of f32) the kernel takes. Smaller ones — the tiny
/// test models — keep candle's matmul, so the golden files sampled from them do not move
/// (docs/development.md#fixtures).
pub const MIN_WEIGHT_ELEMENTS: usize = 1 << 15;

/// The environment variable that opts the decoding path out of the skinny and packed kernels
/// (`0`).
pub const ENABLE_VAR: &str = "MIRRORPLAY_SKINNY_MATMUL";

/// Whether `model::ops::linear` (and the decoder's stacked projections) use the skinny or
/// packed kernel: yes unless [`ENABLE_VAR`] is `0` (read once).
/// On by default since it decoded at least as fast as candle's matmul at batch 1 and faster at
/// batch 8 in interleaved runs on the 2-vCPU development VM (BENCHMARKS.md#decoding-kernels);
/// `0` keeps candle's matmul (for comparisons).
pub fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var(ENABLE_VAR).map_or(true, |v| v != "0"))
}

/// `x · Wᵀ` for x [rows, k] and W [n, k] by the skinny kernel, or `None` when the gate does
/// not admit these operands (then use candle's matmul).
pub fn try_matmul_wt(x: &Tensor, w: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if !admits(x, w) {
        return Ok(None);
    }
    Ok(Some(x.apply_op2_no_bwd(w, &SkinnyMatmulWt)?))
}

/// Whether the kernel may compute `x · Wᵀ` (see the module doc).
pub fn admits(x: &Tensor, w: &Tensor) -> bool {
    admits_rows(x, w, MAX_ROWS)
}

/// The gate with another row limit: f32 CPU operands, contiguous, untracked, W of at least
/// [`MIN_WEIGHT_ELEMENTS`], x of 1..=`max_rows` rows.
pub fn admits_rows(x: &Tensor, w: &Tensor, max_rows: usize) -> bool {
    let (Ok((rows, k)), Ok((_, wk))) = (x.dims2(), w.dims2()) else {
        return false;
    };
    x.device().is_cpu()
        && w.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && (1..=max_rows).contains(&rows)
        && k == wk
        && w.elem_count() >= MIN_WEIGHT_ELEMENTS
        && x.is_contiguous()
        && w.is_contiguous()
        && !x.track_op()
        && !w.track_op()
}

/// The forward-only op: lhs x [rows, k], rhs W [n, k] → [rows, n].
struct SkinnyMatmulWt;

impl CustomOp2 for SkinnyMatmulWt {
    fn name(&self) -> &'static str {
        "skinny-matmul-wt"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, k) = l1.shape().dims2()?;
        let (n, wk) = l2.shape().dims2()?;
        if k != wk {
            candle_core::bail!("skinny-matmul-wt: x has {k} columns but W has {wk}");
        }
        let x = super::contiguous_f32(s1, l1, self.name(), "x")?;
        let w = super::contiguous_f32(s2, l2, self.name(), "W")?;
        let mut y = vec![0f32; rows * n];
        skinny::matmul_wt(x, rows, w, n, k, &mut y).map_err(super::kernel_err)?;
        Ok((CpuStorage::F32(y), Shape::from((rows, n))))
    }
}
