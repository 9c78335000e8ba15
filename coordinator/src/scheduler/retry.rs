//! The failure policy of tasks (docs/architecture.md#failure-policy). A task whose worker was
//! lost, whose gang broke, or that failed with a transient error (store I/O) is queued again
//! with the next attempt after a backoff, until it has failed `max_retries + 1` times: then its
//! job fails. A task handed back by a worker that was asked to stop (SIGTERM) is queued again at
//! once and does not count as a failure. Any other failure (invalid spec, bad input) fails the
//! job at once, in `Scheduler::fail`.

use std::time::{Duration, Instant};

use super::{Inner, Lost, TaskState};

/// How failed tasks are retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Failures a task survives; the next one fails its job.
    pub max_retries: u32,
    /// The delay before the first retry; it doubles with each further retry, up to
    /// `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 4,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1-based).
    pub fn delay(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(20);
        self.backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff)
    }
}

/// Why a task is queued again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Its worker was asked to stop and handed it back: not a failure.
    HandedBack,
    /// Its worker lost its lease (or left without handing it back).
    LostWorker,
    /// It failed with a transient error.
    Transient,
    /// A member of its gang was lost or failed.
    GangBroken,
}

impl Cause {
    pub const ALL: [Cause; 4] = [
        Cause::HandedBack,
        Cause::LostWorker,
        Cause::Transient,
        Cause::GangBroken,
    ];

    /// The label of the cause in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Cause::HandedBack => "handed_back",
            Cause::LostWorker => "lost_worker",
            Cause::Transient => "transient_error",
            Cause::GangBroken => "gang_broken",
        }
    }

    fn is_failure(self) -> bool {
        self != Cause::HandedBack
    }
}

/// What happened to one task: who ran it and why it stopped.
pub(super) struct Stopped<'a> {
    pub cause: Cause,
    pub worker: &'a str,
    pub reason: String,
}

/// Queues task `id` again (its state must already be released by the caller) with the next
/// attempt, after the policy's backoff when it failed; or gives up when it has failed too
/// often (or been tried `MAX_ATTEMPTS` times in this run).
pub(super) fn requeue(
    inner: &mut Inner,
    policy: &RetryPolicy,
    id: &str,
    stopped: Stopped<'_>,
) -> Option<Lost> {
    let entry = inner.tasks.get_mut(id)?;
    let Stopped {
        cause,
        worker,
        reason,
    } = stopped;
    let job_id = entry.task.job_id.clone();
    if cause.is_failure() {
        entry.failures += 1;
    }
    if entry.failures > policy.max_retries || entry.out_of_attempts() {
        let failures = entry.failures;
        inner.tasks.remove(id);
        inner.queue.retain(|q| q != id);
        return Some(Lost::GaveUp {
            job_id,
            task_id: id.to_string(),
            failures,
            worker: worker.to_string(),
            reason,
        });
    }
    let (retry, delay) = if cause.is_failure() {
        (entry.failures, policy.delay(entry.failures))
    } else {
        (0, Duration::ZERO)
    };
    entry.task.attempt += 1;
    entry.state = TaskState::Queued;
    entry.progress = 0.0;
    entry.not_before = (!delay.is_zero()).then(|| Instant::now() + delay);
    let attempt = entry.task.attempt;
    inner.queue.retain(|q| q != id);
    inner.queue.push_front(id.to_string());
    Some(Lost::Requeued {
        job_id,
        task_id: id.to_string(),
        attempt,
        cause,
        worker: worker.to_string(),
        reason,
        retry,
        delay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_the_base_up_to_the_cap() {
        let p = RetryPolicy {
            max_retries: 10,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(700),
        };
        let delays: Vec<u64> = (1..=5).map(|r| p.delay(r).as_millis() as u64).collect();
        assert_eq!(delays, vec![100, 200, 400, 700, 700]);
        assert_eq!(p.delay(u32::MAX), Duration::from_millis(700));
    }
}
