//! The worker side of each job kind: a task in, a result out. Each function here is called by
//! the runtime on a task and knows nothing about gRPC connections, leases or retries.

pub mod merge_shard;

use mirrorplay_proto::v1::{task, task_result, Task, TaskResult};

use crate::io::IoError;

/// Why a task failed; the message names the file, tensor or key.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("tensor `{tensor}`: {reason}")]
    Tensor { tensor: String, reason: String },
    #[error("invalid task: {0}")]
    InvalidTask(String),
}

/// Reports progress in [0, 1].
pub type Progress<'a> = &'a (dyn Fn(f64) + Send + Sync);

/// Runs one task to completion.
pub async fn run_task(task: &Task, progress: Progress<'_>) -> Result<TaskResult, JobError> {
    let result = match &task.work {
        Some(task::Work::MergeShard(shard)) if shard.write => {
            task_result::Result::MergeShard(merge_shard::run_write(shard, progress).await?)
        }
        Some(task::Work::MergeShard(shard)) => {
            task_result::Result::MergeStats(merge_shard::run_stats(shard, progress).await?)
        }
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
