//! Reward-model jobs (docs/algorithms.md §2–§4): training the members of an ensemble
//! (`member`), scoring a dataset with an ensemble (`score_shard`) and best-of-n (`bon_shard`).
//! Each function takes one task and returns its result; the coordinator's drivers plan the
//! tasks and write the manifest, summary and `bon.csv`.

pub mod bon_shard;
pub mod ensemble;
pub mod score_shard;
pub mod scorers;

use std::sync::atomic::AtomicBool;

use mirrorplay_proto::v1::{
    BonShardResult, BonShardTask, RewardMemberResult, RewardMemberTask, ScoreShardResult,
    ScoreShardTask,
};

use crate::report::{MetricsSink, Progress};

/// Why a reward-model task failed; the message names the file, line, member or key.
#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    #[error(transparent)]
    Io(#[from] crate::io::IoError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Task(#[from] crate::tasks::TaskError),
    #[error(transparent)]
    Judge(#[from] crate::preference::JudgeError),
    /// Boxed: a `TrainError` is large, and `Result<_, RewardError>` is returned on every
    /// scoring path (clippy's `result_large_err`).
    #[error(transparent)]
    Train(Box<crate::train::TrainError>),
    #[error("{0}")]
    Invalid(String),
}

impl From<crate::train::TrainError> for RewardError {
    fn from(e: crate::train::TrainError) -> Self {
        Self::Train(Box::new(e))
    }
}

/// Trains member `task.member` of a reward_train job.
pub async fn run_member(
    task: &RewardMemberTask,
    _device: &candle_core::Device,
    _reports: (Progress<'_>, MetricsSink<'_>),
    _cancel: &AtomicBool,
) -> Result<RewardMemberResult, RewardError> {
    Err(RewardError::Invalid(format!(
        "reward member {}: not built yet",
        task.member
    )))
}

/// Scores one shard of a score job's rows.
pub async fn run_score_shard(
    task: &ScoreShardTask,
    device: &candle_core::Device,
    progress: Progress<'_>,
) -> Result<ScoreShardResult, RewardError> {
    score_shard::run(task, device, progress).await
}

/// Best-of-n over one shard of a bon job's prompts.
pub async fn run_bon_shard(
    task: &BonShardTask,
    device: &candle_core::Device,
    progress: Progress<'_>,
) -> Result<BonShardResult, RewardError> {
    bon_shard::run(task, device, progress).await
}
