//! Training checkpoints in object storage (docs/checkpoints.md): `OUTPUT/checkpoints/step-NNNNNN/`
//! holds a Hugging Face model directory (config, tokenizer files, `model.safetensors`), the
//! optimizer state (`optimizer.safetensors`), `state.json`, and — written last, create-only —
//! `manifest.json` listing every other object with its size and SHA-256. A step directory without
//! a manifest that verifies does not exist.
//!
//! One concern per file: the manifest ([`manifest`]), `state.json` ([`state`]), the synchronous
//! host snapshot ([`snapshot`]), the background writer the training loop calls once per step
//! ([`writer`]), resume discovery and loading ([`resume`]), retention ([`retention`]), and reading
//! metrics across attempts ([`attempts`]), and a failure-injecting store for crash tests
//! ([`fault`], `MIRRORPLAY_FAULT_STORE`).
//!
//! Must not talk to the coordinator (the runtime forwards commits, see
//! [`writer::Checkpointer::committed`]), decide when to train, or touch `OUTPUT/model/`.

pub mod attempts;
pub mod fault;
pub mod manifest;
pub mod resume;
pub mod retention;
pub mod snapshot;
pub mod state;
pub mod writer;

#[cfg(test)]
mod tests;

pub use manifest::{Manifest, ManifestObject};
pub use resume::{find_latest, latest_valid, ResumePoint};
pub use retention::Retention;
pub use snapshot::Snapshot;
pub use state::TrainState;
pub use writer::{CheckpointOptions, Checkpointer, Committed};

use crate::io::{IoError, Location};

/// The `format_version` of manifests and `state.json` this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The directory under a job's output that holds the step directories.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// Written last, with `PutMode::Create`; not listed in itself.
pub const MANIFEST: &str = "manifest.json";
pub const STATE: &str = "state.json";
pub const OPTIMIZER: &str = "optimizer.safetensors";

/// Why a checkpoint could not be written, found or loaded. Every variant names the object.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Optim(#[from] crate::optim::OptimError),
    /// A JSON file (manifest, state) that does not parse; names the file and the field.
    #[error("{url}: field `{field}`: {reason}")]
    BadFile {
        url: String,
        field: String,
        reason: String,
    },
    /// A listed object that is missing or differs from the manifest (a torn checkpoint).
    #[error("{url}: {reason}")]
    Unverified { url: String, reason: String },
    #[error("{url}: step {step} is already committed; a checkpoint is never overwritten")]
    AlreadyCommitted { url: String, step: u64 },
    #[error("{url}: the checkpoint of step {step} did not finish within {secs} s")]
    Timeout { url: String, step: u64, secs: u64 },
    /// A checkpoint that verifies but does not belong to this run (config, step, shapes).
    #[error("{url}: {reason}")]
    Mismatch { url: String, reason: String },
    #[error("checkpoint of step {step}: the background task failed: {reason}")]
    Task { step: u64, reason: String },
}

pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

impl CheckpointError {
    /// True when the store failed on the way (`IoError::is_transient`) or a checkpoint did not
    /// finish in time: writing it again may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            CheckpointError::Io(e) => e.is_transient(),
            // The store took too long: the next attempt writes it again.
            CheckpointError::Timeout { .. } => true,
            _ => false,
        }
    }

    /// True when the error says the checkpoint's content is invalid (torn, corrupt, malformed),
    /// as opposed to the store failing to answer: only such a directory may be deleted.
    pub fn is_torn(&self) -> bool {
        matches!(
            self,
            CheckpointError::BadFile { .. } | CheckpointError::Unverified { .. }
        )
    }
}

/// `step-{step:06}`.
pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// The step of a directory name written by [`step_dir_name`]; `None` for anything else.
pub fn parse_step_dir(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `OUTPUT/checkpoints`.
pub fn checkpoints_root(output: &Location) -> Location {
    output.join(CHECKPOINTS_DIR)
}

/// The step directories below `root` (`OUTPUT/checkpoints`) with the relative paths of their
/// objects, by step. Objects outside step directories are ignored.
pub(crate) async fn list_steps(
    root: &Location,
) -> Result<std::collections::BTreeMap<u64, Vec<String>>> {
    let mut steps: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    for (rel, _) in root.list().await? {
        let Some((dir, rest)) = rel.split_once('/') else {
            continue;
        };
        if let Some(step) = parse_step_dir(dir) {
            steps.entry(step).or_default().push(rest.to_string());
        }
    }
    Ok(steps)
}

/// Deletes a step directory so that it is never valid at any moment: the manifest first, then
/// every other object.
pub(crate) async fn delete_step_dir(dir: &Location) -> Result<usize> {
    dir.join(MANIFEST).delete().await?;
    Ok(dir.delete_all().await?)
}
