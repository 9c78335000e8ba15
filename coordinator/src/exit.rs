//! Exit codes of the CLI (docs/architecture.md#cli-contract).

/// How a command ends.
#[derive(Debug, thiserror::Error)]
pub enum Exit {
    #[error("ok")]
    Ok,
    /// Usage or config error: exit 2.
    #[error("{0}")]
    Config(String),
    /// The job failed: exit 1.
    #[error("{0}")]
    JobFailed(String),
    /// The job was cancelled: exit 3.
    #[error("job cancelled")]
    Cancelled,
    /// `run` stopped by a signal, its job unfinished: exit 143 (128 + SIGTERM), so that a
    /// Kubernetes pod failure policy tells it from the job's outcome (docs/kubernetes.md).
    #[error("{0}")]
    Interrupted(String),
}

impl Exit {
    pub fn code(&self) -> i32 {
        match self {
            Exit::Ok => 0,
            Exit::JobFailed(_) => 1,
            Exit::Config(_) => 2,
            Exit::Cancelled => 3,
            Exit::Interrupted(_) => 143,
        }
    }
}
