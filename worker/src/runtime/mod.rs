//! The worker runtime: register, heartbeat, long-poll for tasks, run them, report progress and
//! results. A lost coordinator means reconnecting with backoff and registering again; a
//! shutdown request finishes the current task within a grace period or hands it back, then
//! deregisters. What a task computes lives in `jobs`; this module only moves tasks around.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mirrorplay_proto::v1::{
    report_task_request, CommitCheckpointRequest, DeregisterRequest, HeartbeatRequest,
    PollTaskRequest, RegisterRequest, ReportTaskRequest, Task, TaskProgress, TaskRef,
};
use tokio::sync::watch;

use crate::collective::{Collective, Local};
use crate::connect::{ClientTls, ConnectError, Connection, CoordinatorRpc, Token};
use crate::jobs::{run_task, JobError};

mod gang;
pub mod task_log;

/// No checkpoint committed yet.
const NO_COMMIT: u64 = u64::MAX;

/// Fault-injection knob for tests: sleep this long after receiving each task, before working.
pub const FAULT_TASK_DELAY_ENV: &str = "MIRRORPLAY_FAULT_TASK_DELAY_MS";

/// Test knob: the version this worker says it runs when registering (a worker of another
/// version, without building one).
pub const FAULT_VERSION_ENV: &str = "MIRRORPLAY_FAULT_WORKER_VERSION";

/// Test knob: the worker discards the first N tasks its polls return, as if each reply had been
/// lost on the way; the coordinator re-issues such a task once the worker's heartbeats have
/// left it out for a lease (its `scheduler/stranded.rs`).
pub const FAULT_DROP_ASSIGNMENTS_ENV: &str = "MIRRORPLAY_FAULT_DROP_ASSIGNMENTS";

/// True while [`FAULT_DROP_ASSIGNMENTS_ENV`]'s count of tasks to discard is not used up (once
/// per process, counted over every session).
fn drop_injected_assignment() -> bool {
    static DROPPED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let Ok(v) = std::env::var(FAULT_DROP_ASSIGNMENTS_ENV) else {
        return false;
    };
    let Ok(limit) = v.parse::<u32>() else {
        tracing::warn!("{FAULT_DROP_ASSIGNMENTS_ENV}={v} is not a count; ignored");
        return false;
    };
    DROPPED
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| {
            (d < limit).then_some(d + 1)
        })
        .is_ok()
}

/// The version sent with Register: this build's, unless [`FAULT_VERSION_ENV`] says otherwise.
fn registered_version() -> String {
    std::env::var(FAULT_VERSION_ENV).unwrap_or_else(|_| env!("CARGO_PKG_VERSION").into())
}

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Coordinator URL, e.g. http://127.0.0.1:50051 or https://HOST:PORT.
    pub coordinator: String,
    /// Bearer token sent on every call (docs/architecture.md#authentication).
    pub token: Option<Token>,
    /// TLS settings of an https:// URL.
    pub tls: ClientTls,
    pub name: String,
    /// How long a shutdown waits for the running task before handing it back.
    pub grace: Duration,
    pub fault_task_delay: Duration,
    /// Where training tasks compute (merges stream on the CPU whatever this is).
    pub device: candle_core::Device,
    /// The address other ranks of a gang reach this worker's ring listener on (None: the
    /// source address of the route to the coordinator).
    pub ring_ip: Option<std::net::IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The coordinator refused to register this worker (another version).
    #[error("the coordinator refused this worker: {0}")]
    Refused(String),
}

/// How a session with one registration ended.
#[derive(Debug)]
enum SessionEnd {
    Shutdown,
    /// Coordinator unreachable or no longer knows us: register again.
    Lost,
}

/// Runs until `shutdown` turns true.
pub async fn run(
    opts: WorkerOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), RuntimeError> {
    let connection = Connection {
        url: opts.coordinator.clone(),
        token: opts.token.clone(),
        tls: opts.tls.clone(),
    };
    let channel = connection.endpoint()?.connect_lazy();
    let ring_ip = match opts.ring_ip {
        Some(ip) => ip,
        None => gang::ring_ip_for(&opts.coordinator).await,
    };
    tracing::info!(%ring_ip, "gang ring address");
    let mut backoff = Backoff::new();
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let mut client = connection.client(channel.clone());
        let request = RegisterRequest {
            name: opts.name.clone(),
            slots: 1,
            version: registered_version(),
            device: device_name(&opts.device),
        };
        let registered = match client.register(request).await {
            Ok(r) => r.into_inner(),
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                return Err(RuntimeError::Refused(status.message().to_string()));
            }
            Err(status) => {
                let wait = backoff.next();
                tracing::warn!(coordinator = %opts.coordinator, error = %status.message(), retry_in_ms = wait.as_millis() as u64, "cannot register");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = shutdown.changed() => return Ok(()),
                }
            }
        };
        backoff.reset();
        tracing::info!(worker_id = %registered.worker_id, lease_ms = registered.lease_ms, "registered");
        let session = Session {
            client,
            ring_ip,
            worker_id: registered.worker_id,
            heartbeat: Duration::from_millis(registered.heartbeat_ms.max(50)),
            lease: Duration::from_millis(registered.lease_ms.max(100)),
        };
        match session.run(&opts, &mut shutdown).await {
            SessionEnd::Shutdown => return Ok(()),
            SessionEnd::Lost => tracing::warn!("lost the coordinator; registering again"),
        }
    }
}

/// Exponential reconnect backoff (100 ms doubling to 5 s) with full jitter over the upper half,
/// so that workers cut off together do not reconnect in lockstep.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(100))
    }
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.subsec_nanos() as u64);
        let salt = crate::rng::mix(nanos ^ ((std::process::id() as u64) << 32));
        // A factor in [0.5, 1).
        d.mul_f64(0.5 + (salt >> 11) as f64 / (1u64 << 53) as f64 / 2.0)
    }
    fn reset(&mut self) {
        *self = Backoff::new();
    }
}

/// "cpu" or "cuda:N", as registered with the coordinator.
fn device_name(device: &candle_core::Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

struct Session {
    client: CoordinatorRpc,
    ring_ip: std::net::IpAddr,
    worker_id: String,
    heartbeat: Duration,
    lease: Duration,
}

/// What a failure report says of the failure.
#[derive(Debug, Clone, Copy, Default)]
struct FailureKind {
    gang_broken: bool,
    transient: bool,
}

/// Signals from the heartbeat loop.
#[derive(Debug, Clone, Default, PartialEq)]
struct HeartbeatState {
    lost: bool,
    cancel: Vec<TaskRef>,
}

/// Waits for a poll's reply; Err when the session must end first (shutdown, or the lease lost).
/// A heartbeat's cancel does not drop the poll: while polling the worker runs no task, so a
/// cancel can only name one it has just finished (a heartbeat that crossed the task's final
/// report), and the poll's reply may already carry a task the coordinator has marked as running
/// here — dropping it stranded that task, and with one slot the worker never got another (the
/// likely cause of a pipeline's `bon` stage stalling after 6 of its 8 shards).
async fn await_poll<T>(
    poll: impl std::future::Future<Output = T>,
    shutdown: &mut watch::Receiver<bool>,
    hb_rx: &mut watch::Receiver<HeartbeatState>,
) -> Result<T, SessionEnd> {
    let mut poll = std::pin::pin!(poll);
    loop {
        tokio::select! {
            r = &mut poll => return Ok(r),
            _ = shutdown.changed() => return Err(SessionEnd::Shutdown),
            changed = hb_rx.changed() => {
                // The heartbeat loop ends only once the lease is lost.
                if changed.is_err() || hb_rx.borrow().lost {
                    return Err(SessionEnd::Lost);
                }
            }
        }
    }
}

impl Session {
    async fn run(
        mut self,
        opts: &WorkerOptions,
        shutdown: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let (running_tx, running_rx) = watch::channel::<Option<TaskRef>>(None);
        let (hb_tx, mut hb_rx) = watch::channel(HeartbeatState::default());
        let heartbeat = tokio::spawn(heartbeat_loop(
            self.client.clone(),
            self.worker_id.clone(),
            self.heartbeat,
            self.lease,
            heartbeat_deadline(self.lease),
            running_rx,
            hb_tx,
        ));
        let end = loop {
            if *shutdown.borrow() {
                break SessionEnd::Shutdown;
            }
            if hb_rx.borrow().lost {
                break SessionEnd::Lost;
            }
            let poll = self.client.poll_task(PollTaskRequest {
                worker_id: self.worker_id.clone(),
                wait_ms: 20_000,
            });
            let response = match await_poll(poll, shutdown, &mut hb_rx).await {
                Ok(response) => response,
                Err(end) => break end,
            };
            let response = match response {
                Ok(r) => r.into_inner(),
                Err(status) => {
                    tracing::warn!(error = %status.message(), "poll failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if !response.known {
                break SessionEnd::Lost;
            }
            let Some(task) = response.task else { continue };
            if drop_injected_assignment() {
                tracing::warn!(task_id = %task.task_id, attempt = task.attempt, "fault injection: the task is dropped as if the poll's reply were lost");
                continue;
            }
            let task_ref = TaskRef {
                task_id: task.task_id.clone(),
                attempt: task.attempt,
            };
            running_tx.send_replace(Some(task_ref.clone()));
            let end = self.run_one(task, opts, shutdown, &mut hb_rx).await;
            running_tx.send_replace(None);
            if let Some(end) = end {
                break end;
            }
        };
        heartbeat.abort();
        if matches!(end, SessionEnd::Shutdown) {
            let _ = self
                .client
                .deregister(DeregisterRequest {
                    worker_id: self.worker_id.clone(),
                    returned: vec![],
                })
                .await;
            tracing::info!("deregistered");
        }
        end
    }

    /// Runs one task; returns Some when the session must end.
    async fn run_one(
        &mut self,
        task: Task,
        opts: &WorkerOptions,
        shutdown: &mut watch::Receiver<bool>,
        hb_rx: &mut watch::Receiver<HeartbeatState>,
    ) -> Option<SessionEnd> {
        let span = tracing::info_span!("task", task_id = %task.task_id, attempt = task.attempt);
        let _enter = span.enter();
        task_log::start();
        tracing::info!(task_id = %task.task_id, attempt = task.attempt, "started");
        let progress = Arc::new(AtomicU64::new(0f64.to_bits()));
        // The last committed checkpoint step (NO_COMMIT: none yet), forwarded on each tick.
        let committed = Arc::new(AtomicU64::new(NO_COMMIT));
        let mut reported_commit = NO_COMMIT;
        let metrics = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        // Set before every abort: long computations (training) poll it between steps, since
        // aborting a task only takes effect at an await point.
        let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let delay = opts.fault_task_delay;
        let device = opts.device.clone();
        let mut handle = {
            let progress = progress.clone();
            let metrics = metrics.clone();
            let committed = committed.clone();
            let cancel = cancel.clone();
            let task = task.clone();
            let client = self.client.clone();
            let worker_id = self.worker_id.clone();
            let ring_ip = self.ring_ip;
            tokio::spawn(async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let mut collective: Box<dyn Collective> = if task.group_size > 1 {
                    let timeout = match &task.work {
                        Some(mirrorplay_proto::v1::task::Work::Train(t)) => {
                            crate::train::parallel(t).collective_timeout_ms
                        }
                        _ => 120_000,
                    };
                    let ctx = gang::GangContext {
                        client,
                        worker_id: &worker_id,
                        task: &task,
                        ring_ip,
                        timeout: Duration::from_millis(timeout.max(100)),
                        cancel: cancel.clone(),
                    };
                    gang::join(ctx, &device)
                        .await
                        .map_err(|e| JobError::Gang(e.to_string()))?
                } else {
                    Box::new(Local)
                };
                let report = move |f: f64| progress.store(f.to_bits(), Ordering::Relaxed);
                let sink = move |line: String| metrics.lock().expect("metrics lock").push(line);
                let commits = move |step: u64| committed.store(step, Ordering::Relaxed);
                run_task(
                    &task,
                    &device,
                    (&report, &sink, &commits),
                    &cancel,
                    collective.as_mut(),
                )
                .await
            })
        };
        let take_metrics = || std::mem::take(&mut *metrics.lock().expect("metrics lock"));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut shutting_down = false;
        let deadline = tokio::time::sleep(Duration::from_secs(u64::MAX / 4));
        tokio::pin!(deadline);
        let outcome = loop {
            tokio::select! {
                joined = &mut handle => break Some(joined),
                _ = tick.tick() => {
                    let step = committed.load(Ordering::Relaxed);
                    if step != reported_commit {
                        reported_commit = step;
                        self.commit_checkpoint(&task, step).await;
                    }
                    let fraction = f64::from_bits(progress.load(Ordering::Relaxed));
                    let report = report_task_request::Report::Progress(TaskProgress { fraction, message: String::new(), metrics: take_metrics(), logs: task_log::take() });
                    if let Ok(false) = self.report(&task, report).await {
                        tracing::warn!("progress rejected; dropping the task");
                        break None;
                    }
                }
                _ = hb_rx.changed() => {
                    let state = hb_rx.borrow().clone();
                    if state.lost {
                        cancel.store(true, Ordering::Relaxed);
                        handle.abort();
                        task_log::stop();
                        return Some(SessionEnd::Lost);
                    }
                    if state.cancel.iter().any(|c| c.task_id == task.task_id && c.attempt == task.attempt) {
                        tracing::info!("cancelled by the coordinator");
                        break None;
                    }
                }
                _ = shutdown.changed(), if !shutting_down => {
                    shutting_down = true;
                    tracing::info!(grace_s = opts.grace.as_secs_f64(), "shutdown requested; finishing the task");
                    deadline.as_mut().reset(tokio::time::Instant::now() + opts.grace);
                }
                _ = &mut deadline, if shutting_down => {
                    tracing::info!("grace period over; handing the task back");
                    cancel.store(true, Ordering::Relaxed);
                    handle.abort();
                    let returned = vec![TaskRef { task_id: task.task_id.clone(), attempt: task.attempt }];
                    let _ = self.client.deregister(DeregisterRequest { worker_id: self.worker_id.clone(), returned }).await;
                    task_log::stop();
                    return Some(SessionEnd::Shutdown);
                }
            }
        };
        let Some(joined) = outcome else {
            cancel.store(true, Ordering::Relaxed);
            handle.abort();
            task_log::stop();
            return None;
        };
        let mut kind = FailureKind::default();
        let report = match joined {
            Ok(Ok(result)) => {
                tracing::info!("succeeded");
                report_task_request::Report::Result(result)
            }
            Ok(Err(e)) => {
                kind = FailureKind {
                    gang_broken: e.is_gang_broken(),
                    transient: e.is_transient(),
                };
                tracing::error!(error = %e, transient = kind.transient, "failed");
                report_task_request::Report::Failure(e.to_string())
            }
            Err(e) => {
                tracing::error!(error = %e, "panicked");
                report_task_request::Report::Failure(format!("task panicked: {e}"))
            }
        };
        // The last commit, and the metric and log lines since the last tick, go out before the
        // result.
        let step = committed.load(Ordering::Relaxed);
        if step != reported_commit {
            self.commit_checkpoint(&task, step).await;
        }
        let last_metrics = take_metrics();
        let last_logs = task_log::stop();
        if !last_metrics.is_empty() || !last_logs.is_empty() {
            let fraction = f64::from_bits(progress.load(Ordering::Relaxed));
            let progress = report_task_request::Report::Progress(TaskProgress {
                fraction,
                message: String::new(),
                metrics: last_metrics,
                logs: last_logs,
            });
            let _ = self.report(&task, progress).await;
        }
        // The final report is retried until the lease would have run out.
        let give_up = tokio::time::Instant::now() + self.lease * 3;
        loop {
            match self.report_final(&task, report.clone(), kind).await {
                Ok(accepted) => {
                    if !accepted {
                        tracing::warn!("result rejected (stale attempt)");
                    }
                    break;
                }
                Err(status) if tokio::time::Instant::now() < give_up => {
                    tracing::warn!(error = %status.message(), "cannot report; retrying");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(_) => return Some(SessionEnd::Lost),
            }
        }
        shutting_down.then_some(SessionEnd::Shutdown)
    }

    /// Tells the coordinator that the checkpoint of `step` is committed (best effort: the
    /// checkpoint is in storage either way, and resume finds it there).
    async fn commit_checkpoint(&mut self, task: &Task, step: u64) {
        let request = CommitCheckpointRequest {
            worker_id: self.worker_id.clone(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            step,
        };
        if let Err(status) = self.client.commit_checkpoint(request).await {
            tracing::warn!(step, error = %status.message(), "cannot record the checkpoint");
        }
    }

    async fn report(
        &mut self,
        task: &Task,
        report: report_task_request::Report,
    ) -> Result<bool, tonic::Status> {
        self.report_final(task, report, FailureKind::default())
            .await
    }

    /// A report; with a failure, `kind` says whether it is the gang's rather than the task's,
    /// and whether it is transient.
    async fn report_final(
        &mut self,
        task: &Task,
        report: report_task_request::Report,
        kind: FailureKind,
    ) -> Result<bool, tonic::Status> {
        let request = ReportTaskRequest {
            worker_id: self.worker_id.clone(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            report: Some(report),
            gang_broken: kind.gang_broken,
            transient: kind.transient,
        };
        Ok(self
            .client
            .report_task(request)
            .await?
            .into_inner()
            .accepted)
    }
}

/// How long one heartbeat may wait for its answer: a lease, and at least
/// [`HEARTBEAT_DEADLINE_FLOOR`] — the coordinator renews the lease when the heartbeat arrives,
/// not when it answers, so a slow answer (a loaded coordinator with a short lease) is no reason
/// to give the lease up.
fn heartbeat_deadline(lease: Duration) -> Duration {
    lease.max(HEARTBEAT_DEADLINE_FLOOR)
}

const HEARTBEAT_DEADLINE_FLOOR: Duration = Duration::from_secs(5);

/// Heartbeats every `every` until the lease is lost: the coordinator no longer knows this
/// worker, or no heartbeat has been answered for `lease` (each one waiting at most `deadline`).
async fn heartbeat_loop(
    mut client: CoordinatorRpc,
    worker_id: String,
    every: Duration,
    lease: Duration,
    deadline: Duration,
    running: watch::Receiver<Option<TaskRef>>,
    state: watch::Sender<HeartbeatState>,
) {
    let mut last_ok = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let request = HeartbeatRequest {
            worker_id: worker_id.clone(),
            running: running.borrow().iter().cloned().collect(),
        };
        // A heartbeat left unanswered fails like a refused one: waiting on would leave the
        // worker attached to a coordinator that stopped answering.
        let answer = match tokio::time::timeout(deadline, client.heartbeat(request)).await {
            Ok(answer) => answer,
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "no answer within {} ms",
                deadline.as_millis()
            ))),
        };
        match answer {
            Ok(r) => {
                let r = r.into_inner();
                last_ok = tokio::time::Instant::now();
                if !r.known {
                    state.send_replace(HeartbeatState {
                        lost: true,
                        cancel: vec![],
                    });
                    return;
                }
                if !r.cancel.is_empty() {
                    state.send_replace(HeartbeatState {
                        lost: false,
                        cancel: r.cancel,
                    });
                }
            }
            Err(status) => {
                tracing::warn!(error = %status.message(), "heartbeat failed");
                if last_ok.elapsed() > lease {
                    state.send_replace(HeartbeatState {
                        lost: true,
                        cancel: vec![],
                    });
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "poll_tests.rs"]
mod poll_tests;
