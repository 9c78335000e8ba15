//! PCB-merging (Du et al. 2024, "Parameter Competition Balancing for Model Merging", NeurIPS,
//! §3), as the authors' released `PCB_merge` computes it (docs/algorithms.md §5):
//!
//! ```text
//! lo_i = a_i[int(d·c)], hi_i = a_i[int(d·(1−c) − 1)]      a_i = |τ_i| ascending over the unit
//! A_i = clamp(|τ_i|, lo_i, hi_i), C_i = sign(τ_i)·A_i,  x_i = (A_i − lo_i)/(hi_i − lo_i)
//! β_i = exp(n·x_i²) · inter_i,  inter_i = tanh(τ_i ⊙ Σ_j τ_j)  |  Σ_j tanh(ν_i ⊙ ν_j), ν = sign(τ)·x
//! t_i = sort(β_i)[int(d·(1−r))], M_i = max β_i,  S_i = (max(β_i, t_i) − t_i)/(M_i − t_i)
//! θ = θ_base + λ·Σ_i λ_i·S_i·C_i / max(Σ_i S_i, 1e-12)
//! ```
//!
//! Pass structure, per unit (the whole model with `Scope::Global`, else each tensor):
//! 1. rounds `High`, `Low` of a [`Selection`](super::radix::Selection) per task over |τ_i| at
//!    the two [`clip_ranks`] → one [`Clip`] per task (values: [`abs_tau`]);
//! 2. rounds `High`, `Low` of a selection per task over β_i at [`keep_rank`], with the maximum
//!    tracked in round `High` → one [`Ramp`] per task (values: [`Block::compute`], needs every
//!    task's `Clip`);
//! 3. the write sweep, [`pcb_chunk`] (needs every task's `Clip` and `Ramp`).
//!
//! Every sweep computes a chunk in blocks of [`BLOCK`] elements, one vectorised loop per step
//! of the formula ([`Block`]); exp and tanh are [`super::vmath`]'s branch-free versions.
//!
//! A unit held as one chunk (a tensor no larger than the chunk size, per-tensor scope) skips the
//! rounds: [`pcb_local`] computes the same order statistics in memory.

use super::radix::{select_in_memory, NanAt};
use super::vmath::{exp, tanh, tanh_poly, TANH_POLY_BELOW};
use super::{clamp, sign, trunc_index, Chunk, Inter, Pcb, Result};

/// The ascending ranks of lo and hi in a unit of `d` elements: int(d·c) and int(d·(1−c) − 1),
/// f64 evaluated in that order and truncated (docs/algorithms.md §5; the authors' `clamp(x,
/// min_ratio=c, max_ratio=c)` indexes `sorted_x[int(d * min_ratio)]` and
/// `sorted_x[int(d * (1 - max_ratio) - 1)]`). Needs d ≥ 1, c in [0, 1).
pub fn clip_ranks(d: u64, clip_ratio: f64) -> [u64; 2] {
    let lo = trunc_index(d as f64 * clip_ratio);
    let hi = trunc_index(d as f64 * (1.0 - clip_ratio) - 1.0);
    [
        lo.clamp(0, d as i64 - 1) as u64,
        hi.clamp(0, d as i64 - 1) as u64,
    ]
}

/// The ascending rank of t in a unit of `d` elements: int(d·(1−r)) (the authors'
/// `clamp(task_pcb, 1 - pcb_ratio, 0)`, whose lower bound is `sorted[int(d * (1 - r))]`). For r
/// in (0, 1] it is below d except when 1 − r rounds to 1; it is capped at d − 1 there (where
/// the reference would fail).
pub fn keep_rank(d: u64, keep_ratio: f64) -> u64 {
    (trunc_index(d as f64 * (1.0 - keep_ratio)).max(0) as u64).min(d - 1)
}

/// Task i's clipping range over a unit (from pass 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clip {
    pub lo: f32,
    pub hi: f32,
}

impl Clip {
    /// Builds the clip from the order statistics, warning when hi = lo (the authors' code divides
    /// by zero there; x is taken as 0).
    pub fn new(unit: &str, model: usize, lo: f32, hi: f32) -> Clip {
        if hi == lo {
            if hi == 0.0 {
                tracing::warn!(unit, model, "PCB: the task vector is (almost) all zero (lo = hi = 0): it contributes nothing");
            } else {
                tracing::warn!(
                    unit,
                    model,
                    lo,
                    "PCB: |τ| has lo = hi; its normalised magnitude is taken as 0"
                );
            }
        }
        Clip { lo, hi }
    }

    /// x = (A − lo)/(hi − lo) for A = clamp(|τ|, lo, hi); 0 when hi = lo.
    #[inline(always)]
    fn normalised(&self, a: f32) -> f32 {
        if self.hi == self.lo {
            0.0
        } else {
            (a - self.lo) / (self.hi - self.lo)
        }
    }
}

/// Task i's soft ramp over a unit (from pass 2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ramp {
    pub t: f32,
    pub m: f32,
}

impl Ramp {
    /// Builds the ramp, warning when M = t (every S is then 0: in per-tensor scope, a tensor of
    /// d ≤ 1/r elements stays at the base).
    pub fn new(unit: &str, model: usize, d: u64, keep_ratio: f64, t: f32, m: f32) -> Ramp {
        if m == t {
            if d as f64 * keep_ratio <= 1.0 {
                tracing::warn!(unit, model, d, keep_ratio, "PCB: unit has d ≤ 1/keep_ratio elements, so t = M: this model contributes nothing here");
            } else {
                tracing::warn!(
                    unit,
                    model,
                    t,
                    "PCB: max β = t; the model's scores are taken as 0 here"
                );
            }
        }
        Ramp { t, m }
    }

    /// S = (max(β, t) − t)/(M − t); 0 when M = t.
    ///
    /// S is continuous in β, but the merged value Σ_i λ_i·S_i·C_i / max(Σ_i S_i, 1e-12) is not
    /// where every S_j but one is 0: an element whose β_i is one ulp above t_i gets all of C_i,
    /// one ulp lower gets the base. Implementations whose exp/tanh differ by an ulp can disagree
    /// there by a whole task-vector entry (seen once in 130.6 M elements against PyTorch,
    /// BENCHMARKS.md); the parity fixtures are small enough not to contain such an element.
    #[inline(always)]
    fn score(&self, beta: f32) -> f32 {
        if self.m == self.t {
            0.0
        } else {
            (beta.max(self.t) - self.t) / (self.m - self.t)
        }
    }
}

crate::simd_fn! {
    /// Pass 1 values: |τ_i| = |m − b| elementwise (a model's range and the base's).
    pub fn abs_tau(m: &[f32], b: &[f32], out: &mut [f32]) {
        for ((o, m), b) in out.iter_mut().zip(m).zip(b) {
            *o = (m - b).abs();
        }
    }
}

/// Elements per block of the vectorised kernels: a block's work space (four arrays per task)
/// stays in L1/L2 while every task's loops run over it.
pub const BLOCK: usize = 512;

/// τ_i, C_i, x_i and β_i of every task over one block of a chunk (task-major arrays of
/// [`BLOCK`]), computed loop by loop (columnwise) so each loop vectorises. Each element gets the
/// f32 operations of the module's formula in the same order as an element-by-element loop
/// (sums over tasks in model order), so the values do not depend on the block size.
pub struct Block {
    n: usize,
    len: usize,
    tau: Vec<f32>,
    c: Vec<f32>,
    x: Vec<f32>,
    beta: Vec<f32>,
    /// Σ_j τ_j (sum_raw) or the inter term being summed (pairwise).
    acc: Vec<f32>,
}

impl Block {
    pub fn new(n: usize) -> Block {
        Block {
            n,
            len: 0,
            tau: vec![0.0; n * BLOCK],
            c: vec![0.0; n * BLOCK],
            x: vec![0.0; n * BLOCK],
            beta: vec![0.0; n * BLOCK],
            acc: vec![0.0; BLOCK],
        }
    }

    fn slot(v: &[f32], i: usize, len: usize) -> &[f32] {
        &v[i * BLOCK..i * BLOCK + len]
    }

    fn slot_mut(v: &mut [f32], i: usize, len: usize) -> &mut [f32] {
        &mut v[i * BLOCK..i * BLOCK + len]
    }

    /// β_i over the block last computed.
    pub fn beta(&self, i: usize) -> &[f32] {
        Self::slot(&self.beta, i, self.len)
    }

    /// Computes the block of `len ≤ BLOCK` elements of `chunk` starting at `start`.
    pub fn compute(
        &mut self,
        inter: Inter,
        clips: &[Clip],
        chunk: &Chunk,
        start: usize,
        len: usize,
    ) {
        assert!(len <= BLOCK && clips.len() == self.n);
        self.len = len;
        let base = &chunk.base[start..start + len];
        for (i, clip) in clips.iter().enumerate() {
            clip_task(
                &chunk.models[i][start..start + len],
                base,
                *clip,
                Self::slot_mut(&mut self.tau, i, len),
                Self::slot_mut(&mut self.c, i, len),
                Self::slot_mut(&mut self.x, i, len),
            );
        }
        let nf = self.n as f32;
        let acc = &mut self.acc[..len];
        match inter {
            Inter::SumRaw => {
                acc.fill(-0.0); // the neutral element of f32 addition (and of Rust's f32 sum)
                for i in 0..self.n {
                    add_into(acc, Self::slot(&self.tau, i, len));
                }
                for i in 0..self.n {
                    beta_sum_raw(
                        Self::slot(&self.x, i, len),
                        Self::slot(&self.tau, i, len),
                        acc,
                        nf,
                        Self::slot_mut(&mut self.beta, i, len),
                    );
                }
            }
            Inter::Pairwise => {
                // ν_i = sign(τ_i)·x_i, kept in `tau`'s place (τ is not needed after C and x).
                for i in 0..self.n {
                    let (tau, x) = (
                        Self::slot_mut(&mut self.tau, i, len),
                        Self::slot(&self.x, i, len),
                    );
                    signed(tau, x);
                }
                for i in 0..self.n {
                    acc.fill(0.0);
                    for j in 0..self.n {
                        add_tanh_product(
                            Self::slot(&self.tau, i, len),
                            Self::slot(&self.tau, j, len),
                            acc,
                        );
                    }
                    beta_pairwise(
                        Self::slot(&self.x, i, len),
                        acc,
                        nf,
                        Self::slot_mut(&mut self.beta, i, len),
                    );
                }
            }
        }
    }

    /// Adds this block's share of the write sweep to `num`, `den` (zeroed by the caller) for
    /// every task, and the entries it keeps to `kept`.
    fn weigh(
        &self,
        lambdas: &[f32],
        ramps: &[Ramp],
        num: &mut [f32],
        den: &mut [f32],
        kept: &mut [u64],
    ) {
        for (i, kept) in kept.iter_mut().enumerate() {
            *kept += add_scored(
                Self::slot(&self.beta, i, self.len),
                Self::slot(&self.c, i, self.len),
                ramps[i],
                lambdas[i],
                num,
                den,
            );
        }
    }
}

crate::simd_fn! {
    /// τ = m − b, A = clamp(|τ|, lo, hi), C = sign(τ)·A, x = (A − lo)/(hi − lo) (0 when hi = lo).
    fn clip_task(m: &[f32], b: &[f32], clip: Clip, tau: &mut [f32], c: &mut [f32], x: &mut [f32]) {
        let out = tau.iter_mut().zip(c.iter_mut()).zip(x.iter_mut());
        for (((tau, c), x), (m, b)) in out.zip(m.iter().zip(b)) {
            let t = m - b;
            let a = clamp(t.abs(), clip.lo, clip.hi);
            *tau = t;
            *c = sign(t) * a;
            *x = clip.normalised(a);
        }
    }
}

crate::simd_fn! {
    /// acc += v elementwise.
    fn add_into(acc: &mut [f32], v: &[f32]) {
        for (a, v) in acc.iter_mut().zip(v) {
            *a += v;
        }
    }
}

crate::simd_fn! {
    /// v = sign(v)·x elementwise.
    fn signed(v: &mut [f32], x: &[f32]) {
        for (v, x) in v.iter_mut().zip(x) {
            *v = sign(*v) * x;
        }
    }
}

crate::simd_fn! {
    /// β = exp(n·x²)·tanh(τ·s): Du et al. 2024 §3, intra-balancing exp(n·x²) times the authors'
    /// `PCB_merge` inter-balancing tanh(τ_i ⊙ Σ_j τ_j).
    fn beta_sum_raw(x: &[f32], tau: &[f32], s: &[f32], n: f32, beta: &mut [f32]) {
        // Task-vector entries are small, so τ·s is almost always in tanh's polynomial range:
        // then the polynomial alone gives the same values without tanh's exponential.
        let poly = tau
            .iter()
            .zip(s)
            .fold(true, |poly, (t, s)| poly & ((t * s).abs() < TANH_POLY_BELOW));
        let betas = beta.iter_mut().zip(x).zip(tau).zip(s);
        if poly {
            for (((b, x), t), s) in betas {
                *b = exp(n * (x * x)) * tanh_poly(t * s);
            }
        } else {
            for (((b, x), t), s) in betas {
                *b = exp(n * (x * x)) * tanh(t * s);
            }
        }
    }
}

crate::simd_fn! {
    /// acc += tanh(ν_i·ν_j) elementwise (one term of the pairwise inter-balancing sum).
    fn add_tanh_product(nu_i: &[f32], nu_j: &[f32], acc: &mut [f32]) {
        for ((a, u), v) in acc.iter_mut().zip(nu_i).zip(nu_j) {
            *a += tanh(u * v);
        }
    }
}

crate::simd_fn! {
    /// β = exp(n·x²)·Σ_j tanh(ν_i ⊙ ν_j): Du et al. 2024 §3 with the authors' vision code's
    /// pairwise inter-balancing.
    fn beta_pairwise(x: &[f32], inter: &[f32], n: f32, beta: &mut [f32]) {
        for ((b, x), inter) in beta.iter_mut().zip(x).zip(inter) {
            *b = exp(n * (x * x)) * inter;
        }
    }
}

crate::simd_fn! {
    /// S = (max(β, t) − t)/(M − t) (0 when M = t), then num += λ_i·S·C and den += S; returns
    /// how many S > 0.
    fn add_scored(beta: &[f32], c: &[f32], ramp: Ramp, lambda: f32, num: &mut [f32], den: &mut [f32]) -> u64 {
        let mut kept = 0u32;
        let acc = num.iter_mut().zip(den.iter_mut());
        for ((num, den), (b, c)) in acc.zip(beta.iter().zip(c)) {
            let s = ramp.score(*b);
            kept += (s > 0.0) as u32;
            *num += lambda * s * c;
            *den += s;
        }
        kept as u64
    }
}

crate::simd_fn! {
    /// θ = θ_base + λ·num / max(den, 1e-12).
    fn finish(base: &[f32], num: &[f32], den: &[f32], lambda: f32, out: &mut [f32]) {
        for (((o, b), n), d) in out.iter_mut().zip(base).zip(num).zip(den) {
            *o = b + lambda * (n / d.max(1e-12));
        }
    }
}

/// Pass 2 values: β_i = intra_i·inter_i for every task over the chunk (`out[i]` has the
/// chunk's length), block by block.
pub fn scores(p: &Pcb, clips: &[Clip], chunk: &Chunk, out: &mut [Vec<f32>]) {
    let mut block = Block::new(clips.len());
    for start in (0..chunk.len()).step_by(BLOCK) {
        let len = BLOCK.min(chunk.len() - start);
        block.compute(p.inter, clips, chunk, start, len);
        for (i, o) in out.iter_mut().enumerate() {
            o[start..start + len].copy_from_slice(block.beta(i));
        }
    }
}

/// The write sweep: θ = θ_base + λ·Σ_i λ_i·S_i·C_i / max(Σ_i S_i, 1e-12), S_i the soft ramp
/// (Du et al. 2024 §3, drop and rescale; the authors' `scale = normalize(clamp(task_pcb, 1 - r,
/// 0))` and `sum(tvs * scale) / clamp(sum(scale), min=1e-12)` on the clipped task vectors).
/// Returns, per task, the entries kept (S_i > 0). Checks each block for NaN (lengths checked).
pub fn pcb_chunk(
    p: &Pcb,
    clips: &[Clip],
    ramps: &[Ramp],
    chunk: &Chunk,
    out: &mut [f32],
) -> Result<Vec<u64>> {
    let n = clips.len();
    let mut kept = vec![0u64; n];
    let mut block = Block::new(n);
    let (mut num, mut den) = ([0f32; BLOCK], [0f32; BLOCK]);
    for start in (0..chunk.len()).step_by(BLOCK) {
        let len = BLOCK.min(chunk.len() - start);
        chunk.check_nan(start, len)?;
        block.compute(p.inter, clips, chunk, start, len);
        let (num, den) = (&mut num[..len], &mut den[..len]);
        num.fill(0.0);
        den.fill(0.0);
        block.weigh(&p.lambdas, ramps, num, den, &mut kept);
        finish(
            &chunk.base[start..start + len],
            num,
            den,
            p.lambda,
            &mut out[start..start + len],
        );
    }
    Ok(kept)
}

/// A whole unit held as one chunk: both statistics passes in memory, then [`pcb_chunk`]. Gives
/// exactly what the rounds give.
pub fn pcb_local(p: &Pcb, chunk: &Chunk, out: &mut [f32]) -> Result<Vec<u64>> {
    chunk.check()?;
    let n = chunk.models.len();
    let d = chunk.len() as u64;
    if d == 0 {
        return Ok(vec![0; n]);
    }
    let unit = chunk.tensor;
    let nan = |i| move |NanAt(_)| super::ties::nan_tau(unit, i);
    let mut values = vec![vec![0.0f32; chunk.len()]; n];
    let mut clips = Vec::with_capacity(n);
    for (i, v) in values.iter_mut().enumerate() {
        abs_tau(chunk.models[i], chunk.base, v);
        let (s, _) = select_in_memory(v, &clip_ranks(d, p.clip_ratio)).map_err(nan(i))?;
        clips.push(Clip::new(unit, i, s[0].value, s[1].value));
    }
    scores(p, &clips, chunk, &mut values);
    let mut ramps = Vec::with_capacity(n);
    for (i, v) in values.iter().enumerate() {
        let (s, max) = select_in_memory(v, &[keep_rank(d, p.keep_ratio)]).map_err(nan(i))?;
        ramps.push(Ramp::new(unit, i, d, p.keep_ratio, s[0].value, max));
    }
    pcb_chunk(p, &clips, &ramps, chunk, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::Scope;

    #[test]
    fn index_arithmetic_is_f64_truncated_in_the_stated_order() {
        // docs/algorithms.md §5's examples: int(100·(1 − 0.9)) = 9, int(90·(1 − 0.3)) = 62.
        assert_eq!(keep_rank(100, 0.9), 9);
        assert_eq!(keep_rank(90, 0.3), 62);
        assert_eq!(clip_ranks(10_000, 0.0001), [1, 9_998]);
        assert_eq!(clip_ranks(100, 0.01), [1, 98]);
        assert_eq!(clip_ranks(1, 0.01), [0, 0]);
        assert_eq!(keep_rank(5, 0.1), 4); // d ≤ 1/r: t is the maximum
        assert_eq!(keep_rank(10, 1.0), 0);
    }

    fn params(keep_ratio: f64, inter: Inter) -> Pcb {
        Pcb {
            scope: Scope::PerTensor,
            keep_ratio,
            clip_ratio: 0.0,
            inter,
            lambda: 1.0,
            lambdas: vec![1.0, 1.0],
        }
    }

    /// Two tasks, four elements, c = 0 (lo = min, hi = max), r = 0.5, by hand.
    #[test]
    fn small_case_by_hand() {
        let base = [0.0f32; 4];
        let (a, b) = ([1.0f32, -2.0, 0.0, 4.0], [2.0f32, 2.0, 1.0, 0.0]);
        let models: [&[f32]; 2] = [&a, &b];
        let chunk = Chunk::whole(&base, &models);
        let mut out = [0.0f32; 4];
        let kept = pcb_local(&params(0.5, Inter::SumRaw), &chunk, &mut out).unwrap();
        // Task a: |τ| = 1,2,0,4 → lo 0, hi 4, x = .25,.5,0,1. s = τ_a + τ_b = 3, 0, 1, 4.
        //   β_a = exp(2x²)·tanh(τ_a·s) = e^.125·tanh 3, e^.5·tanh 0, 1·tanh 0, e^2·tanh 16
        //       ≈ 1.1299, 0, 0, 7.3891. Sorted: 0, 0, 1.1299, 7.3891; t = [int(4·.5)] = 1.1299.
        //   S_a = 0, 0, 0, 1.
        // Task b: |τ| = 2,2,1,0 → lo 0, hi 2, x = 1,1,.5,0. β_b = e²·tanh 6, e²·tanh 0,
        //   e^.5·tanh 1, 1·tanh 0 ≈ 7.3887, 0, 1.2557, 0 → t = 1.2557, M = 7.3887;
        //   S_b = 1, 0, 0, 0.
        // θ = (S_a·C_a + S_b·C_b)/max(S_a + S_b, 1e-12) = (C_b, 0, 0, C_a) = (2, 0, 0, 4).
        assert_eq!(kept, vec![1, 1]);
        assert_eq!(out, [2.0, 0.0, 0.0, 4.0]);
    }

    #[test]
    fn degenerate_cases_stay_at_base_with_warnings() {
        // All-zero task vectors (hi = lo), and d ≤ 1/r (t = M): every S is 0, θ = base.
        let base = [0.5f32, -1.0, 2.0];
        let models: [&[f32]; 2] = [&base, &base];
        let chunk = Chunk::whole(&base, &models);
        let mut out = [0.0f32; 3];
        let logs = crate::merge::capture_logs(|| {
            assert_eq!(
                pcb_local(&params(0.1, Inter::Pairwise), &chunk, &mut out).unwrap(),
                vec![0, 0]
            );
        });
        assert_eq!(out, base);
        assert!(
            logs.contains("WARN") && logs.contains("all zero") && logs.contains("unit=\"t\""),
            "{logs}"
        );
        let (a, b) = ([1.0f32, 0.0, 2.0], [0.0f32, 1.0, 2.5]);
        let models: [&[f32]; 2] = [&a, &b];
        let chunk = Chunk {
            models: &models,
            ..chunk
        };
        let logs = crate::merge::capture_logs(|| {
            assert_eq!(
                pcb_local(&params(0.3, Inter::SumRaw), &chunk, &mut out).unwrap(),
                vec![0, 0]
            );
        });
        assert_eq!(out, base);
        assert!(logs.contains("d ≤ 1/keep_ratio"), "{logs}");
    }
}
