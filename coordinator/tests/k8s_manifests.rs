//! The Kubernetes manifests are valid: every manifest `mirrorplay k8s render` prints (a
//! training job and a merge job, on GPUs and on CPUs) equals its golden file and validates, and
//! so does the output of every kustomize overlay under `k8s/`; a broken manifest fails the
//! validation (`tests/k8s/validate.rs` says against what).
//!
//! Golden files: `tests/k8s/golden/*.yaml`; after an intended change rewrite them with
//! `MIRRORPLAY_BLESS=1 cargo test -p mirrorplay-coordinator --test k8s_manifests` and review
//! the diff.
//!
//! The overlays are built by `tests/k8s/kustomize.rs`. With `MIRRORPLAY_KUBECTL` set to a
//! kubectl binary (CI: `scripts/fetch_kubectl.sh`) the same overlays are built by
//! `kubectl kustomize` too and the two outputs must be equal.

mod common;

#[path = "k8s/kustomize.rs"]
mod kustomize;
#[path = "k8s/validate.rs"]
mod validate;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{json, Value};

use common::*;
use validate::Schemas;

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/k8s")
}

fn schemas() -> &'static Schemas {
    static S: OnceLock<Schemas> = OnceLock::new();
    S.get_or_init(|| Schemas::load(&k8s_dir().join("schemas")))
}

fn assert_valid(docs: &[Value], what: &str) {
    let mut errors = Vec::new();
    for d in docs {
        for e in schemas().errors(d) {
            errors.push(format!("{} {}: {e}", d["kind"], d["metadata"]["name"]));
        }
    }
    assert!(errors.is_empty(), "{what}:\n{}", errors.join("\n"));
}

/// The render cases: (golden file, arguments after `k8s render`).
const CASES: &[(&str, &[&str])] = &[
    (
        "selfplay-nash-md-gpu.yaml",
        &[
            "configs/selfplay-nash-md.toml",
            "--workers",
            "2",
            "--gpus-per-worker",
            "2",
            "--image",
            "registry.example.com/mirrorplay-cuda:0.1.0",
            "--namespace",
            "ml",
            "--state",
            "s3://mirrorplay/state/nash-md",
            "--object-store-secret",
            "mirrorplay-s3",
            "--set",
            "job.output=s3://mirrorplay/runs/nash-md",
        ],
    ),
    (
        "selfplay-nash-md-cpu.yaml",
        &[
            "configs/selfplay-nash-md.toml",
            "--workers",
            "1",
            "--image",
            "mirrorplay:0.1.0",
            "--object-store-secret",
            "mirrorplay-s3",
            "--set",
            "job.output=s3://mirrorplay/runs/nash-md-cpu",
        ],
    ),
    (
        "merge-task-arithmetic-cpu.yaml",
        &[
            "configs/merge-task-arithmetic.toml",
            "--workers",
            "2",
            "--image",
            "mirrorplay:0.1.0",
            "--name",
            "merge-ta",
            "--cpus-per-worker",
            "1",
            "--memory-per-worker",
            "2Gi",
            "--storage-class",
            "standard",
            "--set",
            "job.output=s3://mirrorplay/runs/merge",
        ],
    ),
    (
        "merge-task-arithmetic-gpu.yaml",
        &[
            "configs/merge-task-arithmetic.toml",
            "--workers",
            "3",
            "--gpus-per-worker",
            "1",
            "--image",
            "mirrorplay-cuda:0.1.0",
            "--set",
            "job.output=s3://mirrorplay/runs/merge-gpu",
        ],
    ),
];

fn render(args: &[&str]) -> String {
    let mut all = vec!["k8s", "render"];
    all.extend_from_slice(args);
    let o = run(&all);
    assert!(o.status.success(), "k8s render {args:?}: {}", stderr(&o));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn rendered_manifests_match_their_golden_files_and_validate() {
    let bless = std::env::var_os("MIRRORPLAY_BLESS").is_some();
    for (golden, args) in CASES {
        let yaml = render(args);
        let path = k8s_dir().join("golden").join(golden);
        if bless {
            std::fs::write(&path, &yaml).unwrap();
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (bless it)", path.display()));
        assert!(
            yaml == want,
            "{golden} differs from `k8s render {}`; rewrite with MIRRORPLAY_BLESS=1 if intended",
            args.join(" ")
        );
        let docs = kustomize::parse_stream(&yaml).unwrap();
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds.last(), Some(&"JobSet"), "{golden}: {kinds:?}");
        assert!(kinds.contains(&"ServiceAccount") && kinds.contains(&"ConfigMap"));
        assert_valid(&docs, golden);
    }
}

#[test]
fn a_rendered_jobset_runs_the_job_as_the_issue_asks() {
    let docs = kustomize::parse_stream(&render(CASES[0].1)).unwrap();
    let js = docs.iter().find(|d| d["kind"] == "JobSet").unwrap();
    let spec = &js["spec"];
    assert_eq!(
        spec["successPolicy"]["targetReplicatedJobs"],
        json!(["coordinator"])
    );
    assert_eq!(spec["failurePolicy"]["maxRestarts"], 3);
    let coordinator = &spec["replicatedJobs"][0]["template"]["spec"];
    let args: Vec<&str> = coordinator["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    // serve + submit + wait for 2 pods × 2 GPUs, state in the object store, the --set kept.
    assert_eq!(&args[..2], ["run", "/etc/mirrorplay/selfplay-nash-md.toml"]);
    for pair in [
        ["--workers", "4"],
        ["--state", "s3://mirrorplay/state/nash-md"],
        ["--set", "job.output=s3://mirrorplay/runs/nash-md"],
    ] {
        assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
    }
    // Probed by gRPC health (open without a token): ready, and alive, or replaced.
    let container = &coordinator["template"]["spec"]["containers"][0];
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["grpc"]["port"], 50051, "{probe}");
    }
    // An evicted coordinator is replaced whatever its exit code (the first matching rule
    // applies); the job's own outcome fails the Job; `run` stopped by SIGTERM (143) does not.
    let rules = coordinator["podFailurePolicy"]["rules"].as_array().unwrap();
    assert_eq!(rules[0]["action"], "Ignore");
    assert_eq!(rules[0]["onPodConditions"][0]["type"], "DisruptionTarget");
    assert_eq!(rules[1]["onExitCodes"]["values"], json!([1, 2, 3]));
    let workers = &spec["replicatedJobs"][1]["template"]["spec"];
    assert_eq!(workers["parallelism"], 2);
    let pod = &workers["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert!(workers["backoffLimit"].as_u64().unwrap() > 0);
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2, "one worker per GPU");
    for c in containers {
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 1);
        assert!(c["envFrom"][0]["secretRef"]["name"] == "mirrorplay-s3");
        let env = c["env"].as_array().unwrap();
        assert!(env.iter().any(|e| e["name"] == "MIRRORPLAY_TOKEN"
            && e["valueFrom"]["secretKeyRef"]["name"] == "mirrorplay-token"));
        // No rank from the pod index: the coordinator assigns ranks.
        assert!(!env
            .iter()
            .any(|e| e.to_string().contains("job-completion-index")));
    }
    assert!(pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["emptyDir"]["medium"] == "Memory"));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    assert_eq!(
        cm["data"]["selfplay-nash-md.toml"].as_str().unwrap(),
        std::fs::read_to_string(repo_root().join("configs/selfplay-nash-md.toml")).unwrap()
    );
    // State on the object store: no claim.
    assert!(!docs.iter().any(|d| d["kind"] == "PersistentVolumeClaim"));
    let cpu = kustomize::parse_stream(&render(CASES[1].1)).unwrap();
    assert!(cpu.iter().any(|d| d["kind"] == "PersistentVolumeClaim"));
}

fn overlay_dirs() -> Vec<PathBuf> {
    let root = repo_root().join("k8s");
    let mut dirs = vec![root.join("base")];
    let mut overlays: Vec<PathBuf> = std::fs::read_dir(root.join("overlays"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    overlays.sort();
    dirs.extend(overlays);
    dirs
}

#[test]
fn every_kustomize_overlay_builds_and_validates() {
    let dirs = overlay_dirs();
    assert!(dirs.len() >= 3, "base, cpu and gpu: {dirs:?}");
    for dir in &dirs {
        let docs = kustomize::build(dir).unwrap();
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        for want in [
            "Deployment",
            "Service",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
        ] {
            assert!(kinds.contains(&want), "{}: {kinds:?}", dir.display());
        }
        assert_valid(&docs, &dir.display().to_string());
    }
    let gpu = kustomize::build(&repo_root().join("k8s/overlays/gpu")).unwrap();
    let worker = gpu
        .iter()
        .find(|d| d["metadata"]["name"] == "mirrorplay-worker" && d["kind"] == "Deployment")
        .unwrap();
    let c = &worker["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 1);
    assert_eq!(c["image"], "mirrorplay-cuda:latest");
    // The token Secret's template is no part of any overlay, and is a valid Secret itself.
    assert!(!gpu.iter().any(|d| d["kind"] == "Secret"));
    let secret =
        kustomize::read_stream(&repo_root().join("k8s/token-secret.example.yaml")).unwrap();
    assert_valid(&secret, "k8s/token-secret.example.yaml");
}

/// CI's cross-check of `tests/k8s/kustomize.rs` against the real kustomize.
#[test]
fn the_overlay_build_equals_kubectl_kustomize_when_kubectl_is_given() {
    let Some(kubectl) = std::env::var_os("MIRRORPLAY_KUBECTL") else {
        eprintln!(
            "MIRRORPLAY_KUBECTL is not set: the cross-check against kubectl kustomize is skipped"
        );
        return;
    };
    for dir in overlay_dirs() {
        let o = std::process::Command::new(&kubectl)
            .arg("kustomize")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let key = |d: &Value| format!("{}/{}", d["kind"], d["metadata"]["name"]);
        let mut real = kustomize::parse_stream(&String::from_utf8(o.stdout).unwrap()).unwrap();
        let mut ours = kustomize::build(&dir).unwrap();
        real.sort_by_key(key);
        ours.sort_by_key(key);
        assert_eq!(ours, real, "{}", dir.display());
    }
}

/// (what is broken, JSON pointer of the parent, field, value) on a rendered JobSet.
const JOBSET_BREAKS: &[(&str, &str, &str, &str)] = &[
    ("an unknown JobSet field", "/spec", "replicatedJob", "[]"),
    (
        "a success operator out of its enum",
        "/spec/successPolicy",
        "operator",
        "\"Some\"",
    ),
    (
        "maxRestarts as a string",
        "/spec/failurePolicy",
        "maxRestarts",
        "\"three\"",
    ),
    (
        "a misspelt container field",
        "/spec/replicatedJobs/1/template/spec/template/spec/containers/0",
        "imagePullPolice",
        "\"Always\"",
    ),
    (
        "a container port out of type",
        "/spec/replicatedJobs/0/template/spec/template/spec/containers/0/ports/0",
        "containerPort",
        "\"grpc\"",
    ),
    (
        "a label that is not a string",
        "/metadata/labels",
        "team",
        "7",
    ),
];

#[test]
fn a_broken_manifest_fails_the_validation() {
    let docs = kustomize::parse_stream(&render(CASES[0].1)).unwrap();
    let jobset = docs.iter().find(|d| d["kind"] == "JobSet").unwrap();
    assert!(schemas().errors(jobset).is_empty());
    for (what, parent, field, value) in JOBSET_BREAKS {
        let mut broken = jobset.clone();
        broken.pointer_mut(parent).unwrap()[*field] = serde_json::from_str(value).unwrap();
        let errors = schemas().errors(&broken);
        assert!(!errors.is_empty(), "{what} passed the validation");
        assert!(
            errors.iter().any(|e| e.contains(parent)),
            "{what}: errors do not point at {parent}: {errors:?}"
        );
    }
    // A Deployment of the overlays with a container missing its name, and replicas as text.
    let base = kustomize::build(&repo_root().join("k8s/overlays/cpu")).unwrap();
    let mut deployment = base
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap()
        .clone();
    deployment["spec"]["template"]["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("name");
    deployment["spec"]["replicas"] = json!("one");
    let errors = schemas().errors(&deployment).join("\n");
    assert!(errors.contains("/spec/replicas"), "{errors}");
    assert!(
        errors.contains("/spec/template/spec/containers/0: missing properties 'name'"),
        "{errors}"
    );
    // A kind the schemas do not know is an error, not a pass.
    let errors = schemas().errors(&json!({"apiVersion": "v1", "kind": "Pod2"}));
    assert!(errors[0].contains("no schema"), "{errors:?}");
}

#[test]
fn render_names_the_bad_flag_or_config() {
    let cases: &[(&[&str], &str)] = &[
        (&["--workers", "0"], "--workers"),
        (&["--workers", "1", "--state", "/var/state"], "--state"),
        (&["--workers", "1", "--shm-size", "lots"], "--shm-size"),
        (&["--workers", "1", "--name", "Bad_Name"], "--name"),
        (&["--workers", "1", "--namespace", "a.b"], "--namespace"),
        (
            &["--workers", "1", "--set", "merge.lambda=oops"],
            "merge.lambda",
        ),
    ];
    for (extra, named) in cases {
        let mut args = vec![
            "k8s",
            "render",
            "configs/merge-task-arithmetic.toml",
            "--image",
            "mirrorplay:0.1.0",
        ];
        args.extend_from_slice(extra);
        let o = run(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(named), "{extra:?} should name {named}: {err}");
        assert!(o.stdout.is_empty(), "{extra:?}: nothing on stdout");
    }
    // A local job.output is only a warning (it may be a mounted volume's path).
    let o = run(&[
        "k8s",
        "render",
        "configs/merge-task-arithmetic.toml",
        "--image",
        "mirrorplay:0.1.0",
        "--workers",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning: job.output"), "{}", stderr(&o));
}
