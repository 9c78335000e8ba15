//! The worker side of each job kind: a task in, a result out. Each function here is called by
//! the runtime on a task and knows nothing about gRPC connections, leases or retries.

pub mod merge_shard;
pub mod merge_wire;

use mirrorplay_proto::v1::{task, task_result, Task, TaskResult};

use std::sync::atomic::AtomicBool;

use crate::io::IoError;

/// Why a task failed; the message names the file, tensor or key.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("tensor `{tensor}`: {reason}")]
    Tensor { tensor: String, reason: String },
    /// Boxed, as `Reward`: kept whole (not as text) so that its classification survives.
    #[error(transparent)]
    Train(Box<crate::train::TrainError>),
    /// The gang broke (a peer died, stalled or left; the rendezvous failed): the coordinator
    /// re-forms it rather than failing the job.
    #[error("gang broken: {0}")]
    Gang(String),
    #[error("invalid task: {0}")]
    InvalidTask(String),
    /// Boxed: `RewardError` holds a `TrainError`, which would make every `Result<_, JobError>`
    /// large (clippy's `result_large_err`).
    #[error(transparent)]
    Reward(Box<crate::reward::RewardError>),
}

impl From<crate::reward::RewardError> for JobError {
    fn from(e: crate::reward::RewardError) -> Self {
        JobError::Reward(Box::new(e))
    }
}

pub use crate::report::{CommitSink, MetricsSink, Progress};

impl JobError {
    /// True when the failure is the gang's, not the task's.
    pub fn is_gang_broken(&self) -> bool {
        matches!(self, JobError::Gang(_))
    }

    /// True when the same task may succeed if tried again: store I/O that failed on the way
    /// (the object-store client has already retried its own requests), also inside a training
    /// or reward-model task (a checkpoint write, a dataset read); not a missing or malformed
    /// input nor an invalid task (docs/architecture.md#failure-policy).
    pub fn is_transient(&self) -> bool {
        match self {
            JobError::Io(e) => e.is_transient(),
            JobError::Train(e) => e.is_transient(),
            JobError::Reward(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// Runs one task to completion; a training task runs as one rank of `collective` (a gang's
/// collective, formed by the runtime's rendezvous, or `Local`).
pub async fn run_task(
    task: &Task,
    device: &candle_core::Device,
    reports: (Progress<'_>, MetricsSink<'_>, CommitSink<'_>),
    cancel: &AtomicBool,
    collective: &mut dyn crate::collective::Collective,
) -> Result<TaskResult, JobError> {
    let (progress, metrics, _) = reports;
    let result = match &task.work {
        Some(task::Work::MergeShard(shard)) if shard.write => {
            task_result::Result::MergeShard(merge_shard::run_write(shard, progress).await?)
        }
        Some(task::Work::MergeShard(shard)) => {
            task_result::Result::MergeStats(merge_shard::run_stats(shard, progress).await?)
        }
        Some(task::Work::Train(train)) => {
            // Training computes on this thread for minutes; let the runtime move its other
            // tasks (heartbeats, progress reports) to the remaining threads.
            let run = crate::train::run(
                train,
                (&task.job_id, task.attempt),
                device,
                reports,
                cancel,
                collective,
            );
            let result =
                tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(run))
                    .map_err(|e| match e {
                        crate::train::TrainError::Collective(e) => JobError::Gang(e.to_string()),
                        e => JobError::Train(Box::new(e)),
                    })?;
            task_result::Result::Train(result)
        }
        Some(task::Work::RewardMember(member)) => task_result::Result::RewardMember(computing(
            crate::reward::run_member(member, device, (progress, metrics), cancel),
        )?),
        Some(task::Work::ScoreShard(shard)) => task_result::Result::ScoreShard(computing(
            crate::reward::run_score_shard(shard, device, progress),
        )?),
        Some(task::Work::BonShard(shard)) => task_result::Result::BonShard(computing(
            crate::reward::run_bon_shard(shard, device, progress),
        )?),
        None => {
            return Err(JobError::InvalidTask(format!(
                "task {} carries no work",
                task.task_id
            )))
        }
    };
    Ok(TaskResult {
        result: Some(result),
    })
}

/// Runs a task that computes on this thread for a long time (minutes): the runtime moves its
/// other tasks (heartbeats, progress reports) to the remaining threads meanwhile.
fn computing<T, E>(work: impl std::future::Future<Output = Result<T, E>>) -> Result<T, JobError>
where
    JobError: From<E>,
{
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(work))
        .map_err(JobError::from)
}

#[cfg(test)]
mod tests {
    use super::JobError;
    use crate::checkpoint::CheckpointError;
    use crate::io::IoError;
    use crate::train::TrainError;

    fn store_error(source: object_store::Error) -> IoError {
        IoError::store("file:///out/checkpoints/step-000004/manifest.json", source)
    }

    #[test]
    fn a_store_error_inside_a_training_task_stays_transient() {
        let failed_put = object_store::Error::Generic {
            store: "test",
            source: "connection reset".into(),
        };
        let checkpoint = CheckpointError::Io(store_error(failed_put));
        let e = JobError::Train(Box::new(TrainError::Checkpoint(checkpoint)));
        assert!(e.is_transient());
        assert!(e.to_string().contains("connection reset"), "{e}");
        // A missing object is not: trying again would find it missing again.
        let missing = object_store::Error::NotFound {
            path: "x".into(),
            source: "gone".into(),
        };
        let e = JobError::Train(Box::new(TrainError::Io(store_error(missing))));
        assert!(!e.is_transient());
        let e = JobError::Train(Box::new(TrainError::Invalid("bad spec".into())));
        assert!(!e.is_transient());
    }
}
