//! `mirrorplay serve`: binds the listener, then takes the state lock (so a failed bind never
//! leaves a lock behind), resumes the unfinished jobs of the state, and serves until a signal;
//! the lock is released on every exit path after it was taken, except when it was lost to
//! another coordinator (docs/architecture.md#the-state-lock).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::net::TcpListener;

use mirrorplay_worker::connect::Token;
use tonic::transport::ServerTlsConfig;

use crate::auth::RequireToken;
use crate::control::ControlPlane;
use crate::exit::Exit;
use crate::scheduler::RetryPolicy;
use crate::state::{LeaseError, StateError, StateStore};
use crate::tls::ServerTls;
use crate::{metrics, server};

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub state: String,
    /// A worker silent this long loses its tasks.
    pub worker_lease: Duration,
    /// How long the state lock holds without renewal.
    pub lock_lease: Duration,
    /// The bearer token every call must carry.
    pub token: Option<Token>,
    /// Listen beyond loopback without a token.
    pub insecure_no_auth: bool,
    pub tls: Option<ServerTls>,
    /// Where to serve Prometheus metrics (`GET /metrics`, no token), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// How failed tasks are retried.
    pub retry: RetryPolicy,
}

/// Who may call: a token, or nobody checked, which is allowed only on a loopback address or
/// when asked for in so many words.
pub fn check_auth_policy(opts: &ServeOptions) -> Result<(), Exit> {
    let loopback = opts.listen.ip().is_loopback();
    match (&opts.token, opts.insecure_no_auth) {
        (Some(_), true) => Err(Exit::Config(
            "--insecure-no-auth and a token (--token-file or $MIRRORPLAY_TOKEN) contradict each other; give one".into(),
        )),
        (None, false) if !loopback => Err(Exit::Config(format!(
            "refusing to listen on {} (beyond loopback) without a token: give --token-file FILE or $MIRRORPLAY_TOKEN (workers and clients then need the same token), or --insecure-no-auth to let anyone who can reach the port submit, cancel and read jobs",
            opts.listen
        ))),
        (None, true) => {
            tracing::warn!(listen = %opts.listen, "serving without authentication (--insecure-no-auth)");
            Ok(())
        }
        (Some(_), false) if !loopback && opts.tls.is_none() => {
            tracing::warn!(listen = %opts.listen, "the token travels in clear text beyond loopback; serve TLS (--tls-cert, --tls-key) on untrusted networks");
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Binds `addr`; a bind that fails (address in use, not an address of this machine) is a
/// usage error.
pub async fn listen(addr: SocketAddr) -> Result<TcpListener, Exit> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Exit::Config(format!("cannot listen on {addr}: {e}")))
}

/// Opens the state and takes its lock; a live lock held by another coordinator is a usage
/// error (exit 2).
pub async fn open_state(url: &str, lock_lease: Duration) -> Result<StateStore> {
    match StateStore::open(url, lock_lease).await {
        Ok(store) => Ok(store),
        Err(e @ StateError::Lease(LeaseError::Held { .. } | LeaseError::Contended { .. })) => {
            Err(anyhow::Error::new(Exit::Config(e.to_string())))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn run(opts: ServeOptions) -> Result<Exit> {
    check_auth_policy(&opts)?;
    let tls = opts.tls.as_ref().map(ServerTls::config).transpose()?;
    let listener = listen(opts.listen).await?;
    let bound = listener.local_addr()?;
    let metrics_listener = match opts.metrics_listen {
        Some(addr) => Some(listen(addr).await?),
        None => None,
    };
    let store = open_state(&opts.state, opts.lock_lease).await?;
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel();
    store.keep_lease(lost_tx);
    let control = ControlPlane::with_retry(store, opts.worker_lease, opts.retry);
    if let Some(listener) = metrics_listener {
        let address = listener.local_addr()?;
        let scraped = control.clone();
        tokio::spawn(metrics::http::serve(
            listener,
            std::sync::Arc::new(move || scraped.scrape()),
        ));
        tracing::info!(%address, "metrics at http://{address}/metrics (no token: counts and job ids only)");
    }
    let listening = Listening {
        listener,
        bound,
        auth: RequireToken::new(opts.token.as_ref()),
        tls,
    };
    let served = serve_until_stopped(&control, listening, lost_rx).await;
    match served {
        Served::LockLost(e) => Ok(Exit::JobFailed(format!(
            "error: {e}; the coordinator stopped"
        ))),
        Served::Ended(result) => {
            let released = control.state().release().await;
            result?;
            released?;
            tracing::info!("coordinator stopped");
            Ok(Exit::Ok)
        }
    }
}

/// The bound listener and how calls on it are admitted.
struct Listening {
    listener: TcpListener,
    bound: SocketAddr,
    auth: RequireToken,
    tls: Option<ServerTlsConfig>,
}

enum Served {
    /// The server ended (a signal, or an error).
    Ended(Result<()>),
    /// The lock was lost: the coordinator stops at once, without touching the state.
    LockLost(LeaseError),
}

async fn serve_until_stopped(
    control: &Arc<ControlPlane>,
    listening: Listening,
    lost: tokio::sync::oneshot::Receiver<LeaseError>,
) -> Served {
    let Listening {
        listener,
        bound,
        auth,
        tls,
    } = listening;
    let tls_on = tls.is_some();
    let serve = match server::serve(
        control.clone(),
        listener,
        auth,
        tls,
        mirrorplay_worker::logging::shutdown_signal(),
    ) {
        Ok(serve) => serve,
        Err(e) => {
            return Served::Ended(Err(anyhow::Error::new(Exit::Config(format!(
                "the TLS certificate or key is not usable: {e}"
            )))))
        }
    };
    let recovered = match control.recover().await {
        Ok(n) => n,
        Err(e) => return Served::Ended(Err(anyhow::anyhow!("cannot read the state: {e}"))),
    };
    control.spawn_lease_sweeper();
    tracing::info!(address = %bound, tls = tls_on, state = %control.state().url(), recovered, "coordinator listening");
    tokio::select! {
        served = serve => Served::Ended(served.map_err(|e| anyhow::anyhow!("server failed: {e}"))),
        Ok(e) = lost => {
            tracing::error!(error = %e, "stopping");
            Served::LockLost(e)
        }
    }
}
