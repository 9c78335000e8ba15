//! Reward-model jobs (docs/algorithms.md §2–§4): training the members of an ensemble
//! (`member`), scoring a dataset with an ensemble (`score_shard`) and best-of-n (`bon_shard`).
//! Each function takes one task and returns its result; the coordinator's drivers plan the
//! tasks and write the manifest, summary and `bon.csv`.

pub mod backbone;
pub mod bon_shard;
pub mod ensemble;
pub mod member;
pub mod norm;
pub mod pairs;
pub mod score_rows;
pub mod score_shard;
pub mod scorers;
pub mod shared_heads;

use std::sync::atomic::AtomicBool;

use mirrorplay_proto::v1::{
    BonShardResult, BonShardTask, RewardMemberResult, RewardMemberTask, ScoreShardResult,
    ScoreShardTask,
};

use crate::report::{MetricsSink, Progress};

/// Why a reward-model task failed; the message names the file, line, member or key. The
/// sources are boxed so that the error (and `jobs::JobError` holding it) stays small.
#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    #[error(transparent)]
    Io(Box<crate::io::IoError>),
    #[error(transparent)]
    Model(Box<crate::model::ModelError>),
    #[error(transparent)]
    Candle(Box<candle_core::Error>),
    #[error(transparent)]
    Task(Box<crate::tasks::TaskError>),
    #[error(transparent)]
    Judge(Box<crate::preference::JudgeError>),
    #[error(transparent)]
    Train(Box<crate::train::TrainError>),
    #[error("{0}")]
    Invalid(String),
}

impl RewardError {
    /// True for store I/O that failed on the way (`IoError::is_transient`), wherever it
    /// happened.
    pub fn is_transient(&self) -> bool {
        match self {
            RewardError::Io(e) => e.is_transient(),
            RewardError::Model(e) => e.is_transient(),
            RewardError::Judge(e) => e.is_transient(),
            RewardError::Train(e) => e.is_transient(),
            _ => false,
        }
    }
}

macro_rules! boxed_from {
    ($($variant:ident($source:ty)),* $(,)?) => {$(
        impl From<$source> for RewardError {
            fn from(e: $source) -> Self {
                RewardError::$variant(Box::new(e))
            }
        }
    )*};
}

boxed_from!(
    Io(crate::io::IoError),
    Model(crate::model::ModelError),
    Candle(candle_core::Error),
    Task(crate::tasks::TaskError),
    Judge(crate::preference::JudgeError),
    Train(crate::train::TrainError),
);

/// Completions sampled per forward batch by [`samples_of_prompt`].
const SAMPLE_BATCH: usize = 512;

/// `n` samples of `model` for one prompt, keyed (prompt `index`, sample 0..n) under `config`
/// (best-of-n pools and LSC reference samples).
pub(crate) fn samples_of_prompt(
    model: &crate::model::Model,
    prompt: &[u32],
    index: u64,
    n: usize,
    config: &crate::sample::GenerateConfig,
) -> Result<Vec<Vec<u32>>, RewardError> {
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(SAMPLE_BATCH) {
        let end = (start + SAMPLE_BATCH).min(n);
        let keys: Vec<crate::sample::RowKey> = (start..end)
            .map(|s| crate::sample::RowKey {
                prompt: index,
                sample: s as u64,
            })
            .collect();
        out.extend(crate::train::rollout::sample(
            crate::train::rollout::Source::Policy(model),
            &vec![prompt.to_vec(); end - start],
            &keys,
            config,
        )?);
    }
    Ok(out)
}

/// Trains member `task.member` of a reward_train job (`member::run`).
pub async fn run_member(
    task: &RewardMemberTask,
    device: &candle_core::Device,
    reports: (Progress<'_>, MetricsSink<'_>),
    cancel: &AtomicBool,
) -> Result<RewardMemberResult, RewardError> {
    member::run(task, device, reports, cancel).await
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
