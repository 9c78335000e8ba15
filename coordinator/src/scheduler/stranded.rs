//! Assignments a worker never received. `assign` marks a task as running on a worker when it
//! answers that worker's poll; if the reply is lost on the way (the worker dropped its poll, a
//! connection broke after the coordinator answered), the worker idles while the scheduler
//! counts its slot as taken, its heartbeats keep the lease fresh, and nothing would re-issue
//! the task: the job stalls. A worker lists the task it runs in every heartbeat from the
//! moment the poll returns it until its final report is sent, so a task the scheduler holds
//! as running on a worker that the worker's heartbeats leave out for longer than the lease
//! (four heartbeats or more) was never received. The caller hands it back: re-issued at once,
//! not a failure. A gang rank not yet delivered (`Worker::pending`) is not expected in the
//! heartbeats and is not counted.

use std::time::{Duration, Instant};

use mirrorplay_proto::v1::TaskRef;

use super::Worker;

/// Updates `worker.unlisted` from a heartbeat that lists `listed`, and returns the ids of the
/// tasks left out of its heartbeats for longer than `grace`; the caller releases and re-issues
/// them. An entry leaves `unlisted` with its task: `release` (and `drop_job`) remove it
/// wherever a task leaves `running`.
pub(super) fn note_listed(
    worker: &mut Worker,
    listed: &[TaskRef],
    now: Instant,
    grace: Duration,
) -> Vec<String> {
    let Worker {
        running,
        pending,
        unlisted,
        ..
    } = worker;
    let mut stranded = Vec::new();
    for id in running.iter() {
        let is_listed = listed.iter().any(|r| &r.task_id == id);
        let undelivered = pending.iter().any(|t| &t.task_id == id);
        if is_listed || undelivered {
            unlisted.remove(id);
            continue;
        }
        let since = *unlisted.entry(id.clone()).or_insert(now);
        if now.duration_since(since) > grace {
            stranded.push(id.clone());
        }
    }
    stranded
}
