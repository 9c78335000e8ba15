//! Command-line arguments of `mirrorplay` (clap). docs/architecture.md#cli-contract: results on
//! stdout, logs and progress on stderr; exit 0 success, 1 job failed or runtime error, 2 usage
//! or config error, 3 cancelled.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "mirrorplay",
    version,
    about = "Distributed online preference optimisation: self-play training, reward ensembles, model merging"
)]
pub struct Cli {
    /// Log format on stderr: text or json.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct CoordinatorArg {
    /// Coordinator URL: http://HOST:PORT, or https://HOST:PORT for TLS.
    #[arg(
        long,
        env = "MIRRORPLAY_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub coordinator: String,
    /// File holding the coordinator's bearer token (else $MIRRORPLAY_TOKEN, else none).
    #[arg(long, env = "MIRRORPLAY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// With an https:// URL: PEM file of the CA to trust (default: the system's roots).
    #[arg(long, env = "MIRRORPLAY_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// With an https:// URL whose coordinator asks for client certificates (mTLS): this
    /// client's certificate (PEM).
    #[arg(long, env = "MIRRORPLAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "MIRRORPLAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// Job config: TOML, or a mergekit YAML file (`.yml`/`.yaml`) for the methods both share.
    pub config: PathBuf,
    /// Override a config key, e.g. --set merge.lambda=0.5 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the coordinator.
    Serve {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Submit a job; prints its id.
    Submit {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        coordinator: CoordinatorArg,
    },
    /// Show one job, or list all jobs.
    Status {
        job: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        coordinator: CoordinatorArg,
    },
    /// Follow a job until it ends (progress bar on stderr); exit code reflects the outcome.
    Watch {
        job: String,
        /// Print events as JSON lines on stdout instead of a progress bar.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        coordinator: CoordinatorArg,
    },
    /// Print a job's log (its last 500 lines, workers' lines included); with --follow, then
    /// each new line until the job ends.
    Logs {
        job: String,
        /// Keep printing new lines until the job ends.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        coordinator: CoordinatorArg,
    },
    /// Cancel a job.
    Cancel {
        job: String,
        #[command(flatten)]
        coordinator: CoordinatorArg,
    },
    /// Re-run a failed or cancelled job; training continues from its newest verified
    /// checkpoint.
    Resume {
        job: String,
        #[command(flatten)]
        coordinator: CoordinatorArg,
    },
    /// Check a config without running anything; prints the resolved config. Local input paths
    /// (models, data, prompts, manifests; not object-store URLs) must exist.
    Validate {
        #[command(flatten)]
        config: ConfigArgs,
        /// Do not check that local input paths exist (for a config whose inputs live on the
        /// machines that will run it).
        #[arg(long)]
        no_input_check: bool,
    },
    /// Run a job on a local cluster: a coordinator and N worker processes on loopback.
    Local {
        #[command(flatten)]
        config: ConfigArgs,
        /// Number of worker processes.
        #[arg(long, default_value_t = 1)]
        workers: u32,
        /// The worker binary (else $MIRRORPLAY_WORKER_BIN, else next to this executable, else PATH).
        #[arg(long)]
        worker_bin: Option<PathBuf>,
        /// Worker lease in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        lease_ms: u64,
        /// Keep the coordinator state here instead of a fresh temporary directory.
        #[arg(long)]
        state: Option<String>,
        /// One JSON object per job event on stdout (as `watch --json`) instead of the progress
        /// bar and the output location.
        #[arg(long)]
        json: bool,
    },
    /// Convert another tool's config into mirrorplay TOML (printed on stdout).
    Convert {
        #[command(subcommand)]
        from: ConvertFrom,
    },
    /// Generate text from a model on this machine; the completion goes to stdout as it is
    /// produced.
    Generate(GenerateArgs),
    /// Write the example models (base, task-a, task-b, task-c) into DIR.
    ExampleModels {
        dir: PathBuf,
        /// Instead, write large random models for benchmarks: bytes per model (e.g. 1GiB).
        #[arg(long)]
        random_size: Option<String>,
        /// Names of the random models (the first is the base).
        #[arg(long, value_delimiter = ',', default_value = "base,m1,m2,m3")]
        random_names: Vec<String>,
        /// dtype of the random models: F32, F16 or BF16.
        #[arg(long, default_value = "F32")]
        random_dtype: String,
    },
    /// Write a plain Hugging Face model directory from a verified checkpoint step directory
    /// (--checkpoint) or from a model (--model), in a dtype and sharded.
    #[command(group(ArgGroup::new("source").required(true).args(["checkpoint", "model"])))]
    Export {
        /// The checkpoint: OUTPUT/checkpoints/step-NNNNNN (path or URL).
        #[arg(long)]
        checkpoint: Option<String>,
        /// A model: a Hugging Face directory or a .safetensors file beside its config.json
        /// (path or URL).
        #[arg(long)]
        model: Option<String>,
        /// The output directory (path or URL).
        #[arg(long)]
        out: String,
        /// f32, bf16 or f16 (default: the dtype the model was trained from or is stored in).
        #[arg(long)]
        dtype: Option<String>,
        /// Largest weight file, e.g. 5GB.
        #[arg(long, default_value = "5GB")]
        max_shard_size: String,
    },
    /// Draw a figure (SVG or PNG) of a best-of-n CSV or of a training run's metric lines.
    Plot {
        /// A best-of-n CSV (header `scorer,n,kl_bon,proxy,gold`): gold and proxy vs sqrt(KL)
        /// per scorer. Or a training job's output directory (with metrics/): eval win rate and
        /// train loss vs step, gold vs sqrt(KL); a pipeline's output directory draws one series
        /// per stage, DIR/STAGE one stage.
        input: PathBuf,
        /// The figure to write: FILE.svg or FILE.png.
        #[arg(long)]
        out: PathBuf,
        /// Size in pixels, WIDTHxHEIGHT (default: 640x480 per panel).
        #[arg(long, value_name = "WxH")]
        size: Option<String>,
    },
    /// Serve, submit and watch in one process: a coordinator for this one job (the
    /// coordinator pod of a Kubernetes JobSet); exits with the job's exit code. A restarted
    /// `run` on the same state follows the job found there instead of submitting another.
    Run {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        server: ServerArgs,
        /// Wait until this many workers have registered before submitting (0: submit at once).
        #[arg(long, default_value_t = 0)]
        workers: u32,
        /// Longest wait for --workers, in seconds.
        #[arg(long, default_value_t = 600)]
        workers_timeout_secs: u64,
        /// One JSON object per job event on stdout (as `watch --json`).
        #[arg(long)]
        json: bool,
    },
    /// Run one job on Kubernetes as a JobSet: render its manifests, submit, status, logs,
    /// delete (docs/kubernetes.md).
    K8s {
        #[command(subcommand)]
        command: crate::k8s::args::K8sCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConvertFrom {
    /// A mergekit YAML config (task_arithmetic, ties, dare_linear, dare_ties).
    Mergekit {
        /// The mergekit YAML file.
        file: PathBuf,
    },
}

/// `mirrorplay generate` (see `generate.rs`).
#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// The model: a Hugging Face directory (path or URL).
    #[arg(long)]
    pub model: String,
    /// The prompt text (with --chat: the user message).
    #[arg(long)]
    pub prompt: String,
    /// Render the prompt with the model's chat template as a user turn, plus the generation
    /// prompt.
    #[arg(long)]
    pub chat: bool,
    /// A system message before the user turn (with --chat).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Always take the most likely token (ignores temperature, top-k, top-p and seed).
    #[arg(long)]
    pub greedy: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature (> 0).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub temperature: f64,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass (1 = off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f64,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Seed of the sampling stream: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// How a coordinator serves: the flags of `serve`, which `run` takes too.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Address to listen on. Beyond loopback it needs a token (or --insecure-no-auth).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// File holding the bearer token every call must carry (else $MIRRORPLAY_TOKEN).
    #[arg(long, env = "MIRRORPLAY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Listen beyond loopback without a token: anyone who can reach the port can submit,
    /// cancel and read jobs and act as a worker.
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Serve TLS with this certificate (PEM; with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Durable state: a directory or an object-store URL.
    #[arg(long, default_value = "./mirrorplay-state")]
    pub state: String,
    /// Worker lease in milliseconds: a worker silent this long loses its tasks.
    #[arg(long, default_value_t = 10_000)]
    pub lease_ms: u64,
    /// State lock lease in milliseconds: the coordinator renews its lock every third of
    /// this; after a crash the next coordinator takes the state over once it has run out.
    #[arg(long, default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(300..))]
    pub lock_lease_ms: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics. The endpoint is open (no token):
    /// it shows counts, latencies and job ids, never tokens, specs or paths.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Failures (transient errors, lost workers, broken gangs) a task survives; the next
    /// one fails its job.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=32))]
    pub task_retries: u32,
    /// The delay before a failed task's first retry in milliseconds; it doubles with each
    /// further retry, up to 60 s.
    #[arg(long, default_value_t = 1_000)]
    pub retry_backoff_ms: u64,
}
