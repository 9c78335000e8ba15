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

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
