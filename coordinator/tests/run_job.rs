//! `mirrorplay run CONFIG` (serve + submit + watch in one process) with real worker processes
//! on loopback: its exit code is the job's outcome, and a restarted `run` on the same state
//! follows the job it finds there instead of submitting a second one; a signal stops it with
//! exit 143, which is no job outcome.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{free_port, Killed};
use common::*;

const TOKEN: &str = "run-test-token-0123456789abcdef";

fn worker(url: &str, name: &str) -> Killed {
    Killed(
        Command::new(worker_bin())
            .args(["--coordinator", url, "--name", name, "--grace-secs", "0"])
            .env("MIRRORPLAY_TOKEN", TOKEN)
            .env("RAYON_NUM_THREADS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// `mirrorplay run ARGS` with the token in its environment; stdout and stderr piped.
fn start_run(args: &[&str]) -> Child {
    Command::new(mirrorplay())
        .arg("run")
        .args(args)
        .current_dir(repo_root())
        .env("MIRRORPLAY_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` (killing it after `timeout`) and collects its output.
fn finish(mut child: Child, timeout: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > timeout {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "`mirrorplay run` did not end in {timeout:?}: {}",
                stderr(&o)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// `run` on a fresh port with `--workers 2` and two real workers; the run's output.
fn run_with_two_workers(state: &Path, sets: &[String]) -> Output {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "configs/merge-task-arithmetic.toml".to_string(),
        "--listen".into(),
        listen,
        "--state".into(),
        state.display().to_string(),
        "--workers".into(),
        "2".into(),
        "--lease-ms".into(),
        "2000".into(),
    ];
    for s in sets {
        args.extend(["--set".to_string(), s.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = start_run(&args);
    let _workers = [worker(&url, "w0"), worker(&url, "w1")];
    finish(child, Duration::from_secs(180))
}

#[test]
fn run_exits_0_when_the_job_succeeds_and_a_restart_follows_the_same_job() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let state = tmp.path().join("state");
    let o = run_with_two_workers(&state, &[format!("job.output={}", out.display())]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("submitted job") && err.contains("succeeded"),
        "{err}"
    );
    let printed = String::from_utf8(o.stdout).unwrap();
    assert!(
        printed.trim().ends_with(&format!("{}", out.display())),
        "stdout is the output location: {printed:?}"
    );
    assert!(out.join("model/model.safetensors.index.json").is_file());
    let job: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("job.json")).unwrap()).unwrap();
    assert_eq!(job["state"], "succeeded");

    // The coordinator pod restarted: `run` on the same state submits nothing new and gives
    // the finished job's exit code at once, with no worker at all.
    let port = free_port();
    let o = finish(
        start_run(&[
            "configs/merge-task-arithmetic.toml",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--state",
            state.to_str().unwrap(),
            "--workers",
            "2",
            "--set",
            &format!("job.output={}", out.display()),
        ]),
        Duration::from_secs(60),
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("found in the state"), "{err}");
    assert!(!err.contains("submitted job"), "{err}");
}

#[test]
fn run_exits_1_when_the_job_fails() {
    let tmp = tempfile::tempdir().unwrap();
    // A "model" holding a single tensor of the base: the config is valid, the merge fails.
    let single = tmp.path().join("partial.safetensors");
    write_one_tensor_of_base(&single, "model.norm.weight");
    let o = run_with_two_workers(
        &tmp.path().join("state"),
        &[
            format!("job.output={}", tmp.path().join("out").display()),
            format!("merge.models=[\"{}\"]", single.display()),
            "merge.weights=[1.0]".into(),
        ],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("failed") && err.contains("partial.safetensors"),
        "{err}"
    );
    assert!(o.stdout.is_empty(), "nothing on stdout after a failure");
}

#[test]
fn run_refuses_a_public_listener_without_a_token() {
    let o = Command::new(mirrorplay())
        .args([
            "run",
            "configs/merge-task-arithmetic.toml",
            "--listen",
            "0.0.0.0:0",
        ])
        .current_dir(repo_root())
        .env_remove("MIRRORPLAY_TOKEN")
        .env_remove("MIRRORPLAY_TOKEN_FILE")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("without a token"), "{err}");
}

#[test]
fn run_stopped_by_a_signal_exits_143_and_leaves_its_job_unfinished() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    // No --workers and no worker: the job is submitted at once and waits for one.
    let child = start_run(&[
        "configs/merge-task-arithmetic.toml",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--state",
        state.to_str().unwrap(),
        "--set",
        &format!("job.output={}", tmp.path().join("out").display()),
    ]);
    let submitted = Instant::now();
    while std::fs::read_dir(state.join("jobs")).map_or(true, |mut d| d.next().is_none()) {
        assert!(
            submitted.elapsed() < Duration::from_secs(30),
            "no job submitted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // `run` is following the job by now.
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = finish(child, Duration::from_secs(30));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(143), "{err}");
    assert!(err.contains("stays unfinished in the state"), "{err}");
}
