//! The control plane's domain logic: jobs, their drivers, the scheduler and durable state.
//! The gRPC handlers in `server` translate messages and call these methods; nothing here knows
//! about tonic.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mirrorplay_proto::v1::{
    job_spec, Job, JobEvent, JobProgress, JobSpec, JobState, LogLine, Task, TaskRef, TaskResult,
};
use mirrorplay_worker::io::Location;
use tokio::sync::broadcast;

use crate::drivers::{Driver, Log, NewTask, Step};
use crate::scheduler::{Failed, Finished, Joined, Lost, Member, Rejected, Scheduler};
use crate::state::StateStore;

mod recover;

/// Log lines kept per job (the tail served by GetLogs and WatchJob).
const LOG_TAIL: usize = 500;

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
    tasks_done: u64,
    tasks_total: u64,
}

pub struct JobHandle {
    id: String,
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
            attempt_base: AtomicU32::new(job.attempt_base),
            config_toml,
            snapshot: Mutex::new(Snapshot {
                job,
                logs: vec![],
                tasks_done: 0,
                tasks_total: 0,
            }),
            driver: tokio::sync::Mutex::new(None),
            events,
        })
    }

    fn push_log(&self, level: &str, message: String) {
        let line = LogLine {
            time: crate::now(),
            level: level.into(),
            message,
        };
        let job = {
            let mut s = self.snapshot.lock().expect("snapshot lock");
            s.logs.push(line.clone());
            if s.logs.len() > LOG_TAIL {
                let excess = s.logs.len() - LOG_TAIL;
                s.logs.drain(..excess);
            }
            s.job.clone()
        };
        let _ = self.events.send(JobEvent {
            job: Some(job),
            logs: vec![line],
            metrics: vec![],
        });
    }

    fn job(&self) -> Job {
        self.snapshot.lock().expect("snapshot lock").job.clone()
    }

    /// The job with its gangs as the scheduler sees them now.
    fn live_job(&self, scheduler: &Scheduler) -> Job {
        let mut job = self.job();
        if !is_terminal(job.state()) {
            job.progress.get_or_insert_default().gangs = scheduler.gang_status(&self.id);
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
        Arc::new(ControlPlane {
            scheduler: Scheduler::new(lease),
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
                    let lost = this.scheduler.remove_worker(&worker, "lost its lease");
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
                    reason,
                } => {
                    if let Some(h) = self.handle(&job_id) {
                        let restart = restart_note(&h.job());
                        JobLog(&h).warn(format!(
                            "{reason}; task {task_id} re-issued as attempt {attempt}{restart}"
                        ));
                    }
                }
                Lost::GaveUp {
                    job_id,
                    task_id,
                    attempts,
                } => {
                    if let Some(h) = self.handle(&job_id) {
                        self.fail(
                            &h,
                            format!("task {task_id} lost its worker {attempts} times; giving up"),
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

    /// Accepts a job: claims its output, records it and starts planning in the background.
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
        self.claim_output(&spec, &id).await?;
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

    /// Refuses an output that already holds another job's outputs (unless `overwrite`), then
    /// writes the provenance file there.
    async fn claim_output(&self, spec: &JobSpec, id: &str) -> Result<(), ControlError> {
        let output = Location::parse(&spec.output)
            .map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
        let marker = output.join("job.json");
        match marker.read().await {
            Ok(bytes) => {
                let other = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("job_id").and_then(|j| j.as_str()).map(String::from))
                    .unwrap_or_else(|| "unknown".into());
                if !spec.overwrite {
                    return Err(ControlError::FailedPrecondition(format!(
                        "output {} already holds the outputs of job `{other}`; choose another output or set `job.overwrite = true`",
                        output
                    )));
                }
            }
            Err(mirrorplay_worker::io::IoError::NotFound { .. }) => {}
            Err(e) => {
                return Err(ControlError::InvalidArgument(format!(
                    "cannot use output {output}: {e}"
                )))
            }
        }
        let json = self.provenance(spec, id, "queued", &[], "");
        marker.put(json.into_bytes()).await.map_err(|e| {
            ControlError::InvalidArgument(format!("cannot write to output {output}: {e}"))
        })
    }

    fn provenance(
        &self,
        spec: &JobSpec,
        id: &str,
        state: &str,
        inputs: &[(String, u64, Option<String>)],
        config_toml: &str,
    ) -> String {
        let config_json = toml::from_str::<toml::Table>(config_toml)
            .ok()
            .and_then(|t| serde_json::to_value(t).ok());
        let value = serde_json::json!({
            "job_id": id,
            "name": spec.name,
            "kind": kind_name(spec),
            "state": state,
            "output": spec.output,
            "mirrorplay_version": env!("CARGO_PKG_VERSION"),
            "git_hash": env!("MIRRORPLAY_GIT_HASH"),
            "config_toml": config_toml,
            "config": config_json,
            "inputs": inputs.iter().map(|(url, size, etag)| serde_json::json!({"url": url, "size": size, "etag": etag})).collect::<Vec<_>>(),
            "time": crate::now(),
        });
        let mut text = serde_json::to_string_pretty(&value).expect("JSON");
        text.push('\n');
        text
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
        match tasks {
            Err(e) => self.fail(&handle, e.to_string()).await,
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
            let (stage, checkpoint_step) = s
                .job
                .progress
                .as_ref()
                .map(|p| (p.stage.clone(), p.checkpoint_step))
                .unwrap_or_default();
            s.job.progress = Some(JobProgress {
                tasks_total: s.tasks_total,
                tasks_done: s.tasks_done,
                tasks_running: running,
                fraction,
                stage,
                gangs: self.scheduler.gang_status(&handle.id),
                checkpoint_step,
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
        self.update(handle, |s| s.job.state = JobState::Succeeded as i32);
        JobLog(handle).info("job succeeded".into());
        self.persist(handle).await;
    }

    async fn write_final_provenance(&self, handle: &JobHandle, state: &str) {
        let spec = handle.job().spec.unwrap_or_default();
        let inputs = handle
            .driver
            .try_lock()
            .ok()
            .and_then(|d| d.as_ref().map(|d| d.inputs()))
            .unwrap_or_default();
        let text = self.provenance(&spec, &handle.id, state, &inputs, &handle.config_toml);
        let written = async {
            Location::parse(&spec.output)?
                .join("job.json")
                .put(text.into_bytes())
                .await
        }
        .await;
        if let Err(e) = written {
            tracing::error!(job_id = %handle.id, error = %e, "cannot write job.json");
        }
    }

    // ---- worker reports ----

    pub fn progress(
        &self,
        worker_id: &str,
        task_id: &str,
        attempt: u32,
        fraction: f64,
        metrics: Vec<String>,
    ) -> Result<(), Rejected> {
        let job_id = self
            .scheduler
            .progress(worker_id, task_id, attempt, fraction)?;
        if let Some(h) = self.handle(&job_id) {
            self.update(&h, |_| {});
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

    pub async fn task_failed(
        &self,
        worker_id: &str,
        task_id: &str,
        attempt: u32,
        message: String,
        gang_broken: bool,
    ) -> Result<(), Rejected> {
        let task = match self
            .scheduler
            .fail(worker_id, task_id, attempt, gang_broken, &message)?
        {
            Failed::Task(task) => *task,
            Failed::Gang(lost) => {
                self.handle_lost(vec![lost]).await;
                return Ok(());
            }
        };
        if let Some(handle) = self.handle(&task.job_id) {
            let worker = self
                .scheduler
                .worker_name(worker_id)
                .unwrap_or_else(|| worker_id.to_string());
            self.fail(
                &handle,
                format!("task {task_id} failed on worker `{worker}`: {message}"),
            )
            .await;
        }
        Ok(())
    }

    pub async fn deregister(&self, worker_id: &str, returned: &[TaskRef]) {
        let lost = self.scheduler.remove_worker(worker_id, "left");
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

    pub fn logs(&self, job_id: &str) -> Result<Vec<LogLine>, ControlError> {
        let h = self
            .handle(job_id)
            .ok_or_else(|| ControlError::NotFound(format!("no job `{job_id}`")))?;
        let logs = h.snapshot.lock().expect("snapshot lock").logs.clone();
        Ok(logs)
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
