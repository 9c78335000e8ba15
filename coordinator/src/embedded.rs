//! A coordinator inside a client command (`local`, `run`): the state opened and locked, the
//! control plane, and a loopback gRPC server with a fresh random token through which the
//! command follows its own job with the ordinary client (`client::watch`). `run` adds its
//! public listener (`Embedded::serve_also`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use mirrorplay_proto::v1::{job_spec, Job, JobSpec};
use mirrorplay_worker::connect::{Connection, Token};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::ServerTlsConfig;

use crate::auth::RequireToken;
use crate::control::ControlPlane;
use crate::exit::Exit;
use crate::state::LeaseError;
use crate::{client, serve, server};

type ServerTask = JoinHandle<Result<(), tonic::transport::Error>>;

pub struct Embedded {
    pub control: Arc<ControlPlane>,
    /// The loopback server and its token: for this process's own client, and for workers it
    /// starts itself (`local`).
    pub loopback: Connection,
    sweeper: JoinHandle<()>,
    servers: Vec<(oneshot::Sender<()>, ServerTask)>,
}

impl Embedded {
    /// Opens `state` and takes its lock (a live lock held elsewhere is a usage error), then
    /// serves on a loopback port. The receiver gets why the lock was lost, if it is.
    pub async fn start(
        state: &str,
        lock_lease: Duration,
        worker_lease: Duration,
    ) -> Result<(Embedded, oneshot::Receiver<LeaseError>)> {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let listener = serve::listen(addr).await?;
        let bound = listener.local_addr()?;
        let store = serve::open_state(state, lock_lease).await?;
        let (lost_tx, lost_rx) = oneshot::channel();
        store.keep_lease(lost_tx);
        let control = ControlPlane::new(store, worker_lease);
        let sweeper = control.spawn_lease_sweeper();
        // Authenticated like any coordinator: a fresh random token, which only this process
        // and the workers it hands it to (in their environment) know.
        let token = Token::parse(&crate::random_id::random_hex(32)?, "the loopback token")?;
        let mut embedded = Embedded {
            control,
            loopback: Connection {
                url: format!("http://{bound}"),
                token: Some(token.clone()),
                tls: Default::default(),
            },
            sweeper,
            servers: Vec::new(),
        };
        embedded.serve_also(listener, RequireToken::new(Some(&token)), None)?;
        Ok((embedded, lost_rx))
    }

    /// Serves the same control plane on another listener too.
    pub fn serve_also(
        &mut self,
        listener: TcpListener,
        auth: RequireToken,
        tls: Option<ServerTlsConfig>,
    ) -> Result<(), Exit> {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let serve = server::serve(self.control.clone(), listener, auth, tls, async {
            let _ = stop_rx.await;
        })
        .map_err(|e| Exit::Config(format!("the TLS certificate or key is not usable: {e}")))?;
        self.servers.push((stop_tx, tokio::spawn(serve)));
        Ok(())
    }

    /// Waits until `n` workers have registered, so that `world_size = 0` (every registered
    /// worker) means all of them and a gang never waits for a late starter.
    pub async fn wait_for_workers(&self, n: u32, timeout: Duration) -> Result<()> {
        let started = tokio::time::Instant::now();
        while self.control.scheduler.worker_count() < n as usize {
            if started.elapsed() > timeout {
                anyhow::bail!(
                    "only {} of {n} workers registered within {} s (see their logs)",
                    self.control.scheduler.worker_count(),
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Stops the servers and the lease sweeper and releases the state lock (unless `lock_lost`:
    /// the state is then another coordinator's and is not touched).
    pub async fn stop(self, lock_lost: bool) {
        for (stop, server) in self.servers {
            let _ = stop.send(());
            let _ = server.await;
        }
        self.sweeper.abort();
        if !lock_lost {
            self.control.state().release().await.ok();
        }
    }
}

/// The largest data-parallel world size any training task of `spec` asks for.
pub fn max_world_size(spec: &JobSpec) -> u32 {
    match &spec.kind {
        Some(job_spec::Kind::Sft(s)) => s.parallel.map_or(1, |p| p.world_size),
        Some(job_spec::Kind::Selfplay(s)) => s.parallel.map_or(1, |p| p.world_size),
        Some(job_spec::Kind::Pipeline(p)) => p
            .stages
            .iter()
            .filter_map(|s| s.job.as_ref())
            .map(max_world_size)
            .max()
            .unwrap_or(1),
        _ => 1,
    }
}

/// The exit of a followed job: its outcome (printed once by `client::outcome`), and on success
/// without `json` its output location on stdout, for scripts.
pub fn finished(job: &Job, json: bool) -> Exit {
    let exit = client::outcome(job);
    if matches!(exit, Exit::Ok) && !json {
        println!("{}", job.spec.as_ref().map_or("", |s| s.output.as_str()));
    }
    exit
}
