//! The failure policy (docs/architecture.md#failure-policy) with real processes: a transient
//! store error (injected with `MIRRORPLAY_FAULT_STORE` on the worker's output writes) is retried
//! after a backoff up to `--task-retries`, then fails the job, and `status` and `logs` say why
//! (the worker's own lines included); a store error inside a training task (a checkpoint
//! write) is transient too, so the task is retried and the job completes; a task handed back
//! on SIGTERM is re-issued without counting as a failure (with `--task-retries 0` any failure
//! would fail the job); an invalid spec fails its job at once; a worker of another version is
//! refused, naming both versions.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster::*;
use common::*;

fn merge_config(dir: &Path, name: &str) -> PathBuf {
    let ex = repo_root().join("examples");
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[job]\nkind = \"merge\"\nname = \"{name}\"\noutput = \"{out}\"\n[merge]\nmethod = \"task_arithmetic\"\nbase = \"{ex}/base\"\nmodels = [\"{ex}/task-a\", \"{ex}/task-b\"]\n",
            out = dir.join(name).display(),
            ex = ex.display()
        ),
    )
    .unwrap();
    config
}

fn wait_for(url: &str, job: &str, state: &str) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        let last = status_json(url, job);
        if last["state"] == state {
            return last;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "job {job} never {state}: {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A coordinator that retries a failed task once after `backoff_ms`, and one worker "flaky"
/// whose store calls fail as `MIRRORPLAY_FAULT_STORE=fault` says; the URL and both processes
/// (killed when dropped).
fn flaky_cluster(dir: &Path, backoff_ms: u64, fault: &str) -> (String, [Killed; 2]) {
    let url = format!("http://127.0.0.1:{}", free_port());
    let backoff = backoff_ms.to_string();
    let coordinator = spawn_coordinator_with(
        dir,
        &url,
        &["--task-retries", "1", "--retry-backoff-ms", &backoff],
        &[],
        None,
    );
    let worker = spawn_worker_env(&url, "flaky", None, &[("MIRRORPLAY_FAULT_STORE", fault)]);
    (url, [coordinator, worker])
}

fn stdout_of(args: &[&str]) -> String {
    let o = run(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn a_transient_store_error_is_retried_after_a_backoff_up_to_the_limit_and_logs_say_why() {
    let tmp = tempfile::tempdir().unwrap();
    // The worker's first three output files fail to complete (a store error, transient).
    let (url, _cluster) =
        flaky_cluster(tmp.path(), 300, "op=complete,mode=error,times=3,scope=any");

    // Job 1: its one task fails, is retried once after 300 ms, fails again: the job fails.
    let first = submit_config(&url, &merge_config(tmp.path(), "first"), &[]);
    let failed = wait_for(&url, &first, "failed");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("failed 2 times; giving up") && error.contains("injected failure"),
        "{error}"
    );
    let failures = failed["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert_eq!(
        (
            &failures[0]["retry"],
            &failures[0]["delay_ms"],
            &failures[0]["worker"]
        ),
        (&1.into(), &300.into(), &"flaky".into())
    );
    assert_eq!(failures[1]["retry"], 0);
    for f in failures {
        assert!(
            f["reason"].as_str().unwrap().contains("injected failure"),
            "{f}"
        );
    }
    let text = stdout_of(&["status", &first, "--coordinator", &url]);
    assert!(text.contains("(retry 1 after 0.3 s)"), "{text}");
    assert!(text.contains("(failed the job)"), "{text}");
    // The job's log holds the worker's own lines: the failure and that it is transient.
    let logs = stdout_of(&["logs", &first, "--coordinator", &url]);
    assert!(logs.contains("[flaky] started"), "{logs}");
    assert!(
        logs.lines()
            .any(|l| l.contains("[error] [flaky] failed") && l.contains("transient=true")),
        "{logs}"
    );
    assert!(logs.contains("retry 1 of 1, in 0.3 s"), "{logs}");

    // Job 2: the third write fails, the retry succeeds; `logs --follow` ends with the job.
    let second = submit_config(&url, &merge_config(tmp.path(), "second"), &[]);
    let follow = Command::new(mirrorplay())
        .args(["logs", &second, "--follow", "--coordinator", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let done = wait_for(&url, &second, "succeeded");
    assert_eq!(done["failures"].as_array().unwrap().len(), 1, "{done}");
    let followed = follow.wait_with_output().unwrap();
    assert!(followed.status.success(), "{}", stderr(&followed));
    let followed = String::from_utf8(followed.stdout).unwrap();
    assert!(followed.contains("re-issued as attempt 2"), "{followed}");
    assert!(followed.trim_end().ends_with("job succeeded"), "{followed}");
}

#[test]
fn a_hand_back_is_not_a_failure_and_an_invalid_spec_fails_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    // No failure allowed: a hand-back counted as one would fail the job. A long lease, so that
    // a loaded machine never loses a worker here.
    let _coordinator = spawn_coordinator_with(
        tmp.path(),
        &url,
        &["--task-retries", "0", "--lease-ms", "10000"],
        &[],
        None,
    );
    let mut leaving = spawn_worker(&url, "leaving", Some(5_000));
    let job = submit_config(&url, &merge_config(tmp.path(), "handed"), &[]);
    wait_until("the task running", Duration::from_secs(30), || {
        status_json(&url, &job)["progress"]["tasks_running"] == 1
    });
    // A second job on the output of a live one is refused, `overwrite` or not.
    let config = merge_config(tmp.path(), "handed");
    let twice = run(&[
        "submit",
        config.to_str().unwrap(),
        "--set",
        "job.overwrite=true",
        "--coordinator",
        &url,
    ]);
    assert_eq!(twice.status.code(), Some(2), "{}", stderr(&twice));
    assert!(
        stderr(&twice).contains(&format!(
            "is the output of job `{job}`, which is still running"
        )),
        "{}",
        stderr(&twice)
    );
    leaving.signal(libc::SIGTERM);
    assert!(leaving.0.wait().unwrap().success());
    let _staying = spawn_worker(&url, "staying", None);
    let done = wait_for(&url, &job, "succeeded");
    assert_eq!(done["failures"], serde_json::json!([]));
    let logs = stdout_of(&["logs", &job, "--coordinator", &url]);
    assert!(
        logs.contains("worker `leaving` handed it back; task")
            && logs.contains("re-issued as attempt 2 (not a failure)"),
        "{logs}"
    );

    // A spec no driver can run (a merge without a method, past the CLI's checks) fails its job
    // at once: no task, no retry.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bad = rt.block_on(async {
        use mirrorplay_proto::v1::*;
        let mut c = coordinator_client::CoordinatorClient::connect(url.clone())
            .await
            .unwrap();
        let ex = repo_root().join("examples");
        let spec = JobSpec {
            name: "no-method".into(),
            output: tmp.path().join("bad").display().to_string(),
            kind: Some(job_spec::Kind::Merge(MergeSpec {
                base: ex.join("base").display().to_string(),
                models: vec![ex.join("task-a").display().to_string()],
                weights: vec![1.0],
                lambda: 1.0,
                ..Default::default()
            })),
            ..Default::default()
        };
        c.submit_job(SubmitJobRequest {
            spec: Some(spec),
            config_toml: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .job_id
    });
    let failed = wait_for(&url, &bad, "failed");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("without a method"),
        "{failed}"
    );
    assert_eq!(failed["progress"]["tasks_total"], 0);
    assert_eq!(failed["failures"], serde_json::json!([]));
}

#[test]
fn an_assignment_the_worker_never_received_is_re_issued_not_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    // No failure allowed, so a re-issue counted as one would fail the job; a lease short enough
    // for a quick test and long enough that a loaded machine keeps the worker.
    let _coordinator = spawn_coordinator_with(
        tmp.path(),
        &url,
        &["--task-retries", "0", "--lease-ms", "3000"],
        &[],
        None,
    );
    // The only worker discards the first task its polls return, as if the reply were lost: it
    // idles with its one slot taken in the scheduler. Without the hand-back the job stalls.
    let _worker = spawn_worker_env(
        &url,
        "deaf",
        None,
        &[("MIRRORPLAY_FAULT_DROP_ASSIGNMENTS", "1")],
    );
    let job = submit_config(&url, &merge_config(tmp.path(), "stranded"), &[]);
    let done = wait_for(&url, &job, "succeeded");
    assert_eq!(done["failures"], serde_json::json!([]), "{done}");
    let logs = stdout_of(&["logs", &job, "--coordinator", &url]);
    assert!(
        logs.contains("worker `deaf` was assigned it but has not listed it in its heartbeats")
            && logs.contains("re-issued as attempt 2 (not a failure)"),
        "{logs}"
    );
    assert!(tmp
        .path()
        .join("stranded/model/model.safetensors.index.json")
        .exists());
}

#[test]
fn a_worker_of_another_version_is_refused_naming_both_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let _coordinator = spawn_coordinator(tmp.path(), &url);
    let o = Command::new(worker_bin())
        .args(["--coordinator", &url, "--name", "old"])
        .env("MIRRORPLAY_FAULT_WORKER_VERSION", "0.0.9")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    let ours = env!("CARGO_PKG_VERSION");
    assert!(
        err.contains("mirrorplay-worker version 0.0.9")
            && err.contains(&format!("this coordinator runs mirrorplay {ours}")),
        "{err}"
    );
}

#[test]
fn a_store_error_inside_a_training_task_is_transient_so_the_task_is_retried_and_the_job_completes()
{
    let tmp = tempfile::tempdir().unwrap();
    // The first put of the worker's first checkpoint fails (a store error, transient); the
    // store calls after it succeed.
    let (url, _cluster) = flaky_cluster(tmp.path(), 200, "op=put,nth=1,mode=error");
    let out = tmp.path().join("sft");
    let config = tmp.path().join("sft.toml");
    std::fs::write(
        &config,
        format!(
            "[job]\nkind = \"sft\"\noutput = \"{}\"\n[sft]\ninit = \"tiny\"\ntask = \"goodhart_digits\"\nbatch_size = 8\nsteps = 8\neval_every = 1000\neval_prompts = 4\ncheckpoint_every = 4\n",
            out.display()
        ),
    )
    .unwrap();
    let job = submit_config(&url, &config, &[]);
    let done = wait_for(&url, &job, "succeeded");
    let failures = done["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{done}");
    assert_eq!(
        (&failures[0]["retry"], &failures[0]["worker"]),
        (&1.into(), &"flaky".into()),
        "{done}"
    );
    assert!(
        failures[0]["reason"]
            .as_str()
            .unwrap()
            .contains("injected failure"),
        "{done}"
    );
    let logs = stdout_of(&["logs", &job, "--coordinator", &url]);
    assert!(
        logs.lines()
            .any(|l| l.contains("[error] [flaky] failed") && l.contains("transient=true")),
        "{logs}"
    );
    assert!(out.join("model/model.safetensors").exists());
    assert!(out.join("checkpoints/step-000008/manifest.json").exists());
}
