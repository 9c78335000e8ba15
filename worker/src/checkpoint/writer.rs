//! The checkpoint writer the training loop calls once per step (docs/checkpoints.md):
//! `maybe_save` takes a host [`Snapshot`] synchronously, then a background tokio task writes the
//! step directory — small files, then `model.safetensors` and `optimizer.safetensors` streamed
//! concurrently through multipart uploads (16 MiB parts, at most 4 in flight per file, SHA-256
//! computed while streaming), `fsync` on local stores — and commits it by writing
//! `manifest.json` last with `PutMode::Create`; then applies retention. At most one checkpoint
//! is in flight: the next save (or `wait`/`finish`) first waits for it, and its error surfaces
//! there. A failed or abandoned write never commits; its objects are deleted best-effort and
//! otherwise removed at the next resume. Must not decide anything about training.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::manifest::{Manifest, ManifestObject};
use super::retention::{self, Retention};
use super::snapshot::{HostTensor, Snapshot};
use super::state::TrainState;
use super::{
    checkpoints_root, delete_step_dir, step_dir_name, CheckpointError, Result, FORMAT_VERSION,
    MANIFEST, OPTIMIZER, STATE,
};
use crate::io::hf::SINGLE_FILE;
use crate::io::writer::SafetensorsWriter;
use crate::io::Location;
use crate::model::Model;
use crate::optim::AdamW;

/// When to checkpoint and what to keep; from the job's `[checkpoint]` settings.
#[derive(Debug, Clone)]
pub struct CheckpointOptions {
    /// Checkpoint after every `every` steps (0: only at the last step).
    pub every: u64,
    /// The job's last step, always checkpointed.
    pub total_steps: u64,
    pub retention: Retention,
    /// `state::config_hash` of the run's resolved spec.
    pub config_hash: String,
    pub world_size: u32,
    /// A checkpoint whose write takes longer than this fails (a stalled store); `None`: no limit.
    pub timeout: Option<Duration>,
}

/// A committed checkpoint.
#[derive(Debug, Clone)]
pub struct Committed {
    pub step: u64,
    pub dir: Location,
    /// Bytes listed in the manifest.
    pub bytes: u64,
    /// From the start of the background write to the manifest.
    pub upload_secs: f64,
    /// Steps deleted by retention afterwards.
    pub deleted: Vec<u64>,
}

pub struct Checkpointer {
    root: Location,
    opts: CheckpointOptions,
    in_flight: Option<(u64, JoinHandle<Result<Committed>>)>,
    last_started: Option<u64>,
    committed_tx: watch::Sender<Option<u64>>,
}

impl Checkpointer {
    /// Checkpoints under `output`/checkpoints.
    pub fn new(output: &Location, opts: CheckpointOptions) -> Self {
        Checkpointer {
            root: checkpoints_root(output),
            opts,
            in_flight: None,
            last_started: None,
            committed_tx: watch::channel(None).0,
        }
    }

    /// The last committed step, updated as commits land (the runtime forwards it to the
    /// coordinator with `CommitCheckpoint`).
    pub fn committed(&self) -> watch::Receiver<Option<u64>> {
        self.committed_tx.subscribe()
    }

    /// Whether step `step` (steps done) is a checkpoint step not already saved.
    pub fn is_due(&self, step: u64) -> bool {
        let scheduled = step == self.opts.total_steps
            || (self.opts.every > 0 && step.is_multiple_of(self.opts.every));
        scheduled && self.last_started != Some(step) && step > 0
    }

    /// Saves when `step` is due (see [`Checkpointer::is_due`]); returns whether it started one.
    pub async fn maybe_save(
        &mut self,
        step: u64,
        model: &Model,
        aux_files: &BTreeMap<String, Bytes>,
        opt: &AdamW,
    ) -> Result<bool> {
        if !self.is_due(step) {
            return Ok(false);
        }
        self.save(step, model, aux_files, opt).await?;
        Ok(true)
    }

    /// Waits for the previous checkpoint (returning its error), snapshots the model and the
    /// optimizer to host memory, and starts writing step `step` in the background.
    pub async fn save(
        &mut self,
        step: u64,
        model: &Model,
        aux_files: &BTreeMap<String, Bytes>,
        opt: &AdamW,
    ) -> Result<()> {
        self.wait().await?;
        let t0 = Instant::now();
        let snapshot = Snapshot::take(model, aux_files, opt)?;
        if snapshot.optimizer_step != step {
            return Err(CheckpointError::Mismatch {
                url: self.root.join(&step_dir_name(step)).url().to_string(),
                reason: format!(
                    "the optimizer has taken {} steps, not {step}",
                    snapshot.optimizer_step
                ),
            });
        }
        let state = TrainState {
            format_version: FORMAT_VERSION,
            step,
            data_cursor: step,
            config_hash: self.opts.config_hash.clone(),
            world_size: self.opts.world_size,
            model_dtype: snapshot.model_dtype.clone(),
        };
        tracing::info!(
            step,
            bytes = snapshot.tensor_bytes(),
            snapshot_ms = t0.elapsed().as_millis() as u64,
            "checkpoint snapshot taken; uploading in the background"
        );
        let root = self.root.clone();
        let (keep, timeout) = (self.opts.retention, self.opts.timeout);
        let tx = self.committed_tx.clone();
        let handle = tokio::spawn(async move {
            let committed = write_with_timeout(root, step, snapshot, state, timeout).await?;
            tx.send_replace(Some(step));
            let deleted = match retention::apply(&committed.dir.parent(), step, keep).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(step, error = %e, "retention after a checkpoint failed");
                    vec![]
                }
            };
            Ok(Committed {
                deleted,
                ..committed
            })
        });
        self.in_flight = Some((step, handle));
        self.last_started = Some(step);
        Ok(())
    }

    /// Waits for the checkpoint in flight, if any; returns it once committed.
    pub async fn wait(&mut self) -> Result<Option<Committed>> {
        let Some((step, handle)) = self.in_flight.take() else {
            return Ok(None);
        };
        let committed = handle.await.map_err(|e| CheckpointError::Task {
            step,
            reason: e.to_string(),
        })??;
        tracing::info!(
            step,
            dir = %committed.dir,
            bytes = committed.bytes,
            upload_s = committed.upload_secs,
            deleted = ?committed.deleted,
            "checkpoint committed"
        );
        Ok(Some(committed))
    }

    /// Waits for the last checkpoint; returns the last committed step.
    pub async fn finish(mut self) -> Result<Option<u64>> {
        self.wait().await?;
        Ok(*self.committed_tx.borrow())
    }
}

impl Drop for Checkpointer {
    /// A checkpointer dropped with a write in flight (the task failed or was cancelled) stops
    /// it: it never commits, so a resumed attempt cannot race with it.
    fn drop(&mut self) {
        if let Some((_, handle)) = self.in_flight.take() {
            handle.abort();
        }
    }
}

/// Aborts a spawned task when dropped (so a timed-out write stops its uploads).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn write_with_timeout(
    root: Location,
    step: u64,
    snapshot: Snapshot,
    state: TrainState,
    timeout: Option<Duration>,
) -> Result<Committed> {
    let dir = root.join(&step_dir_name(step));
    let write = write_step(dir.clone(), step, snapshot, state);
    let result = match timeout {
        None => write.await,
        Some(limit) => match tokio::time::timeout(limit, write).await {
            Ok(r) => r,
            Err(_) => Err(CheckpointError::Timeout {
                url: dir.url().to_string(),
                step,
                secs: limit.as_secs(),
            }),
        },
    };
    if let Err(e) = &result {
        tracing::warn!(step, dir = %dir, error = %e, "checkpoint failed; nothing was committed");
        // Never delete what another writer committed (an earlier or later attempt of the job,
        // e.g. one that took over while this write stalled): a manifest there means the step is
        // committed, and only retention deletes committed steps. Otherwise tidy up (best effort:
        // a torn directory is also removed by the next resume).
        let committed = match e {
            CheckpointError::AlreadyCommitted { .. } => true,
            _ => dir.join(MANIFEST).exists().await.unwrap_or(true),
        };
        if !committed {
            if let Err(e2) = delete_step_dir(&dir).await {
                tracing::warn!(step, dir = %dir, error = %e2, "removing a failed checkpoint");
            }
        }
    }
    result
}

/// Writes and commits one step directory (docs/checkpoints.md).
async fn write_step(
    dir: Location,
    step: u64,
    snapshot: Snapshot,
    state: TrainState,
) -> Result<Committed> {
    let t0 = Instant::now();
    let manifest_loc = dir.join(MANIFEST);
    if manifest_loc.exists().await? {
        return Err(CheckpointError::AlreadyCommitted {
            url: manifest_loc.url().to_string(),
            step,
        });
    }
    let Snapshot {
        config_json,
        aux_files,
        weights,
        weights_metadata,
        optimizer,
        optimizer_metadata,
        ..
    } = snapshot;
    // The two large files stream concurrently, each on its own task (hashing uses a core each).
    let model_task = AbortOnDrop(tokio::spawn(write_tensors(
        dir.join(SINGLE_FILE),
        weights,
        weights_metadata,
    )));
    let optimizer_task = AbortOnDrop(tokio::spawn(write_tensors(
        dir.join(OPTIMIZER),
        optimizer,
        optimizer_metadata,
    )));
    let mut small = vec![
        ("config.json".to_string(), config_json),
        (STATE.to_string(), Bytes::from(state.to_json())),
    ];
    small.extend(aux_files);
    let mut objects = futures::future::try_join_all(
        small
            .into_iter()
            .map(|(name, bytes)| put_hashed(&dir, name, bytes)),
    )
    .await?;
    for (name, mut task) in [(SINGLE_FILE, model_task), (OPTIMIZER, optimizer_task)] {
        let summary = (&mut task.0).await.map_err(|e| CheckpointError::Task {
            step,
            reason: format!("{name}: {e}"),
        })??;
        objects.push(ManifestObject {
            path: name.to_string(),
            size: summary.bytes,
            sha256: summary.sha256,
        });
    }
    // Local stores: the objects must be on disk before the manifest says they are.
    for o in &objects {
        dir.join(&o.path).sync_local().await?;
    }
    dir.sync_local().await?;
    let manifest = Manifest::new(step, objects);
    if !manifest_loc.put_create(manifest.to_json()).await? {
        return Err(CheckpointError::AlreadyCommitted {
            url: manifest_loc.url().to_string(),
            step,
        });
    }
    manifest_loc.sync_local().await?;
    dir.sync_local().await?;
    Ok(Committed {
        step,
        dir,
        bytes: manifest.total_bytes(),
        upload_secs: t0.elapsed().as_secs_f64(),
        deleted: vec![],
    })
}

async fn put_hashed(dir: &Location, name: String, bytes: Bytes) -> Result<ManifestObject> {
    let object = ManifestObject {
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&bytes)),
        path: name,
    };
    dir.join(&object.path).put(bytes).await?;
    Ok(object)
}

/// Streams `tensors` (in order) as one safetensors file; returns its size and SHA-256.
async fn write_tensors(
    loc: Location,
    tensors: Vec<HostTensor>,
    metadata: BTreeMap<String, String>,
) -> Result<crate::io::writer::WriteSummary> {
    let layout = tensors.iter().map(HostTensor::layout).collect();
    let mut writer = SafetensorsWriter::create(&loc, layout, &metadata).await?;
    for t in tensors {
        let bytes = t.into_bytes()?;
        if let Err(e) = writer.write_owned(bytes).await {
            writer.abort().await;
            return Err(e.into());
        }
    }
    Ok(writer.finish().await?)
}
