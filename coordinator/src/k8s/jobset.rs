//! The JobSet (`jobset.x-k8s.io/v1alpha2`) of one job: two replicated jobs,
//!
//! - `coordinator`: one pod running `mirrorplay run` (serve + submit + watch) on the config
//!   from the ConfigMap, its state on the PVC or an object-store URL; its exit code is the
//!   job's, and the JobSet succeeds when it does (`successPolicy`). A coordinator pod that
//!   crashes, is lost or fails its gRPC liveness probe is replaced (`backoffLimit`) and
//!   resumes the job from its state; one
//!   that exits with the job's failure (1, 2 or 3) fails its Job at once (`podFailurePolicy`),
//!   and a failed coordinator Job fails the JobSet (`failurePolicy.rules`: restarting cannot
//!   help);
//! - `workers`: W pods (`restartPolicy: Never`, a failed pod replaced up to `backoffLimit`
//!   times, after which the JobSet restarts every pod up to `failurePolicy.maxRestarts` times;
//!   the restarted coordinator resumes the job from its state). A GPU pod runs one
//!   `mirrorplay-worker` container per GPU (`nvidia.com/gpu: 1` each), sharing the pod's
//!   memory-backed `/dev/shm`.
//!
//! Ranks come from the coordinator's gang assignment (it gives a gang's ranks to the polling
//! workers it chose, in registration order), not from pod indices: the indices only name the
//! pods, and the coordinator's host name (`NAME-coordinator-0-0.NAME`, from
//! `network.enableDNSHostnames`).

use serde_json::{json, Value};

use super::render::{Plan, CONFIG_DIR, GRPC_PORT, STATE_DIR};

/// Names of the two replicated jobs.
pub const COORDINATOR: &str = "coordinator";
pub const WORKERS: &str = "workers";

/// User and group of every container (the images' `mirrorplay` user).
pub const UID: u64 = 10001;

/// Seconds a worker gets between SIGTERM and SIGKILL; it hands its task back within
/// `--grace-secs` (45) before that.
const WORKER_GRACE_SECS: u64 = 60;

pub fn jobset(plan: &Plan) -> Value {
    json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": plan.metadata(&plan.name),
        "spec": {
            "network": {"enableDNSHostnames": true, "publishNotReadyAddresses": true},
            "successPolicy": {"operator": "All", "targetReplicatedJobs": [COORDINATOR]},
            "failurePolicy": {
                "maxRestarts": plan.max_restarts,
                "rules": [{
                    "name": "coordinatorFailed",
                    "action": "FailJobSet",
                    "targetReplicatedJobs": [COORDINATOR],
                }],
            },
            "replicatedJobs": [
                {"name": COORDINATOR, "replicas": 1, "template": coordinator_job(plan)},
                {"name": WORKERS, "replicas": 1, "template": workers_job(plan)},
            ],
        },
    })
}

fn coordinator_job(plan: &Plan) -> Value {
    let mut args: Vec<String> = vec![
        "run".into(),
        format!("{CONFIG_DIR}/{}", plan.config_file),
        "--listen".into(),
        format!("0.0.0.0:{GRPC_PORT}"),
        "--state".into(),
        plan.state_url.clone().unwrap_or_else(|| STATE_DIR.into()),
        "--workers".into(),
        plan.worker_processes().to_string(),
        "--log-format".into(),
        "json".into(),
    ];
    for set in &plan.sets {
        args.push("--set".into());
        args.push(set.clone());
    }
    let mut mounts = vec![
        json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    let mut volumes = vec![
        json!({"name": "config", "configMap": {"name": plan.config_map_name()}}),
        json!({"name": "tmp", "emptyDir": {}}),
    ];
    if plan.state_url.is_none() {
        mounts.push(json!({"name": "state", "mountPath": STATE_DIR}));
        volumes.push(json!({"name": "state", "persistentVolumeClaim": {"claimName": plan.state_claim_name()}}));
    }
    let mut container = json!({
        "name": COORDINATOR,
        "image": plan.image,
        "command": ["mirrorplay"],
        "args": args,
        "env": env(plan, vec![]),
        "envFrom": env_from(plan),
        "ports": [{"name": "grpc", "containerPort": GRPC_PORT}],
        // gRPC health needs no token (docs/architecture.md#authentication); the liveness
        // probe replaces a coordinator that stops answering for a minute (the timings of
        // k8s/base), which resumes the job from its state.
        "readinessProbe": {"grpc": {"port": GRPC_PORT}, "periodSeconds": 5},
        "livenessProbe": {"grpc": {"port": GRPC_PORT}, "periodSeconds": 20, "failureThreshold": 3},
        "resources": {
            "requests": {"cpu": "500m", "memory": "512Mi"},
            "limits": {"memory": "2Gi"},
        },
        "securityContext": container_security(),
        "volumeMounts": mounts,
    });
    drop_empty_env_from(&mut container);
    json!({
        "spec": {
            "completionMode": "Indexed",
            "parallelism": 1,
            "completions": 1,
            // A coordinator pod lost to a node or killed (OOM, crash, a failed liveness probe:
            // `run` stopped by SIGTERM exits 143) is replaced and resumes the job from its
            // state; the job's own outcome (exit 1 failed, 2 refused, 3 cancelled) ends the Job
            // at once; evictions and preemptions do not count. The first rule that matches
            // applies, so the eviction rule comes first.
            "backoffLimit": plan.backoff_limit,
            "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {"action": "FailJob", "onExitCodes": {"containerName": COORDINATOR, "operator": "In", "values": [1, 2, 3]}},
            ]},
            "template": {
                "metadata": {"labels": role_labels(plan, COORDINATOR)},
                "spec": pod_spec(plan, vec![container], volumes, 30),
            },
        },
    })
}

fn workers_job(plan: &Plan) -> Value {
    let gpus = plan.gpus_per_worker;
    let containers: Vec<Value> = if gpus == 0 {
        vec![worker_container(plan, "worker", None)]
    } else {
        (0..gpus)
            .map(|g| worker_container(plan, &format!("worker-gpu{g}"), Some(g)))
            .collect()
    };
    let volumes = vec![
        json!({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": plan.shm_size}}),
        json!({"name": "tmp", "emptyDir": {}}),
    ];
    let mut spec = pod_spec(plan, containers, volumes, WORKER_GRACE_SECS);
    if gpus > 0 {
        spec["tolerations"] =
            json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]);
    }
    json!({
        "spec": {
            "completionMode": "Indexed",
            "parallelism": plan.workers,
            "completions": plan.workers,
            "backoffLimit": plan.backoff_limit,
            // A drained or preempted worker pod is replaced without using up the backoff.
            "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]},
            "template": {
                "metadata": {"labels": role_labels(plan, WORKERS)},
                "spec": spec,
            },
        },
    })
}

/// One `mirrorplay-worker`: on GPU `gpu` of its pod (each container sees only the GPU it was
/// given, as `cuda:0`), or on the CPU.
fn worker_container(plan: &Plan, name: &str, gpu: Option<u32>) -> Value {
    let worker_name = match gpu {
        Some(g) => format!("$(POD_NAME)-gpu{g}"),
        None => "$(POD_NAME)".into(),
    };
    let mut extra = vec![
        json!({"name": "MIRRORPLAY_COORDINATOR", "value": plan.coordinator_url()}),
        json!({"name": "MIRRORPLAY_WORKER_NAME", "value": worker_name}),
    ];
    let mut limits = json!({"memory": plan.memory});
    match gpu {
        Some(_) => {
            extra.push(json!({"name": "MIRRORPLAY_DEVICE", "value": "cuda:0"}));
            limits["nvidia.com/gpu"] = json!(1);
        }
        None => {
            // The compute pool's threads: the CPUs requested (rounded down, at least one).
            extra.push(json!({"name": "RAYON_NUM_THREADS", "value": threads(&plan.cpus)}));
        }
    }
    let mut container = json!({
        "name": name,
        "image": plan.image,
        "command": ["mirrorplay-worker"],
        "args": ["--grace-secs", "45", "--log-format", "json"],
        "env": env(plan, extra),
        "envFrom": env_from(plan),
        "resources": {
            "requests": {"cpu": plan.cpus, "memory": plan.memory},
            "limits": limits,
        },
        "securityContext": container_security(),
        "volumeMounts": [
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    });
    drop_empty_env_from(&mut container);
    container
}

/// No `envFrom` without an object-store Secret.
fn drop_empty_env_from(container: &mut Value) {
    if container["envFrom"].as_array().is_some_and(Vec::is_empty) {
        container
            .as_object_mut()
            .expect("an object")
            .remove("envFrom");
    }
}

/// Whole CPUs of a quantity, at least 1 (`500m` → 1, `2` → 2, `2.5` → 2).
fn threads(cpus: &str) -> String {
    let whole = match cpus.strip_suffix('m') {
        Some(milli) => milli.parse::<u64>().unwrap_or(1000) / 1000,
        None => cpus
            .split('.')
            .next()
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(1),
    };
    whole.max(1).to_string()
}

/// The pod's name, the token from its Secret, then `extra`.
fn env(plan: &Plan, extra: Vec<Value>) -> Vec<Value> {
    let mut env = vec![
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "MIRRORPLAY_TOKEN", "valueFrom": {"secretKeyRef": {"name": plan.token_secret, "key": "token"}}}),
    ];
    env.extend(extra);
    env
}

/// The object-store credentials: every key of that Secret as an environment variable.
fn env_from(plan: &Plan) -> Vec<Value> {
    plan.object_store_secret
        .iter()
        .map(|s| json!({"secretRef": {"name": s}}))
        .collect()
}

fn role_labels(plan: &Plan, role: &str) -> Value {
    let mut labels = plan.labels();
    labels["app.kubernetes.io/component"] = json!(role);
    labels
}

fn pod_spec(plan: &Plan, containers: Vec<Value>, volumes: Vec<Value>, grace: u64) -> Value {
    json!({
        "restartPolicy": "Never",
        "serviceAccountName": plan.name,
        "automountServiceAccountToken": false,
        "terminationGracePeriodSeconds": grace,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": containers,
        "volumes": volumes,
    })
}

/// Non-root, no privilege escalation, no capabilities, a read-only root file system (scratch
/// space is the `/tmp` emptyDir).
pub fn container_security() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_threads_are_whole_cpus() {
        assert_eq!(threads("2"), "2");
        assert_eq!(threads("2.5"), "2");
        assert_eq!(threads("500m"), "1");
        assert_eq!(threads("4000m"), "4");
    }
}
