//! The gRPC surface: translates `mirrorplay.v1.Coordinator` messages to `ControlPlane` calls.
//! `grpc.health.v1` is served beside it, outside the token check (`auth`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use mirrorplay_proto::v1::coordinator_server::{Coordinator, CoordinatorServer};
use mirrorplay_proto::v1::*;
use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::ServerTlsConfig;
use tonic::{Request, Response, Status};

use crate::auth::RequireToken;

use crate::control::{job_is_terminal, ControlError, ControlPlane};
use crate::scheduler::{FailureKind, Rejected};

/// Longest a PollTask call is held open.
const MAX_POLL_WAIT: Duration = Duration::from_secs(30);
/// Longest a JoinGroup call waits for the rest of its gang.
const MAX_JOIN_WAIT: Duration = Duration::from_secs(300);

pub struct Service {
    control: Arc<ControlPlane>,
}

fn status(e: ControlError) -> Status {
    match e {
        ControlError::NotFound(m) => Status::not_found(m),
        ControlError::InvalidArgument(m) => Status::invalid_argument(m),
        ControlError::FailedPrecondition(m) => Status::failed_precondition(m),
        ControlError::Internal(m) => Status::internal(m),
        ControlError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
    }
}

/// This coordinator's version; a worker must run the same one.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Refuses a worker of another version (or one that does not say), naming both versions.
fn check_version(name: &str, version: &str) -> Result<(), Status> {
    if version == VERSION {
        return Ok(());
    }
    let theirs = if version.is_empty() {
        "an unknown version".to_string()
    } else {
        format!("version {version}")
    };
    Err(Status::failed_precondition(format!(
        "worker `{name}` runs mirrorplay-worker {theirs} but this coordinator runs mirrorplay {VERSION}; run workers of version {VERSION}"
    )))
}

fn accepted(r: Result<(), Rejected>, task_id: &str) -> ReportTaskResponse {
    if let Err(why) = &r {
        tracing::info!(task_id, ?why, "report rejected");
    }
    ReportTaskResponse {
        accepted: r.is_ok(),
    }
}

#[tonic::async_trait]
impl Coordinator for Service {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let _timer = self.control.metrics.rpc("Register");
        let r = request.into_inner();
        if let Err(refused) = check_version(&r.name, &r.version) {
            tracing::warn!(name = %r.name, version = %r.version, "worker refused: another version");
            return Err(refused);
        }
        let worker_id = self.control.scheduler.register(&r.name, r.slots);
        tracing::info!(worker_id = %worker_id, name = %r.name, "worker registered");
        let lease_ms = self.control.scheduler.lease.as_millis() as u64;
        Ok(Response::new(RegisterResponse {
            worker_id,
            lease_ms,
            heartbeat_ms: (lease_ms / 4).max(20),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let _timer = self.control.metrics.rpc("Heartbeat");
        let r = request.into_inner();
        Ok(Response::new(
            match self.control.heartbeat(&r.worker_id, &r.running).await {
                Some(cancel) => HeartbeatResponse {
                    known: true,
                    cancel,
                },
                None => HeartbeatResponse {
                    known: false,
                    cancel: vec![],
                },
            },
        ))
    }

    async fn deregister(
        &self,
        request: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        let _timer = self.control.metrics.rpc("Deregister");
        let r = request.into_inner();
        tracing::info!(worker_id = %r.worker_id, returned = r.returned.len(), "worker deregistered");
        self.control.deregister(&r.worker_id, &r.returned).await;
        Ok(Response::new(DeregisterResponse {}))
    }

    async fn poll_task(
        &self,
        request: Request<PollTaskRequest>,
    ) -> Result<Response<PollTaskResponse>, Status> {
        let _timer = self.control.metrics.rpc("PollTask");
        let r = request.into_inner();
        let wait = Duration::from_millis(r.wait_ms).min(MAX_POLL_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        let scheduler = &self.control.scheduler;
        loop {
            let notified = scheduler.queued_notifier().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !scheduler.is_known(&r.worker_id) {
                return Ok(Response::new(PollTaskResponse {
                    task: None,
                    known: false,
                }));
            }
            if let Some(task) = scheduler.assign(&r.worker_id) {
                tracing::info!(worker_id = %r.worker_id, task_id = %task.task_id, attempt = task.attempt, "task assigned");
                return Ok(Response::new(PollTaskResponse {
                    task: Some(task),
                    known: true,
                }));
            }
            // Wake at least once per lease/4 so a long poll also renews the lease.
            let step = (scheduler.lease / 4).max(Duration::from_millis(20));
            let until = deadline.min(tokio::time::Instant::now() + step);
            if tokio::time::timeout_at(until, notified).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return Ok(Response::new(PollTaskResponse {
                    task: None,
                    known: true,
                }));
            }
            scheduler.renew(&r.worker_id);
        }
    }

    async fn report_task(
        &self,
        request: Request<ReportTaskRequest>,
    ) -> Result<Response<ReportTaskResponse>, Status> {
        let _timer = self.control.metrics.rpc("ReportTask");
        let r = request.into_inner();
        let result = match r.report {
            Some(report_task_request::Report::Progress(p)) => self.control.progress(
                &r.worker_id,
                &r.task_id,
                r.attempt,
                p.fraction,
                (p.metrics, p.logs),
            ),
            Some(report_task_request::Report::Result(result)) => {
                self.control
                    .task_succeeded(&r.worker_id, &r.task_id, r.attempt, result)
                    .await
            }
            Some(report_task_request::Report::Failure(message)) => {
                let kind = if r.gang_broken {
                    FailureKind::GangBroken
                } else if r.transient {
                    FailureKind::Transient
                } else {
                    FailureKind::Final
                };
                self.control
                    .task_failed(&r.worker_id, &r.task_id, r.attempt, message, kind)
                    .await
            }
            None => return Err(Status::invalid_argument("report is empty")),
        };
        Ok(Response::new(accepted(result, &r.task_id)))
    }

    async fn join_group(
        &self,
        request: Request<JoinGroupRequest>,
    ) -> Result<Response<JoinGroupResponse>, Status> {
        let _timer = self.control.metrics.rpc("JoinGroup");
        let r = request.into_inner();
        let wait = Duration::from_millis(r.wait_ms).min(MAX_JOIN_WAIT);
        let (epoch, members) = self
            .control
            .join_group(
                &r.worker_id,
                &r.task_id,
                r.attempt,
                r.rank,
                r.endpoint,
                wait,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(JoinGroupResponse {
            world_size: members.len() as u32,
            epoch,
            members: members
                .into_iter()
                .map(|m| GroupMember {
                    rank: m.rank,
                    worker_id: m.worker_id,
                    worker_name: m.worker_name,
                    endpoint: m.endpoint,
                })
                .collect(),
        }))
    }

    async fn commit_checkpoint(
        &self,
        request: Request<CommitCheckpointRequest>,
    ) -> Result<Response<CommitCheckpointResponse>, Status> {
        let _timer = self.control.metrics.rpc("CommitCheckpoint");
        let r = request.into_inner();
        self.control
            .checkpoint_committed(&r.worker_id, &r.task_id, r.attempt, r.step)
            .await
            .map_err(|why| {
                Status::failed_precondition(format!(
                    "task {} attempt {}: not current ({why:?})",
                    r.task_id, r.attempt
                ))
            })?;
        Ok(Response::new(CommitCheckpointResponse {}))
    }

    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<SubmitJobResponse>, Status> {
        let _timer = self.control.metrics.rpc("SubmitJob");
        let r = request.into_inner();
        let spec = r.spec.ok_or_else(|| Status::invalid_argument("no spec"))?;
        let job_id = self
            .control
            .submit(spec, r.config_toml)
            .await
            .map_err(status)?;
        tracing::info!(job_id = %job_id, "job submitted");
        Ok(Response::new(SubmitJobResponse { job_id }))
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        let _timer = self.control.metrics.rpc("GetJob");
        self.control
            .get(&request.into_inner().job_id)
            .map(Response::new)
            .map_err(status)
    }

    async fn list_jobs(
        &self,
        _: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let _timer = self.control.metrics.rpc("ListJobs");
        Ok(Response::new(ListJobsResponse {
            jobs: self.control.list(),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<Job>, Status> {
        let _timer = self.control.metrics.rpc("CancelJob");
        self.control
            .cancel(&request.into_inner().job_id)
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn resume_job(
        &self,
        request: Request<ResumeJobRequest>,
    ) -> Result<Response<Job>, Status> {
        let _timer = self.control.metrics.rpc("ResumeJob");
        self.control
            .resume(&request.into_inner().job_id)
            .await
            .map(Response::new)
            .map_err(status)
    }

    type WatchJobStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send>>;

    async fn watch_job(
        &self,
        request: Request<WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let _timer = self.control.metrics.rpc("WatchJob");
        let (first, mut rx) = self
            .control
            .watch(&request.into_inner().job_id)
            .map_err(status)?;
        let (tx, out) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let done = first.job.as_ref().is_some_and(job_is_terminal);
            if tx.send(Ok(first)).await.is_err() || done {
                return;
            }
            loop {
                match rx.recv().await {
                    Ok(event) => {
                        let done = event.job.as_ref().is_some_and(job_is_terminal);
                        if tx.send(Ok(event)).await.is_err() || done {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    type GetLogsStream = Pin<Box<dyn Stream<Item = Result<GetLogsResponse, Status>> + Send>>;

    async fn get_logs(
        &self,
        request: Request<GetLogsRequest>,
    ) -> Result<Response<Self::GetLogsStream>, Status> {
        let _timer = self.control.metrics.rpc("GetLogs");
        let r = request.into_inner();
        let (first, rx) = self.control.watch(&r.job_id).map_err(status)?;
        let tail = GetLogsResponse {
            logs: first.logs.clone(),
        };
        let done = first.job.as_ref().is_none_or(job_is_terminal);
        if !r.follow || done {
            return Ok(Response::new(Box::pin(tokio_stream::once(Ok(tail)))));
        }
        let last = tail.logs.last().map_or(0, |l| l.seq);
        let (tx, out) = tokio::sync::mpsc::channel(64);
        tokio::spawn(follow_logs(tail, last, rx, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

/// Sends the log tail, then each line after `last` until the job ends or the client leaves.
async fn follow_logs(
    tail: GetLogsResponse,
    mut last: u64,
    mut rx: tokio::sync::broadcast::Receiver<JobEvent>,
    tx: tokio::sync::mpsc::Sender<Result<GetLogsResponse, Status>>,
) {
    if tx.send(Ok(tail)).await.is_err() {
        return;
    }
    loop {
        let event = match rx.recv().await {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        // Lines already sent (the tail is read after subscribing) are skipped by number.
        let logs: Vec<LogLine> = event.logs.into_iter().filter(|l| l.seq > last).collect();
        if let Some(l) = logs.last() {
            last = l.seq;
        }
        if !logs.is_empty() && tx.send(Ok(GetLogsResponse { logs })).await.is_err() {
            return;
        }
        if event.job.as_ref().is_some_and(job_is_terminal) {
            return;
        }
    }
}

/// Serves the coordinator (every call checked by `auth`) and `grpc.health.v1` (open) on
/// `listener`, over TLS when `tls` is given, until `shutdown` resolves. Fails at once on TLS
/// settings rustls refuses (e.g. a key that does not match the certificate).
pub fn serve(
    control: Arc<ControlPlane>,
    listener: TcpListener,
    auth: RequireToken,
    tls: Option<ServerTlsConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<
    impl std::future::Future<Output = Result<(), tonic::transport::Error>>,
    tonic::transport::Error,
> {
    let service = CoordinatorServer::new(Service { control })
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let service = InterceptedService::new(service, auth);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    Ok(async move {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_serving::<CoordinatorServer<Service>>().await;
        builder
            .add_service(health)
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
    })
}
