//! What the metrics endpoint shows of the control plane at a scrape (`metrics::View`).

use mirrorplay_proto::v1::JobState;

use super::ControlPlane;
use crate::client::state_name;
use crate::metrics::View;

const STATES: [JobState; 5] = [
    JobState::Queued,
    JobState::Running,
    JobState::Succeeded,
    JobState::Failed,
    JobState::Cancelled,
];

impl ControlPlane {
    /// The metrics text of this moment.
    pub fn scrape(&self) -> String {
        let states: Vec<(JobState, String)> = self
            .jobs
            .lock()
            .expect("jobs lock")
            .values()
            .map(|h| (h.state(), h.id.clone()))
            .collect();
        let (tasks_queued, tasks_running) = self.scheduler.task_counts();
        let view = View {
            jobs: STATES
                .iter()
                .map(|&s| {
                    let n = states.iter().filter(|(state, _)| *state == s).count();
                    (state_name(s), n as u64)
                })
                .collect(),
            tasks_queued,
            tasks_running,
            workers_live: self.scheduler.worker_count() as u64,
            running_jobs: states
                .into_iter()
                .filter(|(s, _)| *s == JobState::Running)
                .map(|(_, id)| id)
                .collect(),
        };
        self.metrics.encode(&view)
    }
}
