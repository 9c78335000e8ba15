//! `mirrorplay run CONFIG`: `serve`, `submit` and `watch` in one process, for a coordinator
//! that exists for one job (the coordinator pod of a Kubernetes JobSet, docs/kubernetes.md).
//! It serves on `--listen` exactly as `serve` does (token, TLS, state lock), waits for
//! `--workers` workers, submits the job, follows it as `watch` does and exits with the job's
//! exit code.
//!
//! A restarted `run` on the same state does not submit a second job: the state's jobs are
//! recovered first, and when the state already holds a job `run` follows the newest one (an
//! unfinished one resumes from its newest verified checkpoint; a finished one just gives its
//! exit code). A signal (SIGTERM, Ctrl-C) stops the coordinator without cancelling the job,
//! which stays in the state for the next `run`; it exits 143, not a job outcome (1, 2, 3).

use std::time::Duration;

use anyhow::Result;
use mirrorplay_proto::v1::JobSpec;

use crate::auth::RequireToken;
use crate::client;
use crate::embedded::{finished, max_world_size, Embedded};
use crate::exit::Exit;
use crate::serve::{self, ServeOptions};
use crate::tls::ServerTls;

pub struct RunOptions {
    pub serve: ServeOptions,
    /// Workers to wait for before submitting (0: submit at once).
    pub workers: u32,
    /// Longest wait for them.
    pub workers_timeout: Duration,
    /// Follow the job as `watch --json` does.
    pub json: bool,
}

pub async fn run(spec: JobSpec, config_toml: String, opts: RunOptions) -> Result<Exit> {
    let world = max_world_size(&spec);
    if opts.workers > 0 && world > opts.workers {
        return Ok(Exit::Config(format!(
            "world_size = {world} needs at least {world} workers; run with --workers {world}"
        )));
    }
    let s = &opts.serve;
    serve::check_auth_policy(s)?;
    let tls = s.tls.as_ref().map(ServerTls::config).transpose()?;
    // The public listener first, so that a failed bind never leaves a lock behind.
    let listener = serve::listen(s.listen).await?;
    let bound = listener.local_addr()?;
    let (mut coordinator, mut lost) =
        Embedded::start(&s.state, s.lock_lease, s.worker_lease).await?;
    let started = async {
        coordinator.serve_also(listener, RequireToken::new(s.token.as_ref()), tls)?;
        let recovered = coordinator
            .control
            .recover()
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the state: {e}"))?;
        tracing::info!(address = %bound, tls = s.tls.is_some(), state = %coordinator.control.state().url(), recovered, "coordinator listening");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = started {
        coordinator.stop(false).await;
        return Err(e);
    }
    eprintln!("coordinator listening on {bound}, state {}", s.state);

    let mut lock_lost = false;
    let outcome = async {
        let mut c = client::connect(&coordinator.loopback).await?;
        let job_id = match newest_job(&coordinator) {
            Some(id) => {
                eprintln!("following job {id}, found in the state (not submitting another)");
                id
            }
            None => {
                if opts.workers > 0 {
                    eprintln!("waiting for {} worker(s)", opts.workers);
                }
                coordinator
                    .wait_for_workers(opts.workers, opts.workers_timeout)
                    .await?;
                let id = client::submit(&mut c, spec, config_toml).await?;
                eprintln!("submitted job {id}");
                id
            }
        };
        tokio::select! {
            job = client::watch(&mut c, &job_id, opts.json) => Ok(finished(&job?, opts.json)),
            _ = mirrorplay_worker::logging::shutdown_signal() => Ok(Exit::Interrupted(format!(
                "interrupted; job {job_id} stays unfinished in the state, and `mirrorplay run` on the same state resumes it"
            ))),
            Ok(e) = &mut lost => {
                lock_lost = true;
                Ok(Exit::JobFailed(format!("error: {e}; the coordinator stopped")))
            }
        }
    }
    .await;
    coordinator.stop(lock_lost).await;
    outcome
}

/// The id of the job created last in the state, if any.
fn newest_job(coordinator: &Embedded) -> Option<String> {
    coordinator
        .control
        .list()
        .into_iter()
        .max_by(|a, b| a.created_at.total_cmp(&b.created_at))
        .map(|j| j.job_id)
}
