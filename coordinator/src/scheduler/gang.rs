//! Gangs: all-or-nothing assignment of a W-rank task to workers that are polling, the
//! rendezvous through which the ranks learn each other's endpoints, the end of an epoch when a
//! member is lost, and what `status` shows of each gang.

use std::time::{Duration, Instant};

use mirrorplay_proto::v1::{GangStatus, Task};

use super::retry::{requeue, RetryPolicy, Stopped};
use super::{release, Entry, Inner, Lost, Rejected, Scheduler, TaskState};

/// One rank of a gang as the rendezvous hands it out.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub rank: u32,
    pub worker_id: String,
    pub worker_name: String,
    pub endpoint: Vec<u8>,
}

/// The state of a rendezvous for one rank.
#[derive(Debug, Clone, PartialEq)]
pub enum Joined {
    /// Every rank of the epoch has joined: members by rank.
    Complete { epoch: u32, members: Vec<Member> },
    /// Some ranks have not joined yet.
    Waiting,
}

/// Ranks the gang needs to start: its full size the first time (in this run of its job),
/// `min_group_size` after a loss.
fn required(entry: &Entry) -> usize {
    if entry.task.attempt <= entry.first_attempt {
        entry.task.group_size as usize
    } else {
        entry.min_group_size as usize
    }
}

/// Idle workers (a free slot, nothing pending) that polled within `fresh`, in registration
/// order.
fn candidates(inner: &Inner, fresh: Duration) -> Vec<String> {
    let now = Instant::now();
    let mut free: Vec<(&u64, &String)> = inner
        .workers
        .iter()
        .filter(|(_, w)| {
            (w.running.len() as u32) < w.slots
                && w.pending.is_empty()
                && w.last_poll.is_some_and(|t| now.duration_since(t) <= fresh)
        })
        .map(|(id, w)| (&w.order, id))
        .collect();
    free.sort();
    free.into_iter().map(|(_, id)| id.clone()).collect()
}

pub(super) fn can_form(inner: &Inner, entry: &Entry, fresh: Duration) -> bool {
    candidates(inner, fresh).len() >= required(entry)
}

/// Forms the gang of queued task `id` around `caller` (which is among the candidates): up to
/// its group size of polling workers, ranks in registration order. The other members find
/// their rank at their next poll. Returns the caller's task.
pub(super) fn form(inner: &mut Inner, id: &str, caller: &str, fresh: Duration) -> Option<Task> {
    let entry = inner.tasks.get(id)?;
    let size = entry.task.group_size as usize;
    let mut chosen: Vec<String> = vec![caller.to_string()];
    chosen.extend(
        candidates(inner, fresh)
            .into_iter()
            .filter(|w| w != caller)
            .take(size - 1),
    );
    chosen.sort_by_key(|w| inner.workers.get(w).map_or(u64::MAX, |w| w.order));
    let entry = inner.tasks.get_mut(id)?;
    entry.state = TaskState::Running {
        workers: chosen.clone(),
    };
    entry.progress = 0.0;
    entry.endpoints = vec![None; chosen.len()];
    entry.done.clear();
    let template = entry.task.clone();
    let mut mine = None;
    for (rank, worker_id) in chosen.iter().enumerate() {
        let mut task = template.clone();
        task.group_size = chosen.len() as u32;
        task.rank = rank as u32;
        let worker = inner.workers.get_mut(worker_id)?;
        worker.running.insert(id.to_string());
        if worker_id == caller {
            mine = Some(task);
        } else {
            worker.pending.push_back(task);
        }
    }
    tracing::info!(task_id = id, attempt = template.attempt, ranks = ?chosen, "gang formed");
    mine
}

pub(super) fn rank_of(entry: &Entry, worker_id: &str) -> Option<u32> {
    match &entry.state {
        TaskState::Running { workers } => workers
            .iter()
            .position(|w| w == worker_id)
            .map(|r| r as u32),
        TaskState::Queued => None,
    }
}

/// Ends the current epoch of gang `task_id`: every member is released (they learn it through
/// their heartbeat) and the task is queued again with the next attempt, or given up.
pub(super) fn end(
    inner: &mut Inner,
    policy: &RetryPolicy,
    task_id: &str,
    stopped: Stopped<'_>,
) -> Option<Lost> {
    let entry = inner.tasks.get_mut(task_id)?;
    let members = match std::mem::replace(&mut entry.state, TaskState::Queued) {
        TaskState::Running { workers } => workers,
        TaskState::Queued => vec![],
    };
    entry.endpoints.clear();
    entry.done.clear();
    entry.last_restart = stopped.reason.clone();
    for w in &members {
        release(inner, w, task_id);
    }
    requeue(inner, policy, task_id, stopped)
}

impl Scheduler {
    /// Records rank `rank`'s endpoint (when given) for the current epoch of `task_id` and says
    /// whether the gang is complete. A rank of another epoch, or a worker that is not that
    /// rank, is refused.
    pub fn join_group(
        &self,
        worker_id: &str,
        task_id: &str,
        attempt: u32,
        rank: u32,
        endpoint: Option<Vec<u8>>,
    ) -> Result<Joined, Rejected> {
        let mut guard = self.lock();
        self.check_report(&guard, worker_id, task_id, attempt)?;
        let inner = &mut *guard;
        let workers_by_id = &inner.workers;
        let entry = inner.tasks.get_mut(task_id).ok_or(Rejected::UnknownTask)?;
        if rank_of(entry, worker_id) != Some(rank) {
            return Err(Rejected::NotAssignee);
        }
        let slot = entry
            .endpoints
            .get_mut(rank as usize)
            .ok_or(Rejected::NotAssignee)?;
        let newly = slot.is_none() && endpoint.is_some();
        if let Some(endpoint) = endpoint {
            *slot = Some(endpoint);
        }
        let complete = entry.endpoints.iter().all(Option::is_some);
        let joined = if complete {
            let TaskState::Running { workers } = &entry.state else {
                return Err(Rejected::UnknownTask);
            };
            let members = workers
                .iter()
                .zip(&entry.endpoints)
                .enumerate()
                .map(|(r, (w, e))| Member {
                    rank: r as u32,
                    worker_id: w.clone(),
                    worker_name: workers_by_id
                        .get(w)
                        .map(|w| w.name.clone())
                        .unwrap_or_default(),
                    endpoint: e.clone().unwrap_or_default(),
                })
                .collect();
            let epoch = entry.task.attempt;
            Joined::Complete { epoch, members }
        } else {
            Joined::Waiting
        };
        drop(guard);
        if newly {
            self.gangs.notify_waiters();
        }
        Ok(joined)
    }

    /// Wakes JoinGroup waiters when a rank joins or a gang ends; enable it before checking.
    pub fn gang_notifier(&self) -> &tokio::sync::Notify {
        &self.gangs
    }

    /// What `status` shows of the job's gangs.
    pub fn gang_status(&self, job_id: &str) -> Vec<GangStatus> {
        let inner = self.lock();
        let free = candidates(&inner, self.poll_freshness()).len();
        let mut out: Vec<GangStatus> = inner
            .tasks
            .values()
            .filter(|e| e.task.job_id == job_id && e.is_gang())
            .map(|e| {
                let (workers, waiting) = match &e.state {
                    TaskState::Running { workers } => (
                        workers
                            .iter()
                            .map(|w| {
                                inner
                                    .workers
                                    .get(w)
                                    .map(|w| w.name.clone())
                                    .unwrap_or_else(|| w.clone())
                            })
                            .collect(),
                        String::new(),
                    ),
                    TaskState::Queued => (
                        vec![],
                        format!("waiting for {} workers, {free} free", required(e)),
                    ),
                };
                GangStatus {
                    task_id: e.task.task_id.clone(),
                    attempt: e.task.attempt,
                    world_size: match &e.state {
                        TaskState::Running { workers } => workers.len() as u32,
                        TaskState::Queued => e.task.group_size,
                    },
                    workers,
                    waiting,
                    last_restart: e.last_restart.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        out
    }
}
