//! The control plane's domain logic: jobs, their drivers, the scheduler and durable state.
//! The gRPC handlers in `server` translate messages and call these methods; nothing here knows
//! about tonic.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mirrorplay_proto::v1::{
    job_spec, Job, JobEvent, JobProgress, JobSpec, JobState, LogLine, Task, TaskFailure,
};
use tokio::sync::broadcast;

use crate::drivers::{Driver, Log, NewTask};
use crate::metrics::Metrics;
use crate::scheduler::{Cause, Lost, RetryPolicy, Scheduler};
use crate::state::StateStore;

mod claim;
mod recover;
mod reports;
mod scrape;

/// Log lines kept per job (the tail served by GetLogs and WatchJob).
const LOG_TAIL: usize = 500;
/// Task failures a job keeps (shown by `status`).
const FAILURES_KEPT: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    DeadlineExceeded(String),
}

/// What clients see of a job, readable without waiting for its driver.
struct Snapshot {
    job: Job,
    logs: Vec<LogLine>,
    /// The number of the last log line (LogLine.seq).
    log_seq: u64,
    tasks_done: u64,
    tasks_total: u64,
}

pub struct JobHandle {
    id: String,
    /// Whether this job has written its claim (`OUTPUT/job.json`) in this coordinator; a job
    /// that failed before has nothing of its own there and leaves it alone.
    claimed: std::sync::atomic::AtomicBool,
    /// Files that were under the output when this job claimed it and are not its own.
    foreign: Mutex<std::collections::BTreeSet<String>>,
    /// Attempt numbers of this run of the job start above this (it grows by MAX_ATTEMPTS with
    /// each `resume`, so metrics parts of different runs never share an attempt).
    attempt_base: AtomicU32,
    config_toml: String,
    snapshot: Mutex<Snapshot>,
    driver: tokio::sync::Mutex<Option<Driver>>,
    events: broadcast::Sender<JobEvent>,
}

impl JobHandle {
    fn new(job: Job, config_toml: String) -> Arc<JobHandle> {
        let (events, _) = broadcast::channel(1024);
        Arc::new(JobHandle {
            id: job.job_id.clone(),
            claimed: Default::default(),
            foreign: Default::default(),
            attempt_base: AtomicU32::new(job.attempt_base),
            config_toml,
            snapshot: Mutex::new(Snapshot {
                job,
                logs: vec![],
                log_seq: 0,
                tasks_done: 0,
                tasks_total: 0,
            }),
            driver: tokio::sync::Mutex::new(None),
            events,
        })
    }

    fn push_log(&self, level: &str, message: String) {
        self.push_lines(vec![LogLine {
            time: crate::now(),
            level: level.into(),
            message,
            seq: 0,
        }]);
    }

    /// Appends lines to the job's log (numbering them) and sends them to watchers.
    fn push_lines(&self, mut lines: Vec<LogLine>) {
        if lines.is_empty() {
            return;
        }
        let job = {
            let mut s = self.snapshot.lock().expect("snapshot lock");
            for line in &mut lines {
                s.log_seq += 1;
                line.seq = s.log_seq;
            }
            s.logs.extend(lines.iter().cloned());
            if s.logs.len() > LOG_TAIL {
                let excess = s.logs.len() - LOG_TAIL;
                s.logs.drain(..excess);
            }
            s.job.clone()
        };
        let _ = self.events.send(JobEvent {
            job: Some(job),
            logs: lines,
            metrics: vec![],
        });
    }

    /// Records a task failure (status shows the latest ones).
    fn record_failure(&self, failure: TaskFailure) {
        let mut s = self.snapshot.lock().expect("snapshot lock");
        let failures = &mut s.job.progress.get_or_insert_default().failures;
        failures.push(failure);
        if failures.len() > FAILURES_KEPT {
            let excess = failures.len() - FAILURES_KEPT;
            failures.drain(..excess);
        }
    }

    fn job(&self) -> Job {
        self.snapshot.lock().expect("snapshot lock").job.clone()
    }

    /// The job with its running tasks and gangs as the scheduler sees them now.
    fn live_job(&self, scheduler: &Scheduler) -> Job {
        let mut job = self.job();
        if !is_terminal(job.state()) {
            let progress = job.progress.get_or_insert_default();
            progress.gangs = scheduler.gang_status(&self.id);
            progress.tasks_running = scheduler.job_counts(&self.id).1;
        }
        job
    }

    fn state(&self) -> JobState {
        self.job().state()
    }
}

struct JobLog<'a>(&'a JobHandle);

impl Log for JobLog<'_> {
    fn info(&self, message: String) {
        tracing::info!(job_id = %self.0.id, "{message}");
        self.0.push_log("info", message);
    }
    fn warn(&self, message: String) {
        tracing::warn!(job_id = %self.0.id, "{message}");
        self.0.push_log("warn", message);
    }
}

pub struct ControlPlane {
    pub scheduler: Scheduler,
    pub metrics: Metrics,
    jobs: Mutex<BTreeMap<String, Arc<JobHandle>>>,
    state: StateStore,
    next_job: AtomicU64,
}

fn kind_name(spec: &JobSpec) -> &'static str {
    match spec.kind {
        Some(job_spec::Kind::Merge(_)) => "merge",
        Some(job_spec::Kind::Pipeline(_)) => "pipeline",
        Some(job_spec::Kind::Sft(_)) => "sft",
        Some(job_spec::Kind::Selfplay(_)) => "selfplay",
        Some(job_spec::Kind::RewardTrain(_)) => "reward_train",
        Some(job_spec::Kind::Score(_)) => "score",
        Some(job_spec::Kind::Bon(_)) => "bon",
        None => "unknown",
    }
}

/// Where a training job's next attempt starts, as a clause for a log line ("" for other kinds).
fn restart_note(job: &Job) -> String {
    let committed = job.progress.as_ref().map_or(0, |p| p.checkpoint_step);
    let kind = job.spec.as_ref().map_or("unknown", kind_name);
    match (kind, committed) {
        ("sft" | "selfplay", 0) => {
            "; training resumes from its newest verified checkpoint (none committed yet: from step 0)"
                .to_string()
        }
        ("sft" | "selfplay", step) => format!(
            "; training resumes from its newest verified checkpoint (last committed: step {step})"
        ),
        _ => String::new(),
    }
}

fn is_terminal(state: JobState) -> bool {
    matches!(
        state,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

impl ControlPlane {
    pub fn new(state: StateStore, lease: Duration) -> Arc<Self> {
        ControlPlane::with_retry(state, lease, RetryPolicy::default())
    }

    /// A control plane whose failed tasks are retried as `retry` says.
    pub fn with_retry(state: StateStore, lease: Duration, retry: RetryPolicy) -> Arc<Self> {
        let metrics = Metrics::default();
        for cause in Cause::ALL {
            metrics.declare_retry_cause(cause.label());
        }
        Arc::new(ControlPlane {
            scheduler: Scheduler::with_retry(lease, retry),
            metrics,
            jobs: Mutex::new(BTreeMap::new()),
            state,
            next_job: AtomicU64::new(0),
        })
    }

    pub fn state(&self) -> &StateStore {
        &self.state
    }

    /// Background loop: workers whose lease ran out lose their tasks to live workers.
    pub fn spawn_lease_sweeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval((this.scheduler.lease / 4).max(Duration::from_millis(20)));
            loop {
                tick.tick().await;
                for worker in this.scheduler.expired_workers() {
                    tracing::warn!(worker = %worker, "lease expired");
                    let lost = this
                        .scheduler
                        .remove_worker(&worker, "lost its lease", false);
                    this.handle_lost(lost).await;
                }
            }
        })
    }

    async fn handle_lost(&self, lost: Vec<Lost>) {
        for l in lost {
            match l {
                Lost::Requeued {
                    job_id,
                    task_id,
                    attempt,
                    cause,
                    worker,
                    reason,
                    retry,
                    delay,
                } => {
                    self.metrics.task_retried(cause.label());
                    let Some(h) = self.handle(&job_id) else {
                        continue;
                    };
                    let restart = restart_note(&h.job());
                    if cause == Cause::HandedBack {
                        JobLog(&h).info(format!(
                            "{reason}; task {task_id} re-issued as attempt {attempt} (not a failure){restart}"
                        ));
                        continue;
                    }
                    let max = self.scheduler.retry.max_retries;
                    JobLog(&h).warn(format!(
                        "{reason}; task {task_id} re-issued as attempt {attempt} (retry {retry} of {max}, in {:.1} s){restart}",
                        delay.as_secs_f64()
                    ));
                    h.record_failure(TaskFailure {
                        task_id,
                        attempt: attempt - 1,
                        worker,
                        reason,
                        retry,
                        delay_ms: delay.as_millis() as u64,
                        time: crate::now(),
                    });
                    self.update(&h, |_| {});
                    self.persist(&h).await;
                }
                Lost::GaveUp {
                    job_id,
                    task_id,
                    failures,
                    worker,
                    reason,
                } => {
                    self.metrics.task_failed();
                    if let Some(h) = self.handle(&job_id) {
                        h.record_failure(TaskFailure {
                            task_id: task_id.clone(),
                            attempt: 0,
                            worker,
                            reason: reason.clone(),
                            retry: 0,
                            delay_ms: 0,
                            time: crate::now(),
                        });
                        self.fail(
                            &h,
                            format!("task {task_id} failed {failures} times; giving up; the last failure: {reason}"),
                        )
                        .await;
                    }
                }
            }
        }
    }

    fn handle(&self, job_id: &str) -> Option<Arc<JobHandle>> {
        self.jobs.lock().expect("jobs lock").get(job_id).cloned()
    }

    fn new_job_id(&self, spec: &JobSpec) -> String {
        let n = self.next_job.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let tag = mirrorplay_worker::rng::mix(nanos as u64 ^ (n << 48) ^ std::process::id() as u64)
            & 0xFF_FFFF;
        let slug: String = spec
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect::<String>()
            .trim_matches('-')
            .chars()
            .take(40)
            .collect();
        let slug = if slug.is_empty() {
            kind_name(spec).to_string()
        } else {
            slug
        };
        format!("{slug}-{tag:06x}")
    }

    /// Accepts a job: checks that its output is free (no live job writes there; no other job's
    /// outputs unless `overwrite`), records it and starts planning in the background. The
    /// output is claimed only when the job starts (`claim`).
    pub async fn submit(
        self: &Arc<Self>,
        spec: JobSpec,
        config_toml: String,
    ) -> Result<String, ControlError> {
        if spec.kind.is_none() {
            return Err(ControlError::InvalidArgument(
                "the job spec names no kind".into(),
            ));
        }
        if spec.output.is_empty() {
            return Err(ControlError::InvalidArgument(
                "the job spec has no output".into(),
            ));
        }
        let id = self.new_job_id(&spec);
        self.check_output(&spec, &id).await?;
        let now = crate::now();
        let job = Job {
            job_id: id.clone(),
            name: spec.name.clone(),
            kind: kind_name(&spec).into(),
            state: JobState::Queued as i32,
            spec: Some(spec),
            error: String::new(),
            progress: Some(JobProgress::default()),
            created_at: now,
            updated_at: now,
            attempt_base: 0,
        };
        let handle = JobHandle::new(job, config_toml);
        self.jobs
            .lock()
            .expect("jobs lock")
            .insert(id.clone(), handle.clone());
        self.persist(&handle).await;
        self.state
            .save_config(&id, &handle.config_toml)
            .await
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        let this = self.clone();
        tokio::spawn(async move { this.start(handle).await });
        Ok(id)
    }

    async fn start(self: Arc<Self>, handle: Arc<JobHandle>) {
        let spec = handle.job().spec.unwrap_or_default();
        let mut guard = handle.driver.lock().await;
        let mut driver = match Driver::new(&spec) {
            Ok(d) => d,
            Err(e) => return self.fail(&handle, e.to_string()).await,
        };
        JobLog(&handle).info(format!("planning {} job", kind_name(&spec)));
        let tasks = driver.plan(&JobLog(&handle)).await;
        let stage = driver.stage();
        *guard = Some(driver);
        drop(guard);
        let tasks = match tasks {
            Ok(tasks) => self.claim(&handle, &spec).await.map(|()| tasks),
            Err(e) => Err(e.to_string()),
        };
        match tasks {
            Err(e) => self.fail(&handle, e).await,
            Ok(tasks) if tasks.is_empty() => self.succeed(&handle).await,
            Ok(tasks) => {
                self.update(&handle, |s| {
                    s.job.state = JobState::Running as i32;
                    s.job.progress.get_or_insert_default().stage = stage.unwrap_or_default();
                });
                self.persist(&handle).await;
                self.enqueue(&handle, &spec, tasks);
            }
        }
    }

    fn enqueue(&self, handle: &JobHandle, spec: &JobSpec, tasks: Vec<NewTask>) {
        let n = tasks.len() as u64;
        // group_size 0: every worker registered now.
        let registered = self.scheduler.worker_count().max(1) as u32;
        let tasks: Vec<(Task, u32)> = tasks
            .into_iter()
            .map(|t| {
                let group_size = match t.group_size {
                    0 => registered,
                    w => w,
                };
                if group_size > 1 {
                    JobLog(handle).info(format!(
                        "task {} runs on a gang of {group_size} ranks",
                        t.key
                    ));
                }
                let task = Task {
                    task_id: format!("{}/{}", handle.id, t.key),
                    job_id: handle.id.clone(),
                    attempt: handle.attempt_base.load(Ordering::Relaxed) + 1,
                    group_size,
                    rank: 0,
                    work: Some(t.work),
                };
                (task, t.min_group_size.min(group_size))
            })
            .collect();
        self.update(handle, |s| s.tasks_total += n);
        let limit = match &spec.kind {
            Some(job_spec::Kind::Pipeline(_)) => 0,
            _ => spec.workers,
        };
        self.scheduler.enqueue(tasks, limit);
    }

    fn update(&self, handle: &JobHandle, f: impl FnOnce(&mut Snapshot)) {
        let job = {
            let mut s = handle.snapshot.lock().expect("snapshot lock");
            f(&mut s);
            let (_queued, running, running_progress) = self.scheduler.job_counts(&handle.id);
            let total = s.tasks_total.max(1) as f64;
            let fraction = if s.job.state() == JobState::Succeeded {
                1.0
            } else {
                (s.tasks_done as f64 + running_progress) / total
            };
            let (stage, checkpoint_step, failures) = s
                .job
                .progress
                .as_mut()
                .map(|p| {
                    (
                        p.stage.clone(),
                        p.checkpoint_step,
                        std::mem::take(&mut p.failures),
                    )
                })
                .unwrap_or_default();
            s.job.progress = Some(JobProgress {
                tasks_total: s.tasks_total,
                tasks_done: s.tasks_done,
                tasks_running: running,
                fraction,
                stage,
                gangs: self.scheduler.gang_status(&handle.id),
                checkpoint_step,
                failures,
            });
            s.job.updated_at = crate::now();
            s.job.clone()
        };
        let _ = handle.events.send(JobEvent {
            job: Some(job),
            logs: vec![],
            metrics: vec![],
        });
    }

    async fn persist(&self, handle: &JobHandle) {
        let job = {
            let mut s = handle.snapshot.lock().expect("snapshot lock");
            s.job.attempt_base = handle.attempt_base.load(Ordering::Relaxed);
            s.job.clone()
        };
        if let Err(e) = self.state.save_job(&job).await {
            tracing::error!(job_id = %handle.id, error = %e, "cannot save job state");
        }
    }

    async fn fail(&self, handle: &JobHandle, error: String) {
        if is_terminal(handle.state()) {
            return;
        }
        self.scheduler.drop_job(&handle.id);
        JobLog(handle).warn(format!("job failed: {error}"));
        self.update(handle, |s| {
            s.job.state = JobState::Failed as i32;
            s.job.error = error.clone();
        });
        self.persist(handle).await;
        self.write_final_provenance(handle, "failed").await;
    }

    async fn succeed(&self, handle: &JobHandle) {
        self.write_final_provenance(handle, "succeeded").await;
        // The line goes out before the state, so that a follower ending at the state has it.
        JobLog(handle).info("job succeeded".into());
        self.update(handle, |s| s.job.state = JobState::Succeeded as i32);
        self.persist(handle).await;
    }

    // ---- clients ----

    pub fn get(&self, job_id: &str) -> Result<Job, ControlError> {
        self.handle(job_id)
            .map(|h| h.live_job(&self.scheduler))
            .ok_or_else(|| ControlError::NotFound(format!("no job `{job_id}`")))
    }

    pub fn list(&self) -> Vec<Job> {
        self.jobs
            .lock()
            .expect("jobs lock")
            .values()
            .map(|h| h.live_job(&self.scheduler))
            .collect()
    }

    pub async fn cancel(&self, job_id: &str) -> Result<Job, ControlError> {
        let h = self
            .handle(job_id)
            .ok_or_else(|| ControlError::NotFound(format!("no job `{job_id}`")))?;
        if !is_terminal(h.state()) {
            self.scheduler.drop_job(job_id);
            JobLog(&h).warn("job cancelled".into());
            self.update(&h, |s| s.job.state = JobState::Cancelled as i32);
            self.persist(&h).await;
            self.write_final_provenance(&h, "cancelled").await;
        }
        Ok(h.job())
    }

    /// Runs a failed or cancelled job again from its plan; each training task continues from
    /// its newest verified checkpoint (the workers find it), so only the work since is redone.
    pub async fn resume(self: &Arc<Self>, job_id: &str) -> Result<Job, ControlError> {
        let h = self
            .handle(job_id)
            .ok_or_else(|| ControlError::NotFound(format!("no job `{job_id}`")))?;
        let state = h.state();
        if !matches!(state, JobState::Failed | JobState::Cancelled) {
            return Err(ControlError::FailedPrecondition(format!(
                "job `{job_id}` is {}; only a failed or cancelled job can be resumed",
                state
                    .as_str_name()
                    .trim_start_matches("JOB_STATE_")
                    .to_lowercase()
            )));
        }
        h.attempt_base
            .fetch_add(crate::scheduler::MAX_ATTEMPTS, Ordering::Relaxed);
        self.scheduler.drop_job(job_id);
        self.update(&h, |s| {
            s.job.state = JobState::Queued as i32;
            s.job.error.clear();
            s.tasks_done = 0;
            s.tasks_total = 0;
        });
        JobLog(&h)
            .info("resumed: training continues from its newest verified checkpoint".to_string());
        self.persist(&h).await;
        let this = self.clone();
        let handle = h.clone();
        tokio::spawn(async move { this.start(handle).await });
        Ok(h.job())
    }

    /// The job now, its log tail, and a receiver of later events.
    pub fn watch(
        &self,
        job_id: &str,
    ) -> Result<(JobEvent, broadcast::Receiver<JobEvent>), ControlError> {
        let h = self
            .handle(job_id)
            .ok_or_else(|| ControlError::NotFound(format!("no job `{job_id}`")))?;
        let rx = h.events.subscribe();
        let s = h.snapshot.lock().expect("snapshot lock");
        Ok((
            JobEvent {
                job: Some(s.job.clone()),
                logs: s.logs.clone(),
                metrics: vec![],
            },
            rx,
        ))
    }
}

pub fn job_is_terminal(job: &Job) -> bool {
    is_terminal(job.state())
}
