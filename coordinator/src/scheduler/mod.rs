//! Tasks, workers and leases. Knows nothing about gRPC or job kinds: it queues tasks, hands
//! them to live workers, fences reports from stale attempts and re-issues the tasks of workers
//! whose lease ran out.
//!
//! A task with `group_size` W > 1 is a **gang** (data-parallel training): it is assigned all or
//! nothing to W workers that are polling at that moment, each getting the same task id and
//! attempt with its own rank; the attempt is the gang's epoch. Losing any member (lease, a
//! failure that says the gang broke, a hand-back) ends the epoch for all of them: the task is
//! queued again with attempt + 1 and the other members are told through their heartbeat. Gang
//! formation, rendezvous and status live in `gang.rs`; the failure policy (retries with
//! backoff) in `retry.rs`.

mod gang;
mod retry;
mod stranded;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use mirrorplay_proto::v1::{Task, TaskRef};
use tokio::sync::Notify;

pub use gang::{Joined, Member};
pub use retry::{Cause, RetryPolicy};

use retry::{requeue, Stopped};

/// A task is issued at most this many times in one run of its job (failures, limited further
/// by the retry policy, and hand-backs together); each resume or restart of a job starts its
/// attempt numbers this much higher, so attempts of different runs never meet.
pub const MAX_ATTEMPTS: u32 = 64;

#[derive(Debug)]
struct Worker {
    name: String,
    slots: u32,
    /// Registration order, for deterministic rank assignment.
    order: u64,
    last_seen: Instant,
    /// The last time this worker asked for a task (it is idle and polling when recent).
    last_poll: Option<Instant>,
    running: BTreeSet<String>,
    /// Gang ranks assigned to this worker but not yet handed over by a poll.
    pending: VecDeque<Task>,
    /// Tasks in `running` that this worker's heartbeats have not listed, since when
    /// (`stranded.rs`).
    unlisted: HashMap<String, Instant>,
}

#[derive(Debug, Clone, PartialEq)]
enum TaskState {
    Queued,
    /// Worker ids by rank (one for an independent task).
    Running {
        workers: Vec<String>,
    },
}

#[derive(Debug)]
struct Entry {
    task: Task,
    state: TaskState,
    progress: f64,
    /// At most this many distinct workers may run the job's tasks at once (0 = no limit).
    job_worker_limit: u32,
    /// Gangs: the fewest ranks a re-formed gang starts with.
    min_group_size: u32,
    /// Gangs: endpoints announced through JoinGroup in this epoch, by rank.
    endpoints: Vec<Option<Vec<u8>>>,
    /// Gangs: ranks that finished successfully in this epoch.
    done: BTreeSet<u32>,
    /// Why the previous epoch ended (empty for the first).
    last_restart: String,
    /// The attempt the task was queued with (a resumed job starts above earlier runs).
    first_attempt: u32,
    /// Failures so far (hand-backs are not failures).
    failures: u32,
    /// A retry waits for its backoff: not assigned before this.
    not_before: Option<Instant>,
}

impl Entry {
    fn is_gang(&self) -> bool {
        self.task.group_size > 1
    }

    /// True once the task has been tried MAX_ATTEMPTS times in this run of its job.
    fn out_of_attempts(&self) -> bool {
        self.task.attempt + 1 - self.first_attempt >= MAX_ATTEMPTS
    }

    /// False while a retry waits for its backoff.
    fn ready(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| t <= now)
    }

    fn runs_on(&self, worker_id: &str) -> bool {
        matches!(&self.state, TaskState::Running { workers } if workers.iter().any(|w| w == worker_id))
    }
}

/// What happened to a task that stopped without a result: its worker (or one of its gang)
/// went away, handed it back, or it failed with a transient error.
#[derive(Debug, Clone, PartialEq)]
pub enum Lost {
    /// Queued again with a new attempt number.
    Requeued {
        job_id: String,
        task_id: String,
        attempt: u32,
        cause: Cause,
        /// The worker that ran it (a gang: the member that was lost or failed).
        worker: String,
        /// Why: the worker that was lost, the failure, or why the gang ended.
        reason: String,
        /// The retry this is (1-based); 0 for a hand-back, which is not a failure.
        retry: u32,
        /// The backoff before it may be assigned.
        delay: Duration,
    },
    /// Failed too often: the job should fail.
    GaveUp {
        job_id: String,
        task_id: String,
        failures: u32,
        worker: String,
        /// Why the last attempt failed.
        reason: String,
    },
}

/// The scheduler's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    /// Tasks the worker lists that are no longer its own: the worker cancels them.
    pub cancel: Vec<TaskRef>,
    /// Tasks assigned to the worker that it has not listed for longer than the lease: an
    /// assignment it never received (a poll reply lost on the way), re-issued, not a failure.
    pub handed_back: Vec<Lost>,
}

/// Why a report was not accepted.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejected {
    UnknownTask,
    StaleAttempt { current: u32 },
    NotAssignee,
}

/// An accepted successful report.
#[derive(Debug, Clone, PartialEq)]
pub enum Finished {
    /// The task is complete (an independent task, or rank 0 of a gang): its result counts.
    Task(Box<Task>),
    /// A gang rank other than 0 finished; the task completes with rank 0's report.
    Rank,
}

/// An accepted failure report.
#[derive(Debug, Clone, PartialEq)]
pub enum Failed {
    /// The task failed for good: the job fails.
    Task(Box<Task>),
    /// A transient failure, or the gang broke: the task was queued again (or gave up).
    Again(Lost),
}

pub struct Scheduler {
    inner: std::sync::Mutex<Inner>,
    /// Wakes long-polling workers when tasks are queued or gang ranks assigned.
    queued: Notify,
    /// Wakes JoinGroup calls when a rank joins or a gang ends.
    gangs: Notify,
    pub lease: Duration,
    pub retry: RetryPolicy,
}

#[derive(Default)]
struct Inner {
    workers: HashMap<String, Worker>,
    tasks: HashMap<String, Entry>,
    queue: VecDeque<String>,
    next_worker: u64,
}

impl Scheduler {
    #[cfg(test)]
    pub fn new(lease: Duration) -> Self {
        Scheduler::with_retry(lease, RetryPolicy::default())
    }

    pub fn with_retry(lease: Duration, retry: RetryPolicy) -> Self {
        Scheduler {
            inner: Default::default(),
            queued: Notify::new(),
            gangs: Notify::new(),
            lease,
            retry,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("scheduler lock")
    }

    pub fn register(&self, name: &str, slots: u32) -> String {
        let mut inner = self.lock();
        inner.next_worker += 1;
        let order = inner.next_worker;
        let id = format!("w{order}-{name}");
        inner.workers.insert(
            id.clone(),
            Worker {
                name: name.into(),
                slots: slots.max(1),
                order,
                last_seen: Instant::now(),
                last_poll: None,
                running: BTreeSet::new(),
                pending: VecDeque::new(),
                unlisted: HashMap::new(),
            },
        );
        id
    }

    /// Renews the lease. Returns None for an unknown worker, else the tasks it reports
    /// running that are no longer its own (to cancel) and the tasks it was assigned but has
    /// not listed for longer than the lease, handed back (`stranded.rs`).
    pub fn heartbeat(&self, worker_id: &str, running: &[TaskRef]) -> Option<Heartbeat> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let now = Instant::now();
        let worker = inner.workers.get_mut(worker_id)?;
        worker.last_seen = now;
        let stranded_ids = stranded::note_listed(worker, running, now, self.lease);
        let cancel = running
            .iter()
            .filter(|r| match inner.tasks.get(&r.task_id) {
                Some(e) => e.task.attempt != r.attempt || !e.runs_on(worker_id),
                None => true,
            })
            .cloned()
            .collect();
        let mut handed_back = Vec::new();
        for id in stranded_ids {
            let name = worker_label(inner, worker_id);
            let Some(entry) = inner.tasks.get(&id) else {
                continue;
            };
            let stopped = Stopped {
                cause: Cause::HandedBack,
                worker: &name,
                reason: format!(
                    "worker `{name}` was assigned it but has not listed it in its heartbeats \
                     for {:.1} s (it never received the assignment)",
                    self.lease.as_secs_f64()
                ),
            };
            if entry.is_gang() {
                handed_back.extend(gang::end(inner, &self.retry, &id, stopped));
            } else {
                release(inner, worker_id, &id);
                handed_back.extend(requeue(inner, &self.retry, &id, stopped));
            }
        }
        drop(guard);
        if !handed_back.is_empty() {
            self.wake_all();
        }
        Some(Heartbeat {
            cancel,
            handed_back,
        })
    }

    /// Renews the lease of a worker that is polling (not a heartbeat: it lists nothing).
    pub fn renew(&self, worker_id: &str) {
        if let Some(w) = self.lock().workers.get_mut(worker_id) {
            w.last_seen = Instant::now();
        }
    }

    pub fn is_known(&self, worker_id: &str) -> bool {
        self.lock().workers.contains_key(worker_id)
    }

    pub fn worker_name(&self, worker_id: &str) -> Option<String> {
        self.lock().workers.get(worker_id).map(|w| w.name.clone())
    }

    /// Workers registered now.
    pub fn worker_count(&self) -> usize {
        self.lock().workers.len()
    }

    /// Adds tasks (attempt 1) to the queue. A gang's `min_group_size` (0 = its group size)
    /// bounds how small a re-formed gang may be.
    pub fn enqueue(&self, tasks: Vec<(Task, u32)>, job_worker_limit: u32) {
        let mut inner = self.lock();
        for (mut task, min_group_size) in tasks {
            task.attempt = task.attempt.max(1);
            let first_attempt = task.attempt;
            task.group_size = task.group_size.max(1);
            let min_group_size = match min_group_size {
                0 => task.group_size,
                m => m.min(task.group_size),
            };
            let id = task.task_id.clone();
            inner.queue.push_back(id.clone());
            inner.tasks.insert(
                id,
                Entry {
                    task,
                    state: TaskState::Queued,
                    progress: 0.0,
                    job_worker_limit,
                    min_group_size,
                    endpoints: vec![],
                    done: BTreeSet::new(),
                    last_restart: String::new(),
                    first_attempt,
                    failures: 0,
                    not_before: None,
                },
            );
        }
        drop(inner);
        self.queued.notify_waiters();
    }

    /// Hands the worker a task: a gang rank already assigned to it, else the first eligible
    /// queued task (forming a gang from polling workers when that task is one), if it has a
    /// free slot. Each call also marks the worker as polling.
    pub fn assign(&self, worker_id: &str) -> Option<Task> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let worker = inner.workers.get_mut(worker_id)?;
        let now = Instant::now();
        worker.last_seen = now;
        worker.last_poll = Some(now);
        if let Some(task) = worker.pending.pop_front() {
            return Some(task);
        }
        if worker.running.len() as u32 >= worker.slots {
            return None;
        }
        let fresh = self.poll_freshness();
        let position = inner.queue.iter().position(|id| {
            let Some(entry) = inner.tasks.get(id) else {
                return false;
            };
            if !entry.ready(now) {
                return false;
            }
            if entry.is_gang() {
                return gang::can_form(inner, entry, fresh);
            }
            if entry.job_worker_limit == 0 {
                return true;
            }
            let job = &entry.task.job_id;
            let mut holders = BTreeSet::new();
            let mut mine = false;
            for e in inner.tasks.values().filter(|e| &e.task.job_id == job) {
                if let TaskState::Running { workers } = &e.state {
                    mine |= workers.iter().any(|w| w == worker_id);
                    holders.extend(workers.iter().cloned());
                }
            }
            mine || (holders.len() as u32) < entry.job_worker_limit
        })?;
        let id = inner.queue.remove(position)?;
        let task = if inner.tasks.get(&id)?.is_gang() {
            let task = gang::form(inner, &id, worker_id, fresh);
            self.queued.notify_waiters();
            task
        } else {
            let entry = inner.tasks.get_mut(&id)?;
            entry.state = TaskState::Running {
                workers: vec![worker_id.to_string()],
            };
            entry.progress = 0.0;
            inner.workers.get_mut(worker_id)?.running.insert(id);
            Some(entry.task.clone())
        };
        task
    }

    /// A worker that asked for a task within this long is idle and polling (the poll loop
    /// asks at least every lease/4).
    fn poll_freshness(&self) -> Duration {
        (self.lease / 2).max(Duration::from_millis(100))
    }

    /// Creates a future that completes on the next enqueue; enable it before checking the queue.
    pub fn queued_notifier(&self) -> &Notify {
        &self.queued
    }

    fn check_report(
        &self,
        inner: &Inner,
        worker_id: &str,
        task_id: &str,
        attempt: u32,
    ) -> Result<(), Rejected> {
        let entry = inner.tasks.get(task_id).ok_or(Rejected::UnknownTask)?;
        if entry.task.attempt != attempt {
            return Err(Rejected::StaleAttempt {
                current: entry.task.attempt,
            });
        }
        if !entry.runs_on(worker_id) {
            return Err(Rejected::NotAssignee);
        }
        Ok(())
    }

    /// The job of a current task run by `worker_id` (a report from a stale attempt or another
    /// worker is rejected).
    pub fn job_of(&self, worker_id: &str, task_id: &str, attempt: u32) -> Result<String, Rejected> {
        let inner = self.lock();
        self.check_report(&inner, worker_id, task_id, attempt)?;
        inner
            .tasks
            .get(task_id)
            .map(|e| e.task.job_id.clone())
            .ok_or(Rejected::UnknownTask)
    }

    pub fn progress(
        &self,
        worker_id: &str,
        task_id: &str,
        attempt: u32,
        fraction: f64,
    ) -> Result<String, Rejected> {
        let mut inner = self.lock();
        self.check_report(&inner, worker_id, task_id, attempt)?;
        if let Some(w) = inner.workers.get_mut(worker_id) {
            w.last_seen = Instant::now();
        }
        let entry = inner.tasks.get_mut(task_id).ok_or(Rejected::UnknownTask)?;
        // A gang's ranks advance together; rank 0's view is as good as any.
        entry.progress = fraction.clamp(0.0, 1.0);
        Ok(entry.task.job_id.clone())
    }

    /// Accepts a successful final report. An independent task, or rank 0 of a gang, leaves
    /// the scheduler (every member is released); another rank only releases its worker.
    pub fn finish(
        &self,
        worker_id: &str,
        task_id: &str,
        attempt: u32,
    ) -> Result<Finished, Rejected> {
        let mut inner = self.lock();
        self.check_report(&inner, worker_id, task_id, attempt)?;
        let entry = inner.tasks.get_mut(task_id).ok_or(Rejected::UnknownTask)?;
        let rank = gang::rank_of(entry, worker_id).unwrap_or(0);
        if entry.is_gang() && rank != 0 {
            entry.done.insert(rank);
            release(&mut inner, worker_id, task_id);
            return Ok(Finished::Rank);
        }
        let entry = inner.tasks.remove(task_id).ok_or(Rejected::UnknownTask)?;
        if let TaskState::Running { workers } = &entry.state {
            for w in workers {
                release(&mut inner, w, task_id);
            }
        }
        Ok(Finished::Task(Box::new(entry.task)))
    }

    /// Accepts a failure report. A gang rank whose failure says the gang broke ends the epoch,
    /// and a transient failure stops the task: either is queued again after a backoff (or gives
    /// up, past the retry limit). Any other failure fails the task for good.
    pub fn fail(
        &self,
        worker_id: &str,
        task_id: &str,
        attempt: u32,
        kind: FailureKind,
        message: &str,
    ) -> Result<Failed, Rejected> {
        let mut inner = self.lock();
        self.check_report(&inner, worker_id, task_id, attempt)?;
        let entry = inner.tasks.get(task_id).ok_or(Rejected::UnknownTask)?;
        let is_gang = entry.is_gang();
        let members = match &entry.state {
            TaskState::Running { workers } => workers.clone(),
            TaskState::Queued => vec![],
        };
        let name = worker_label(&inner, worker_id);
        let cause = match kind {
            FailureKind::GangBroken if is_gang => Some(Cause::GangBroken),
            FailureKind::Transient => Some(Cause::Transient),
            _ => None,
        };
        let again = cause.map(|cause| {
            let reason = if is_gang {
                format!("rank on `{name}`: {message}")
            } else {
                message.to_string()
            };
            let stopped = Stopped {
                cause,
                worker: &name,
                reason,
            };
            if is_gang {
                gang::end(&mut inner, &self.retry, task_id, stopped)
            } else {
                for w in &members {
                    release(&mut inner, w, task_id);
                }
                requeue(&mut inner, &self.retry, task_id, stopped)
            }
        });
        if let Some(lost) = again {
            drop(inner);
            self.wake_all();
            return lost.map(Failed::Again).ok_or(Rejected::UnknownTask);
        }
        let entry = inner.tasks.remove(task_id).ok_or(Rejected::UnknownTask)?;
        if let TaskState::Running { workers } = &entry.state {
            for w in workers {
                release(&mut inner, w, task_id);
            }
        }
        drop(inner);
        self.gangs.notify_waiters();
        Ok(Failed::Task(Box::new(entry.task)))
    }

    /// Drops every task of a job (cancelled or failed); running ones are cancelled at the
    /// worker's next heartbeat.
    pub fn drop_job(&self, job_id: &str) {
        let mut inner = self.lock();
        let ids: Vec<String> = inner
            .tasks
            .iter()
            .filter(|(_, e)| e.task.job_id == job_id)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            inner.tasks.remove(id);
        }
        inner.queue.retain(|id| !ids.contains(id));
        for w in inner.workers.values_mut() {
            w.running.retain(|id| !ids.contains(id));
            w.pending.retain(|t| !ids.contains(&t.task_id));
            w.unlisted.retain(|id, _| !ids.contains(id));
        }
        drop(inner);
        self.gangs.notify_waiters();
    }

    /// Removes a worker and re-issues its tasks. A worker that left on its own (`Deregister`,
    /// `handed_back`: it was asked to stop) hands every task it held back: re-issued at once,
    /// not a failure. That includes a task assigned while its poll was in flight, which the
    /// worker never saw and so cannot list as returned. A worker whose lease ran out lost its
    /// tasks: failures, re-issued after a backoff. A gang it belonged to ends for every member.
    pub fn remove_worker(&self, worker_id: &str, why: &str, handed_back: bool) -> Vec<Lost> {
        let mut inner = self.lock();
        let Some(worker) = inner.workers.remove(worker_id) else {
            return vec![];
        };
        let mut lost = Vec::new();
        for id in worker.running {
            let Some(entry) = inner.tasks.get(&id) else {
                continue;
            };
            let (cause, reason) = if handed_back {
                (
                    Cause::HandedBack,
                    format!("worker `{}` handed it back", worker.name),
                )
            } else {
                (Cause::LostWorker, format!("worker `{}` {why}", worker.name))
            };
            let stopped = Stopped {
                cause: if entry.is_gang() && !handed_back {
                    Cause::GangBroken
                } else {
                    cause
                },
                worker: &worker.name,
                reason,
            };
            if entry.is_gang() {
                lost.extend(gang::end(&mut inner, &self.retry, &id, stopped));
            } else {
                lost.extend(requeue(&mut inner, &self.retry, &id, stopped));
            }
        }
        drop(inner);
        self.wake_all();
        lost
    }

    fn wake_all(&self) {
        self.queued.notify_waiters();
        self.gangs.notify_waiters();
    }

    /// Workers whose lease has run out.
    pub fn expired_workers(&self) -> Vec<String> {
        let inner = self.lock();
        inner
            .workers
            .iter()
            .filter(|(_, w)| w.last_seen.elapsed() > self.lease)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Tasks queued (waiting for a worker or a retry's backoff) and running, over all jobs.
    pub fn task_counts(&self) -> (u64, u64) {
        let inner = self.lock();
        let running = inner
            .tasks
            .values()
            .filter(|e| matches!(e.state, TaskState::Running { .. }))
            .count() as u64;
        (inner.tasks.len() as u64 - running, running)
    }

    /// (queued, running, summed progress of running tasks) for a job.
    pub fn job_counts(&self, job_id: &str) -> (u64, u64, f64) {
        let inner = self.lock();
        let mut queued = 0;
        let mut running = 0;
        let mut progress = 0.0;
        for e in inner.tasks.values().filter(|e| e.task.job_id == job_id) {
            match e.state {
                TaskState::Queued => queued += 1,
                TaskState::Running { .. } => {
                    running += 1;
                    progress += e.progress;
                }
            }
        }
        (queued, running, progress)
    }
}

/// How a failure report says the task failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The task failed for good (bad input, invalid task): the job fails.
    Final,
    /// A transient error (store I/O): retried.
    Transient,
    /// A gang rank whose gang broke (a peer died, timed out or left): the gang re-forms.
    GangBroken,
}

/// Frees `worker_id`'s slot (and any undelivered rank) of `task_id`.
fn release(inner: &mut Inner, worker_id: &str, task_id: &str) {
    if let Some(w) = inner.workers.get_mut(worker_id) {
        w.running.remove(task_id);
        w.pending.retain(|t| t.task_id != task_id);
        w.unlisted.remove(task_id);
        w.last_seen = Instant::now();
    }
}

fn worker_label(inner: &Inner, worker_id: &str) -> String {
    inner
        .workers
        .get(worker_id)
        .map(|w| w.name.clone())
        .unwrap_or_else(|| worker_id.to_string())
}

#[cfg(test)]
mod tests;
