//! The local cluster end to end: real coordinator and worker processes on loopback.

mod common;

use common::*;

fn examples() -> std::path::PathBuf {
    repo_root().join("examples")
}

#[test]
fn merge_is_byte_identical_for_1_2_3_workers_and_matches_a_direct_computation() {
    let tmp = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for workers in 1..=3 {
        let out = tmp.path().join(format!("w{workers}"));
        let o = run(&[
            "local",
            "configs/merge-task-arithmetic.toml",
            "--workers",
            &workers.to_string(),
            "--set",
            &format!("job.output={}", out.display()),
        ]);
        assert!(
            o.status.success(),
            "local --workers {workers} failed: {}",
            stderr(&o)
        );
        assert!(stderr(&o).contains("succeeded"), "{}", stderr(&o));
        outputs.push(files_of(&out.join("model")));
    }
    let names: Vec<&String> = outputs[0].keys().collect();
    assert!(
        names.len() >= 5,
        "index, config, tokenizer files and several shards: {names:?}"
    );
    assert!(
        outputs[0].contains_key("model.safetensors.index.json")
            && outputs[0].contains_key("tokenizer.json")
    );
    assert_eq!(outputs[0], outputs[1], "1 vs 2 workers");
    assert_eq!(outputs[0], outputs[2], "1 vs 3 workers");
    let want = expected_example_merge();
    assert_models_close(&read_model(&tmp.path().join("w1/model")), &want, 1e-6);
    assert_eq!(
        outputs[0]["config.json"],
        std::fs::read(examples().join("base/config.json")).unwrap()
    );
    let job: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("w1/job.json")).unwrap()).unwrap();
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["inputs"].as_array().unwrap().len(), 3);
}

#[test]
fn pipeline_second_stage_merges_the_first_stage_output() {
    let tmp = tempfile::tempdir().unwrap();
    let ex = examples();
    let config = tmp.path().join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[job]
kind = "pipeline"
output = "{out}"

[[stage]]
name = "first"
kind = "merge"
[stage.merge]
method = "task_arithmetic"
base = "{ex}/base"
models = ["{ex}/task-a"]
lambda = 0.5
max_shard_size = "20KB"

[[stage]]
name = "second"
kind = "merge"
[stage.merge]
method = "task_arithmetic"
base = "stage:first"
models = ["{ex}/task-b"]
weights = [2.0]
"#,
            out = tmp.path().join("out").display(),
            ex = ex.display()
        ),
    )
    .unwrap();
    let o = run(&["local", config.to_str().unwrap(), "--workers", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = tmp.path().join("out/first/model");
    let second = tmp.path().join("out/second/model");
    assert!(
        first.join("model.safetensors.index.json").exists(),
        "the first stage is sharded"
    );
    let want_first = task_arithmetic(&ex.join("base"), &[&ex.join("task-a")], &[1.0], 0.5);
    assert_models_close(&read_model(&first), &want_first, 1e-6);
    let want_second = task_arithmetic(&first, &[&ex.join("task-b")], &[2.0], 1.0);
    assert_models_close(&read_model(&second), &want_second, 1e-6);
}

#[test]
fn an_output_holding_another_jobs_outputs_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = format!("job.output={}", tmp.path().join("out").display());
    let args = [
        "local",
        "configs/merge-task-arithmetic.toml",
        "--workers",
        "1",
        "--set",
        &out,
        "--set",
        "job.overwrite=false",
    ];
    assert!(run(&args).status.success());
    let again = run(&args);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already holds the outputs of job"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn a_model_missing_a_base_tensor_fails_the_job_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    // A "model" that holds a single tensor of the base.
    let single = tmp.path().join("partial.safetensors");
    write_one_tensor_of_base(&single, "model.norm.weight");
    let o = run(&[
        "local",
        "configs/merge-task-arithmetic.toml",
        "--set",
        &format!("job.output={}", tmp.path().join("out").display()),
        "--set",
        &format!("merge.models=[\"{}\"]", single.display()),
        "--set",
        "merge.weights=[1.0]",
    ]);
    remove_kept_logs(&o);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("tensor `lm_head.weight`") && err.contains("partial.safetensors"),
        "{err}"
    );
    assert!(!tmp
        .path()
        .join("out/model/model.safetensors.index.json")
        .exists());
}

#[test]
fn example_models_regenerate_byte_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(&["example-models", tmp.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for model in ["base", "task-a", "task-b", "task-c"] {
        let committed = files_of(&examples().join(model));
        let fresh = files_of(&tmp.path().join(model));
        assert_eq!(
            committed.keys().collect::<Vec<_>>(),
            fresh.keys().collect::<Vec<_>>(),
            "{model}"
        );
        assert!(
            committed == fresh,
            "examples/{model} differs from a fresh `mirrorplay example-models`"
        );
    }
}

/// The output path the bad-config fixtures name; the test points it at a fresh directory.
const FIXTURE_OUTPUT: &str = "/tmp/mirrorplay-bad-config-output";

#[test]
fn bad_configs_fail_before_anything_runs_naming_file_line_and_key() {
    let dir = repo_root().join("coordinator/tests/fixtures/bad-configs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 15, "the corpus has {} configs", files.len());
    // Each config runs as a copy under a fresh directory (the CLI's working directory), its
    // output path pointed there, so a config that wrongly runs writes nowhere shared.
    let tmp = tempfile::tempdir().unwrap();
    let output = tmp.path().join("bad-config-output");
    std::fs::create_dir(tmp.path().join("bad-configs")).unwrap();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .unwrap()
            .replace(FIXTURE_OUTPUT, output.to_str().unwrap());
        let rel = format!(
            "bad-configs/{}",
            file.file_name().unwrap().to_str().unwrap()
        );
        std::fs::write(tmp.path().join(&rel), &text).unwrap();
        let expect = text
            .lines()
            .next()
            .unwrap()
            .strip_prefix("# expect: ")
            .expect("first line `# expect: LINE KEY`");
        let (line, key) = expect.split_once(' ').unwrap();
        for command in ["validate", "local"] {
            let o = run_in(tmp.path(), &[command, &rel]);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(2), "{command} {rel}: {err}");
            assert!(o.stdout.is_empty(), "{command} {rel} printed on stdout");
            let located = if line == "-" {
                format!("{rel}: ")
            } else {
                format!("{rel}:{line}: ")
            };
            assert!(
                err.contains(&located),
                "{command} {rel}: expected `{located}` in: {err}"
            );
            if key != "-" {
                assert!(
                    err.contains(&format!("`{key}`")),
                    "{command} {rel}: expected key `{key}` in: {err}"
                );
            }
            assert!(!output.exists(), "{command} {rel} wrote its output");
        }
    }
}

#[test]
fn every_merge_config_in_configs_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut configs: Vec<_> = std::fs::read_dir(repo_root().join("configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("merge-")
        })
        .collect();
    configs.sort();
    assert!(configs.len() >= 4, "{configs:?}");
    for config in configs {
        let name = config.file_stem().unwrap().to_string_lossy().to_string();
        let out = tmp.path().join(&name);
        let rel = format!("configs/{name}.toml");
        let o = run(&[
            "local",
            &rel,
            "--workers",
            "2",
            "--set",
            &format!("job.output={}", out.display()),
        ]);
        assert!(o.status.success(), "{rel}: {}", stderr(&o));
        assert!(
            out.join("model/model.safetensors.index.json").exists(),
            "{rel}"
        );
    }
}

/// The model the SmolLM2 configs read: it exists only after `bash scripts/fetch_smollm2.sh
/// models/smollm2` (README "Set up").
const SMOLLM2_GGUF: &str = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The over-optimisation study's output, which `configs/score-goodhart.toml` and
/// `configs/selfplay-proxies-goodhart.toml` read: it exists only after `mirrorplay local
/// configs/bon-goodhart.toml` has run on this machine.
const BON_STUDY_OUTPUT: &str = "/tmp/mp-bon-goodhart/";

#[test]
fn every_config_in_configs_validates() {
    let mut configs: Vec<_> = std::fs::read_dir(repo_root().join("configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    configs.sort();
    assert!(configs.len() >= 10, "{configs:?}");
    // (what a config names, whether it is here, how to make it)
    let prerequisites = [
        (
            SMOLLM2_GGUF,
            repo_root().join(SMOLLM2_GGUF).exists(),
            "bash scripts/fetch_smollm2.sh models/smollm2",
        ),
        (
            BON_STUDY_OUTPUT,
            ["reward/ensemble.json", "sft/model/config.json"]
                .iter()
                .all(|p| std::path::Path::new(BON_STUDY_OUTPUT).join(p).exists()),
            "mirrorplay local configs/bon-goodhart.toml",
        ),
    ];
    for config in configs {
        let path = config.to_str().unwrap();
        let text = std::fs::read_to_string(&config).unwrap();
        // A TOML string value that starts with the path (not a comment or a mere mention).
        let missing = prerequisites
            .iter()
            .find(|(input, present, _)| !present && text.contains(&format!("\"{input}")));
        let o = if let Some((input, _, how)) = missing {
            // Without the input the input check refuses the config, naming the path; the rest
            // of the config is checked with the input check off.
            let refused = run(&["validate", path]);
            assert_eq!(
                refused.status.code(),
                Some(2),
                "{path}: {}",
                stderr(&refused)
            );
            assert!(stderr(&refused).contains(input), "{}", stderr(&refused));
            eprintln!("{path}: input check skipped: {input} is not here ({how})");
            run(&["validate", "--no-input-check", path])
        } else {
            run(&["validate", path])
        };
        assert!(o.status.success(), "{}: {}", config.display(), stderr(&o));
        let resolved: toml::Table = toml::from_str(&String::from_utf8_lossy(&o.stdout))
            .unwrap_or_else(|e| panic!("{}: the resolved config: {e}", config.display()));
        assert!(resolved.contains_key("job"), "{}", config.display());
    }
}

#[test]
fn validate_and_local_refuse_a_missing_local_input_naming_its_key_and_path() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let missing = tmp.path().join("no-such-model");
    let sets = [
        format!("job.output={}", out.display()),
        format!("merge.models.1={}", missing.display()),
    ];
    let config = "configs/merge-task-arithmetic.toml";
    let with_sets = |command: &str, extra: &[&str]| {
        let mut args = vec![command, config];
        args.extend(extra);
        for s in &sets {
            args.extend(["--set", s.as_str()]);
        }
        run(&args)
    };
    for command in ["validate", "local"] {
        let o = with_sets(command, &[]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{command}: {err}");
        assert!(o.stdout.is_empty(), "{command} printed on stdout");
        assert!(err.contains("`merge.models.1`"), "{command}: {err}");
        assert!(
            err.contains(&format!("input `{}` does not exist", missing.display())),
            "{command}: {err}"
        );
        assert!(!out.exists(), "{command} wrote its output");
    }
    // `--no-input-check` leaves the path to the machines that run the job.
    let o = with_sets("validate", &["--no-input-check"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // An existing path passes (the config as committed names examples/ that exist).
    let o = run(&["validate", config]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// The `.safetensors` files under `dir/model`, by name.
fn shard_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("model"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_job_failing_before_it_writes_leaves_no_claim_and_overwrite_replaces_the_previous_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let output = format!("job.output={}", out.display());
    let local = |sets: &[&str]| {
        let mut args = vec![
            "local",
            "configs/merge-task-arithmetic.toml",
            "--set",
            &output,
        ];
        for s in sets {
            args.extend(["--set", s]);
        }
        let o = run(&args);
        remove_kept_logs(&o);
        o
    };
    // A base that exists but holds no model: the job fails when it plans and claims nothing.
    // (A base that does not exist is refused before the job is submitted: exit 2, see
    // `validate_and_local_refuse_a_missing_local_input_naming_its_key_and_path`.)
    let not_a_model = tmp.path().join("not-a-model");
    std::fs::create_dir(&not_a_model).unwrap();
    let not_a_model = format!("merge.base={}", not_a_model.display());
    let failed = local(&[&not_a_model, "job.overwrite=false"]);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert!(!out.join("job.json").exists());
    // The corrected rerun runs without `overwrite`: 32KB shards.
    let first = local(&["job.overwrite=false"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let before = shard_names(&out);
    assert!(before.len() > 1, "{before:?}");
    let claim: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("job.json")).unwrap()).unwrap();
    let listed: Vec<&str> = claim["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        before
            .iter()
            .all(|n| listed.contains(&format!("model/{n}").as_str())),
        "{listed:?}"
    );
    // A file of someone else's beside them is never listed, so never removed.
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    // `overwrite` with another shard size: only the new shard set is left.
    let second = local(&["job.overwrite=true", "merge.max_shard_size=\"1GB\""]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(
        shard_names(&out),
        vec!["model-00001-of-00001.safetensors".to_string()]
    );
    assert!(out.join("notes.txt").exists());
    assert_models_close(
        &read_model(&out.join("model")),
        &expected_example_merge(),
        1e-6,
    );
}

/// The pids of `parent`'s children whose command is `name`.
#[cfg(target_os = "linux")]
fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let mut out = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((comm, rest)) = stat.split_once(") ") else {
            continue;
        };
        let ppid = rest.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) && comm.ends_with(&format!("({name}")) {
            out.push(pid);
        }
    }
    out
}

/// Whether `pid` has exited (gone, or a zombie waiting for its new parent).
#[cfg(target_os = "linux")]
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .split_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_sigkilled_local_takes_its_workers_with_it() {
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let mut local = std::process::Command::new(mirrorplay())
        .args([
            "local",
            "configs/merge-task-arithmetic.toml",
            "--workers",
            "2",
            "--set",
            &format!("job.output={}", tmp.path().join("out").display()),
        ])
        .current_dir(repo_root())
        .env("MIRRORPLAY_WORKER_BIN", worker_bin())
        // Each task waits a minute: the workers are busy when `local` dies.
        .env("MIRRORPLAY_FAULT_TASK_DELAY_MS", "60000")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("local.err")).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let workers = loop {
        let found = children_named(local.id(), "mirrorplay-work");
        if found.len() == 2 {
            break found;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{found:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(500));
    local.kill().unwrap();
    local.wait().unwrap();
    let start = Instant::now();
    while !workers.iter().all(|&w| exited(w)) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "workers {workers:?} outlived the SIGKILLed local"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The killed `local` could not remove its directory of worker logs.
    let err = std::fs::read_to_string(tmp.path().join("local.err")).unwrap();
    let logs = err
        .split("logs in ")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap();
    std::fs::remove_dir_all(logs.trim()).unwrap();
}
