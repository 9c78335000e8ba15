//! Model merging, the math (docs/algorithms.md §5): PCB-merging, TIES, DARE and task arithmetic as
//! pure functions on f32 chunks, plus the exact distributed order statistics they need
//! ([`radix`]). A worker streams element ranges (≤ 16 MiB) of the base and the n models and calls
//! a method's chunk function with the statistics the coordinator gathered in earlier rounds.
//!
//! [`passes`] is the entry point for a distributed driver: [`passes::UnitPlan`] (coordinator
//! side) says which sweep comes next and absorbs the merged results; `passes::chunk_stats`,
//! `count_chunk`, `write_chunk` and `merge_local` (worker side) compute one chunk.
//! [`reference::merge_in_memory`] runs that same loop on in-memory tensors.
//!
//! This module does no I/O, knows nothing of proto, gRPC or workers, and applies no config
//! defaults (the coordinator resolves them).
//!
//! Terms used throughout:
//! - *task vector* τ_i = θ_i − θ_base (f32), i = 0..n over the models in config order;
//! - *flat order*: tensor names sorted lexicographically (byte order), each tensor row-major;
//! - *unit*: the set of elements a statistic runs over: the whole model (`Scope::Global`) or one
//!   tensor (`Scope::PerTensor`);
//! - *chunk*: an element range of one tensor (never spanning tensors).

pub mod dare;
pub mod passes;
pub mod pcb;
pub mod radix;
pub mod reference;
pub mod task_arithmetic;
pub mod ties;
pub mod validate;
pub mod vmath;

#[cfg(test)]
mod fixture_tests;

pub use reference::{merge_in_memory, merge_in_memory_chunked, Merged};

/// Flat f32 tensors by name (the in-memory driver's models).
pub type Tensors = std::collections::BTreeMap<String, Vec<f32>>;

/// Elements per chunk of the in-memory driver (`reference::merge_in_memory`): 16 MiB of f32.
/// Workers stream smaller ranges: 2 Mi elements (8 MiB of f32) per input, at most 3 in flight
/// (`coordinator::drivers::merge::CHUNK_ELEMENTS`; docs/architecture.md#merge-jobs).
pub const DEFAULT_CHUNK_ELEMS: usize = 4 << 20;

/// Errors of the merge math. Every variant about data names the tensor.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// A NaN or an infinity where only finite values may be: in an input (named by
    /// [`Input`], which the worker turns into the input's location) or in a statistic.
    #[error("tensor `{tensor}`: NaN or infinity in {input}")]
    Nan { tensor: String, input: Input },
    #[error("invalid `{name}` = {value}: {reason}")]
    Param {
        name: String,
        value: String,
        reason: String,
    },
    #[error("tensor `{tensor}`: {reason}")]
    Tensor { tensor: String, reason: String },
    #[error("invalid statistics: {0}")]
    Counts(String),
}

pub type Result<T, E = MergeError> = std::result::Result<T, E>;

/// Where a bad value was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The base model.
    Base,
    /// Model `i` of the merge, in the spec's order.
    Model(usize),
    /// Anything else, described.
    Other(String),
}

impl std::fmt::Display for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Base => write!(f, "the base"),
            Input::Model(i) => write!(f, "model {i}"),
            Input::Other(s) => write!(f, "{s}"),
        }
    }
}

/// Over which elements global statistics run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// All parameters of a task at once (flat order).
    Global,
    /// Each tensor on its own.
    PerTensor,
}

/// PCB's inter-parameter balancing term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inter {
    /// tanh(τ_i ⊙ Σ_j τ_j) on raw task vectors (the authors' `PCB_merge`).
    SumRaw,
    /// Σ_j tanh(ν_i ⊙ ν_j), ν = sign(τ)·normalised A (the authors' vision code).
    Pairwise,
}

/// How DARE rescales the kept entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rescale {
    /// Divide by the density ρ_i (the paper and its authors' code).
    InvDensity,
    /// Multiply by ‖τ_i‖₁ / ‖m_i⊙τ_i‖₁ per tensor (mergekit since 2025).
    L1,
    /// Keep masked values as they are.
    None,
}

/// PCB-merging (Du et al. 2024, "Parameter Competition Balancing for Model Merging").
#[derive(Debug, Clone, PartialEq)]
pub struct Pcb {
    pub scope: Scope,
    /// r in (0, 1].
    pub keep_ratio: f64,
    /// c in [0, 1).
    pub clip_ratio: f64,
    pub inter: Inter,
    /// λ, outside the mean.
    pub lambda: f32,
    /// λ_i, one per model, inside the mean.
    pub lambdas: Vec<f32>,
}

/// TIES-merging (Yadav et al. 2023), as mergekit's `ties`.
#[derive(Debug, Clone, PartialEq)]
pub struct Ties {
    pub scope: Scope,
    /// density_i > 0 per model (≥ 1 keeps all).
    pub density: Vec<f64>,
    pub weights: Vec<f32>,
    pub normalize: bool,
    pub lambda: f32,
}

/// DARE (Yu et al. 2024, "Language Models are Super Mario"), linear or with TIES' election.
#[derive(Debug, Clone, PartialEq)]
pub struct Dare {
    /// ρ_i in [0, 1] per model.
    pub density: Vec<f64>,
    pub weights: Vec<f32>,
    pub rescale: Rescale,
    pub seed: u64,
    pub lambda: f32,
    /// `None`: `dare_linear` (a weighted sum). `Some(normalize)`: `dare_ties` (TIES' sign
    /// election on the rescaled deltas, divided by the agreeing weights when `normalize`).
    pub ties: Option<bool>,
}

/// Task arithmetic (Ilharco et al. 2023, "Editing Models with Task Arithmetic").
#[derive(Debug, Clone, PartialEq)]
pub struct TaskArithmetic {
    pub weights: Vec<f32>,
    pub lambda: f32,
}

/// A merge method with its resolved parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    TaskArithmetic(TaskArithmetic),
    Ties(Ties),
    Dare(Dare),
    Pcb(Pcb),
}

impl Method {
    /// The config name (`method = "..."`).
    pub fn name(&self) -> &'static str {
        match self {
            Method::TaskArithmetic(_) => "task_arithmetic",
            Method::Ties(_) => "ties",
            Method::Dare(d) if d.ties.is_some() => "dare_ties",
            Method::Dare(_) => "dare_linear",
            Method::Pcb(_) => "pcb",
        }
    }
}

/// One element range of one tensor as a worker holds it: the base's values and each model's
/// (all of the same length), plus where the range sits.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    /// The tensor's name (for errors and warnings).
    pub tensor: &'a str,
    /// Position of the tensor among the base's tensor names in sorted order (keys DARE's masks).
    pub tensor_index: u64,
    /// Flat index of the first element inside the tensor.
    pub start: u64,
    pub base: &'a [f32],
    pub models: &'a [&'a [f32]],
}

#[cfg(test)]
impl<'a> Chunk<'a> {
    /// A whole test tensor `t` as one chunk (tensor index 0, first element 0).
    pub(crate) fn whole(base: &'a [f32], models: &'a [&'a [f32]]) -> Self {
        Chunk {
            tensor: "t",
            tensor_index: 0,
            start: 0,
            base,
            models,
        }
    }
}

impl Chunk<'_> {
    pub fn len(&self) -> usize {
        self.base.len()
    }

    pub fn is_empty(&self) -> bool {
        self.base.is_empty()
    }

    /// τ_i at element e of the chunk.
    #[inline]
    pub fn tau(&self, i: usize, e: usize) -> f32 {
        self.models[i][e] - self.base[e]
    }

    /// Checks lengths and that every input is finite (the error names the tensor and the input).
    /// The entry points ([`passes`]' worker functions and the methods' `*_local`) call it once
    /// per chunk, or [`Chunk::check_lengths`] and then [`Chunk::check_nan`] block by block
    /// while each block is in cache; the methods' chunk functions assume it was done.
    pub fn check(&self) -> Result<()> {
        self.check_lengths()?;
        self.check_nan(0, self.len())
    }

    /// Checks that every model's range has the base's length.
    pub fn check_lengths(&self) -> Result<()> {
        for (i, m) in self.models.iter().enumerate() {
            if m.len() != self.base.len() {
                return Err(MergeError::Tensor {
                    tensor: self.tensor.to_string(),
                    reason: format!(
                        "chunk of model {i} has {} elements, the base's {}",
                        m.len(),
                        self.base.len()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Checks that no input holds a NaN or an infinity in elements `start..start + len`
    /// (lengths checked).
    pub fn check_nan(&self, start: usize, len: usize) -> Result<()> {
        let range = start..start + len;
        validate::check_finite_input(self.tensor, Input::Base, &self.base[range.clone()])?;
        for (i, m) in self.models.iter().enumerate() {
            validate::check_finite_input(self.tensor, Input::Model(i), &m[range.clone()])?;
        }
        Ok(())
    }
}

/// sign(x) ∈ {−1, 0, +1} as torch/numpy define it (f32::signum gives +1 for +0.0).
#[inline(always)]
pub fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// clamp(x, lo, hi) := min(max(x, lo), hi) (docs/algorithms.md §5; hi wins when lo > hi, where
/// Rust's f32::clamp would panic).
#[inline(always)]
pub fn clamp(x: f32, lo: f32, hi: f32) -> f32 {
    x.max(lo).min(hi)
}

/// int(x) for a non-negative f64 index expression: truncation toward zero, as Python's `int`.
#[inline]
pub(crate) fn trunc_index(x: f64) -> i64 {
    x as i64
}

/// Runs `f` and returns what it logged (tests of the warnings docs/algorithms.md §5 asks for).
#[cfg(test)]
pub(crate) fn capture_logs(f: impl FnOnce()) -> String {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buf.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}
