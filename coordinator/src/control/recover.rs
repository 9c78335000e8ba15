//! Restart recovery (docs/architecture.md#restart-recovery): a coordinator that starts on a
//! state with job records loads every one of them. Finished jobs are listed again as they
//! ended; a job that was queued or running when the previous coordinator stopped runs again
//! from its plan, with attempt numbers above every earlier attempt (so a worker still holding
//! an old task gets its reports refused and its metric parts never collide). A merge re-runs
//! its rounds and rewrites its shards byte-identically (merges are deterministic); a training
//! task continues from its newest verified checkpoint, which the worker finds in the output.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use mirrorplay_proto::v1::JobState;

use super::{is_terminal, restart_note, ControlError, ControlPlane, JobHandle, JobLog};
use crate::drivers::Log;
use crate::scheduler::MAX_ATTEMPTS;

impl ControlPlane {
    /// Loads the job records under the state and restarts the unfinished jobs; returns how
    /// many were restarted. Call once, before serving.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, ControlError> {
        let stored = self
            .state
            .load_jobs()
            .await
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        let mut restarted = Vec::new();
        for record in stored {
            let was = record.job.state();
            let handle = JobHandle::new(record.job, record.config_toml);
            self.jobs
                .lock()
                .expect("jobs lock")
                .insert(handle.id.clone(), handle.clone());
            if is_terminal(was) {
                continue;
            }
            handle
                .attempt_base
                .fetch_add(MAX_ATTEMPTS, Ordering::Relaxed);
            self.update(&handle, |s| {
                s.job.state = JobState::Queued as i32;
                s.job.error.clear();
            });
            let was = crate::client::state_name(was);
            JobLog(&handle).warn(format!(
                "the coordinator restarted while this job was {was}; running it again from its plan{}",
                restart_note(&handle.job())
            ));
            self.persist(&handle).await;
            restarted.push(handle);
        }
        let n = restarted.len();
        for handle in restarted {
            let this = self.clone();
            tokio::spawn(async move { this.start(handle).await });
        }
        Ok(n)
    }
}
