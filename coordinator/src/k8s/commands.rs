//! `mirrorplay k8s submit|status|logs|delete` against the cluster of the user's kubeconfig.
//!
//! `submit` applies `render`'s manifests (server-side apply), waits for the coordinator pod
//! and streams its log (the coordinator is `mirrorplay run`, which shows the job's progress as
//! `watch` does) until the JobSet ends; its exit code is the coordinator's, i.e. the job's.

use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;
use serde_json::{json, Value};

use super::api::{collection_path, object_path, Api, ApiError};
use super::args::{ClusterArgs, RenderArgs};
use super::jobset::COORDINATOR;
use super::log_cursor::LogCursor;
use super::{kubeconfig, render, INSTANCE_LABEL};
use crate::exit::Exit;

const JOBSET_API: &str = "jobset.x-k8s.io/v1alpha2";
/// Label Kubernetes puts on the pods of an Indexed Job.
const INDEX_LABEL: &str = "batch.kubernetes.io/job-completion-index";
const COMPONENT_LABEL: &str = "app.kubernetes.io/component";

/// The cluster and the namespace to work in (`--namespace`, else the context's, else
/// `default`).
pub async fn connect(cluster: &ClusterArgs, namespace: Option<&str>) -> Result<(Api, String)> {
    let cfg = kubeconfig::load(cluster.kubeconfig.as_deref(), cluster.context.as_deref())
        .map_err(|e| Exit::Config(e.0))?;
    let ns = namespace
        .map(str::to_string)
        .or_else(|| cfg.namespace.clone())
        .unwrap_or_else(|| "default".into());
    let api = Api::connect(&cfg).await.map_err(api_error)?;
    Ok((api, ns))
}

/// An API error as the CLI reports it: bad credentials are usage errors (exit 2), the rest
/// runtime errors (exit 1), with a hint where one helps.
fn api_error(e: ApiError) -> anyhow::Error {
    match &e {
        ApiError::Config(m) => anyhow::Error::new(Exit::Config(m.clone())),
        ApiError::Status { code: 404, path, .. } if path.contains("/jobsets") => anyhow::anyhow!(
            "{e} (is the JobSet controller installed? docs/kubernetes.md#install-the-jobset-controller)"
        ),
        ApiError::Status { code: 401 | 403, .. } => {
            anyhow::anyhow!("{e} (check the kubeconfig's credentials and RBAC)")
        }
        _ => anyhow::anyhow!("{e}"),
    }
}

fn jobset_path(ns: &str, job: &str) -> String {
    format!(
        "{}/{job}",
        collection_path(JOBSET_API, "JobSet", ns).expect("a known kind")
    )
}

/// The job's JobSet; a missing one is a usage error naming the job.
async fn get_jobset(api: &Api, ns: &str, job: &str) -> Result<Value> {
    match api.get(&jobset_path(ns, job)).await {
        Ok(v) => Ok(v),
        Err(e) if e.is_not_found() => Err(anyhow::Error::new(Exit::Config(format!(
            "no job `{job}` in namespace `{ns}` ({e})"
        )))),
        Err(e) => Err(api_error(e)),
    }
}

/// The job's pods of one component (`coordinator` or `workers`), newest first.
async fn pods(api: &Api, ns: &str, job: &str, component: &str) -> Result<Vec<Value>> {
    let path = format!(
        "/api/v1/namespaces/{ns}/pods?labelSelector={INSTANCE_LABEL}%3D{job}%2C{COMPONENT_LABEL}%3D{component}"
    );
    let list = api.get(&path).await.map_err(api_error)?;
    let mut items: Vec<Value> = list["items"].as_array().cloned().unwrap_or_default();
    items.sort_by(|a, b| {
        let t = |p: &Value| {
            p["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or("")
                .to_string()
        };
        t(b).cmp(&t(a))
    });
    Ok(items)
}

/// `Completed`, `Failed`, or None while the JobSet runs.
fn terminal(jobset: &Value) -> Option<String> {
    if let Some(s) = jobset["status"]["terminalState"]
        .as_str()
        .filter(|s| !s.is_empty())
    {
        return Some(s.to_string());
    }
    jobset["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["status"] == "True" && (c["type"] == "Completed" || c["type"] == "Failed"))
        .and_then(|c| c["type"].as_str().map(str::to_string))
}

fn state_word(jobset: &Value) -> String {
    match terminal(jobset) {
        Some(t) => t.to_lowercase(),
        None => {
            let suspended = jobset["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Suspended" && c["status"] == "True");
            if suspended { "suspended" } else { "running" }.into()
        }
    }
}

/// The exit code of a pod's container, once it has ended.
fn exit_code(pod: &Value, container: &str) -> Option<i64> {
    pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == container)
        .and_then(|c| c["state"]["terminated"]["exitCode"].as_i64())
}

/// Why a pod is not running yet, e.g. `ContainerCreating` or `ImagePullBackOff: ...`.
fn waiting_reason(pod: &Value) -> String {
    let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
    let waiting = pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|c| {
            c["state"]["waiting"]["reason"].as_str().map(|r| {
                match c["state"]["waiting"]["message"].as_str() {
                    Some(m) => format!("{r}: {m}"),
                    None => r.to_string(),
                }
            })
        });
    waiting.unwrap_or_else(|| phase.to_string())
}

fn exit_of(code: i64, job: &str) -> Exit {
    let see = format!("`mirrorplay k8s logs {job}` shows the coordinator's log");
    match code {
        0 => Exit::Ok,
        2 => Exit::Config(format!(
            "the job was refused (coordinator exit code 2); {see}"
        )),
        3 => Exit::Cancelled,
        c => Exit::JobFailed(format!(
            "job {job} failed (coordinator exit code {c}); {see}"
        )),
    }
}

pub async fn submit(
    render_args: &RenderArgs,
    cluster: &ClusterArgs,
    no_wait: bool,
    start_timeout: Duration,
) -> Result<Exit> {
    let (api, ns) = connect(cluster, render_args.namespace.as_deref()).await?;
    let plan = super::plan(render_args, &ns)?;
    for object in render::manifests(&plan) {
        api.apply(&object).await.map_err(api_error)?;
        eprintln!(
            "applied {}/{}",
            object["kind"].as_str().unwrap_or("").to_lowercase(),
            object["metadata"]["name"].as_str().unwrap_or("")
        );
    }
    let job = plan.name.clone();
    if no_wait {
        println!("{job}");
        return Ok(Exit::Ok);
    }
    follow(&api, &ns, &job, start_timeout).await
}

/// Waits for the job's coordinator pod, streams its log, and gives the job's exit code once
/// the JobSet has ended. When the JobSet restarts its pods, the new coordinator is followed. A
/// stream that ends while the coordinator still runs (broken off, or closed by the API server)
/// is resumed after the last line printed (`LogCursor`).
async fn follow(api: &Api, ns: &str, job: &str, start_timeout: Duration) -> Result<Exit> {
    // Each coordinator pod followed, with where its log stands.
    let mut cursors: Vec<(String, LogCursor)> = Vec::new();
    // The pods whose log was read to its end after the coordinator stopped.
    let mut streamed: Vec<String> = Vec::new();
    let mut waited = tokio::time::Instant::now();
    let mut last_reason = String::new();
    loop {
        let coordinator = pods(api, ns, job, COORDINATOR).await?.into_iter().next();
        let jobset = get_jobset(api, ns, job).await?;
        let ended = terminal(&jobset);
        if let Some(pod) = &coordinator {
            let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
            let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
            if phase != "Pending" && !streamed.contains(&name) {
                let stopped = exit_code(pod, COORDINATOR).is_some();
                let at = match cursors.iter().position(|(n, _)| *n == name) {
                    Some(at) => at,
                    None => {
                        eprintln!("following the coordinator pod {name}");
                        cursors.push((name.clone(), LogCursor::default()));
                        cursors.len() - 1
                    }
                };
                let printed = stream_logs(api, ns, &name, COORDINATOR, &mut cursors[at].1).await?;
                if stopped {
                    // The stream of a stopped container ends with its last line.
                    streamed.push(name);
                } else if !printed {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                waited = tokio::time::Instant::now();
                continue;
            }
            if streamed.contains(&name) {
                if let Some(code) = exit_code(pod, COORDINATOR) {
                    if ended.is_some() {
                        return Ok(exit_of(code, job));
                    }
                }
            } else {
                let reason = waiting_reason(pod);
                if reason != last_reason {
                    eprintln!("coordinator pod {name}: {reason}");
                    last_reason = reason;
                }
            }
        }
        match ended.as_deref() {
            Some("Completed") => return Ok(Exit::Ok),
            Some(other) if coordinator.is_none() || !cursors.is_empty() => {
                return Ok(Exit::JobFailed(format!(
                    "job {job}: the JobSet ended {other}; `mirrorplay k8s status {job}` shows its pods"
                )))
            }
            _ => {}
        }
        if cursors.is_empty() && waited.elapsed() > start_timeout {
            return Ok(Exit::JobFailed(format!(
                "the coordinator of job {job} did not start within {} s (last: {}); the job stays submitted",
                start_timeout.as_secs(),
                if last_reason.is_empty() { "no pod" } else { &last_reason }
            )));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Copies a container's log to stderr as it comes, from the line after the last one
/// `cursor` printed; returns whether it printed any. A stream that breaks off ends here: the
/// caller resumes it.
async fn stream_logs(
    api: &Api,
    ns: &str,
    pod: &str,
    container: &str,
    cursor: &mut LogCursor,
) -> Result<bool> {
    cursor.restart();
    let since = cursor.since_time();
    let response = api
        .follow_logs(ns, pod, container, since.as_deref())
        .await
        .map_err(api_error)?;
    let mut body = response.bytes_stream();
    let mut printed = false;
    let mut print = |text: String| {
        use std::io::Write;
        if !text.is_empty() {
            printed = true;
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(text.as_bytes());
            let _ = err.flush();
        }
    };
    let mut broken = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => print(cursor.take(&bytes)),
            Err(e) => {
                tracing::warn!(error = %e, pod, "the log stream broke off; resuming it");
                broken = true;
                break;
            }
        }
    }
    if !broken {
        print(cursor.finish());
    }
    Ok(printed)
}

pub async fn status(
    cluster: &ClusterArgs,
    namespace: Option<&str>,
    job: &str,
    json: bool,
) -> Result<Exit> {
    let (api, ns) = connect(cluster, namespace).await?;
    let jobset = get_jobset(&api, &ns, job).await?;
    let mut all_pods = Vec::new();
    for component in [COORDINATOR, super::jobset::WORKERS] {
        for p in pods(&api, &ns, job, component).await? {
            all_pods.push(json!({
                "name": p["metadata"]["name"],
                "component": component,
                "phase": p["status"]["phase"],
                "exit_code": exit_code(&p, COORDINATOR),
                "waiting": if p["status"]["phase"] == "Pending" { Some(waiting_reason(&p)) } else { None },
            }));
        }
    }
    let replicated: Vec<Value> = jobset["status"]["replicatedJobsStatus"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let summary = json!({
        "name": job,
        "namespace": ns,
        "state": state_word(&jobset),
        "restarts": jobset["status"]["restarts"].as_u64().unwrap_or(0),
        "replicated_jobs": replicated,
        "pods": all_pods,
    });
    if json {
        println!("{summary}");
        return Ok(Exit::Ok);
    }
    println!(
        "job {job} (namespace {ns}): {}, {} restart(s)",
        summary["state"].as_str().unwrap_or(""),
        summary["restarts"]
    );
    for r in &replicated {
        println!(
            "  {}: active {} ready {} succeeded {} failed {}",
            r["name"].as_str().unwrap_or(""),
            r["active"].as_u64().unwrap_or(0),
            r["ready"].as_u64().unwrap_or(0),
            r["succeeded"].as_u64().unwrap_or(0),
            r["failed"].as_u64().unwrap_or(0)
        );
    }
    for p in summary["pods"].as_array().into_iter().flatten() {
        let mut line = format!(
            "  pod {} ({}): {}",
            p["name"].as_str().unwrap_or(""),
            p["component"].as_str().unwrap_or(""),
            p["phase"].as_str().unwrap_or("")
        );
        if let Some(w) = p["waiting"].as_str() {
            line.push_str(&format!(" ({w})"));
        }
        println!("{line}");
    }
    Ok(Exit::Ok)
}

pub async fn logs(
    cluster: &ClusterArgs,
    namespace: Option<&str>,
    job: &str,
    worker: Option<u32>,
    container: Option<&str>,
    follow: bool,
) -> Result<Exit> {
    let (api, ns) = connect(cluster, namespace).await?;
    let component = if worker.is_some() {
        super::jobset::WORKERS
    } else {
        COORDINATOR
    };
    let candidates = pods(&api, &ns, job, component).await?;
    let pod = match worker {
        None => candidates.into_iter().next(),
        Some(i) => candidates
            .into_iter()
            .find(|p| p["metadata"]["labels"][INDEX_LABEL].as_str() == Some(&i.to_string())),
    };
    let Some(pod) = pod else {
        // No pod: is there a job at all?
        get_jobset(&api, &ns, job).await?;
        let which = match worker {
            Some(i) => format!("worker {i}"),
            None => "coordinator".into(),
        };
        return Ok(Exit::Config(format!(
            "job `{job}` has no {which} pod (yet)"
        )));
    };
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let container = match container {
        Some(c) => c.to_string(),
        None => pod["spec"]["containers"][0]["name"]
            .as_str()
            .unwrap_or(COORDINATOR)
            .to_string(),
    };
    let response = api
        .logs(&ns, name, &container, follow)
        .await
        .map_err(api_error)?;
    let mut body = response.bytes_stream();
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = body.next().await {
        let bytes =
            chunk.map_err(|e| anyhow::anyhow!("the log stream of {name} broke off: {e}"))?;
        out.write_all(&bytes)?;
        out.flush()?;
    }
    Ok(Exit::Ok)
}

pub async fn delete(
    cluster: &ClusterArgs,
    namespace: Option<&str>,
    job: &str,
    keep_state: bool,
) -> Result<Exit> {
    let (api, ns) = connect(cluster, namespace).await?;
    let meta = |name: String| json!({"name": name, "namespace": ns});
    let mut objects = vec![
        json!({"apiVersion": JOBSET_API, "kind": "JobSet", "metadata": meta(job.to_string())}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(format!("{job}-config"))}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(job.to_string())}),
    ];
    if !keep_state {
        objects.push(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta(format!("{job}-state"))}));
    }
    let mut deleted = 0;
    for o in &objects {
        let what = format!(
            "{}/{}",
            o["kind"].as_str().unwrap_or("").to_lowercase(),
            o["metadata"]["name"].as_str().unwrap_or("")
        );
        match api.delete(&object_path(o).map_err(api_error)?).await {
            Ok(()) => {
                deleted += 1;
                eprintln!("deleted {what}");
            }
            Err(e) if e.is_not_found() => eprintln!("{what}: not found"),
            Err(e) => return Err(api_error(e)),
        }
    }
    if deleted == 0 {
        return Ok(Exit::Config(format!("no job `{job}` in namespace `{ns}`")));
    }
    Ok(Exit::Ok)
}
