//! Checkpoints in the training loops (docs/checkpoints.md): where a run starts (the newest
//! verified checkpoint of this job, or step 0), saving after the steps the spec asks for
//! (rank 0 only, streamed in the background), reporting each commit to the runtime, and a
//! fault-injection knob for kill tests. The format and the writer live in `crate::checkpoint`.

use std::sync::OnceLock;

use mirrorplay_proto::v1::CheckpointSpec;

use super::metrics::MetricsLog;
use super::models::Loaded;
use super::{Ctx, TrainError};
use crate::checkpoint::{
    checkpoints_root, find_latest, step_dir_name, CheckpointError, CheckpointOptions, Checkpointer,
    Manifest, Retention, TrainState, STATE,
};
use crate::collective::Collective;
use crate::io::Location;
use crate::optim::{AdamW, AdamWConfig, Params, Schedule};

/// Fault-injection knob for kill tests: the worker SIGKILLs itself once the checkpoint of this
/// step is committed (simulating a crash right after it).
pub const FAULT_KILL_AFTER_CHECKPOINT_ENV: &str = "MIRRORPLAY_FAULT_KILL_AFTER_CHECKPOINT";

/// The hash that ties checkpoints to one job and its resolved spec: a checkpoint of another job
/// (or another config) is never resumed from.
pub fn run_hash(job_id: &str, spec: &impl prost::Message) -> String {
    let mut bytes = job_id.as_bytes().to_vec();
    bytes.push(0);
    bytes.extend(spec.encode_to_vec());
    crate::checkpoint::state::config_hash(&bytes)
}

/// Where the run starts: (first step to run, the optimizer). With a verified checkpoint of this
/// run, its weights are set into `params` and AdamW continues bit for bit from it; without one
/// it is step 0 and a fresh AdamW. Checkpoints of another job (an output reused with
/// `overwrite = true`) are deleted by rank 0. Every rank of a gang calls this.
pub async fn start(
    ctx: &Ctx<'_>,
    collective: &mut dyn Collective,
    params: &Params,
    adamw: AdamWConfig,
    schedule: Schedule,
    hash: &str,
) -> Result<(u64, AdamW), TrainError> {
    let output = Location::parse(&ctx.output)?;
    // Rank 0 looks first (deleting torn or foreign checkpoints); the others read after it.
    let mut found = None;
    if ctx.writer {
        found = find_latest(&output, true).await?;
        if let Some(p) = found.as_ref().filter(|p| p.state.config_hash != hash) {
            tracing::warn!(
                step = p.step,
                "the output holds checkpoints of another job or config; deleting them"
            );
            checkpoints_root(&output).delete_all().await?;
            found = None;
        }
    }
    collective.barrier()?;
    if !ctx.writer {
        found = find_latest(&output, false).await?;
    }
    match found {
        Some(p) => {
            p.check_config(hash)?;
            p.load_weights(params).await?;
            let opt = p.load_optimizer(params, adamw, schedule).await?;
            tracing::info!(step = p.step, dir = %p.dir, "resuming from a checkpoint");
            Ok((p.state.data_cursor, opt))
        }
        None => Ok((0, AdamW::new(params, adamw, schedule)?)),
    }
}

/// Rank 0's checkpoints of a run (nothing on the other ranks) and the last commit reported.
pub struct Checkpoints {
    writer: Option<Checkpointer>,
    reported: Option<u64>,
    output: Location,
    hash: String,
}

impl Checkpoints {
    /// Checkpoints for a run of `total_steps`, written by rank 0 only.
    pub fn new(
        ctx: &Ctx<'_>,
        spec: Option<&CheckpointSpec>,
        total_steps: u64,
        hash: &str,
        world_size: usize,
    ) -> Result<Self, TrainError> {
        let writer = if ctx.writer {
            let spec = spec.copied().unwrap_or_default();
            let opts = CheckpointOptions {
                every: spec.every,
                total_steps,
                retention: Retention {
                    keep_last: spec.keep_last as usize,
                    keep_every: spec.keep_every,
                },
                config_hash: hash.to_string(),
                world_size: world_size as u32,
                timeout: (spec.timeout_s > 0)
                    .then(|| std::time::Duration::from_secs(spec.timeout_s)),
            };
            Some(Checkpointer::new(&Location::parse(&ctx.output)?, opts))
        } else {
            None
        };
        Ok(Checkpoints {
            writer,
            reported: None,
            output: Location::parse(&ctx.output)?,
            hash: hash.to_string(),
        })
    }

    /// After step `step` (steps done): saves when due (in the background), starting a new
    /// metrics part with it, and reports commits that landed since the last call.
    pub async fn after_step(
        &mut self,
        ctx: &Ctx<'_>,
        step: u64,
        policy: &Loaded,
        opt: &AdamW,
        metrics: &mut MetricsLog<'_>,
    ) -> Result<(), TrainError> {
        let Some(c) = self.writer.as_mut() else {
            return Ok(());
        };
        let saved = match c
            .maybe_save(step, &policy.model, &policy.aux_files, opt)
            .await
        {
            Ok(saved) => saved,
            // The previous checkpoint's error: adopt it if it is benign, then save this step.
            Err(e) => {
                adopt(&self.output, &self.hash, e, ctx).await?;
                c.maybe_save(step, &policy.model, &policy.aux_files, opt)
                    .await?
            }
        };
        if saved {
            metrics.flush().await?;
            if fault_kill_step() == Some(step) {
                if let Err(e) = c.wait().await {
                    adopt(&self.output, &self.hash, e, ctx).await?;
                }
                self.report(ctx);
                // Give the runtime's once-a-second report a chance to record the commit.
                tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
                tracing::warn!(step, "fault injection: SIGKILL after the checkpoint");
                // SAFETY: signalling our own process.
                unsafe { libc::kill(std::process::id() as i32, libc::SIGKILL) };
            }
        }
        self.report(ctx);
        Ok(())
    }

    /// Waits for the last checkpoint and reports it.
    pub async fn finish(mut self, ctx: &Ctx<'_>) -> Result<(), TrainError> {
        if let Some(c) = self.writer.take() {
            match c.finish().await {
                Ok(Some(step)) => (ctx.commits)(step),
                Ok(None) => {}
                Err(e) => adopt(&self.output, &self.hash, e, ctx).await?,
            }
        }
        Ok(())
    }

    fn report(&mut self, ctx: &Ctx<'_>) {
        let Some(c) = &self.writer else { return };
        let committed = *c.committed().borrow();
        if committed.is_some() && committed != self.reported {
            self.reported = committed;
            if let Some(step) = committed {
                (ctx.commits)(step);
            }
        }
    }
}

/// A step that another writer committed first — an earlier attempt of this job that the
/// coordinator already replaced, still finishing its last step — is kept when it verifies and
/// belongs to this run (same job and config): it is that step's checkpoint, never overwritten.
/// Any other error is returned.
async fn adopt(
    output: &Location,
    hash: &str,
    error: CheckpointError,
    ctx: &Ctx<'_>,
) -> Result<(), TrainError> {
    let CheckpointError::AlreadyCommitted { step, .. } = &error else {
        return Err(error.into());
    };
    let dir = checkpoints_root(output).join(&step_dir_name(*step));
    let ours = match Manifest::read_verified(&dir, *step).await {
        Ok(_) => {
            let state = dir.join(STATE);
            TrainState::parse(&state.read().await?, state.url())
                .is_ok_and(|s| s.config_hash == hash)
        }
        Err(_) => false,
    };
    if !ours {
        return Err(error.into());
    }
    tracing::warn!(
        step,
        "the checkpoint of this step was committed by an earlier attempt of this job; keeping it"
    );
    (ctx.commits)(*step);
    Ok(())
}

fn fault_kill_step() -> Option<u64> {
    static STEP: OnceLock<Option<u64>> = OnceLock::new();
    *STEP.get_or_init(|| {
        std::env::var(FAULT_KILL_AFTER_CHECKPOINT_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
    })
}
