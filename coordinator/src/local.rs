//! `mirrorplay local CONFIG --workers N`: a whole cluster on this machine. Starts the
//! coordinator in this process on a loopback port with a fresh state directory, spawns N
//! `mirrorplay-worker` processes, submits the job over gRPC, shows its progress, then stops the
//! workers (SIGTERM) and the coordinator. Exit 0 only if the job succeeded; after a failure the
//! directory of worker logs is kept (and named), otherwise it is removed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use mirrorplay_proto::v1::JobSpec;

use mirrorplay_worker::connect::{Token, TOKEN_ENV};

use crate::client;
use crate::embedded::{finished, max_world_size, Embedded};
use crate::exit::Exit;

/// The state lock's lease of `local`'s coordinator (as `serve`'s default).
const LOCK_LEASE: Duration = Duration::from_secs(15);

pub struct LocalOptions {
    pub workers: u32,
    pub worker_bin: Option<PathBuf>,
    pub lease: Duration,
    pub state: Option<String>,
    /// `text` or `json`, passed on to the workers (their logs go to files under the log dir).
    pub log_format: String,
    /// Follow the job as `watch --json` does (JSON events on stdout, instead of the progress
    /// bar and the output location).
    pub json: bool,
}

/// `--worker-bin`, else `$MIRRORPLAY_WORKER_BIN`, else next to this executable, else `PATH`.
pub fn find_worker_bin(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    if let Some(p) = std::env::var_os("MIRRORPLAY_WORKER_BIN") {
        return Ok(PathBuf::from(p));
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("mirrorplay-worker")))
    {
        if sibling.is_file() {
            return Ok(sibling);
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("mirrorplay-worker"))
        .find(|p| p.is_file())
        .context(
            "cannot find the mirrorplay-worker binary (use --worker-bin or MIRRORPLAY_WORKER_BIN)",
        )
}

/// Compute threads per worker: the machine's cores shared among the workers (at least one),
/// unless `RAYON_NUM_THREADS` is set, which every worker then uses.
fn threads_per_worker(workers: u32) -> String {
    if let Ok(t) = std::env::var("RAYON_NUM_THREADS") {
        return t;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / workers.max(1) as usize).max(1).to_string()
}

struct Workers {
    children: Vec<tokio::process::Child>,
}

impl Workers {
    fn spawn(
        bin: &Path,
        n: u32,
        (coordinator, token): (&str, &Token),
        log_dir: &Path,
        log_format: &str,
    ) -> Result<Workers> {
        let mut children = Vec::new();
        let threads = threads_per_worker(n);
        for i in 0..n {
            let log = std::fs::File::create(log_dir.join(format!("worker-{i}.log")))?;
            let mut command = tokio::process::Command::new(bin);
            // A SIGKILLed `local` takes its workers with it.
            crate::parent_death::kill_with_parent(&mut command);
            let child = command
                .args([
                    "--coordinator",
                    coordinator,
                    "--name",
                    &format!("local-{i}"),
                    "--grace-secs",
                    "5",
                    "--log-format",
                    log_format,
                ])
                .env("RAYON_NUM_THREADS", &threads)
                .env(TOKEN_ENV, token.expose())
                .env_remove("MIRRORPLAY_TOKEN_FILE")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start worker {}", bin.display()))?;
            children.push(child);
        }
        Ok(Workers { children })
    }

    /// SIGTERM each worker, wait for them, SIGKILL stragglers.
    async fn stop(mut self) {
        for child in &self.children {
            if let Some(pid) = child.id() {
                // SAFETY: sending a signal to a child process we own.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

pub async fn run(spec: JobSpec, config_toml: String, opts: LocalOptions) -> Result<Exit> {
    let world = max_world_size(&spec);
    if world > opts.workers {
        return Ok(Exit::Config(format!(
            "world_size = {world} needs at least {world} workers; run with --workers {world}"
        )));
    }
    let bin = find_worker_bin(opts.worker_bin)?;
    let temp = tempfile::Builder::new()
        .prefix("mirrorplay-local-")
        .tempdir()?;
    let state_url = match &opts.state {
        Some(s) => s.clone(),
        None => temp.path().join("state").to_string_lossy().to_string(),
    };
    let (cluster, lost) = Embedded::start(&state_url, LOCK_LEASE, opts.lease).await?;
    // A lock lost mid-run (a `--state` shared with a coordinator started meanwhile) is only
    // logged: this run's job finishes or fails on its own.
    tokio::spawn(async move {
        if let Ok(e) = lost.await {
            tracing::error!(error = %e, "the local coordinator lost its state lock");
        }
    });
    let url = cluster.loopback.url.clone();
    let token = cluster
        .loopback
        .token
        .clone()
        .expect("the loopback server has a token");
    eprintln!(
        "local cluster: coordinator {url}, {} worker(s) of {} thread(s), logs in {}",
        opts.workers,
        threads_per_worker(opts.workers),
        temp.path().display()
    );
    let workers = Workers::spawn(
        &bin,
        opts.workers,
        (&url, &token),
        temp.path(),
        &opts.log_format,
    )?;

    let outcome = async {
        cluster
            .wait_for_workers(opts.workers, Duration::from_secs(120))
            .await?;
        let mut c = client::connect(&cluster.loopback).await?;
        let job_id = client::submit(&mut c, spec, config_toml).await?;
        eprintln!("submitted job {job_id}");
        tokio::select! {
            job = client::watch(&mut c, &job_id, opts.json) => Ok(finished(&job?, opts.json)),
            _ = mirrorplay_worker::logging::shutdown_signal() => {
                eprintln!("interrupted; cancelling job {job_id}");
                let _ = client::cancel(&mut c, job_id).await;
                Ok::<_, anyhow::Error>(Exit::Cancelled)
            }
        }
    }
    .await;

    workers.stop().await;
    cluster.stop(false).await;
    // A failed job (or a cluster that failed to run it) keeps its worker logs; the failure
    // itself is printed once, by `outcome`. A refused submit (exit 2) ran nothing worth keeping.
    let keep = match &outcome {
        Ok(exit) => matches!(exit, Exit::JobFailed(_)),
        Err(e) => !matches!(e.downcast_ref::<Exit>(), Some(Exit::Config(_))),
    };
    if keep {
        let dir = temp.keep();
        eprintln!("worker logs kept in {}", dir.display());
    }
    outcome
}
