//! `mirrorplay k8s render`: the complete manifest set of one job, computed from the flags and
//! the job config alone (no cluster):
//!
//! 1. a ServiceAccount for the job's pods, with no Role: neither the coordinator nor the
//!    workers call the Kubernetes API, so the least RBAC is none (and no API token is mounted);
//! 2. a ConfigMap holding the config file as written (the pod's `mirrorplay run` reads it with
//!    the same `--set` overrides, so relative paths resolve inside the image);
//! 3. without `--state URL`, a PersistentVolumeClaim for the coordinator's state, so that a
//!    restarted coordinator pod resumes the job;
//! 4. the JobSet (`jobset.rs`).
//!
//! The token and object-store Secrets are referenced, never rendered: they hold credentials.

use serde_json::{json, Value};

use mirrorplay_proto::v1::JobSpec;

use super::args::RenderArgs;
use super::{jobset, INSTANCE_LABEL};
use crate::embedded::max_world_size;

/// A flag or config value that cannot make a manifest; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(pub String);

fn bad(message: impl Into<String>) -> RenderError {
    RenderError(message.into())
}

/// Longest JobSet name: its pods' host names (`NAME-coordinator-0-0`) must stay DNS labels.
pub const MAX_NAME: usize = 40;

/// Mount point of the config in every container.
pub const CONFIG_DIR: &str = "/etc/mirrorplay";
/// Mount point of the state PVC in the coordinator.
pub const STATE_DIR: &str = "/var/lib/mirrorplay/state";
/// The coordinator's gRPC port.
pub const GRPC_PORT: u16 = 50051;

/// Everything a manifest is made of, checked.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub namespace: String,
    pub image: String,
    /// Worker pods.
    pub workers: u32,
    /// GPUs (= worker containers) per worker pod; 0 for a CPU pod with one worker.
    pub gpus_per_worker: u32,
    /// The config file's name (its key in the ConfigMap) and text.
    pub config_file: String,
    pub config_text: String,
    pub sets: Vec<String>,
    /// `Some(url)`: state in an object store; `None`: on the PVC `NAME-state`.
    pub state_url: Option<String>,
    pub state_size: String,
    pub storage_class: Option<String>,
    pub token_secret: String,
    pub object_store_secret: Option<String>,
    pub cpus: String,
    pub memory: String,
    pub shm_size: String,
    pub max_restarts: u32,
    pub backoff_limit: u32,
}

impl Plan {
    /// Worker processes in all: one per GPU, or one per CPU pod.
    pub fn worker_processes(&self) -> u32 {
        self.workers * self.gpus_per_worker.max(1)
    }

    /// The coordinator's address inside the cluster: its pod's host name under the JobSet's
    /// headless service (JobSet `network.enableDNSHostnames`).
    pub fn coordinator_url(&self) -> String {
        format!(
            "http://{}-{}-0-0.{}:{GRPC_PORT}",
            self.name,
            jobset::COORDINATOR,
            self.name
        )
    }

    pub fn labels(&self) -> Value {
        json!({
            "app.kubernetes.io/name": "mirrorplay",
            "app.kubernetes.io/part-of": "mirrorplay",
            INSTANCE_LABEL: self.name,
        })
    }

    pub fn metadata(&self, name: &str) -> Value {
        json!({"name": name, "namespace": self.namespace, "labels": self.labels()})
    }

    pub fn config_map_name(&self) -> String {
        format!("{}-config", self.name)
    }

    pub fn state_claim_name(&self) -> String {
        format!("{}-state", self.name)
    }
}

/// Checks the flags against the loaded job and makes the plan. `config_file` is the config's
/// file name, `config_text` its text as written.
pub fn plan(
    args: &RenderArgs,
    namespace: &str,
    spec: &JobSpec,
    config_file: &str,
    config_text: &str,
) -> Result<Plan, RenderError> {
    let name = match &args.name {
        Some(n) => {
            check_label(n, "--name")?;
            n.clone()
        }
        None => name_from(&spec.name)?,
    };
    check_label(namespace, "--namespace")?;
    if args.image.trim().is_empty() || args.image.chars().any(char::is_whitespace) {
        return Err(bad(format!(
            "--image `{}` is not an image reference",
            args.image
        )));
    }
    if args.workers == 0 {
        return Err(bad("--workers must be at least 1"));
    }
    let processes = args.workers * args.gpus_per_worker.max(1);
    let world = max_world_size(spec);
    if world > processes {
        return Err(bad(format!(
            "the job asks for world_size = {world} but --workers {} × {} worker process(es) per pod gives {processes}",
            args.workers,
            args.gpus_per_worker.max(1)
        )));
    }
    for (flag, value) in [
        ("--state-size", &args.state_size),
        ("--cpus-per-worker", &args.cpus_per_worker),
        ("--memory-per-worker", &args.memory_per_worker),
        ("--shm-size", &args.shm_size),
    ] {
        check_quantity(value, flag)?;
    }
    for (flag, value) in [
        ("--token-secret", Some(&args.token_secret)),
        ("--object-store-secret", args.object_store_secret.as_ref()),
        ("--storage-class", args.storage_class.as_ref()),
    ] {
        if let Some(v) = value {
            check_subdomain(v, flag)?;
        }
    }
    let state_url = match &args.state {
        None => None,
        Some(url) => Some(check_state_url(url)?),
    };
    Ok(Plan {
        name,
        namespace: namespace.to_string(),
        image: args.image.clone(),
        workers: args.workers,
        gpus_per_worker: args.gpus_per_worker,
        config_file: config_file.to_string(),
        config_text: config_text.to_string(),
        sets: args.config.sets.clone(),
        state_url,
        state_size: args.state_size.clone(),
        storage_class: args.storage_class.clone(),
        token_secret: args.token_secret.clone(),
        object_store_secret: args.object_store_secret.clone(),
        cpus: args.cpus_per_worker.clone(),
        memory: args.memory_per_worker.clone(),
        shm_size: args.shm_size.clone(),
        max_restarts: args.max_restarts,
        backoff_limit: args.backoff_limit,
    })
}

/// Words about the job a person should read before applying it (not errors).
pub fn warnings(spec: &JobSpec) -> Vec<String> {
    let mut out = Vec::new();
    if spec.output.starts_with("file://") {
        out.push(format!(
            "job.output `{}` is a path: each pod would write its own disk and the outputs would be lost with the pods; give an object-store URL (--set job.output=s3://BUCKET/PREFIX)",
            spec.output
        ));
    }
    out
}

/// The manifests, in the order they are applied.
pub fn manifests(plan: &Plan) -> Vec<Value> {
    let mut out = vec![service_account(plan), config_map(plan)];
    if plan.state_url.is_none() {
        out.push(state_claim(plan));
    }
    out.push(jobset::jobset(plan));
    out
}

/// The manifests as one YAML stream.
pub fn to_yaml(manifests: &[Value]) -> String {
    let mut out = String::from(
        "# Rendered by `mirrorplay k8s render`; apply with `kubectl apply --server-side -f FILE`\n# or let `mirrorplay k8s submit` do it (docs/kubernetes.md).\n",
    );
    for m in manifests {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(m).expect("a JSON value is YAML"));
    }
    out
}

fn service_account(plan: &Plan) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": plan.metadata(&plan.name),
        "automountServiceAccountToken": false,
    })
}

fn config_map(plan: &Plan) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": plan.metadata(&plan.config_map_name()),
        "data": {plan.config_file.clone(): plan.config_text},
    })
}

fn state_claim(plan: &Plan) -> Value {
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": plan.state_size}},
    });
    if let Some(class) = &plan.storage_class {
        spec["storageClassName"] = json!(class);
    }
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": plan.metadata(&plan.state_claim_name()),
        "spec": spec,
    })
}

/// A JobSet name from the job's name: lower case, `-` for anything else, at most
/// [`MAX_NAME`] characters, starting with a letter.
fn name_from(job_name: &str) -> Result<String, RenderError> {
    let mut name = String::new();
    for c in job_name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            name.push(c);
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let mut name = name.trim_matches('-').to_string();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert_str(0, "mp-");
    }
    name.truncate(MAX_NAME);
    let name = name.trim_end_matches('-').to_string();
    if name.is_empty() {
        return Err(bad(format!(
            "the job's name `{job_name}` makes no Kubernetes name; give --name"
        )));
    }
    Ok(name)
}

/// A DNS-1035 label of at most [`MAX_NAME`] characters.
fn check_label(value: &str, flag: &str) -> Result<(), RenderError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && !value.ends_with('-')
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "{flag} `{value}` is not a Kubernetes name: lower-case letters, digits and `-`, starting with a letter, at most {MAX_NAME} characters"
        )))
    }
}

/// A DNS-1123 subdomain (the names of Secrets and StorageClasses).
fn check_subdomain(value: &str, flag: &str) -> Result<(), RenderError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "{flag} `{value}` is not a Kubernetes object name"
        )))
    }
}

/// A Kubernetes quantity: a decimal number with an optional SI or binary suffix.
fn check_quantity(value: &str, flag: &str) -> Result<(), RenderError> {
    const SUFFIXES: &[&str] = &[
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m", "k", "M", "G", "T", "P", "E", "",
    ];
    let number = SUFFIXES
        .iter()
        .find_map(|s| value.strip_suffix(s).filter(|_| !s.is_empty()))
        .unwrap_or(value);
    let mut parts = number.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let frac = parts.next();
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let ok = digits(whole) && frac.is_none_or(digits) && value != "0";
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "{flag} `{value}` is not a Kubernetes quantity (e.g. 2, 500m, 8Gi)"
        )))
    }
}

/// The state must outlive the coordinator pod: an object-store URL (a path would be the pod's
/// own disk; without --state the state goes on a PVC).
fn check_state_url(url: &str) -> Result<String, RenderError> {
    let parsed = url::Url::parse(url).ok().filter(|u| u.scheme() != "file");
    match parsed {
        Some(u) if matches!(u.scheme(), "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" | "adl" | "http" | "https") => {
            Ok(url.to_string())
        }
        _ => Err(bad(format!(
            "--state `{url}` is not an object-store URL (s3://, gs://, az://, ...): a path would be the coordinator pod's own disk; leave --state out for a PersistentVolumeClaim"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_job_and_are_checked() {
        assert_eq!(name_from("Selfplay_Nash MD").unwrap(), "selfplay-nash-md");
        assert_eq!(name_from("2024-run").unwrap(), "mp-2024-run");
        assert_eq!(name_from(&"a".repeat(80)).unwrap().len(), MAX_NAME);
        assert!(name_from("___").unwrap_err().to_string().contains("--name"));
        assert!(check_label("ok-name", "--name").is_ok());
        for bad in ["Upper", "-x", "x-", "1x", "a_b", ""] {
            let e = check_label(bad, "--name").unwrap_err().to_string();
            assert!(e.contains("--name") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn quantities_and_state_urls_are_checked() {
        for ok in ["2", "500m", "8Gi", "1.5", "100M"] {
            assert!(check_quantity(ok, "--x").is_ok(), "{ok}");
        }
        for no in ["", "0", "2 Gi", "Gi", "1.", "-1", "8GB", "x"] {
            let e = check_quantity(no, "--shm-size").unwrap_err().to_string();
            assert!(e.contains("--shm-size"), "{e}");
        }
        assert!(check_state_url("s3://bucket/state").is_ok());
        for no in ["/var/state", "file:///x", "state", "ftp://x/y"] {
            let e = check_state_url(no).unwrap_err().to_string();
            assert!(
                e.contains("--state") && e.contains("PersistentVolumeClaim"),
                "{e}"
            );
        }
        assert!(check_subdomain("my.secret-1", "--token-secret").is_ok());
        assert!(check_subdomain("My_Secret", "--token-secret")
            .unwrap_err()
            .to_string()
            .contains("--token-secret"));
    }
}
