//! Gradients of the parameters in name order, their accumulation over micro-batches and
//! global-norm clipping.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};

use super::{OptimError, Params, Result};

/// One gradient per parameter, keyed and ordered by parameter name.
#[derive(Debug, Clone)]
pub struct Gradients(BTreeMap<String, Tensor>);

impl Gradients {
    /// Takes every parameter's gradient from a `backward` result. A parameter without one is an
    /// error: its graph is disconnected (docs/architecture.md#devices: fused ops without
    /// backward).
    pub fn from_store(params: &Params, store: &GradStore) -> Result<Self> {
        let mut grads = BTreeMap::new();
        for (name, var) in params {
            let g = store.get(var.as_tensor()).ok_or_else(|| OptimError::Param {
                name: name.clone(),
                reason: "received no gradient (is the loss connected to it through ops with a backward?)".into(),
            })?;
            // Detached: a variable's gradient from candle's backward keeps the op that made it,
            // and through it the step's whole forward graph; optimizer state computed from it
            // would chain every step's graph (a leak of one forward per step).
            grads.insert(name.clone(), g.detach());
        }
        Ok(Gradients(grads))
    }

    /// Gradients from explicit tensors (tests, or after a collective rebuilt them).
    pub fn from_map(grads: BTreeMap<String, Tensor>) -> Self {
        Gradients(grads)
    }

    /// The gradients in name order (the order of all-reduce buckets).
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.0
    }

    /// Mutable access, for an in-place all-reduce.
    pub fn tensors_mut(&mut self) -> &mut BTreeMap<String, Tensor> {
        &mut self.0
    }

    /// Multiplies every gradient by `factor`.
    pub fn scale(&mut self, factor: f64) -> Result<()> {
        for g in self.0.values_mut() {
            *g = g.affine(factor, 0.0)?;
        }
        Ok(())
    }

    /// ‖g‖ over all parameters: sqrt(Σ_p ‖g_p‖²), each ‖g_p‖² summed in f64 in element order
    /// and the parameters' sums added in name order. On the CPU the parameters' sums run in
    /// parallel on rayon's pool; each is one sequential pass ([`sum_of_squares`]), so the result
    /// does not depend on the thread count. Gradients on a GPU are summed one after another on
    /// the calling thread (their device's ops stay on one thread).
    pub fn global_norm(&self) -> Result<f64> {
        use rayon::prelude::*;
        let grads: Vec<&Tensor> = self.0.values().collect();
        let sums = if grads.iter().all(|g| g.device().is_cpu()) {
            grads
                .par_iter()
                .map(|g| sum_of_squares(g))
                .collect::<Result<Vec<f64>>>()?
        } else {
            grads
                .iter()
                .map(|g| sum_of_squares(g))
                .collect::<Result<Vec<f64>>>()?
        };
        Ok(sums.iter().fold(0.0f64, |total, s| total + s).sqrt())
    }

    /// Global-norm clipping as `torch.nn.utils.clip_grad_norm_`: scales every gradient by
    /// min(1, max_norm/(‖g‖ + 1e-6)) and returns ‖g‖ before clipping (Pascanu et al. 2013, §3.2).
    pub fn clip(&mut self, max_norm: f64) -> Result<f64> {
        let (norm, coef) = self.clip_coefficient(max_norm)?;
        if let Some(coef) = coef {
            self.scale(coef)?;
        }
        Ok(norm)
    }

    /// ‖g‖ and the coefficient [`Gradients::clip`] would scale by, None where it would leave
    /// the gradients as they are (‖g‖ within `max_norm`): for an optimizer that applies it
    /// in its own pass (`AdamW::step_scaled`).
    pub fn clip_coefficient(&self, max_norm: f64) -> Result<(f64, Option<f64>)> {
        let norm = self.global_norm()?;
        let coef = max_norm / (norm + 1e-6);
        Ok((norm, (coef < 1.0).then_some(coef)))
    }
}

/// Gradient accumulation over micro-batches (and, through the collective, over ranks): the
/// plain sum of their gradients. Each micro-batch's loss is a mean over its own rows or tokens,
/// so the loops scale it by its share of the *global* batch (rows/B, tokens/N) before
/// `backward`; the sum over micro-batches and ranks is then exactly the gradient of the global
/// batch's mean loss, whatever the micro-batch sizes and the world size (docs: data
/// parallelism in the README's training section).
#[derive(Debug, Default)]
pub struct GradAccumulator {
    sum: Option<Gradients>,
    count: u32,
}

impl GradAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one micro-batch's gradients.
    pub fn add(&mut self, params: &Params, store: &GradStore) -> Result<()> {
        let grads = Gradients::from_store(params, store)?;
        match &mut self.sum {
            None => self.sum = Some(grads),
            Some(sum) => {
                for (name, g) in sum.0.iter_mut() {
                    *g = (&*g + &grads.0[name])?;
                }
            }
        }
        self.count += 1;
        Ok(())
    }

    /// Micro-batches added so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The summed gradients; zeros for every parameter when nothing was added (a rank whose
    /// slice of the global batch is empty still takes part in the all-reduce).
    pub fn finish(self, params: &Params) -> Result<Gradients> {
        match self.sum {
            Some(grads) => Ok(grads),
            None => {
                let mut zeros = BTreeMap::new();
                for (name, var) in params {
                    zeros.insert(name.clone(), var.as_tensor().zeros_like()?);
                }
                Ok(Gradients(zeros))
            }
        }
    }
}

/// Σ x² of one gradient in f64, adding (x as f64)² in element order from 0 — the bits of
/// candle's `to_dtype(F64)?.sqr()?.sum_all()` (a sequential f64 sum), without its two
/// gradient-sized f64 tensors: on SmolLM2-135M's 106 M parameters those were 1.7 GB of fresh
/// memory per step, most of the optimizer phase (BENCHMARKS.md#self-play-step-vs-trl-nashmdtrainer).
/// Other devices, dtypes and layouts keep candle's ops.
fn sum_of_squares(g: &Tensor) -> Result<f64> {
    if g.device().is_cpu() && g.dtype() == DType::F32 {
        let (storage, layout) = g.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(v[a..b].iter().fold(0.0f64, |acc, &x| {
                let x = x as f64;
                acc + x * x
            }));
        }
    }
    Ok(g.to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?)
}
