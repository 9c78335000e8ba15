//! AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization", Algorithm 2), with
//! the bias correction and operation order of PyTorch's `torch.optim.AdamW` (single-tensor
//! path), f32 moments, and a state that saves to one safetensors file.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};

use super::adamw_fused::{self, Coefficients};
use super::grads::Gradients;
use super::schedule::Schedule;
use super::{OptimError, Params, Result};
use crate::io::dtype::{encode_f32, Dtype};
use crate::io::safetensors::{pt_metadata, read_header, TensorLayout};
use crate::io::writer::{write_safetensors, WriteSummary};
use crate::io::Location;

/// AdamW's hyper-parameters (the learning rate lives in the [`Schedule`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults (betas 0.9/0.999, eps 1e-8, weight decay 0.01).
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// What one step did, for the metrics (`lr`, `grad_norm`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The learning rate this step used.
    pub lr: f64,
}

/// AdamW with its state: the number of steps taken (also the schedule's position) and the
/// first and second moments of every parameter, in name order.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    schedule: Schedule,
    step: u64,
    exp_avg: BTreeMap<String, Tensor>,
    exp_avg_sq: BTreeMap<String, Tensor>,
}

const STEP_KEY: &str = "step";
const M_PREFIX: &str = "exp_avg/";
const V_PREFIX: &str = "exp_avg_sq/";

impl AdamW {
    /// A fresh optimizer (zero moments, step 0) for these parameters.
    pub fn new(params: &Params, config: AdamWConfig, schedule: Schedule) -> Result<Self> {
        let mut exp_avg = BTreeMap::new();
        let mut exp_avg_sq = BTreeMap::new();
        for (name, var) in params {
            let zeros = Tensor::zeros(var.shape(), DType::F32, var.device())?;
            exp_avg.insert(name.clone(), zeros.clone());
            exp_avg_sq.insert(name.clone(), zeros);
        }
        Ok(AdamW {
            config,
            schedule,
            step: 0,
            exp_avg,
            exp_avg_sq,
        })
    }

    /// Optimizer steps taken so far.
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// The learning rate the next step will use.
    pub fn next_lr(&self) -> f64 {
        self.schedule.lr_at(self.step)
    }

    /// One step with `grads` as given (clip them first with [`Gradients::clip`]): for each
    /// parameter, with t = step + 1,
    /// lr = schedule(step), in PyTorch's order:
    /// θ ← θ·(1 − lr·λ); m ← m + (g − m)(1 − β1); v ← v·β2 + (1 − β2)·g·g;
    /// θ ← θ − lr/(1 − β1^t) · m / (sqrt(v)/sqrt(1 − β2^t) + ε).
    /// Computes in f32 and writes back in the parameter's dtype.
    pub fn step(&mut self, params: &Params, grads: &Gradients) -> Result<StepStats> {
        self.step_scaled(params, grads, None)
    }

    /// [`AdamW::step`] with every gradient multiplied by `grad_scale` first, bit for bit as
    /// [`Gradients::scale`] then [`AdamW::step`] (global-norm clipping's coefficient,
    /// [`Gradients::clip_coefficient`]). On the fused path the product is taken inside the
    /// update's one pass, without a scaled copy of the gradients (a pass over them and a
    /// gradient-sized allocation less per step).
    pub fn step_scaled(
        &mut self,
        params: &Params,
        grads: &Gradients,
        grad_scale: Option<f64>,
    ) -> Result<StepStats> {
        let lr = self.schedule.lr_at(self.step);
        let t = (self.step + 1) as i32;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
            ..
        } = self.config;
        let step_size = lr / (1.0 - beta1.powi(t));
        let bias_correction2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        if params.len() != grads.tensors().len() || params.keys().ne(grads.tensors().keys()) {
            return Err(OptimError::Param {
                name: "*".into(),
                reason: format!(
                    "gradients for {:?} do not match the parameters {:?}",
                    grads.tensors().keys().collect::<Vec<_>>(),
                    params.keys().collect::<Vec<_>>()
                ),
            });
        }
        for (name, var) in params {
            // Detached: moments and weights are state, never part of a graph.
            let g = grads.tensors()[name].detach().to_dtype(DType::F32)?;
            let (m, v) = (&self.exp_avg[name], &self.exp_avg_sq[name]);
            if g.shape() != m.shape() {
                return Err(OptimError::Param {
                    name: name.clone(),
                    reason: format!(
                        "gradient shape {:?}, parameter shape {:?}",
                        g.shape(),
                        m.shape()
                    ),
                });
            }
            let p = var.as_tensor().detach().to_dtype(DType::F32)?;
            let k = Coefficients {
                grad_scale,
                decay: (weight_decay != 0.0).then_some(1.0 - lr * weight_decay),
                one_minus_beta1: 1.0 - beta1,
                beta2,
                one_minus_beta2: 1.0 - beta2,
                inv_bias_correction2_sqrt: 1.0 / bias_correction2_sqrt,
                eps,
                neg_step_size: -step_size,
            };
            // f32 on the CPU: the same update in one pass, bit for bit (`adamw_fused`).
            let (p, m, v) = match adamw_fused::try_update(&p, &g, m, v, k)? {
                Some(updated) => updated,
                None => composed_update(&p, &g, m, v, k)?,
            };
            var.set(&p.to_dtype(var.dtype())?)?;
            self.exp_avg.insert(name.clone(), m);
            self.exp_avg_sq.insert(name.clone(), v);
        }
        self.step += 1;
        Ok(StepStats { lr })
    }

    /// The state tensors as [`AdamW::save`] names and orders them: `exp_avg/<name>` then
    /// `exp_avg_sq/<name>` (F32, name order). Moments are replaced, never mutated in place, by
    /// each step, so these clones are a consistent snapshot (the checkpointer relies on it).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        [(M_PREFIX, &self.exp_avg), (V_PREFIX, &self.exp_avg_sq)]
            .into_iter()
            .flat_map(|(prefix, moments)| {
                moments
                    .iter()
                    .map(move |(name, t)| (format!("{prefix}{name}"), t.clone()))
            })
            .collect()
    }

    /// The file metadata [`AdamW::save`] writes: `format: pt` and the step.
    pub fn state_metadata(&self) -> BTreeMap<String, String> {
        let mut metadata = pt_metadata();
        metadata.insert(STEP_KEY.into(), self.step.to_string());
        metadata
    }

    /// Writes the whole state to a safetensors file: `exp_avg/<name>` and `exp_avg_sq/<name>`
    /// (F32, name order) and `step` in the metadata (with `format: pt`).
    pub async fn save(&self, loc: &Location) -> Result<WriteSummary> {
        let mut tensors = Vec::with_capacity(2 * self.exp_avg.len());
        for (name, t) in self.state_tensors() {
            let values = t.flatten_all()?.to_vec1::<f32>()?;
            let mut bytes = Vec::new();
            encode_f32(Dtype::F32, &values, &mut bytes);
            let shape = t.dims().iter().map(|&d| d as u64).collect();
            tensors.push((
                TensorLayout {
                    name,
                    dtype: Dtype::F32,
                    shape,
                },
                bytes,
            ));
        }
        Ok(write_safetensors(loc, &tensors, &self.state_metadata()).await?)
    }

    /// Restores a state written by [`AdamW::save`] for exactly these parameters (names and
    /// shapes must match; moments go to each parameter's device).
    pub async fn load(
        loc: &Location,
        params: &Params,
        config: AdamWConfig,
        schedule: Schedule,
    ) -> Result<Self> {
        let bad = |reason: String| OptimError::BadState {
            url: loc.url().to_string(),
            reason,
        };
        let header = read_header(loc).await?;
        let step = header
            .metadata
            .get(STEP_KEY)
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| bad(format!("metadata has no integer `{STEP_KEY}`")))?;
        for name in header.tensors.keys() {
            let known = [M_PREFIX, V_PREFIX]
                .iter()
                .any(|p| name.strip_prefix(p).is_some_and(|n| params.contains_key(n)));
            if !known {
                return Err(bad(format!("tensor `{name}` belongs to no parameter")));
            }
        }
        let mut opt = AdamW::new(params, config, schedule)?;
        opt.step = step;
        for (prefix, moments) in [
            (M_PREFIX, &mut opt.exp_avg),
            (V_PREFIX, &mut opt.exp_avg_sq),
        ] {
            for (name, var) in params {
                let key = format!("{prefix}{name}");
                let info = header
                    .tensors
                    .get(&key)
                    .ok_or_else(|| bad(format!("missing tensor `{key}`")))?;
                let shape: Vec<u64> = var.dims().iter().map(|&d| d as u64).collect();
                if info.dtype != Dtype::F32 || info.shape != shape {
                    return Err(bad(format!(
                        "tensor `{key}` is {} {:?}, expected F32 {shape:?}",
                        info.dtype, info.shape
                    )));
                }
                let values = loc
                    .read_range_f32(info.start..info.start + info.len, Dtype::F32, Vec::new())
                    .await?;
                moments.insert(
                    name.clone(),
                    Tensor::from_vec(values, var.shape(), var.device())?,
                );
            }
        }
        Ok(opt)
    }
}

/// The update of [`AdamW::step`] for one parameter as candle ops (any device, f32 operands):
/// g ← g·scale (when pending); θ ← θ·(1 − lr·λ); m ← m + (g − m)(1 − β1); v ← v·β2 + (1 − β2)·g·g;
/// θ ← θ − lr/(1 − β1^t) · m / (sqrt(v)/sqrt(1 − β2^t) + ε). Returns the new (θ, m, v).
pub(super) fn composed_update(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    k: Coefficients,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let scaled;
    let g = match k.grad_scale {
        Some(scale) => {
            scaled = g.affine(scale, 0.0)?;
            &scaled
        }
        None => g,
    };
    let p = match k.decay {
        Some(d) => p.affine(d, 0.0)?,
        None => p.clone(),
    };
    let m = (m + (g - m)?.affine(k.one_minus_beta1, 0.0)?)?;
    let v = (v.affine(k.beta2, 0.0)? + (g.affine(k.one_minus_beta2, 0.0)? * g)?)?;
    let denom = v.sqrt()?.affine(k.inv_bias_correction2_sqrt, k.eps)?;
    let p = (p + (m.broadcast_div(&denom))?.affine(k.neg_step_size, 0.0)?)?;
    Ok((p, m, v))
}
