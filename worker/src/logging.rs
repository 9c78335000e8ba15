//! Logging set-up shared by both binaries: `tracing` to stderr, text or JSON, filtered by
//! `RUST_LOG` (else the caller's default level); ANSI colours only when stderr is a terminal
//! (never in a log file or a pipe). Also the shutdown signal (SIGTERM or Ctrl-C).

use std::io::IsTerminal;

use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// A layer beside the stderr formatter (the worker's `runtime::task_log`).
pub type ExtraLayer = Box<dyn Layer<Layered<EnvFilter, Registry>> + Send + Sync>;

pub fn init(format: &str, default_level: &str) {
    init_with(format, default_level, None)
}

/// As [`init`], with `extra` also seeing every event the filter lets through.
pub fn init_with(format: &str, default_level: &str, extra: Option<ExtraLayer>) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let ansi = std::io::stderr().is_terminal();
    let fmt: ExtraLayer = if format == "json" {
        tracing_subscriber::fmt::layer()
            .json()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .compact()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed()
    };
    let layers: Vec<ExtraLayer> = std::iter::once(fmt).chain(extra).collect();
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layers)
        .try_init();
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT). The handlers are registered when this is called,
/// not when the future is first polled: a server's accept loop may poll its shutdown future
/// only between connections (tonic's picks one ready branch per turn), so a lazily registered
/// handler could still be missing when a SIGTERM arrives just after the first answer, and the
/// signal's default action would kill the process instead of stopping it cleanly (seen as a
/// flaky `state_lock` test). Call it on a tokio runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (term, interrupt) {
                (Ok(mut term), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                    one.recv().await;
                }
                (Err(_), Err(_)) => std::future::pending().await,
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
