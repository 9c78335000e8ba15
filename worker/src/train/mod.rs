//! Training jobs (`sft`, `selfplay`): the worker side of a `TrainTask`. Each loop reads top to
//! bottom like the algorithm (sample → preferences → score → loss → backward → all-reduce →
//! clip → AdamW → metrics); the pieces it wires live one concern per file here and in `model`,
//! `sample`, `objectives`, `optim`, `collective` and `tasks`.
//!
//! The spec arrives fully resolved (the coordinator applies every default); nothing here
//! invents a hyper-parameter. Must not talk to the coordinator (the runtime does).

pub mod checkpointing;
pub mod data;
pub mod eval;
pub mod judges;
pub mod metrics;
pub mod models;
pub mod prompts;
pub mod rollout;
pub mod selfplay;
pub mod sft;

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Device;
use mirrorplay_proto::v1::{train_task, OptimizerSpec, SaveSpec, TrainResult, TrainTask};

use crate::collective::Collective;
use crate::optim::{AdamWConfig, Decay, Schedule};
use crate::report::{CommitSink, MetricsSink, Progress};

/// Why a training task failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Io(#[from] crate::io::IoError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Optim(#[from] crate::optim::OptimError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Task(#[from] crate::tasks::TaskError),
    #[error(transparent)]
    Collective(#[from] crate::collective::CollectiveError),
    #[error(transparent)]
    Judge(#[from] crate::preference::JudgeError),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error("{0}")]
    Invalid(String),
}

impl TrainError {
    /// True for store I/O that failed on the way (`IoError::is_transient`), wherever in the
    /// loop it happened: reading a model or data, writing a checkpoint, metrics or the model.
    pub fn is_transient(&self) -> bool {
        match self {
            TrainError::Io(e) => e.is_transient(),
            TrainError::Model(e) => e.is_transient(),
            TrainError::Judge(e) => e.is_transient(),
            TrainError::Checkpoint(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// What every loop needs besides its spec: where to write, the seed, the attempt (for metric
/// lines), how to report progress and metrics, and the device.
pub struct Ctx<'a> {
    pub output: String,
    pub seed: u64,
    pub attempt: u32,
    /// Rank 0 of the gang: the one rank that writes metrics, checkpoints, the model and the
    /// result.
    pub writer: bool,
    /// The job's id (checkpoints belong to one job).
    pub job_id: String,
    /// Told the step of each committed checkpoint.
    pub commits: CommitSink<'a>,
    pub progress: Progress<'a>,
    pub metrics: MetricsSink<'a>,
    /// Set when the runtime gives the task up (cancel, shutdown); checked once per step.
    pub cancel: &'a AtomicBool,
    pub device: Device,
    /// How the final model is saved (the spec's `save`; None: the source's dtype, 5 GB files).
    pub save: Option<SaveSpec>,
}

impl Ctx<'_> {
    /// Loads the spec's model `what` (policy, reference, init) on this task's device, seeded
    /// by the job seed when it is built in code; an absent source is an invalid spec.
    pub async fn load_model(
        &self,
        source: Option<&mirrorplay_proto::v1::ModelSource>,
        what: &str,
        trainable: bool,
    ) -> Result<models::Loaded, TrainError> {
        let source = source.ok_or_else(|| TrainError::Invalid(format!("no {what} in the spec")))?;
        models::load(source, trainable, self.seed, &self.device).await
    }

    /// The start of every training loop: the policy's trainable parameters, AdamW (restored
    /// from the newest verified checkpoint of this run, or fresh), the first step to run, the
    /// checkpointer and the clip norm. Every rank calls it; afterwards all ranks hold rank 0's
    /// weights.
    pub async fn begin(
        &self,
        collective: &mut dyn Collective,
        policy: &models::Loaded,
        spec: &impl prost::Message,
        optimizer_spec: Option<&OptimizerSpec>,
        checkpoint: Option<&mirrorplay_proto::v1::CheckpointSpec>,
        steps: u64,
    ) -> Result<Begun, TrainError> {
        let params = policy
            .model
            .vars()
            .ok_or_else(|| TrainError::Invalid("the policy is not trainable".into()))?
            .clone();
        let (adamw, schedule) = optimizer(optimizer_spec, steps)?;
        let max_grad_norm = optimizer_spec.map_or(0.0, |o| o.max_grad_norm);
        let hash = checkpointing::run_hash(&self.job_id, spec);
        let (first_step, opt) =
            checkpointing::start(self, collective, &params, adamw, schedule, &hash).await?;
        broadcast_params(collective, &params)?;
        let checkpoints = checkpointing::Checkpoints::new(
            self,
            checkpoint,
            steps,
            &hash,
            collective.world_size(),
        )?;
        Ok(Begun {
            params,
            opt,
            first_step,
            checkpoints,
            max_grad_norm,
        })
    }

    /// The metrics log of this rank (only the writer's lines go anywhere).
    pub fn metrics_log(&self) -> Result<metrics::MetricsLog<'_>, TrainError> {
        metrics::MetricsLog::new(&self.output, self.attempt, self.metrics, self.writer)
    }

    /// The end of every training job: the final model to `OUTPUT/model/` (as [`Ctx::save`]
    /// says), the last metrics part, and the result reported to the coordinator (rank 0 writes;
    /// the others only report).
    pub async fn finish(
        &self,
        policy: &models::Loaded,
        metrics: &mut metrics::MetricsLog<'_>,
        steps: u64,
        eval: (f64, f64),
        started: std::time::Instant,
    ) -> Result<TrainResult, TrainError> {
        let model_url = format!("{}/model", self.output);
        if self.writer {
            policy.save(&model_url, self.save.as_ref()).await?;
        }
        metrics.flush().await?;
        Ok(TrainResult {
            steps,
            model_url,
            metrics_url: metrics.url().to_string(),
            eval_gold: eval.0,
            eval_win_rate: eval.1,
            wall_s: started.elapsed().as_secs_f64(),
        })
    }

    /// An error once the task was given up.
    pub fn check_cancelled(&self) -> Result<(), TrainError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(TrainError::Invalid(
                "the task was given up by the worker runtime".into(),
            ))
        } else {
            Ok(())
        }
    }
}

/// What [`Ctx::begin`] hands a loop.
pub struct Begun {
    pub params: crate::optim::Params,
    pub opt: crate::optim::AdamW,
    /// 0, or the step of the checkpoint the run resumed from.
    pub first_step: u64,
    pub checkpoints: checkpointing::Checkpoints,
    /// Global-norm clipping (0 = off).
    pub max_grad_norm: f64,
}

/// Runs a training task to completion as one rank of `collective` (world size 1: a
/// [`crate::collective::Local`]).
pub async fn run(
    task: &TrainTask,
    job: (&str, u32),
    device: &Device,
    reports: (Progress<'_>, MetricsSink<'_>, CommitSink<'_>),
    cancel: &AtomicBool,
    collective: &mut dyn Collective,
) -> Result<TrainResult, TrainError> {
    let (job_id, attempt) = job;
    let (progress, metrics, commits) = reports;
    let ctx = Ctx {
        cancel,
        output: task.output.trim_end_matches('/').to_string(),
        seed: task.seed,
        attempt,
        writer: collective.rank() == 0,
        job_id: job_id.to_string(),
        commits,
        progress,
        metrics,
        device: device.clone(),
        save: match &task.spec {
            Some(train_task::Spec::Sft(s)) => s.save.clone(),
            Some(train_task::Spec::Selfplay(s)) => s.save.clone(),
            None => None,
        },
    };
    tracing::info!(
        rank = collective.rank(),
        world_size = collective.world_size(),
        "training starts"
    );
    match &task.spec {
        Some(train_task::Spec::Sft(spec)) => sft::run(&ctx, spec, collective).await,
        Some(train_task::Spec::Selfplay(spec)) => selfplay::run(&ctx, spec, collective).await,
        None => Err(TrainError::Invalid(
            "the training task carries no spec".into(),
        )),
    }
}

/// The dtype a job's forward/backward passes run in (`compute_dtype`; unspecified = f32).
pub fn compute_dtype(d: mirrorplay_proto::v1::ComputeDtype) -> candle_core::DType {
    use mirrorplay_proto::v1::ComputeDtype;
    match d {
        ComputeDtype::Bf16 => candle_core::DType::BF16,
        ComputeDtype::F16 => candle_core::DType::F16,
        ComputeDtype::F32 | ComputeDtype::Unspecified => candle_core::DType::F32,
    }
}

/// AdamW and its schedule from the resolved spec; clipping is done by the loop itself
/// (all-reduce → clip → AdamW: [`reduce_clip_step`]).
pub fn optimizer(
    spec: Option<&OptimizerSpec>,
    steps: u64,
) -> Result<(AdamWConfig, Schedule), TrainError> {
    let o = spec.ok_or_else(|| TrainError::Invalid("no [optimizer] in the spec".into()))?;
    let decay = match o.decay() {
        mirrorplay_proto::v1::Decay::Constant => Decay::Constant,
        mirrorplay_proto::v1::Decay::Linear => Decay::Linear,
        mirrorplay_proto::v1::Decay::Cosine => Decay::Cosine,
        mirrorplay_proto::v1::Decay::Unspecified => {
            return Err(TrainError::Invalid("optimizer decay is unspecified".into()))
        }
    };
    Ok((
        AdamWConfig {
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            weight_decay: o.weight_decay,
        },
        Schedule {
            lr: o.lr,
            warmup_steps: o.warmup_steps,
            total_steps: steps,
            decay,
        },
    ))
}

/// The end of every training step: sum the gradients over the ranks (each rank's are already
/// scaled by its share of the global batch, so the sum is the global batch's gradient), clip
/// them to `max_grad_norm` (0 = off), and take the AdamW step. Returns (grad_norm before
/// clipping, the learning rate used).
pub fn reduce_clip_step(
    collective: &mut dyn crate::collective::Collective,
    mut grads: crate::optim::Gradients,
    max_grad_norm: f64,
    opt: &mut crate::optim::AdamW,
    params: &crate::optim::Params,
) -> Result<(f64, f64), TrainError> {
    collective.all_reduce_sum(grads.tensors_mut())?;
    // The clip's scale goes into AdamW's pass (bit for bit the scaled gradients' step).
    let (grad_norm, clip) = if max_grad_norm > 0.0 {
        grads.clip_coefficient(max_grad_norm)?
    } else {
        (grads.global_norm()?, None)
    };
    let lr = opt.next_lr();
    opt.step_scaled(params, &grads, clip)?;
    Ok((grad_norm, lr))
}

/// The data-parallel settings of a training task (world size 1 when absent).
pub fn parallel(task: &TrainTask) -> mirrorplay_proto::v1::DataParallelSpec {
    let p = match &task.spec {
        Some(train_task::Spec::Sft(s)) => s.parallel,
        Some(train_task::Spec::Selfplay(s)) => s.parallel,
        None => None,
    };
    p.unwrap_or(mirrorplay_proto::v1::DataParallelSpec {
        world_size: 1,
        min_world_size: 1,
        collective_timeout_ms: 120_000,
    })
}

/// Makes every rank start from rank 0's weights, bit for bit.
pub fn broadcast_params(
    collective: &mut dyn Collective,
    params: &crate::optim::Params,
) -> Result<(), TrainError> {
    if collective.world_size() == 1 {
        return Ok(());
    }
    let mut tensors: std::collections::BTreeMap<String, candle_core::Tensor> = params
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
        .collect();
    collective.broadcast(&mut tensors)?;
    if collective.rank() != 0 {
        for (name, var) in params {
            // A fresh copy: the received tensor may share storage with the variable.
            var.set(&tensors[name].copy()?)?;
        }
    }
    Ok(())
}

/// Rows `[start, end)` of a global batch of `n` that rank `rank` of `world` takes.
pub fn shard(n: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    let per = n.div_ceil(world);
    (rank * per).min(n)..((rank + 1) * per).min(n)
}

#[cfg(test)]
mod loop_tests;
#[cfg(test)]
mod tests;
