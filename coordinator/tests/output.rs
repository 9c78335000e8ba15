//! What the CLI shows a person (docs/architecture.md#cli-contract): readable metric lines
//! instead of raw JSON (raw JSON with `--json`), no colour codes off a terminal, a failure
//! printed once with the worker logs kept, exit 2 for an unknown job or a malformed
//! coordinator URL, and a merge input holding an infinity refused by its path.

mod common;

use common::cluster::{free_port, spawn_coordinator};
use common::*;

const ESC: &str = "\u{1b}[";

/// A copy of the example model `task-a` as one safetensors file with `value` written into
/// the first element of `model.norm.weight`.
fn task_a_with(dir: &std::path::Path, value: f32) -> std::path::PathBuf {
    let model = read_model(&repo_root().join("examples/task-a"));
    let mut entries = serde_json::Map::new();
    let mut data: Vec<u8> = vec![];
    for (name, (shape, values)) in &model {
        let start = data.len();
        for (i, v) in values.iter().enumerate() {
            let v = if name == "model.norm.weight" && i == 0 {
                value
            } else {
                *v
            };
            data.extend_from_slice(&v.to_le_bytes());
        }
        entries.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut header = serde_json::Value::Object(entries).to_string();
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&data);
    let path = dir.join("task-a-inf.safetensors");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_merge_input_holding_infinity_fails_once_by_path_and_keeps_json_worker_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = task_a_with(tmp.path(), f32::INFINITY);
    let o = run(&[
        "local",
        "configs/merge-task-arithmetic.toml",
        "--log-format",
        "json",
        "--set",
        &format!("job.output={}", tmp.path().join("out").display()),
        "--set",
        &format!("merge.models=[\"{}\"]", bad.display()),
        "--set",
        "merge.weights=[1.0]",
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(o.stdout.is_empty(), "a failed job prints no result");
    // Named by the input's path, not its position; printed once.
    let failure = "tensor `model.norm.weight`: NaN or infinity in file://";
    assert_eq!(err.matches(failure).count(), 1, "{err}");
    assert!(err.contains("task-a-inf.safetensors"), "{err}");
    assert!(!err.contains(ESC), "colour codes on a pipe: {err}");
    // The worker logs are kept, named, and are JSON lines without colour codes.
    let dir = err
        .lines()
        .find_map(|l| l.strip_prefix("worker logs kept in "))
        .unwrap_or_else(|| panic!("no kept log directory in: {err}"));
    let dir = std::path::PathBuf::from(dir);
    let log = std::fs::read_to_string(dir.join("worker-0.log")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!log.is_empty() && !log.contains(ESC), "{log}");
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
}

#[test]
fn local_json_streams_events_on_stdout_and_readable_lines_otherwise() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sft");
    let args = |json: bool| {
        let mut a = vec![
            "local".to_string(),
            "configs/quickstart.toml".into(),
            "--set".into(),
            format!("job.output={}", out.display()),
        ];
        for s in [
            "stage.0.sft.steps=4",
            "stage.0.sft.eval_every=2",
            "stage.0.sft.eval_prompts=8",
            "stage.0.sft.batch_size=8",
            "stage.1.selfplay.steps=2",
            "stage.1.selfplay.eval_every=2",
            "stage.1.selfplay.eval_prompts=8",
            "stage.1.selfplay.batch_prompts=4",
        ] {
            a.push("--set".into());
            a.push(s.into());
        }
        if json {
            a.push("--json".into());
        }
        a
    };
    let run_args = |a: Vec<String>| run(&a.iter().map(String::as_str).collect::<Vec<_>>());

    let o = run_args(args(false));
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        !err.contains("{\"step\"") && !err.contains("metrics {"),
        "raw metric lines on stderr: {err}"
    );
    assert!(
        err.contains("eval step 2: "),
        "no readable eval line: {err}"
    );
    assert!(err.contains("win_rate "), "{err}");
    assert!(!err.contains(ESC), "colour codes on a pipe: {err}");

    let o = run_args(args(true));
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        !err.contains("{\"step\"") && !err.contains("eval step"),
        "{err}"
    );
    let stdout = String::from_utf8(o.stdout).unwrap();
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let metrics: Vec<&serde_json::Value> = events
        .iter()
        .flat_map(|e| e["metrics"].as_array().unwrap())
        .collect();
    assert!(
        metrics
            .iter()
            .any(|m| m["split"] == "train" && m["loss"].is_f64()),
        "{stdout}"
    );
    let last = events.last().unwrap();
    assert_eq!(last["job"]["state"], "succeeded", "{last}");
    assert_eq!(
        last["job"]["output"],
        format!("file://{}", out.display()),
        "{last}"
    );
}

#[test]
fn an_unknown_job_and_a_malformed_coordinator_url_exit_2() {
    for url in ["localhost:50051", "not a url", "ftp://127.0.0.1:1"] {
        let o = run(&["status", "--coordinator", url]);
        assert_eq!(o.status.code(), Some(2), "{url}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("invalid coordinator URL"),
            "{}",
            stderr(&o)
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let _coordinator = spawn_coordinator(tmp.path(), &url);
    for command in ["watch", "status", "cancel", "resume"] {
        let o = run(&[command, "no-such-job", "--coordinator", &url]);
        assert_eq!(o.status.code(), Some(2), "{command}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("no-such-job"),
            "{command}: {}",
            stderr(&o)
        );
    }
}
