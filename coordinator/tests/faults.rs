//! Fault tolerance with real processes: a worker SIGKILLed mid-task loses its lease and its
//! task is re-issued to a live worker; the job still succeeds with the right output.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;

/// SIGTERMs a worker (started with --grace-secs 0) and checks that it exits cleanly.
fn sigterm(worker: &mut Killed) {
    unsafe { libc::kill(worker.0.id() as i32, libc::SIGTERM) };
    let status = worker.0.wait().unwrap();
    assert!(
        status.success(),
        "the worker exits cleanly on SIGTERM: {status:?}"
    );
}

/// Follows `job` to its end; asserts it succeeded after re-issuing a task that `event` took
/// away (e.g. "worker `leaver` handed it back"). Returns the watch log.
fn watch_reissued(url: &str, job: &str, event: &str) -> String {
    let watched = run(&["watch", job, "--coordinator", url]);
    let log = stderr(&watched);
    assert!(watched.status.success(), "{log}");
    assert!(
        log.contains(event) && log.contains("re-issued as attempt 2"),
        "{log}"
    );
    log
}

fn submit(url: &str, out: &std::path::Path) -> String {
    submit_config(
        url,
        &repo_root().join("configs/merge-task-arithmetic.toml"),
        &[format!("job.output={}", out.display())],
    )
}

fn wait_for_running_task(url: &str, job: &str) {
    wait_until("a worker to hold a task", Duration::from_secs(20), || {
        let o = run(&["status", job, "--json", "--coordinator", url]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v["progress"]["tasks_running"].as_u64().unwrap_or(0) >= 1
    });
}

fn assert_merged(out: &std::path::Path) {
    let want = expected_example_merge();
    assert_models_close(&read_model(&out.join("model")), &want, 1e-6);
}

#[test]
fn a_sigtermed_worker_hands_its_task_back_and_a_worker_started_first_connects_later() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    // This worker starts before the coordinator exists: it retries with backoff.
    let mut leaver = spawn_worker(&url, "leaver", Some(600_000));
    std::thread::sleep(Duration::from_millis(500));
    let _coordinator = spawn_coordinator(tmp.path(), &url);
    let out = tmp.path().join("out");
    let job = submit(&url, &out);
    wait_for_running_task(&url, &job);
    // SIGTERM with --grace-secs 0: the task goes back to the queue at once.
    sigterm(&mut leaver);
    let _finisher = spawn_worker(&url, "finisher", None);
    watch_reissued(&url, &job, "worker `leaver` handed it back");
    assert_merged(&out);
}

#[test]
fn the_coordinator_serves_grpc_health() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let _coordinator = spawn_coordinator(tmp.path(), &url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let request = tonic_health::pb::HealthCheckRequest {
            service: "mirrorplay.v1.Coordinator".into(),
        };
        client.check(request).await.unwrap().into_inner().status
    });
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[test]
fn a_worker_killed_mid_task_has_its_task_reissued_and_the_job_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let _coordinator = spawn_coordinator(tmp.path(), &url);

    // The victim takes a task and then stalls (fault-injection knob) until it is killed.
    let mut victim = spawn_worker(&url, "victim", Some(600_000));
    let out = tmp.path().join("out");
    let job = submit(&url, &out);
    wait_for_running_task(&url, &job);
    victim.0.kill().unwrap();
    victim.0.wait().unwrap();

    let _rescuer = spawn_worker(&url, "rescuer", None);
    watch_reissued(&url, &job, "worker `victim` lost its lease");
    assert_merged(&out);
}

#[test]
fn a_worker_sigtermed_mid_training_hands_the_task_back_and_the_job_completes_elsewhere() {
    // Training polls the runtime's cancel flag between steps: a SIGTERM (grace 0) in the middle
    // of an SFT run ends the attempt at the next step boundary, the task is handed back, and a
    // second worker trains it from the start as attempt 2 (no checkpoints yet).
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let _coordinator = spawn_coordinator(tmp.path(), &url);
    let config = tmp.path().join("sft.toml");
    let out = tmp.path().join("out");
    std::fs::write(
        &config,
        format!(
            "[job]\nkind = \"sft\"\noutput = \"{}\"\nseed = 3\n[sft]\ninit = \"tiny\"\ntask = \"goodhart_digits\"\nbatch_size = 8\nsteps = 400\neval_every = 400\neval_prompts = 8\n",
            out.display()
        ),
    )
    .unwrap();
    let mut leaver = spawn_worker(&url, "leaver", None);
    let submitted = run(&["submit", config.to_str().unwrap(), "--coordinator", &url]);
    assert!(submitted.status.success(), "{}", stderr(&submitted));
    let job = String::from_utf8(submitted.stdout)
        .unwrap()
        .trim()
        .to_string();
    wait_until("training to be under way", Duration::from_secs(60), || {
        let o = run(&["status", &job, "--json", "--coordinator", &url]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v["progress"]["fraction"].as_f64().unwrap_or(0.0) > 0.02
    });
    sigterm(&mut leaver);
    let _finisher = spawn_worker(&url, "finisher", None);
    watch_reissued(&url, &job, "worker `leaver` handed it back");
    assert!(out.join("model/model.safetensors").exists());
    // Attempt 2 wrote a complete metrics stream (steps 1..=400 under attempt 2).
    let mut steps = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(out.join("metrics")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["attempt"] == 2 && v["split"] == "train" {
                steps.insert(v["step"].as_u64().unwrap());
            }
        }
    }
    assert_eq!(steps, (1..=400).collect());
}

#[test]
fn an_unknown_job_and_a_malformed_coordinator_url_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let _coordinator = spawn_coordinator(tmp.path(), &url);
    for command in ["status", "watch", "cancel", "resume"] {
        let o = run(&[command, "no-such-job", "--coordinator", &url]);
        assert_eq!(o.status.code(), Some(2), "{command}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("no job `no-such-job`"),
            "{}",
            stderr(&o)
        );
    }
    let o = run(&["status", "--coordinator", "not a url"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("invalid coordinator URL"),
        "{}",
        stderr(&o)
    );
}
