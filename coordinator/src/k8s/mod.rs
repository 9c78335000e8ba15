//! `mirrorplay k8s`: one job on Kubernetes as a JobSet (docs/kubernetes.md).
//!
//! - `args`: the subcommands' flags (clap);
//! - `render`: the manifest set of one job (ServiceAccount, ConfigMap, state PVC, JobSet),
//!   pure: no cluster needed;
//! - `jobset`: the JobSet and its pod templates;
//! - `kubeconfig`, `api`: the user's kubeconfig and a small Kubernetes API client;
//! - `commands`: `submit`, `status`, `logs`, `delete` on top of them; `log_cursor`: where
//!   `submit`'s followed log stands, so that a broken stream resumes.

pub mod api;
pub mod args;
pub mod commands;
pub mod jobset;
pub mod kubeconfig;
pub mod log_cursor;
pub mod render;

use std::path::Path;

use anyhow::Result;

use crate::exit::Exit;
use args::{K8sCommand, RenderArgs};

/// Label every rendered object carries: the JobSet (job) it belongs to.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

/// Loads the config (every check `validate` makes but the local-input check: the pods read
/// the inputs, relative paths resolving in the image) and plans its manifests; warnings go to
/// stderr. `namespace` is the one to render into.
pub fn plan(args: &RenderArgs, namespace: &str) -> Result<render::Plan, Exit> {
    let cwd = std::env::current_dir().map_err(|e| Exit::Config(e.to_string()))?;
    let path = &args.config.config;
    let loaded = crate::config::load(path, &args.config.sets, &cwd)
        .map_err(|e| Exit::Config(e.to_string()))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| Exit::Config(format!("{}: cannot read the config: {e}", path.display())))?;
    let file = Path::new(path)
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_else(|| "job.toml".into());
    for w in render::warnings(&loaded.spec) {
        eprintln!("warning: {w}");
    }
    render::plan(args, namespace, &loaded.spec, &file, &text).map_err(|e| Exit::Config(e.0))
}

pub async fn main(command: K8sCommand) -> Result<Exit> {
    match command {
        K8sCommand::Render(args) => {
            let namespace = args.namespace.clone().unwrap_or_else(|| "default".into());
            let plan = plan(&args, &namespace)?;
            print!("{}", render::to_yaml(&render::manifests(&plan)));
            Ok(Exit::Ok)
        }
        K8sCommand::Submit {
            render,
            cluster,
            no_wait,
            start_timeout_secs,
        } => {
            commands::submit(
                &render,
                &cluster,
                no_wait,
                std::time::Duration::from_secs(start_timeout_secs),
            )
            .await
        }
        K8sCommand::Status {
            job,
            cluster,
            namespace,
            json,
        } => commands::status(&cluster, namespace.as_deref(), &job, json).await,
        K8sCommand::Logs {
            job,
            cluster,
            namespace,
            worker,
            container,
            follow,
        } => {
            commands::logs(
                &cluster,
                namespace.as_deref(),
                &job,
                worker,
                container.as_deref(),
                follow,
            )
            .await
        }
        K8sCommand::Delete {
            job,
            cluster,
            namespace,
            keep_state,
        } => commands::delete(&cluster, namespace.as_deref(), &job, keep_state).await,
    }
}
