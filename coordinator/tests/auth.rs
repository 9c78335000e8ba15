//! Authentication with real processes: every RPC of the coordinator service (the table is
//! checked against the proto, so a new RPC without a row fails here) is refused without a
//! token and with a wrong one; gRPC health answers without one; `serve` refuses to listen
//! beyond loopback without a token; and a whole authenticated run (coordinator and worker at
//! debug level, submit, status, watch, a refused call) never writes the token or an
//! object-store secret into a log, an output, an error or the state.

mod common;

use std::path::Path;

use common::cluster::*;
use common::*;
use mirrorplay_proto::v1::coordinator_client::CoordinatorClient;
use mirrorplay_proto::v1::*;
use mirrorplay_worker::connect::{Bearer, Token};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const TOKEN: &str = "tok-9f8e7d6c5b4a39281706f5e4d3c2b1a0";

type Client = CoordinatorClient<InterceptedService<Channel, Bearer>>;

async fn client(url: &str, token: Option<&str>) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token = token.map(|t| Token::parse(t, "test").unwrap());
    CoordinatorClient::with_interceptor(channel, Bearer::new(token.as_ref()))
}

/// The RPCs the proto declares for `service Coordinator`.
fn declared_rpcs() -> Vec<String> {
    let proto =
        std::fs::read_to_string(repo_root().join("proto/mirrorplay/v1/coordinator.proto")).unwrap();
    let service = &proto[proto.find("service Coordinator {").unwrap()..];
    let service = &service[..service.find('}').unwrap()];
    service
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .map(|l| l.split('(').next().unwrap().trim().to_string())
        .collect()
}

/// Calls `rpc` with an empty request; the status code it ends with (Ok on success).
async fn call(c: &mut Client, rpc: &str) -> tonic::Code {
    let code = |r: Result<(), tonic::Status>| r.err().map_or(tonic::Code::Ok, |s| s.code());
    match rpc {
        "Register" => code(c.register(RegisterRequest::default()).await.map(drop)),
        "Heartbeat" => code(c.heartbeat(HeartbeatRequest::default()).await.map(drop)),
        "Deregister" => code(c.deregister(DeregisterRequest::default()).await.map(drop)),
        "PollTask" => code(c.poll_task(PollTaskRequest::default()).await.map(drop)),
        "ReportTask" => code(c.report_task(ReportTaskRequest::default()).await.map(drop)),
        "JoinGroup" => code(c.join_group(JoinGroupRequest::default()).await.map(drop)),
        "CommitCheckpoint" => code(
            c.commit_checkpoint(CommitCheckpointRequest::default())
                .await
                .map(drop),
        ),
        "SubmitJob" => code(c.submit_job(SubmitJobRequest::default()).await.map(drop)),
        "GetJob" => code(c.get_job(GetJobRequest::default()).await.map(drop)),
        "ListJobs" => code(c.list_jobs(ListJobsRequest::default()).await.map(drop)),
        "CancelJob" => code(c.cancel_job(CancelJobRequest::default()).await.map(drop)),
        "ResumeJob" => code(c.resume_job(ResumeJobRequest::default()).await.map(drop)),
        "WatchJob" => code(c.watch_job(WatchJobRequest::default()).await.map(drop)),
        "GetLogs" => code(c.get_logs(GetLogsRequest::default()).await.map(drop)),
        other => panic!("no row for RPC {other}: add it to this table"),
    }
}

#[test]
fn every_rpc_is_refused_without_the_token_and_health_answers_without_one() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let _coordinator =
        spawn_coordinator_with(tmp.path(), &url, &[], &[("MIRRORPLAY_TOKEN", TOKEN)], None);
    let rpcs = declared_rpcs();
    assert!(rpcs.len() >= 14, "{rpcs:?}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for (label, token) in [
            ("no token", None),
            ("a wrong token", Some("tok-wrong")),
            ("a prefix of the token", Some(&TOKEN[..TOKEN.len() - 1])),
        ] {
            let mut c = client(&url, token).await;
            for rpc in &rpcs {
                assert_eq!(
                    call(&mut c, rpc).await,
                    tonic::Code::Unauthenticated,
                    "{rpc} with {label}"
                );
            }
        }
        // The right token gets through to the handlers (which answer as usual).
        let mut c = client(&url, Some(TOKEN)).await;
        assert_eq!(call(&mut c, "ListJobs").await, tonic::Code::Ok);
        assert_eq!(call(&mut c, "GetJob").await, tonic::Code::NotFound);

        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "mirrorplay.v1.Coordinator".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    });
}

#[test]
fn a_cli_call_with_a_wrong_token_is_a_usage_error_that_names_no_token() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let _coordinator =
        spawn_coordinator_with(tmp.path(), &url, &[], &[("MIRRORPLAY_TOKEN", TOKEN)], None);
    let wrong = tmp.path().join("wrong-token");
    std::fs::write(&wrong, "tok-wrong-0123\n").unwrap();
    for args in [
        vec!["status", "--coordinator", &url],
        vec!["status", "some-job", "--coordinator", &url],
    ] {
        let mut args = args.clone();
        args.extend(["--token-file", wrong.to_str().unwrap()]);
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("missing or wrong bearer token"),
            "{}",
            stderr(&o)
        );
        assert!(!stderr(&o).contains("tok-wrong-0123"), "{}", stderr(&o));
    }
    let o = run(&["status", "--coordinator", &url]);
    assert_eq!(o.status.code(), Some(2), "no token: {}", stderr(&o));
    let o = run(&[
        "status",
        "--coordinator",
        &url,
        "--token-file",
        "/nonexistent/token",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot read the token file"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn serve_refuses_to_listen_beyond_loopback_without_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let state = state.to_str().unwrap();
    // Refused before binding anything.
    let o = run(&["serve", "--listen", "0.0.0.0:0", "--state", state]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("without a token"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--insecure-no-auth"), "{}", stderr(&o));
    let o = run_env(
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--state",
            state,
            "--insecure-no-auth",
        ],
        &[("MIRRORPLAY_TOKEN", TOKEN)],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("contradict"), "{}", stderr(&o));
    assert!(!stderr(&o).contains(TOKEN));
    assert!(!state_exists(tmp.path()));
}

fn state_exists(dir: &Path) -> bool {
    dir.join("state").exists()
}

/// Every file under `dir` (recursively) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut hits = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
            {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

#[test]
fn no_log_output_error_or_state_of_an_authenticated_run_holds_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    // A canary object-store secret in every process's environment.
    let secret = "canary-secret-5a4b3c2d1e";
    let env = [
        ("MIRRORPLAY_TOKEN", TOKEN),
        ("RUST_LOG", "debug"),
        ("AWS_SECRET_ACCESS_KEY", secret),
    ];
    let _coordinator = spawn_coordinator_with(
        tmp.path(),
        &url,
        &[],
        &env,
        Some(&logs.join("coordinator.log")),
    );
    // The worker reads the token from a file.
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let worker_log = std::fs::File::create(logs.join("worker.log")).unwrap();
    let _worker = Killed(
        std::process::Command::new(worker_bin())
            .args(["--coordinator", &url, "--name", "w", "--grace-secs", "0"])
            .args(["--token-file", token_file.to_str().unwrap()])
            .env("RUST_LOG", "debug")
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .stdout(std::process::Stdio::null())
            .stderr(worker_log)
            .spawn()
            .unwrap(),
    );
    let out = tmp.path().join("out");
    let config = repo_root().join("configs/merge-task-arithmetic.toml");
    let set = format!("job.output={}", out.display());
    let mut outputs = vec![];
    let submitted = run_env(
        &[
            "submit",
            config.to_str().unwrap(),
            "--set",
            &set,
            "--coordinator",
            &url,
        ],
        &env,
    );
    assert!(submitted.status.success(), "{}", stderr(&submitted));
    let job = String::from_utf8_lossy(&submitted.stdout)
        .trim()
        .to_string();
    let watched = run_env(&["watch", &job, "--json", "--coordinator", &url], &env);
    assert!(watched.status.success(), "{}", stderr(&watched));
    outputs.push(watched);
    outputs.push(run_env(
        &["status", &job, "--json", "--coordinator", &url],
        &env,
    ));
    outputs.push(run_env(&["status", "--coordinator", &url], &env));
    outputs.push(submitted);
    // A refused call's error.
    outputs.push(run_env(
        &["status", "--coordinator", &url],
        &[("MIRRORPLAY_TOKEN", "tok-wrong")],
    ));
    for (i, o) in outputs.iter().enumerate() {
        std::fs::write(logs.join(format!("cli-{i}.stdout")), &o.stdout).unwrap();
        std::fs::write(logs.join(format!("cli-{i}.stderr")), &o.stderr).unwrap();
    }
    assert!(out.join("job.json").exists());
    let coordinator_log = std::fs::read_to_string(logs.join("coordinator.log")).unwrap();
    assert!(
        coordinator_log.contains("job submitted"),
        "{coordinator_log}"
    );
    for needle in [TOKEN, secret] {
        for dir in [&logs, &out, &tmp.path().join("state")] {
            let hits = files_containing(dir, needle);
            assert!(hits.is_empty(), "found a secret in {hits:?}");
        }
    }
}

#[test]
fn a_worker_with_an_unreadable_token_file_or_a_malformed_token_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("token");
    std::fs::write(&bad, "two words\n").unwrap();
    for (args, expected) in [
        (
            vec!["--token-file", "/nonexistent/token"],
            "cannot read the token file",
        ),
        (
            vec!["--token-file", bad.to_str().unwrap()],
            "not visible ASCII",
        ),
        (
            vec![
                "--coordinator",
                "http://127.0.0.1:1",
                "--tls-ca",
                "/nonexistent/ca.pem",
            ],
            "need an https://",
        ),
    ] {
        let o = std::process::Command::new(worker_bin())
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(expected), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("two words"), "{}", stderr(&o));
    }
}
