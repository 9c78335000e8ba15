//! `mirrorplay k8s submit|status|logs|delete` against a mock Kubernetes API server: a loopback
//! HTTP/1.1 server in the test that records each request (method, path with query, headers,
//! body) and answers from a script. No real API server can run on the machines that run this,
//! so this mock is the one stand-in of the suite; everything on the client side is real (the
//! binary, its kubeconfig loading, its HTTP client).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use common::*;

#[derive(Debug, Clone)]
struct Request {
    method: String,
    /// Path and query, as sent.
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

type Script = dyn Fn(&Request) -> (u16, String) + Send + Sync;

/// An answer ending with this is cut short: its Content-Length promises more bytes than are
/// sent before the connection closes (a log stream that breaks off).
const CUT: &str = "\u{0}cut";

struct MockApi {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl MockApi {
    fn start(script: impl Fn(&Request) -> (u16, String) + Send + Sync + 'static) -> MockApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let recorded = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (script, recorded) = (script.clone(), recorded.clone());
                std::thread::spawn(move || serve(stream, &*script, &recorded));
            }
        });
        MockApi { url, requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

/// Answers the requests of one connection (keep-alive) until it closes.
fn serve(stream: std::net::TcpStream, script: &Script, recorded: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap().to_string(),
            parts.next().unwrap().to_string(),
        );
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let length = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let request = Request {
            method,
            target,
            headers,
            body,
        };
        let (code, answer) = script(&request);
        recorded.lock().unwrap().push(request);
        let (answer, cut) = match answer.strip_suffix(CUT) {
            Some(sent) => (sent.to_string(), true),
            None => (answer, false),
        };
        let promised = answer.len() + if cut { 100 } else { 0 };
        let head = format!(
            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {promised}\r\n\r\n"
        );
        if writer.write_all(head.as_bytes()).is_err()
            || writer.write_all(answer.as_bytes()).is_err()
            || cut
        {
            return;
        }
    }
}

/// A kubeconfig for `server` with a bearer token, context namespace `ml` (a file of its own
/// per server).
fn kubeconfig(dir: &Path, server: &str) -> PathBuf {
    let path = dir.join(format!("kubeconfig-{}", server.rsplit(':').next().unwrap()));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: mock\n  cluster:\n    server: {server}\nusers:\n- name: me\n  user:\n    token: mock-token\ncontexts:\n- name: test\n  context:\n    cluster: mock\n    user: me\n    namespace: ml\n"
        ),
    )
    .unwrap();
    path
}

fn status_json(code: u16, reason: &str, message: &str) -> String {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message}).to_string()
}

const RENDER: &[&str] = &[
    "configs/merge-task-arithmetic.toml",
    "--workers",
    "2",
    "--image",
    "mirrorplay:0.1.0",
    "--name",
    "merge-ta",
    "--set",
    "job.output=s3://bucket/merge",
];

fn k8s(cmd: &str, kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["k8s", cmd];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--kubeconfig", kubeconfig.to_str().unwrap()]);
    run(&all)
}

fn pod(name: &str, component: &str, phase: &str, extra: Value) -> Value {
    let mut p = json!({
        "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z",
                     "labels": {"app.kubernetes.io/instance": "merge-ta", "app.kubernetes.io/component": component}},
        "spec": {"containers": [{"name": if component == "coordinator" { "coordinator" } else { "worker-gpu0" }}]},
        "status": {"phase": phase},
    });
    if let Value::Object(m) = extra {
        for (k, v) in m {
            if k == "labels" {
                for (lk, lv) in v.as_object().unwrap() {
                    p["metadata"]["labels"][lk] = lv.clone();
                }
            } else {
                p["status"][k] = v;
            }
        }
    }
    p
}

const JOBSET_PATH: &str = "/apis/jobset.x-k8s.io/v1alpha2/namespaces/ml/jobsets/merge-ta";

#[test]
fn submit_applies_every_rendered_manifest_server_side() {
    let api = MockApi::start(|r| (200, String::from_utf8_lossy(&r.body).to_string()));
    let tmp = tempfile::tempdir().unwrap();
    let o = k8s(
        "submit",
        &kubeconfig(tmp.path(), &api.url),
        &[RENDER, &["--no-wait"]].concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), "merge-ta\n");
    // The same manifests `render` prints, in the context's namespace.
    let rendered = run(&[&["k8s", "render"][..], RENDER, &["--namespace", "ml"]].concat());
    let want: Vec<Value> = serde_norway::Deserializer::from_slice(&rendered.stdout)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let got = api.requests();
    let paths: Vec<&str> = got.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/v1/namespaces/ml/serviceaccounts/merge-ta?fieldManager=mirrorplay&force=true",
            "/api/v1/namespaces/ml/configmaps/merge-ta-config?fieldManager=mirrorplay&force=true",
            "/api/v1/namespaces/ml/persistentvolumeclaims/merge-ta-state?fieldManager=mirrorplay&force=true",
            "/apis/jobset.x-k8s.io/v1alpha2/namespaces/ml/jobsets/merge-ta?fieldManager=mirrorplay&force=true",
        ]
    );
    for (r, want) in got.iter().zip(&want) {
        assert_eq!(r.method, "PATCH");
        assert_eq!(
            r.header("content-type"),
            Some("application/apply-patch+yaml")
        );
        assert_eq!(r.header("authorization"), Some("Bearer mock-token"));
        assert_eq!(&r.json(), want, "{}", r.target);
    }
}

#[test]
fn submit_follows_the_coordinator_and_exits_with_the_jobs_code() {
    for (code, terminal, want_exit) in [(0, "Completed", 0), (1, "Failed", 1)] {
        let polls = Arc::new(AtomicUsize::new(0));
        let p = polls.clone();
        let api = MockApi::start(move |r| {
            if r.method == "PATCH" {
                return (200, String::from_utf8_lossy(&r.body).to_string());
            }
            if r.target.contains("/log?") {
                // Asked for again once the coordinator has stopped: the same lines.
                return (
                    200,
                    "2026-01-01T00:00:00.1Z [info] job 3f2a started\n\
                     2026-01-01T00:00:00.2Z job 3f2a done\n"
                        .into(),
                );
            }
            if r.target.starts_with(JOBSET_PATH) {
                let n = p.load(Ordering::SeqCst);
                return (
                    200,
                    if n >= 3 {
                        json!({"status": {"terminalState": terminal}})
                    } else {
                        json!({"status": {}})
                    }
                    .to_string(),
                );
            }
            if r.target.contains("component%3Dcoordinator") {
                let n = p.fetch_add(1, Ordering::SeqCst);
                let pod = match n {
                    0 => pod(
                        "merge-ta-coordinator-0-0-a",
                        "coordinator",
                        "Pending",
                        json!({"containerStatuses": [{"name": "coordinator", "state": {"waiting": {"reason": "ContainerCreating"}}}]}),
                    ),
                    1 => pod(
                        "merge-ta-coordinator-0-0-a",
                        "coordinator",
                        "Running",
                        json!({}),
                    ),
                    _ => pod(
                        "merge-ta-coordinator-0-0-a",
                        "coordinator",
                        if code == 0 { "Succeeded" } else { "Failed" },
                        json!({"containerStatuses": [{"name": "coordinator", "state": {"terminated": {"exitCode": code}}}]}),
                    ),
                };
                return (200, json!({"items": [pod]}).to_string());
            }
            (404, status_json(404, "NotFound", "unexpected"))
        });
        let tmp = tempfile::tempdir().unwrap();
        let o = k8s("submit", &kubeconfig(tmp.path(), &api.url), RENDER);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(want_exit), "{err}");
        assert!(err.contains("ContainerCreating"), "{err}");
        assert_eq!(
            err.matches("job 3f2a done").count(),
            1,
            "the coordinator's log is streamed, once: {err}"
        );
        let log = api
            .requests()
            .into_iter()
            .find(|r| r.target.contains("/log?"))
            .unwrap();
        assert_eq!(log.method, "GET");
        assert_eq!(
            log.target,
            "/api/v1/namespaces/ml/pods/merge-ta-coordinator-0-0-a/log?container=coordinator&follow=true&timestamps=true"
        );
        if want_exit == 1 {
            assert!(err.contains("coordinator exit code 1"), "{err}");
        }
    }
}

#[test]
fn status_logs_and_delete_send_the_right_requests() {
    let api = MockApi::start(|r| {
        if r.method == "DELETE" {
            return if r.target.contains("persistentvolumeclaims") {
                (
                    404,
                    status_json(
                        404,
                        "NotFound",
                        "persistentvolumeclaims \"merge-ta-state\" not found",
                    ),
                )
            } else {
                (
                    200,
                    json!({"kind": "Status", "status": "Success"}).to_string(),
                )
            };
        }
        if r.target == JOBSET_PATH {
            return (200, json!({"status": {"restarts": 1, "replicatedJobsStatus": [{"name": "workers", "active": 1, "ready": 1}]}}).to_string());
        }
        if r.target.contains("/log?") {
            return (200, "worker log line\n".into());
        }
        if r.target.contains("component%3Dworkers") {
            return (200, json!({"items": [
                pod("merge-ta-workers-0-0-x", "workers", "Running", json!({"labels": {"batch.kubernetes.io/job-completion-index": "0"}})),
                pod("merge-ta-workers-0-1-y", "workers", "Running", json!({"labels": {"batch.kubernetes.io/job-completion-index": "1"}})),
            ]}).to_string());
        }
        if r.target.contains("component%3Dcoordinator") {
            return (200, json!({"items": [pod("merge-ta-coordinator-0-0-a", "coordinator", "Running", json!({}))]}).to_string());
        }
        (404, status_json(404, "NotFound", "unexpected"))
    });
    let tmp = tempfile::tempdir().unwrap();
    let config = kubeconfig(tmp.path(), &api.url);

    let o = k8s("status", &config, &["merge-ta", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["state"], "running");
    assert_eq!(s["restarts"], 1);
    assert_eq!(s["namespace"], "ml");
    assert_eq!(s["pods"].as_array().unwrap().len(), 3);
    let targets: Vec<String> = api
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    assert_eq!(targets[0], format!("GET {JOBSET_PATH}"));
    assert_eq!(
        targets[1],
        "GET /api/v1/namespaces/ml/pods?labelSelector=app.kubernetes.io/instance%3Dmerge-ta%2Capp.kubernetes.io/component%3Dcoordinator"
    );

    let o = k8s(
        "logs",
        &config,
        &["merge-ta", "--worker", "1", "-n", "other-ns"],
    );
    // Another namespace: the pods list is asked there.
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(api
        .requests()
        .iter()
        .any(|r| r.target.starts_with("/api/v1/namespaces/other-ns/pods?")));
    let log = api
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.target.contains("/log?"))
        .unwrap();
    assert_eq!(
        log.target,
        "/api/v1/namespaces/other-ns/pods/merge-ta-workers-0-1-y/log?container=worker-gpu0"
    );
    assert_eq!(String::from_utf8(o.stdout).unwrap(), "worker log line\n");

    let before = api.requests().len();
    let o = k8s("delete", &config, &["merge-ta"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("persistentvolumeclaim/merge-ta-state: not found"),
        "{}",
        stderr(&o)
    );
    let deletes: Vec<Request> = api.requests()[before..].to_vec();
    let targets: Vec<&str> = deletes.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        [
            JOBSET_PATH,
            "/api/v1/namespaces/ml/configmaps/merge-ta-config",
            "/api/v1/namespaces/ml/serviceaccounts/merge-ta",
            "/api/v1/namespaces/ml/persistentvolumeclaims/merge-ta-state",
        ]
    );
    for r in &deletes {
        assert_eq!(r.method, "DELETE");
        assert_eq!(r.json()["propagationPolicy"], "Background");
    }
    let before = api.requests().len();
    let o = k8s("delete", &config, &["merge-ta", "--keep-state"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(api.requests().len() - before, 3, "the state PVC is kept");
}

#[test]
fn api_errors_are_reported_with_what_failed() {
    let api = MockApi::start(|r| {
        if r.target.contains("/configmaps/") && r.method == "PATCH" {
            return (403, status_json(403, "Forbidden", "configmaps \"merge-ta-config\" is forbidden: User \"me\" cannot patch resource \"configmaps\""));
        }
        if r.target.contains("/jobsets/") {
            return (
                404,
                status_json(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            );
        }
        if r.method == "DELETE" {
            return (404, status_json(404, "NotFound", "not found"));
        }
        (200, String::from_utf8_lossy(&r.body).to_string())
    });
    let tmp = tempfile::tempdir().unwrap();
    let config = kubeconfig(tmp.path(), &api.url);
    let o = k8s("submit", &config, &[RENDER, &["--no-wait"]].concat());
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("403 Forbidden")
            && err.contains("cannot patch resource")
            && err.contains("RBAC"),
        "{err}"
    );
    assert!(
        err.contains("PATCH /api/v1/namespaces/ml/configmaps/merge-ta-config"),
        "{err}"
    );

    // No JobSet CRD: the apply of the JobSet is a 404 with a hint.
    let api2 = MockApi::start(|r| {
        if r.target.contains("/jobsets/") {
            return (
                404,
                status_json(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            );
        }
        (200, String::from_utf8_lossy(&r.body).to_string())
    });
    let config2 = kubeconfig(tmp.path(), &api2.url);
    let o = k8s("submit", &config2, &[RENDER, &["--no-wait"]].concat());
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("JobSet controller installed"), "{err}");

    // A job that does not exist: a usage error naming it.
    let o = k8s("status", &config, &["nope"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no job `nope` in namespace `ml`"),
        "{}",
        stderr(&o)
    );
    let o = k8s("delete", &config, &["nope"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    // Nothing listening: a runtime error naming the request.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let config3 = kubeconfig(tmp.path(), &closed);
    let o = k8s("status", &config3, &["merge-ta"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("GET {JOBSET_PATH}")),
        "{}",
        stderr(&o)
    );

    // A kubeconfig whose context names a missing user: a usage error naming both.
    let bad = tmp.path().join("bad");
    std::fs::write(&bad, "current-context: x\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:1\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: ghost\n").unwrap();
    let o = k8s("status", &bad, &["merge-ta"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("user `ghost`"), "{}", stderr(&o));
}

#[test]
fn submit_resumes_a_broken_log_stream_after_the_last_line_printed() {
    const T1: &str = "2026-01-01T00:00:00.500000000Z";
    const T2: &str = "2026-01-01T00:00:01.000000002Z";
    const T3: &str = "2026-01-01T00:00:02.000000000Z";
    let polls = Arc::new(AtomicUsize::new(0));
    let log_requests = Arc::new(AtomicUsize::new(0));
    let (p, l) = (polls.clone(), log_requests.clone());
    let api = MockApi::start(move |r| {
        if r.method == "PATCH" {
            return (200, String::from_utf8_lossy(&r.body).to_string());
        }
        if r.target.contains("/log?") {
            return (
                200,
                match l.fetch_add(1, Ordering::SeqCst) {
                    // The first stream breaks off in the middle of its third line.
                    0 => format!("{T1} line one\n{T2} line two\n{T2} line thr{CUT}"),
                    // Asked again from the second of `line two`: it is sent again.
                    _ => format!("{T2} line two\n{T2} line three\n{T3} line four\n"),
                },
            );
        }
        if r.target.starts_with(JOBSET_PATH) {
            let ended = p.load(Ordering::SeqCst) >= 4;
            let status = if ended {
                json!({"terminalState": "Completed"})
            } else {
                json!({})
            };
            return (200, json!({ "status": status }).to_string());
        }
        if r.target.contains("component%3Dcoordinator") {
            let name = "merge-ta-coordinator-0-0-a";
            let pod = match p.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => pod(name, "coordinator", "Running", json!({})),
                _ => pod(
                    name,
                    "coordinator",
                    "Succeeded",
                    json!({"containerStatuses": [{"name": "coordinator", "state": {"terminated": {"exitCode": 0}}}]}),
                ),
            };
            return (200, json!({ "items": [pod] }).to_string());
        }
        (404, status_json(404, "NotFound", "unexpected"))
    });
    let tmp = tempfile::tempdir().unwrap();
    let o = k8s("submit", &kubeconfig(tmp.path(), &api.url), RENDER);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    // Every line once, in order; the broken-off half line only as part of its whole line.
    let lines = ["line one\n", "line two\n", "line three\n", "line four\n"];
    for line in lines {
        assert_eq!(err.matches(line).count(), 1, "`{line}` in: {err}");
    }
    assert_eq!(err.matches("line thr").count(), 1, "{err}");
    assert!(
        err.contains("the log stream broke off; resuming it"),
        "{err}"
    );
    let at: Vec<usize> = lines.iter().map(|l| err.find(l).unwrap()).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{err}");
    let log_targets: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.target.contains("/log?"))
        .map(|r| r.target)
        .collect();
    let path = "/api/v1/namespaces/ml/pods/merge-ta-coordinator-0-0-a/log?container=coordinator&follow=true&timestamps=true";
    assert_eq!(log_targets[0], path);
    // Resumed from the second of the last line printed: after the break, then (the
    // coordinator stopped) once more to read the log to its end.
    assert_eq!(
        log_targets[1..],
        [
            format!("{path}&sinceTime=2026-01-01T00:00:01Z"),
            format!("{path}&sinceTime=2026-01-01T00:00:02Z"),
        ],
        "{log_targets:?}"
    );
}
