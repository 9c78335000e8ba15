//! The quickstart pipeline (SFT reference → IPO-MD self-play on Goodhart-Digits) end to end on
//! the local cluster, shortened with `--set` to fit CI: the held-out win rate against the
//! reference, read back from the metrics files, must rise above 0.5 with margin.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

/// The metric lines of `dir`/part-*.jsonl, keeping the highest attempt per (split, step).
fn read_metrics(dir: &Path) -> BTreeMap<(String, u64), serde_json::Value> {
    let mut parts: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    parts.sort();
    assert!(!parts.is_empty(), "no metrics parts in {}", dir.display());
    let mut out: BTreeMap<(String, u64), serde_json::Value> = BTreeMap::new();
    for part in parts {
        let name = part.file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            name.starts_with("part-a") && name.ends_with(".jsonl") && name.len() == 22,
            "{name}"
        );
        for line in std::fs::read_to_string(&part).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            for key in ["step", "time", "split", "attempt"] {
                assert!(v.get(key).is_some(), "{name}: `{key}` missing in {line}");
            }
            let key = (
                v["split"].as_str().unwrap().to_string(),
                v["step"].as_u64().unwrap(),
            );
            let newer = out
                .get(&key)
                .is_none_or(|old| old["attempt"].as_u64() <= v["attempt"].as_u64());
            if newer {
                out.insert(key, v);
            }
        }
    }
    out
}

#[test]
fn shortened_quickstart_raises_the_held_out_win_rate_above_one_half() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("qs");
    let o = run(&[
        "local",
        "configs/quickstart.toml",
        "--workers",
        "1",
        "--set",
        &format!("job.output={}", out.display()),
        "--set",
        "stage.0.sft.steps=100",
        "--set",
        "stage.0.sft.eval_every=100",
        "--set",
        "stage.0.sft.eval_prompts=64",
        "--set",
        "stage.1.selfplay.steps=80",
        "--set",
        "stage.1.selfplay.eval_every=40",
        "--set",
        "stage.1.selfplay.eval_prompts=256",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "quickstart failed: {err}");
    // The driver's closing lines and streamed metrics reach the CLI.
    assert!(err.contains("held-out win rate vs the reference"), "{err}");
    // Evaluations reach it as readable lines, training steps only the progress bar (no raw
    // JSON; that is `--json`'s).
    assert!(
        err.contains("eval step 80: "),
        "no streamed evaluation: {err}"
    );
    assert!(!err.contains("metrics {"), "raw metric lines: {err}");
    // The result on stdout: the job's output location, and nothing else.
    let stdout = String::from_utf8(o.stdout.clone()).unwrap();
    assert_eq!(stdout, format!("file://{}\n", out.display()), "stdout");
    // job.json records the files training read: self-play's policy and reference are the SFT
    // stage's model (the tiny SFT init and the built-in task read none).
    let job: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("job.json")).unwrap()).unwrap();
    let inputs: Vec<&str> = job["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["url"].as_str().unwrap())
        .collect();
    let weights = format!("file://{}/sft/model/model.safetensors", out.display());
    assert!(inputs.contains(&weights.as_str()), "{inputs:?}");
    assert!(
        inputs.iter().all(|u| u.contains("/sft/model/")),
        "{inputs:?}"
    );
    for stage in ["sft", "selfplay"] {
        let model = out.join(stage).join("model");
        for f in ["config.json", "tokenizer.json", "model.safetensors"] {
            assert!(model.join(f).exists(), "{stage}: {f} missing");
        }
    }

    let sft = read_metrics(&out.join("sft/metrics"));
    let train_keys = ["loss", "grad_norm", "lr", "tokens_per_s"];
    for k in train_keys {
        assert!(sft[&("train".into(), 1)].get(k).is_some(), "sft: {k}");
    }
    let (first, last) = (&sft[&("train".into(), 1)], &sft[&("train".into(), 100)]);
    assert!(
        last["loss"].as_f64().unwrap() < first["loss"].as_f64().unwrap() - 0.2,
        "SFT loss did not fall: {first} → {last}"
    );

    let sp = read_metrics(&out.join("selfplay/metrics"));
    for k in [
        "loss",
        "kl/k1",
        "kl/k3",
        "pref/mean",
        "grad_norm",
        "lr",
        "tokens_per_s",
    ] {
        assert!(sp[&("train".into(), 1)].get(k).is_some(), "selfplay: {k}");
    }
    let win = |step: u64| {
        sp[&("eval".into(), step)]["eval/win_rate"]
            .as_f64()
            .unwrap()
    };
    let (start, end) = (win(0), win(80));
    eprintln!(
        "held-out win rate: step 0 {start:.3}, step 40 {:.3}, step 80 {end:.3}",
        win(40)
    );
    assert!(
        (start - 0.5).abs() < 0.1,
        "before training the policy is the reference: {start}"
    );
    // Measured here: 0.502 → 0.621 (τ = 0.01; the full 300 steps reach 1.000, RESULTS.md).
    // (0.453 → 0.682 before SFT examples got their own random stream: another reference.)
    assert!(
        end >= 0.6 && end - start >= 0.1,
        "win rate after 80 steps: {start} → {end}"
    );
}
