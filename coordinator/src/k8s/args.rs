//! Flags of `mirrorplay k8s ...` (clap).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::cli::ConfigArgs;

#[derive(Subcommand, Debug)]
pub enum K8sCommand {
    /// Print the manifests of one job as YAML: a JobSet (a coordinator running `mirrorplay
    /// run` and the workers), its ServiceAccount, the config as a ConfigMap and, without
    /// --state, a PersistentVolumeClaim for the coordinator's state. Needs no cluster.
    Render(RenderArgs),
    /// Apply the manifests of `render` (server-side apply, from your kubeconfig), wait for the
    /// coordinator pod and stream its log until the job ends; exit code = the job's.
    Submit {
        #[command(flatten)]
        render: RenderArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Return once the manifests are applied, without following the job.
        #[arg(long)]
        no_wait: bool,
        /// Longest wait for the coordinator pod to start, in seconds.
        #[arg(long, default_value_t = 600)]
        start_timeout_secs: u64,
    },
    /// Show a job's JobSet state and its pods.
    Status {
        /// The job's name (the JobSet's).
        job: String,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Namespace of the job (default: the kubeconfig context's, else `default`).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print the log of a job's coordinator pod (the job's progress), or of one worker pod.
    Logs {
        job: String,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Namespace of the job (default: the kubeconfig context's, else `default`).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        /// A worker pod's index (0..N) instead of the coordinator.
        #[arg(long)]
        worker: Option<u32>,
        /// The container (default: the pod's first; a GPU worker pod has one per GPU,
        /// `worker-gpu0`, `worker-gpu1`, ...).
        #[arg(long)]
        container: Option<String>,
        /// Keep streaming until the pod's container ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Delete a job's JobSet (its Jobs and pods go with it), ConfigMap, ServiceAccount and
    /// state PVC; the job's outputs in the object store are kept.
    Delete {
        job: String,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Namespace of the job (default: the kubeconfig context's, else `default`).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        /// Keep the state PVC (to inspect it, or to run the job again on the same state).
        #[arg(long)]
        keep_state: bool,
    },
}

/// What `render` (and `submit`) build the manifests from.
#[derive(Args, Debug, Clone)]
pub struct RenderArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Worker pods.
    #[arg(long)]
    pub workers: u32,
    /// GPUs per worker pod; each runs one `mirrorplay-worker` per GPU (one container each).
    /// 0: CPU workers.
    #[arg(long, default_value_t = 0)]
    pub gpus_per_worker: u32,
    /// The container image holding `mirrorplay` and `mirrorplay-worker` (Dockerfile or
    /// Dockerfile.cuda).
    #[arg(long)]
    pub image: String,
    /// Namespace of every object (render: default `default`; submit: your kubeconfig
    /// context's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The JobSet's name (a DNS label of at most 40 characters); default: the job's name.
    #[arg(long)]
    pub name: Option<String>,
    /// The coordinator's state as an object-store URL (s3://..., gs://..., az://...); default:
    /// a PersistentVolumeClaim `NAME-state`.
    #[arg(long)]
    pub state: Option<String>,
    /// Size of the state PVC.
    #[arg(long, default_value = "1Gi")]
    pub state_size: String,
    /// StorageClass of the state PVC (default: the cluster's default class).
    #[arg(long)]
    pub storage_class: Option<String>,
    /// Secret holding the bearer token (key `token`).
    #[arg(long, default_value = "mirrorplay-token")]
    pub token_secret: String,
    /// Secret whose keys become environment variables of every container: object-store
    /// credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT, ...).
    #[arg(long)]
    pub object_store_secret: Option<String>,
    /// CPU request of each worker process (a Kubernetes quantity).
    #[arg(long, default_value = "2")]
    pub cpus_per_worker: String,
    /// Memory request and limit of each worker process (a Kubernetes quantity).
    #[arg(long, default_value = "8Gi")]
    pub memory_per_worker: String,
    /// Size of each worker pod's memory-backed /dev/shm (NCCL's shared memory).
    #[arg(long, default_value = "2Gi")]
    pub shm_size: String,
    /// Times the JobSet restarts all its pods after a worker Job fails, before failing.
    #[arg(long, default_value_t = 3)]
    pub max_restarts: u32,
    /// Times a failed worker pod (or a crashed coordinator pod) is replaced before its Job
    /// fails.
    #[arg(long, default_value_t = 3)]
    pub backoff_limit: u32,
}

/// Which cluster: the kubeconfig and its context.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// The kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current-context).
    #[arg(long)]
    pub context: Option<String>,
}
