//! Resume discovery and loading (docs/checkpoints.md): the newest step directory whose manifest
//! verifies (sizes and SHA-256 of every object) is the resume point; torn directories newer than
//! it (no manifest, or one that fails to verify) are deleted first, manifest first. A store that
//! fails to answer is an error, never a reason to delete. Loading sets the trainable weights in
//! place and restores AdamW bit-identically. Must not write checkpoints.

use candle_core::{DType, Tensor};

use super::manifest::Manifest;
use super::state::TrainState;
use super::{
    checkpoints_root, delete_step_dir, list_steps, step_dir_name, CheckpointError, Result,
    OPTIMIZER, STATE,
};
use crate::io::hf::SINGLE_FILE;
use crate::io::safetensors::read_header;
use crate::io::{Dtype, Location};
use crate::optim::{AdamW, AdamWConfig, Params, Schedule};

/// A verified checkpoint to resume from.
#[derive(Debug, Clone)]
pub struct ResumePoint {
    pub step: u64,
    /// The step directory (also a Hugging Face model directory).
    pub dir: Location,
    pub manifest: Manifest,
    pub state: TrainState,
}

/// The newest verified checkpoint under `output`/checkpoints (`None`: start from step 0), after
/// deleting the torn directories newer than it. Rank 0 calls this; other ranks call
/// [`find_latest`] with `delete_torn = false` after it (e.g. after a barrier).
pub async fn latest_valid(output: &Location) -> Result<Option<ResumePoint>> {
    find_latest(output, true).await
}

/// [`latest_valid`], deleting the torn newer directories only when `delete_torn`.
pub async fn find_latest(output: &Location, delete_torn: bool) -> Result<Option<ResumePoint>> {
    let root = checkpoints_root(output);
    let steps = list_steps(&root).await?;
    let mut torn = Vec::new();
    let mut found = None;
    for &step in steps.keys().rev() {
        let dir = root.join(&step_dir_name(step));
        match Manifest::read_verified(&dir, step).await {
            Ok(manifest) => {
                found = Some((step, dir, manifest));
                break;
            }
            Err(e) if e.is_torn() => {
                tracing::warn!(step, error = %e, "torn checkpoint");
                torn.push(dir);
            }
            Err(e) => return Err(e),
        }
    }
    for dir in torn.iter().filter(|_| delete_torn) {
        let n = delete_step_dir(dir).await?;
        tracing::info!(dir = %dir, objects = n, "deleted a torn checkpoint");
    }
    let Some((step, dir, manifest)) = found else {
        return Ok(None);
    };
    let state_loc = dir.join(STATE);
    let state = TrainState::parse(&state_loc.read().await?, state_loc.url())?;
    if state.step != step {
        return Err(CheckpointError::BadFile {
            url: state_loc.url().to_string(),
            field: "step".into(),
            reason: format!("{} in the directory of step {step}", state.step),
        });
    }
    tracing::info!(step, dir = %dir, "resuming from a verified checkpoint");
    Ok(Some(ResumePoint {
        step,
        dir,
        manifest,
        state,
    }))
}

impl ResumePoint {
    /// The step directory's URL: it loads as a model directory (`Pretrained::load`).
    pub fn model_url(&self) -> &str {
        self.dir.url()
    }

    /// An error unless the checkpoint was written by a run of the same config.
    pub fn check_config(&self, config_hash: &str) -> Result<()> {
        if self.state.config_hash != config_hash {
            return Err(CheckpointError::Mismatch {
                url: self.dir.join(STATE).url().to_string(),
                reason: format!(
                    "written by a run with config hash {}, this run's is {config_hash}",
                    self.state.config_hash
                ),
            });
        }
        Ok(())
    }

    /// Sets every parameter to its value in `model.safetensors` (bit-identical f32).
    pub async fn load_weights(&self, params: &Params) -> Result<()> {
        let loc = self.dir.join(SINGLE_FILE);
        let header = read_header(&loc).await?;
        let mismatch = |reason: String| CheckpointError::Mismatch {
            url: loc.url().to_string(),
            reason,
        };
        if let Some(extra) = header.tensors.keys().find(|n| !params.contains_key(*n)) {
            return Err(mismatch(format!(
                "tensor `{extra}` belongs to no parameter"
            )));
        }
        for (name, var) in params {
            let info = header
                .tensors
                .get(name)
                .ok_or_else(|| mismatch(format!("no tensor `{name}`")))?;
            let shape: Vec<u64> = var.dims().iter().map(|&d| d as u64).collect();
            if info.dtype != Dtype::F32 || info.shape != shape {
                return Err(mismatch(format!(
                    "tensor `{name}` is {} {:?}, the parameter is F32 {shape:?}",
                    info.dtype, info.shape
                )));
            }
            let values = loc
                .read_range_f32(info.start..info.start + info.len, Dtype::F32, Vec::new())
                .await?;
            let t = Tensor::from_vec(values, var.shape(), var.device())?;
            let t = if var.dtype() == DType::F32 {
                t
            } else {
                t.to_dtype(var.dtype())?
            };
            var.set(&t)?;
        }
        Ok(())
    }

    /// AdamW restored from `optimizer.safetensors` for these parameters; its step must be the
    /// checkpoint's.
    pub async fn load_optimizer(
        &self,
        params: &Params,
        config: AdamWConfig,
        schedule: Schedule,
    ) -> Result<AdamW> {
        let loc = self.dir.join(OPTIMIZER);
        let opt = AdamW::load(&loc, params, config, schedule).await?;
        if opt.steps_taken() != self.step {
            return Err(CheckpointError::Mismatch {
                url: loc.url().to_string(),
                reason: format!(
                    "the optimizer has taken {} steps, the checkpoint is step {}",
                    opt.steps_taken(),
                    self.step
                ),
            });
        }
        Ok(opt)
    }
}
