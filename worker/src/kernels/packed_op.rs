//! candle glue of the packed decoding matmul (`kernels::packed`): a per-weight slot that holds
//! the packed copy once it is made, and `x · Wᵀ` as a forward-only custom op on it.
//!
//! Only models made for decoding (`Model::for_decoding`, the models `sample::generate` runs)
//! carry slots, so a packed copy lives exactly as long as one generation, during which the
//! weights cannot change; a trainable model keeps the copies' memory for its next generation
//! ([`PackingBuffers`]). The gate is the skinny kernel's with a row limit the caller gives
//! (`skinny_op::admits_rows`): f32 on the CPU, contiguous, W of at least 32 768 elements,
//! nothing tracked by autograd, at most `max_rows` rows. Decoding views (`Model::for_decoding`)
//! give no limit, so a generation's prefill (prompt tokens × rows) runs on the panel kernel
//! too: at 64–1024 rows it multiplies at the machine's sgemm rate, 1.2–1.7× candle's gemm at
//! those shapes (BENCHMARKS.md#prefill-on-the-panel-kernel), and a row's prefill no longer
//! depends on the rows beside it. A frozen model's own forwards (scoring, judging) keep the
//! skinny kernel's 16 rows, so a model that never generates never gets a packed copy — which
//! would double its weights' memory.

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};

use super::packed::PackedWeight;
use super::skinny_op;

/// Where the packed copy of one weight matrix is kept, made on first use.
#[derive(Debug, Default)]
pub struct PackedSlot {
    copy: OnceLock<Arc<PackedWeight>>,
    /// Where the copy's memory goes when the slot is dropped, and where packing looks for a
    /// buffer first (a trainable model's decoding views: see [`PackingBuffers`]).
    recycle: Option<Arc<PackingBuffers>>,
}

impl PackedSlot {
    /// An empty slot that packs into, and gives its copy's memory back to, `buffers`.
    pub fn recycling(buffers: Arc<PackingBuffers>) -> Self {
        Self {
            copy: OnceLock::new(),
            recycle: Some(buffers),
        }
    }

    /// The packed copy, if one was made.
    #[cfg(test)]
    pub(crate) fn get(&self) -> Option<Arc<PackedWeight>> {
        self.copy.get().cloned()
    }
}

impl Drop for PackedSlot {
    fn drop(&mut self) {
        let (Some(buffers), Some(copy)) = (&self.recycle, self.copy.take()) else {
            return;
        };
        // A copy still shared (an op running on it elsewhere) is freed by its last holder.
        if let Ok(copy) = Arc::try_unwrap(copy) {
            buffers.give_back(copy.into_data());
        }
    }
}

/// Packed copies' memory kept between generations of a trainable model. Its decoding views
/// (`Model::for_decoding`, one per `sample::generate` call) must repack after every update of
/// the weights; repacking into memory the previous view's copies used skips the first-touch
/// page faults of fresh memory, most of a fresh pack's time (BENCHMARKS.md, "The policy's
/// packing kept between steps"). The price is one packed copy of the weights held between
/// generations (`MIRRORPLAY_KEEP_PACKED=0` frees it instead).
#[derive(Debug, Default)]
pub struct PackingBuffers(Mutex<Vec<Vec<f32>>>);

/// The environment variable that turns the keeping of packed copies' memory off (`0`).
pub const KEEP_PACKED_VAR: &str = "MIRRORPLAY_KEEP_PACKED";

/// Whether trainable models keep their packed copies' memory between generations: yes unless
/// [`KEEP_PACKED_VAR`] is `0` (read once).
pub fn keeps_packed() -> bool {
    static KEEP: OnceLock<bool> = OnceLock::new();
    *KEEP.get_or_init(|| std::env::var(KEEP_PACKED_VAR).map_or(true, |v| v != "0"))
}

impl PackingBuffers {
    /// A kept buffer of exactly `len` elements, if there is one.
    fn take(&self, len: usize) -> Option<Vec<f32>> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let at = kept.iter().position(|b| b.len() == len)?;
        Some(kept.swap_remove(at))
    }

    fn give_back(&self, buffer: Vec<f32>) {
        if !buffer.is_empty() {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(buffer);
        }
    }

    /// Elements held, over all kept buffers (tests).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(Vec::len)
            .sum()
    }
}

/// `x · Wᵀ` for x [rows, k] and W [n, k] on W's packed copy in `slot` (packed now if the slot is
/// empty), or `None` when the gate does not admit these operands or x has more than
/// `max_rows` rows (then use another path).
pub fn try_matmul_wt(
    x: &Tensor,
    w: &Tensor,
    slot: &PackedSlot,
    max_rows: usize,
) -> candle_core::Result<Option<Tensor>> {
    try_matmul_wt_stacked(x, &[w], slot, max_rows)
}

/// `x · [W₁; W₂; …]ᵀ` — the weights stacked along their rows, packed together into `slot` — as
/// [rows, Σ n_i]: one call (one wake-up of the pool) for several projections of the same input,
/// each part's columns the bits [`try_matmul_wt`] on that part gives. `None` when the gate does
/// not admit x (of at most `max_rows` rows) with every part.
pub fn try_matmul_wt_stacked(
    x: &Tensor,
    ws: &[&Tensor],
    slot: &PackedSlot,
    max_rows: usize,
) -> candle_core::Result<Option<Tensor>> {
    if ws.is_empty() || !ws.iter().all(|w| skinny_op::admits_rows(x, w, max_rows)) {
        return Ok(None);
    }
    let packed = match slot.copy.get() {
        Some(p) => p.clone(),
        None => {
            let p = Arc::new(pack(ws, slot.recycle.as_deref())?);
            // A concurrent first use may have set it meanwhile: either copy is the same.
            let _ = slot.copy.set(p.clone());
            p
        }
    };
    let n: usize = ws
        .iter()
        .map(|w| w.dim(0))
        .sum::<candle_core::Result<usize>>()?;
    if packed.n() != n || packed.k() != ws[0].dim(1)? {
        candle_core::bail!(
            "packed-matmul: the slot holds a {}×{} weight, not {}×{}",
            packed.n(),
            packed.k(),
            n,
            ws[0].dim(1)?
        );
    }
    Ok(Some(x.apply_op1_no_bwd(&PackedMatmulWt(packed))?))
}

/// Packs contiguous f32 CPU matrices of one width, stacked along their rows, into a kept
/// buffer of the right size from `buffers` if there is one.
fn pack(ws: &[&Tensor], buffers: Option<&PackingBuffers>) -> candle_core::Result<PackedWeight> {
    let k = ws[0].dim(1)?;
    let guards: Vec<_> = ws.iter().map(|w| w.storage_and_layout()).collect();
    let mut parts = Vec::with_capacity(ws.len());
    for (storage, layout) in &guards {
        let Storage::Cpu(cpu) = &**storage else {
            candle_core::bail!("packed-matmul: W is not on the CPU");
        };
        parts.push(super::contiguous_f32(cpu, layout, "packed-matmul", "W")?);
    }
    let n: usize = parts.iter().map(|p| p.len() / k.max(1)).sum();
    let len = PackedWeight::packed_len(n, k);
    let buffer = buffers.and_then(|b| b.take(len)).unwrap_or_default();
    PackedWeight::pack_stacked_into(&parts, k, buffer).map_err(super::kernel_err)
}

/// The forward-only op: x [rows, k] → [rows, n].
struct PackedMatmulWt(Arc<PackedWeight>);

impl CustomOp1 for PackedMatmulWt {
    fn name(&self) -> &'static str {
        "packed-matmul-wt"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, k) = l.shape().dims2()?;
        if k != self.0.k() {
            candle_core::bail!(
                "packed-matmul-wt: x has {k} columns but W has {}",
                self.0.k()
            );
        }
        let x = super::contiguous_f32(s, l, self.name(), "x")?;
        let mut y = vec![0f32; rows * self.0.n()];
        super::packed::matmul(x, rows, &self.0, &mut y).map_err(super::kernel_err)?;
        Ok((CpuStorage::F32(y), Shape::from((rows, self.0.n()))))
    }
}
