//! Tasks, workers and leases. Knows nothing about gRPC or job kinds: it queues tasks, hands
//! them to live workers, fences reports from stale attempts and re-issues the tasks of workers
//! whose lease ran out.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use mirrorplay_proto::v1::{Task, TaskRef};
use tokio::sync::Notify;

/// A task is re-issued at most this many times after losing its worker.
pub const MAX_ATTEMPTS: u32 = 8;

#[derive(Debug)]
struct Worker {
    name: String,
    slots: u32,
    last_seen: Instant,
    running: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum TaskState {
    Queued,
    Running { worker: String },
}

#[derive(Debug)]
struct Entry {
    task: Task,
    state: TaskState,
    progress: f64,
    /// At most this many distinct workers may run the job's tasks at once (0 = no limit).
    job_worker_limit: u32,
}

/// What happened to a task when its worker went away.
#[derive(Debug, Clone, PartialEq)]
pub enum Lost {
    /// Queued again with a new attempt number.
    Requeued {
        job_id: String,
        task_id: String,
        attempt: u32,
        worker: String,
    },
    /// Lost too many times: the job should fail.
    GaveUp {
        job_id: String,
        task_id: String,
        attempts: u32,
    },
}

/// Why a report was not accepted.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejected {
    UnknownTask,
    StaleAttempt { current: u32 },
    NotAssignee,
}

pub struct Scheduler {
    inner: std::sync::Mutex<Inner>,
    /// Wakes long-polling workers when tasks are queued.
    queued: Notify,
    pub lease: Duration,
}

#[derive(Default)]
struct Inner {
    workers: HashMap<String, Worker>,
    tasks: HashMap<String, Entry>,
    queue: VecDeque<String>,
    next_worker: u64,
}

impl Scheduler {
    pub fn new(lease: Duration) -> Self {
        Scheduler {
            inner: Default::default(),
            queued: Notify::new(),
            lease,
        }
    }

    pub fn register(&self, name: &str, slots: u32) -> String {
        let mut inner = self.inner.lock().expect("scheduler lock");
        inner.next_worker += 1;
        let id = format!("w{}-{}", inner.next_worker, name);
        inner.workers.insert(
            id.clone(),
            Worker {
                name: name.into(),
                slots: slots.max(1),
                last_seen: Instant::now(),
                running: BTreeSet::new(),
            },
        );
        id
    }

    /// Renews the lease. Returns None for an unknown worker, else the tasks it reports
    /// running that are no longer its own (to cancel).
    pub fn heartbeat(&self, worker_id: &str, running: &[TaskRef]) -> Option<Vec<TaskRef>> {
        let mut inner = self.inner.lock().expect("scheduler lock");
        let worker = inner.workers.get_mut(worker_id)?;
        worker.last_seen = Instant::now();
        let cancel = running
            .iter()
            .filter(|r| match inner.tasks.get(&r.task_id) {
                Some(e) => {
                    e.task.attempt != r.attempt
                        || e.state
                            != (TaskState::Running {
                                worker: worker_id.to_string(),
                            })
                }
                None => true,
            })
            .cloned()
            .collect();
        Some(cancel)
    }

    pub fn is_known(&self, worker_id: &str) -> bool {
        self.inner
            .lock()
            .expect("scheduler lock")
            .workers
            .contains_key(worker_id)
    }

    pub fn worker_name(&self, worker_id: &str) -> Option<String> {
        self.inner
            .lock()
            .expect("scheduler lock")
            .workers
            .get(worker_id)
            .map(|w| w.name.clone())
    }

    /// Adds tasks (attempt 1) to the queue.
    pub fn enqueue(&self, tasks: Vec<Task>, job_worker_limit: u32) {
        let mut inner = self.inner.lock().expect("scheduler lock");
        for mut task in tasks {
            task.attempt = 1;
            let id = task.task_id.clone();
            inner.queue.push_back(id.clone());
            inner.tasks.insert(
                id,
                Entry {
                    task,
                    state: TaskState::Queued,
                    progress: 0.0,
                    job_worker_limit,
                },
            );
        }
        drop(inner);
        self.queued.notify_waiters();
    }

    /// Hands the first eligible queued task to the worker, if it has a free slot.
    pub fn assign(&self, worker_id: &str) -> Option<Task> {
        let mut inner = self.inner.lock().expect("scheduler lock");
        let inner = &mut *inner;
        let worker = inner.workers.get_mut(worker_id)?;
        worker.last_seen = Instant::now();
        if worker.running.len() as u32 >= worker.slots {
            return None;
        }
        let position = inner.queue.iter().position(|id| {
            let Some(entry) = inner.tasks.get(id) else {
                return false;
            };
            if entry.job_worker_limit == 0 {
                return true;
            }
            let job = &entry.task.job_id;
            let mut holders = BTreeSet::new();
            let mut mine = false;
            for e in inner.tasks.values().filter(|e| &e.task.job_id == job) {
                if let TaskState::Running { worker } = &e.state {
                    mine |= worker == worker_id;
                    holders.insert(worker.clone());
                }
            }
            mine || (holders.len() as u32) < entry.job_worker_limit
        })?;
        let id = inner.queue.remove(position)?;
        let entry = inner.tasks.get_mut(&id)?;
        entry.state = TaskState::Running {
            worker: worker_id.to_string(),
        };
        entry.progress = 0.0;
        inner.workers.get_mut(worker_id)?.running.insert(id);
        Some(entry.task.clone())
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
        if entry.state
            != (TaskState::Running {
                worker: worker_id.to_string(),
            })
        {
            return Err(Rejected::NotAssignee);
        }
        Ok(())
    }

    pub fn progress(
        &self,
        worker_id: &str,
        task_id: &str,
        attempt: u32,
        fraction: f64,
    ) -> Result<String, Rejected> {
        let mut inner = self.inner.lock().expect("scheduler lock");
        self.check_report(&inner, worker_id, task_id, attempt)?;
        if let Some(w) = inner.workers.get_mut(worker_id) {
            w.last_seen = Instant::now();
        }
        let entry = inner.tasks.get_mut(task_id).ok_or(Rejected::UnknownTask)?;
        entry.progress = fraction.clamp(0.0, 1.0);
        Ok(entry.task.job_id.clone())
    }

    /// Accepts a final report (result or failure): the task leaves the scheduler.
    pub fn finish(&self, worker_id: &str, task_id: &str, attempt: u32) -> Result<Task, Rejected> {
        let mut inner = self.inner.lock().expect("scheduler lock");
        self.check_report(&inner, worker_id, task_id, attempt)?;
        if let Some(w) = inner.workers.get_mut(worker_id) {
            w.running.remove(task_id);
            w.last_seen = Instant::now();
        }
        Ok(inner
            .tasks
            .remove(task_id)
            .ok_or(Rejected::UnknownTask)?
            .task)
    }

    /// Drops every task of a job (cancelled or failed); running ones are cancelled at the
    /// worker's next heartbeat.
    pub fn drop_job(&self, job_id: &str) {
        let mut inner = self.inner.lock().expect("scheduler lock");
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
        }
    }

    /// Removes a worker (deregistered or lease expired) and re-issues its tasks.
    pub fn remove_worker(&self, worker_id: &str) -> Vec<Lost> {
        let mut inner = self.inner.lock().expect("scheduler lock");
        let Some(worker) = inner.workers.remove(worker_id) else {
            return vec![];
        };
        let mut lost = Vec::new();
        for id in worker.running {
            let Some(entry) = inner.tasks.get_mut(&id) else {
                continue;
            };
            if entry.task.attempt >= MAX_ATTEMPTS {
                lost.push(Lost::GaveUp {
                    job_id: entry.task.job_id.clone(),
                    task_id: id.clone(),
                    attempts: entry.task.attempt,
                });
                continue;
            }
            entry.task.attempt += 1;
            entry.state = TaskState::Queued;
            entry.progress = 0.0;
            lost.push(Lost::Requeued {
                job_id: entry.task.job_id.clone(),
                task_id: id.clone(),
                attempt: entry.task.attempt,
                worker: worker.name.clone(),
            });
            inner.queue.push_front(id);
        }
        drop(inner);
        self.queued.notify_waiters();
        lost
    }

    /// Workers whose lease has run out.
    pub fn expired_workers(&self) -> Vec<String> {
        let inner = self.inner.lock().expect("scheduler lock");
        inner
            .workers
            .iter()
            .filter(|(_, w)| w.last_seen.elapsed() > self.lease)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// (queued, running, summed progress of running tasks) for a job.
    pub fn job_counts(&self, job_id: &str) -> (u64, u64, f64) {
        let inner = self.inner.lock().expect("scheduler lock");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn task(job: &str, id: &str) -> Task {
        Task {
            task_id: id.into(),
            job_id: job.into(),
            group_size: 1,
            ..Default::default()
        }
    }

    #[test]
    fn lease_loss_requeues_with_a_new_attempt_and_fences_the_old_one() {
        let s = Scheduler::new(Duration::from_millis(10));
        let a = s.register("a", 1);
        let b = s.register("b", 1);
        s.enqueue(vec![task("j", "t1"), task("j", "t2")], 0);
        let t1 = s.assign(&a).unwrap();
        assert_eq!((t1.task_id.as_str(), t1.attempt), ("t1", 1));
        assert!(s.assign(&a).is_none(), "one slot");
        std::thread::sleep(Duration::from_millis(20));
        s.heartbeat(&b, &[]).unwrap();
        assert_eq!(s.expired_workers(), vec![a.clone()]);
        let lost = s.remove_worker(&a);
        assert_eq!(
            lost,
            vec![Lost::Requeued {
                job_id: "j".into(),
                task_id: "t1".into(),
                attempt: 2,
                worker: "a".into()
            }]
        );
        let again = s.assign(&b).unwrap();
        assert_eq!((again.task_id.as_str(), again.attempt), ("t1", 2));
        assert_eq!(
            s.finish(&a, "t1", 1),
            Err(Rejected::StaleAttempt { current: 2 })
        );
        assert_eq!(s.finish(&b, "t1", 2).unwrap().task_id, "t1");
        assert_eq!(s.finish(&b, "t1", 2), Err(Rejected::UnknownTask));
        assert!(s.heartbeat(&a, &[]).is_none(), "a is forgotten");
    }

    #[test]
    fn heartbeat_cancels_tasks_that_are_no_longer_yours_and_job_limits_hold() {
        let s = Scheduler::new(Duration::from_secs(10));
        let a = s.register("a", 1);
        let b = s.register("b", 1);
        s.enqueue(vec![task("j", "t1"), task("j", "t2")], 1);
        let t1 = s.assign(&a).unwrap();
        assert!(s.assign(&b).is_none(), "job limited to one worker");
        s.drop_job("j");
        let cancel = s
            .heartbeat(
                &a,
                &[TaskRef {
                    task_id: t1.task_id.clone(),
                    attempt: 1,
                }],
            )
            .unwrap();
        assert_eq!(cancel.len(), 1);
        assert_eq!(s.job_counts("j"), (0, 0, 0.0));
    }
}
