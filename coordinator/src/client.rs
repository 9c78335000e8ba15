//! Client commands against a running coordinator: submit, status, watch, cancel.

use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mirrorplay_proto::v1::{
    CancelJobRequest, GetJobRequest, GetLogsRequest, Job, JobSpec, JobState, ListJobsRequest,
    LogLine, ResumeJobRequest, SubmitJobRequest, TaskFailure, WatchJobRequest,
};
use mirrorplay_worker::connect::{ClientTls, ConnectError, Connection, CoordinatorRpc, Token};

use crate::cli::CoordinatorArg;
use crate::exit::Exit;
use crate::progress::MetricsView;

/// How long a command waits for the coordinator's answer to one request (for `watch` and
/// `logs --follow`, its first answer: the stream after it may run as long as the job, and the
/// connection's keep-alive pings, `connect::KEEP_ALIVE`, end it if the coordinator stops
/// answering). Without it a request the coordinator never answers (under TLS 1.3 a client
/// certificate it refuses is only rejected after the client's handshake is done) would leave
/// a command waiting forever.
const ANSWER_DEADLINE: Duration = Duration::from_secs(60);

/// The request's deadline passed (tonic reports it as `Cancelled`, "Timeout expired").
fn missed_deadline(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Cancelled && s.message() == tonic::TimeoutExpired(()).to_string()
}

/// A failed client RPC: a job that does not exist or a request the coordinator refuses is a
/// usage error (exit 2); anything else is a runtime error (exit 1).
fn rpc_error(s: tonic::Status) -> anyhow::Error {
    if missed_deadline(&s) {
        return no_answer();
    }
    match s.code() {
        tonic::Code::NotFound
        | tonic::Code::InvalidArgument
        | tonic::Code::FailedPrecondition
        | tonic::Code::Unauthenticated => anyhow::Error::new(Exit::Config(s.message().to_string())),
        _ => anyhow::anyhow!("{}", s.message()),
    }
}

/// The connection the `--coordinator`, `--token-file` and `--tls-*` options describe; a token
/// file that cannot be read or holds no valid token is a usage error.
pub fn connection(arg: &CoordinatorArg) -> Result<Connection, Exit> {
    let token =
        Token::resolve(arg.token_file.as_deref()).map_err(|e| Exit::Config(e.to_string()))?;
    Ok(Connection {
        url: arg.coordinator.clone(),
        token,
        tls: ClientTls {
            ca: arg.tls_ca.clone(),
            cert: arg.tls_cert.clone(),
            key: arg.tls_key.clone(),
        },
    })
}

/// The error of a request whose deadline passed (a runtime error, exit 1).
fn no_answer() -> anyhow::Error {
    anyhow::anyhow!(
        "the coordinator did not answer in time (is it overloaded, or does it refuse this \
         client's TLS certificate?)"
    )
}

/// Connects as the command-line options say.
pub async fn connect_arg(arg: &CoordinatorArg) -> Result<CoordinatorRpc> {
    connect(&connection(arg)?).await
}

/// Connects to the coordinator; bad options (URL, TLS files) are usage errors, an unreachable
/// coordinator (or a refused TLS handshake) a runtime error.
pub async fn connect(connection: &Connection) -> Result<CoordinatorRpc> {
    connect_answering_within(connection, ANSWER_DEADLINE).await
}

/// [`connect`], with each request's answer awaited at most `deadline`.
async fn connect_answering_within(
    connection: &Connection,
    deadline: Duration,
) -> Result<CoordinatorRpc> {
    let url = &connection.url;
    check_url(url)?;
    let endpoint = connection.endpoint().map_err(|e| match e {
        ConnectError::BadUrl { .. } | ConnectError::Tls(_) => Exit::Config(e.to_string()),
    })?;
    let channel = endpoint.timeout(deadline).connect().await.map_err(|e| {
        anyhow::anyhow!("cannot reach the coordinator at {url}: {}", error_chain(&e))
    })?;
    Ok(connection.client(channel))
}

/// An error and its sources on one line (a TLS failure is only named deep in the chain).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// A coordinator address is an `http` or `https` URL with a host; anything else is a usage
/// error (exit 2), not a connection failure.
fn check_url(url: &str) -> Result<(), Exit> {
    let bad = |why: String| Exit::Config(format!("invalid coordinator URL `{url}`: {why}"));
    let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(bad("expected http://HOST:PORT or https://HOST:PORT".into()));
    }
    Ok(())
}

pub async fn submit(
    client: &mut CoordinatorRpc,
    spec: JobSpec,
    config_toml: String,
) -> Result<String> {
    let response = client
        .submit_job(SubmitJobRequest {
            spec: Some(spec),
            config_toml,
        })
        .await;
    match response {
        Ok(r) => Ok(r.into_inner().job_id),
        Err(s) if missed_deadline(&s) => Err(no_answer()),
        Err(s)
            if s.code() == tonic::Code::FailedPrecondition
                || s.code() == tonic::Code::InvalidArgument =>
        {
            Err(anyhow::Error::new(Exit::Config(s.message().to_string())))
        }
        Err(s) => Err(anyhow::anyhow!("submit failed: {}", s.message())),
    }
}

pub fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Unspecified => "unknown",
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

pub fn job_json(job: &Job) -> serde_json::Value {
    let p = job.progress.clone().unwrap_or_default();
    serde_json::json!({
        "job_id": job.job_id,
        "name": job.name,
        "kind": job.kind,
        "state": state_name(job.state()),
        "error": if job.error.is_empty() { None } else { Some(&job.error) },
        "output": job.spec.as_ref().map(|s| s.output.clone()),
        "progress": {"fraction": p.fraction, "tasks_done": p.tasks_done, "tasks_total": p.tasks_total,
                     "tasks_running": p.tasks_running, "stage": p.stage,
                     "checkpoint_step": p.checkpoint_step},
        "gangs": p.gangs.iter().map(|g| serde_json::json!({
            "task_id": g.task_id, "attempt": g.attempt, "world_size": g.world_size,
            "workers": g.workers, "waiting": g.waiting, "last_restart": g.last_restart,
        })).collect::<Vec<_>>(),
        "failures": p.failures.iter().map(|f| serde_json::json!({
            "task_id": f.task_id, "attempt": f.attempt, "worker": f.worker, "reason": f.reason,
            "retry": f.retry, "delay_ms": f.delay_ms, "time": f.time,
        })).collect::<Vec<_>>(),
        "created_at": job.created_at,
        "updated_at": job.updated_at,
    })
}

/// One task failure as `status` shows it under its job.
fn failure_line(f: &TaskFailure) -> String {
    let worker = if f.worker.is_empty() {
        String::new()
    } else {
        format!(" on worker `{}`", f.worker)
    };
    let attempt = if f.attempt == 0 {
        String::new()
    } else {
        format!(" attempt {}", f.attempt)
    };
    let outcome = if f.retry == 0 {
        "failed the job".to_string()
    } else {
        format!(
            "retry {} after {:.1} s",
            f.retry,
            f.delay_ms as f64 / 1000.0
        )
    };
    format!(
        "  task {}{attempt}{worker}: {} ({outcome})",
        f.task_id, f.reason
    )
}

fn job_line(job: &Job) -> String {
    let p = job.progress.clone().unwrap_or_default();
    let mut line = format!(
        "{}\t{}\t{}\t{:.0}%\t{}/{} tasks",
        job.job_id,
        job.kind,
        state_name(job.state()),
        p.fraction * 100.0,
        p.tasks_done,
        p.tasks_total
    );
    if !p.stage.is_empty() {
        line.push_str(&format!("\tstage {}", p.stage));
    }
    for g in &p.gangs {
        line.push_str(&format!("\t{}", gang_text(g)));
    }
    if p.checkpoint_step > 0 {
        line.push_str(&format!("\tcheckpoint step {}", p.checkpoint_step));
    }
    if !p.failures.is_empty() {
        line.push_str(&format!("\t{} task failure(s)", p.failures.len()));
    }
    if !job.error.is_empty() {
        line.push_str(&format!("\terror: {}", job.error));
    }
    line
}

/// A gang as one phrase: its ranks (rank → worker) or what it waits for, its epoch and why the
/// last one ended.
fn gang_text(g: &mirrorplay_proto::v1::GangStatus) -> String {
    let mut text = if g.workers.is_empty() {
        format!("gang (epoch {}): {}", g.attempt, g.waiting)
    } else {
        let ranks: Vec<String> = g
            .workers
            .iter()
            .enumerate()
            .map(|(r, w)| format!("{r}→{w}"))
            .collect();
        format!("gang (epoch {}): {}", g.attempt, ranks.join(" "))
    };
    if !g.last_restart.is_empty() {
        text.push_str(&format!("; restarted: {}", g.last_restart));
    }
    text
}

pub async fn status(client: &mut CoordinatorRpc, job: Option<String>, json: bool) -> Result<()> {
    let single = job.is_some();
    let jobs = match job {
        Some(id) => vec![client
            .get_job(GetJobRequest { job_id: id.clone() })
            .await
            .map_err(rpc_error)?
            .into_inner()],
        None => {
            client
                .list_jobs(ListJobsRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner()
                .jobs
        }
    };
    for j in &jobs {
        if json {
            println!("{}", job_json(j));
        } else {
            println!("{}", job_line(j));
            // One job: why its tasks failed, one line each.
            for f in j
                .progress
                .iter()
                .flat_map(|p| &p.failures)
                .filter(|_| single)
            {
                println!("{}", failure_line(f));
            }
        }
    }
    Ok(())
}

fn log_text(line: &LogLine) -> String {
    format!("{:.3} [{}] {}", line.time, line.level, line.message)
}

/// Prints a job's log on stdout (GetLogs): its tail, then with `follow` each new line until the
/// job ends.
pub async fn logs(client: &mut CoordinatorRpc, job_id: &str, follow: bool) -> Result<()> {
    let mut stream = client
        .get_logs(GetLogsRequest {
            job_id: job_id.to_string(),
            follow,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    while let Some(batch) = stream.message().await.map_err(rpc_error)? {
        for line in &batch.logs {
            println!("{}", log_text(line));
        }
    }
    Ok(())
}

pub async fn resume(client: &mut CoordinatorRpc, job: String) -> Result<()> {
    let j = client
        .resume_job(ResumeJobRequest { job_id: job })
        .await
        .map_err(rpc_error)?
        .into_inner();
    println!("{}", job_line(&j));
    Ok(())
}

pub async fn cancel(client: &mut CoordinatorRpc, job: String) -> Result<()> {
    let j = client
        .cancel_job(CancelJobRequest { job_id: job })
        .await
        .map_err(rpc_error)?
        .into_inner();
    println!("{}", job_line(&j));
    Ok(())
}

/// Follows a job to its end; returns its final state. On stderr: the job's log lines, a
/// progress bar carrying the latest training step's loss, KL and step time, and a short line
/// per evaluation (`progress::MetricsView`); with `json`, one JSON object per event on stdout
/// instead of the bar and the readable metric lines. The failure itself is left to
/// [`outcome`], so that it is printed once.
pub async fn watch(client: &mut CoordinatorRpc, job_id: &str, json: bool) -> Result<Job> {
    let mut stream = client
        .watch_job(WatchJobRequest {
            job_id: job_id.to_string(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let bar = if json {
        ProgressBar::hidden()
    } else {
        // Drawn only when stderr is a terminal (indicatif's default target).
        let bar = ProgressBar::new(1000);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {percent:>3}% {msg}",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        bar
    };
    let mut view = MetricsView::default();
    let mut last: Option<Job> = None;
    while let Some(event) = stream.message().await.map_err(rpc_error)? {
        if json {
            let value = serde_json::json!({
                "job": event.job.as_ref().map(job_json),
                "logs": event.logs.iter().map(|l| serde_json::json!({"time": l.time, "level": l.level, "message": l.message})).collect::<Vec<_>>(),
                "metrics": event.metrics.iter().filter_map(|m| serde_json::from_str::<serde_json::Value>(m).ok()).collect::<Vec<_>>(),
            });
            println!("{value}");
        }
        for line in event.logs.iter().filter(|l| !repeats_the_failure(l)) {
            bar.suspend(|| eprintln!("[{}] {}", line.level, line.message));
        }
        if !json {
            for text in event.metrics.iter().filter_map(|m| view.read(m)) {
                bar.suspend(|| eprintln!("{text}"));
            }
        }
        if let Some(job) = event.job {
            let p = job.progress.clone().unwrap_or_default();
            bar.set_position((p.fraction.clamp(0.0, 1.0) * 1000.0) as u64);
            let stage = if p.stage.is_empty() {
                String::new()
            } else {
                format!(" stage {}", p.stage)
            };
            let gangs: String = p
                .gangs
                .iter()
                .map(|g| format!(" {}", gang_text(g)))
                .collect();
            let train = match view.summary() {
                "" => String::new(),
                s => format!(" · {s}"),
            };
            bar.set_message(format!(
                "{} {}/{} tasks{stage}{gangs}{train}",
                state_name(job.state()),
                p.tasks_done,
                p.tasks_total
            ));
            let done = matches!(
                job.state(),
                JobState::Succeeded | JobState::Failed | JobState::Cancelled
            );
            last = Some(job);
            if done {
                break;
            }
        }
    }
    bar.finish_and_clear();
    last.context("the coordinator closed the watch stream before the job ended")
}

/// The start of the job log line of a failure (`control::ControlPlane::fail`), which
/// [`outcome`] reports instead.
const FAILED: &str = "job failed: ";

/// A log line that only repeats a failure [`outcome`] prints: the job's failure line, or a
/// worker's own line that its task failed (shipped with its log, `runtime::task_log`); `logs`
/// shows them, `watch` does not, so that a failure is printed once.
fn repeats_the_failure(line: &LogLine) -> bool {
    line.message.starts_with(FAILED)
        || (line.level == "error" && line.message.contains("] failed error="))
}

/// Maps a finished job to the CLI's exit code, printing a summary on stderr.
pub fn outcome(job: &Job) -> Exit {
    match job.state() {
        JobState::Succeeded => {
            eprintln!(
                "job {} succeeded; outputs under {}",
                job.job_id,
                job.spec.as_ref().map(|s| s.output.as_str()).unwrap_or("")
            );
            Exit::Ok
        }
        JobState::Cancelled => Exit::Cancelled,
        _ => Exit::JobFailed(format!("job {} failed: {}", job.job_id, job.error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A coordinator address that accepts connections and then never answers: a command gets
    /// an error naming the missed answer when the deadline passes, instead of waiting forever.
    #[tokio::test]
    async fn a_coordinator_that_never_answers_gives_an_error_at_the_deadline() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                held.push(socket);
            }
        });
        let connection = Connection {
            url,
            token: None,
            tls: ClientTls::default(),
        };
        let deadline = Duration::from_millis(300);
        let mut client = connect_answering_within(&connection, deadline)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let err = status(&mut client, None, true).await.unwrap_err();
        assert!(
            err.to_string().contains("did not answer in time"),
            "unexpected error: {err:#}"
        );
        assert!(started.elapsed() >= deadline);
        assert!(
            err.downcast_ref::<Exit>().is_none(),
            "a runtime error, not a usage error"
        );
        silent.abort();
    }
}
