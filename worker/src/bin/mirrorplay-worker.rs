//! `mirrorplay-worker --coordinator URL`: one worker process (one per GPU, or per CPU slot).

use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use mirrorplay_worker::connect::{ClientTls, Token};
use mirrorplay_worker::runtime::{self, WorkerOptions, FAULT_TASK_DELAY_ENV};

#[derive(Parser, Debug)]
#[command(
    name = "mirrorplay-worker",
    version,
    about = "A mirrorplay worker: runs tasks from a coordinator"
)]
struct Args {
    /// Coordinator URL.
    #[arg(
        long,
        env = "MIRRORPLAY_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    coordinator: String,
    /// Name shown in logs and status (default: worker-PID).
    #[arg(long, env = "MIRRORPLAY_WORKER_NAME")]
    name: Option<String>,
    /// Seconds a shutdown (SIGTERM) waits for the running task before handing it back.
    #[arg(long, default_value_t = 30.0)]
    grace_secs: f64,
    /// Where training computes: `cpu`, `cuda:N` (needs the `cuda` feature), or `auto`
    /// (cuda:0 when this binary has CUDA and a GPU is present, else cpu).
    #[arg(long, env = "MIRRORPLAY_DEVICE", default_value = "auto")]
    device: String,
    /// The address other ranks of a training gang reach this worker on (its ring listener
    /// binds there). Default: this machine's source address of the route to the coordinator.
    #[arg(long, env = "MIRRORPLAY_RING_HOST")]
    ring_host: Option<std::net::IpAddr>,
    /// File holding the coordinator's bearer token (else $MIRRORPLAY_TOKEN, else none).
    #[arg(long, env = "MIRRORPLAY_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// With an https:// coordinator URL: PEM file of the CA to trust (default: system roots).
    #[arg(long, env = "MIRRORPLAY_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// With an https:// coordinator URL that asks for client certificates (mTLS): this
    /// worker's certificate (PEM).
    #[arg(long, env = "MIRRORPLAY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "MIRRORPLAY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Log format: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn main() -> Result<()> {
    // Before tokio's threads exist: it may set an environment variable (kernels::pools).
    let candle_threads = mirrorplay_worker::kernels::pools::settle_at_start();
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(args, candle_threads))
}

async fn serve(args: Args, candle_threads: String) -> Result<()> {
    // The lines logged while a task runs also go to the coordinator, into the job's log.
    mirrorplay_worker::logging::init_with(
        &args.log_format,
        "info",
        Some(Box::new(runtime::task_log::Capture)),
    );
    tracing::info!(
        candle_threads,
        "candle's element-wise pool (CANDLE_NUM_THREADS; docs/architecture.md#compute-threads)"
    );
    let delay_ms: u64 = match std::env::var(FAULT_TASK_DELAY_ENV) {
        Ok(v) => v.parse().map_err(|_| {
            anyhow::anyhow!("{FAULT_TASK_DELAY_ENV}={v} is not a number of milliseconds")
        })?,
        Err(_) => 0,
    };
    let name = args
        .name
        .unwrap_or_else(|| format!("worker-{}", std::process::id()));
    let device = parse_device(&args.device)?;
    tracing::info!(device = ?device, "compute device");
    let token = Token::resolve(args.token_file.as_deref()).unwrap_or_else(|e| usage_error(&e));
    let opts = WorkerOptions {
        coordinator: args.coordinator,
        token,
        tls: ClientTls {
            ca: args.tls_ca,
            cert: args.tls_cert,
            key: args.tls_key,
        },
        name,
        grace: Duration::from_secs_f64(args.grace_secs.max(0.0)),
        fault_task_delay: Duration::from_millis(delay_ms),
        device,
        ring_ip: args.ring_host,
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        mirrorplay_worker::logging::shutdown_signal().await;
        tracing::info!("shutdown signal received");
        let _ = tx.send(true);
    });
    // The runtime only returns an error for bad connection settings (URL, TLS files) and
    // for a coordinator that refuses this worker (another version).
    if let Err(e) = runtime::run(opts, rx).await {
        usage_error(&e);
    }
    Ok(())
}

/// A bad argument (token, URL, TLS file): the message and exit 2, as the CLI does.
fn usage_error(e: &dyn std::fmt::Display) -> ! {
    eprintln!("error: {e}");
    std::process::exit(2)
}

/// `cpu` | `cuda:N` | `auto`.
fn parse_device(spec: &str) -> Result<candle_core::Device> {
    use candle_core::Device;
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        other => {
            let ordinal = other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| {
                    anyhow::anyhow!("--device `{other}`: expected cpu, cuda:N or auto")
                })?;
            Device::new_cuda(ordinal).map_err(|e| anyhow::anyhow!("--device {other}: {e}"))
        }
    }
}
