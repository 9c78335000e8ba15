//! Exact resume with real processes: a self-play job run 30 steps straight, and the same job
//! whose worker is SIGKILLed right after the checkpoint of step 15 (a fault-injection knob) and
//! re-issued to a second worker that resumes from that checkpoint, end with bit-identical
//! parameters and optimizer state and the same metrics lines; `mirrorplay resume` re-runs a
//! cancelled job from its checkpoint.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster::*;
use common::*;

fn config(out: &Path) -> String {
    format!(
        "[job]\nkind = \"selfplay\"\noutput = \"{}\"\nseed = 2\n[selfplay]\nalgorithm = \"ipo_md\"\nkl_coef = 0.05\npolicy = \"tiny\"\nreference = \"tiny\"\ntask = \"goodhart_digits\"\nbatch_prompts = 6\nsteps = 30\neval_every = 10\neval_prompts = 6\ncheckpoint_every = 15\nkeep_last = 0\n",
        out.display()
    )
}

/// The merged metrics series (highest attempt per (split, step), an earlier attempt's lines
/// after a later one's resume step dropped), without wall-clock keys and the attempt.
fn series(out: &Path) -> BTreeMap<(u64, String), serde_json::Value> {
    let mut lines: Vec<serde_json::Value> = vec![];
    for entry in std::fs::read_dir(out.join("metrics")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        lines.extend(text.lines().map(|l| serde_json::from_str(l).unwrap()));
    }
    let mut first_step: BTreeMap<u64, u64> = BTreeMap::new();
    for v in &lines {
        let (a, s) = (v["attempt"].as_u64().unwrap(), v["step"].as_u64().unwrap());
        let e = first_step.entry(a).or_insert(s);
        *e = (*e).min(s);
    }
    let mut best: BTreeMap<(u64, String), (u64, serde_json::Value)> = BTreeMap::new();
    for mut v in lines {
        let (a, s) = (v["attempt"].as_u64().unwrap(), v["step"].as_u64().unwrap());
        if first_step.range(a + 1..).any(|(_, &start)| s > start) {
            continue;
        }
        let key = (s, v["split"].as_str().unwrap().to_string());
        if best.get(&key).is_some_and(|(b, _)| *b > a) {
            continue;
        }
        let o = v.as_object_mut().unwrap();
        for k in ["time", "tokens_per_s", "attempt"] {
            o.remove(k);
        }
        best.insert(key, (a, v));
    }
    best.into_iter().map(|(k, (_, v))| (k, v)).collect()
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_run_killed_after_a_checkpoint_resumes_bit_identically() {
    let tmp = tempfile::tempdir().unwrap();

    // 30 steps straight.
    let straight = tmp.path().join("straight");
    let cfg = tmp.path().join("straight.toml");
    std::fs::write(&cfg, config(&straight)).unwrap();
    let o = run(&["local", cfg.to_str().unwrap(), "--workers", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // 15 steps, SIGKILL, re-issued, 15 more from the checkpoint.
    let url = format!("http://127.0.0.1:{}", free_port());
    let _coordinator = spawn_coordinator(tmp.path(), &url);
    let resumed = tmp.path().join("resumed");
    let cfg = tmp.path().join("resumed.toml");
    std::fs::write(&cfg, config(&resumed)).unwrap();
    let mut victim = Killed(
        Command::new(worker_bin())
            .args(["--coordinator", &url, "--name", "victim"])
            .env("MIRRORPLAY_FAULT_KILL_AFTER_CHECKPOINT", "15")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let job = submit_config(&url, &cfg, &[]);
    let status = victim.0.wait().unwrap();
    assert!(!status.success(), "the victim killed itself: {status:?}");
    assert!(resumed
        .join("checkpoints/step-000015/manifest.json")
        .exists());
    assert_eq!(status_json(&url, &job)["progress"]["checkpoint_step"], 15);
    let _rescuer = spawn_worker(&url, "rescuer", None);
    let watched = run(&["watch", &job, "--coordinator", &url]);
    let log = stderr(&watched);
    assert!(watched.status.success(), "{log}");
    assert!(
        log.contains("re-issued as attempt 2")
            && log
                .contains("resumes from its newest verified checkpoint (last committed: step 15)"),
        "{log}"
    );
    assert_eq!(status_json(&url, &job)["progress"]["checkpoint_step"], 30);

    // Parameters, optimizer state and the final model, bit for bit.
    for file in [
        "checkpoints/step-000030/model.safetensors",
        "checkpoints/step-000030/optimizer.safetensors",
        "checkpoints/step-000015/optimizer.safetensors",
        "model/model.safetensors",
    ] {
        assert!(
            bytes(&straight.join(file)) == bytes(&resumed.join(file)),
            "{file} differs between the straight and the resumed run"
        );
    }
    // The resumed attempt's lines replace the lost attempt's after the checkpoint: one
    // continuous series equal to the straight run's.
    let (a, b) = (series(&straight), series(&resumed));
    assert_eq!(a.len(), 30 + 4, "30 train lines and evals at 0, 10, 20, 30");
    assert_eq!(a, b);
    // Parts are per attempt: attempt 2 did not overwrite attempt 1's.
    let names: Vec<String> = std::fs::read_dir(resumed.join("metrics"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("part-a001-")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("part-a002-")),
        "{names:?}"
    );
}

#[test]
fn resume_reruns_a_cancelled_job_from_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let _coordinator = spawn_coordinator(tmp.path(), &url);
    let out = tmp.path().join("out");
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, config(&out)).unwrap();
    // Running is refused.
    let _w = spawn_worker(&url, "w", None);
    let job = submit_config(
        &url,
        &cfg,
        &[
            "selfplay.steps=400".into(),
            "selfplay.checkpoint_every=5".into(),
        ],
    );
    wait_until("a checkpoint", Duration::from_secs(60), || {
        status_json(&url, &job)["progress"]["checkpoint_step"]
            .as_u64()
            .unwrap_or(0)
            >= 5
    });
    let o = run(&["resume", &job, "--coordinator", &url]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("only a failed or cancelled job"),
        "{}",
        stderr(&o)
    );
    assert!(run(&["cancel", &job, "--coordinator", &url])
        .status
        .success());
    let cancelled_at = status_json(&url, &job)["progress"]["checkpoint_step"]
        .as_u64()
        .unwrap();
    let o = run(&["resume", &job, "--coordinator", &url]);
    assert!(o.status.success(), "{}", stderr(&o));
    let watched = run(&["watch", &job, "--coordinator", &url]);
    assert!(watched.status.success(), "{}", stderr(&watched));
    // The resumed run's attempt numbers start above the first run's, and its first train
    // line follows a checkpoint of the first run.
    // (The checkpoint step read right after `cancel` can lag one the worker finished before it
    // stopped, so the bound comes from the first run's own metric lines.)
    let (mut first_resumed_step, mut last_first_run_step) = (u64::MAX, 0);
    for entry in std::fs::read_dir(out.join("metrics")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["split"] != "train" {
                continue;
            }
            let step = v["step"].as_u64().unwrap();
            if v["attempt"].as_u64().unwrap() > 1 {
                first_resumed_step = first_resumed_step.min(step);
            } else {
                last_first_run_step = last_first_run_step.max(step);
            }
        }
    }
    assert!(
        first_resumed_step > 5
            && first_resumed_step > cancelled_at
            && first_resumed_step <= last_first_run_step + 1
            && (first_resumed_step - 1) % 5 == 0,
        "resumed at {first_resumed_step}; cancelled after checkpoint {cancelled_at}, the first \
         run's last train step {last_first_run_step}, a checkpoint every 5 steps"
    );
    assert!(out.join("model/model.safetensors").exists());
}
