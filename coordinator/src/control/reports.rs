//! Worker reports: progress (with metric and log lines), results, failures (the failure policy
//! decides between a retry and a failed job), hand-backs, committed checkpoints and the gang
//! rendezvous.

use std::sync::Arc;
use std::time::Duration;

use mirrorplay_proto::v1::{task, task_result, LogLine, Task, TaskFailure, TaskRef, TaskResult};

use super::{is_terminal, ControlError, ControlPlane, JobEvent, JobLog};
use crate::drivers::{Log, Step};
use crate::scheduler::{Failed, FailureKind, Finished, Joined, Member, Rejected};

impl ControlPlane {
    /// A progress report: the fraction done, metric lines (streamed to watchers, train lines
    /// feed the job's training rate) and the worker's log lines (added to the job's log, named
    /// by worker).
    pub fn progress(
        &self,
        worker_id: &str,
        task_id: &str,
        attempt: u32,
        fraction: f64,
        (metrics, logs): (Vec<String>, Vec<LogLine>),
    ) -> Result<(), Rejected> {
        let job_id = self
            .scheduler
            .progress(worker_id, task_id, attempt, fraction)?;
        if let Some(h) = self.handle(&job_id) {
            self.update(&h, |_| {});
            if !logs.is_empty() {
                let worker = self
                    .scheduler
                    .worker_name(worker_id)
                    .unwrap_or_else(|| worker_id.to_string());
                h.push_lines(
                    logs.into_iter()
                        .map(|l| LogLine {
                            message: format!("[{worker}] {}", l.message),
                            seq: 0,
                            ..l
                        })
                        .collect(),
                );
            }
            for line in &metrics {
                self.metrics.metric_line(&job_id, line);
            }
            if !metrics.is_empty() {
                let _ = h.events.send(JobEvent {
                    job: Some(h.job()),
                    logs: vec![],
                    metrics,
                });
            }
        }
        Ok(())
    }

    pub async fn task_succeeded(
        self: &Arc<Self>,
        worker_id: &str,
        task_id: &str,
        attempt: u32,
        result: TaskResult,
    ) -> Result<(), Rejected> {
        let task = match self.scheduler.finish(worker_id, task_id, attempt)? {
            Finished::Task(task) => *task,
            Finished::Rank => return Ok(()),
        };
        if let Some(written) = merge_bytes_written(&result) {
            self.metrics.merge_bytes(merge_bytes_read(&task), written);
        }
        let Some(handle) = self.handle(&task.job_id) else {
            return Ok(());
        };
        let this = self.clone();
        tokio::spawn(async move {
            let key = task
                .task_id
                .strip_prefix(&format!("{}/", handle.id))
                .unwrap_or(&task.task_id)
                .to_string();
            this.update(&handle, |s| s.tasks_done += 1);
            let mut guard = handle.driver.lock().await;
            if is_terminal(handle.state()) {
                return;
            }
            let Some(driver) = guard.as_mut() else { return };
            let step = driver.on_result(&key, result, &JobLog(&handle)).await;
            let stage = driver.stage();
            drop(guard);
            let spec = handle.job().spec.unwrap_or_default();
            match step {
                Err(e) => this.fail(&handle, e.to_string()).await,
                Ok(Step::Wait) => {}
                Ok(Step::Run(tasks)) => {
                    this.update(&handle, |s| {
                        s.job.progress.get_or_insert_default().stage = stage.unwrap_or_default()
                    });
                    this.enqueue(&handle, &spec, tasks);
                }
                Ok(Step::Done) => this.succeed(&handle).await,
            }
        });
        Ok(())
    }

    /// A failure report: a transient failure or a broken gang is retried (up to the retry
    /// limit), any other failure fails the job at once.
    pub async fn task_failed(
        &self,
        worker_id: &str,
        task_id: &str,
        attempt: u32,
        message: String,
        kind: FailureKind,
    ) -> Result<(), Rejected> {
        let worker = self
            .scheduler
            .worker_name(worker_id)
            .unwrap_or_else(|| worker_id.to_string());
        let task = match self
            .scheduler
            .fail(worker_id, task_id, attempt, kind, &message)?
        {
            Failed::Task(task) => *task,
            Failed::Again(lost) => {
                self.handle_lost(vec![lost]).await;
                return Ok(());
            }
        };
        self.metrics.task_failed();
        if let Some(handle) = self.handle(&task.job_id) {
            handle.record_failure(TaskFailure {
                task_id: task_id.to_string(),
                attempt,
                worker: worker.clone(),
                reason: message.clone(),
                retry: 0,
                delay_ms: 0,
                time: crate::now(),
            });
            self.fail(
                &handle,
                format!("task {task_id} failed on worker `{worker}`: {message}"),
            )
            .await;
        }
        Ok(())
    }

    /// A worker's heartbeat: renews its lease and returns the tasks it lists that are no longer
    /// its own (to cancel); tasks it was assigned but never received are re-issued
    /// (`scheduler/stranded.rs`). None for an unknown worker.
    pub async fn heartbeat(&self, worker_id: &str, running: &[TaskRef]) -> Option<Vec<TaskRef>> {
        let beat = self.scheduler.heartbeat(worker_id, running)?;
        if !beat.handed_back.is_empty() {
            tracing::warn!(
                worker_id,
                tasks = beat.handed_back.len(),
                "tasks assigned to a worker that never received them"
            );
            self.handle_lost(beat.handed_back).await;
        }
        Some(beat.cancel)
    }

    /// A worker leaves on its own: every task it held (those it lists as `returned`, and one
    /// assigned to it while it was stopping) is handed back, re-issued at once, not a failure.
    pub async fn deregister(&self, worker_id: &str, returned: &[TaskRef]) {
        let lost = self.scheduler.remove_worker(worker_id, "left", true);
        if !returned.is_empty() || !lost.is_empty() {
            self.handle_lost(lost).await;
        }
    }

    /// A training task committed the checkpoint of `step`: the job remembers it (`status`,
    /// the restart message) and logs it.
    pub async fn checkpoint_committed(
        &self,
        worker_id: &str,
        task_id: &str,
        attempt: u32,
        step: u64,
    ) -> Result<(), Rejected> {
        let job_id = self.scheduler.job_of(worker_id, task_id, attempt)?;
        if let Some(h) = self.handle(&job_id) {
            JobLog(&h).info(format!("checkpoint of step {step} committed"));
            self.update(&h, |s| {
                s.job.progress.get_or_insert_default().checkpoint_step = step;
            });
            self.persist(&h).await;
        }
        Ok(())
    }

    /// Rendezvous of a gang rank: records its endpoint and waits until every rank of the
    /// epoch has joined (or `wait` passes, or the epoch ends).
    pub async fn join_group(
        &self,
        worker_id: &str,
        task_id: &str,
        attempt: u32,
        rank: u32,
        endpoint: Vec<u8>,
        wait: Duration,
    ) -> Result<(u32, Vec<Member>), ControlError> {
        let deadline = tokio::time::Instant::now() + wait;
        let refused = |why: Rejected| {
            ControlError::FailedPrecondition(format!(
                "task {task_id} attempt {attempt} rank {rank}: not a member of the current gang ({why:?})"
            ))
        };
        let mut endpoint = Some(endpoint);
        loop {
            let notified = self.scheduler.gang_notifier().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let joined = self
                .scheduler
                .join_group(worker_id, task_id, attempt, rank, endpoint.take())
                .map_err(refused)?;
            if let Joined::Complete { epoch, members } = joined {
                return Ok((epoch, members));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ControlError::DeadlineExceeded(format!(
                    "task {task_id} attempt {attempt}: the gang did not assemble within {wait:?}"
                )));
            }
        }
    }
}

/// The bytes a merge task's result says it wrote (None for other tasks; 0 for a statistics
/// round).
fn merge_bytes_written(result: &TaskResult) -> Option<u64> {
    match &result.result {
        Some(task_result::Result::MergeShard(r)) => Some(r.bytes_written),
        Some(task_result::Result::MergeStats(_)) => Some(0),
        _ => None,
    }
}

/// The input bytes a merge task reads: each tensor's elements from the base and every model
/// (workers read exactly these ranges, once per round).
fn merge_bytes_read(task: &Task) -> u64 {
    let Some(task::Work::MergeShard(shard)) = &task.work else {
        return 0;
    };
    shard
        .tensors
        .iter()
        .map(|t| {
            let numel: u64 = t.shape.iter().product();
            let sources = t.base.iter().chain(&t.models);
            sources.map(|s| numel * dtype_size(s.dtype)).sum::<u64>()
        })
        .sum()
}

fn dtype_size(dtype: i32) -> u64 {
    use mirrorplay_proto::v1::Dtype;
    match Dtype::try_from(dtype) {
        Ok(Dtype::F32) => 4,
        Ok(Dtype::F16 | Dtype::Bf16) => 2,
        _ => 0,
    }
}
