//! The reward-model job family end to end on the local cluster (short settings for CI):
//! SFT reference → reward_train (K = 2 Bradley–Terry proxies on noisy Goodhart-Digits labels,
//! normalised over the reference's samples) → best-of-n → score → self-play against the
//! ensemble named by its manifest; a second, shared-backbone ensemble (K = 2 heads on the SFT
//! policy) scores the same data. Outputs are checked against what they must satisfy
//! whatever the weights (n = 1 gold is the pool's mean for every scorer, best-of-n proxy never
//! falls with n, each row's z and aggregates recomputed from its raw scores and the manifest),
//! then bad inputs each fail with a clear error before any score is written.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

const PIPELINE: &str = r#"
[job]
kind = "pipeline"
output = "OUT"
seed = 3

[[stage]]
name = "sft"
kind = "sft"
[stage.sft]
init = "tiny"
task = "goodhart_digits"
batch_size = 32
steps = 30
eval_every = 30
eval_prompts = 16
[stage.sft.optimizer]
lr = 3e-3

[[stage]]
name = "reward"
kind = "reward_train"
[stage.reward_train]
members = 2
init = "tiny"
task = "goodhart_digits"
label_noise = 0.25
train_pairs = 256
eval_pairs = 64
batch_size = 32
steps = 20
eval_every = 10
norm_policy = "stage:sft"
norm_prompts = 8
norm_samples = 4
[stage.reward_train.tiny]
hidden_size = 16
num_layers = 1
num_heads = 2
num_kv_heads = 1
intermediate_size = 32

[[stage]]
name = "bon"
kind = "bon"
[stage.bon]
ensemble = "stage:reward"
policy = "stage:sft"
prompts = 4
samples = 64
max_n = 16
prompts_per_shard = 2
lsc_samples = 4

[[stage]]
name = "score"
kind = "score"
[stage.score]
ensemble = "stage:reward"
data = "DATA"
shard_rows = 10
reference = "stage:sft"
lsc_samples = 4

[[stage]]
name = "score_pairs"
kind = "score"
[stage.score]
ensemble = "stage:reward"
data = "PAIRS"
shard_rows = 5
normalize = "none"

[[stage]]
name = "reward_shared"
kind = "reward_train"
[stage.reward_train]
members = 2
init = "stage:sft"
task = "goodhart_digits"
shared_backbone = true
train_pairs = 256
eval_pairs = 64
batch_size = 32
steps = 10
eval_every = 10

[[stage]]
name = "score_shared"
kind = "score"
[stage.score]
ensemble = "stage:reward_shared"
data = "DATA"
shard_rows = 24
normalize = "none"

[[stage]]
name = "selfplay"
kind = "selfplay"
[stage.selfplay]
algorithm = "online_ipo"
policy = "stage:sft"
reference = "stage:sft"
batch_prompts = 8
steps = 3
eval_every = 3
eval_prompts = 8
[stage.selfplay.preference]
source = "ensemble"
ensemble = "stage:reward"
aggregate = "wco"
normalize = "zscore"
"#;

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

/// Runs a one-job config (text with OUT for the output) and returns the CLI's output.
fn local(tmp: &Path, name: &str, text: &str) -> std::process::Output {
    let config = tmp.join(format!("{name}.toml"));
    let out = tmp.join(name);
    std::fs::write(&config, text.replace("OUT", out.to_str().unwrap())).unwrap();
    let o = run(&["local", config.to_str().unwrap(), "--workers", "2"]);
    remove_kept_logs(&o);
    o
}

#[test]
fn ensembles_train_score_best_of_n_and_drive_self_play() {
    let tmp = tempfile::tempdir().unwrap();
    let data = repo_root().join("examples/goodhart-completions.jsonl");
    // Pairs from the same rows: row 2i's prompt, its completion chosen, row 2i+1's rejected.
    let rows: Vec<Value> = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let pairs_path = tmp.path().join("pairs.jsonl");
    let pairs: String = rows
        .chunks(2)
        .map(|two| {
            let pair = serde_json::json!({
                "prompt": two[0]["prompt"],
                "chosen": two[0]["completion"],
                "rejected": two[1]["completion"],
            });
            format!("{pair}\n")
        })
        .collect();
    std::fs::write(&pairs_path, pairs).unwrap();
    let o = local(
        tmp.path(),
        "pipe",
        &PIPELINE
            .replace("DATA", data.to_str().unwrap())
            .replace("PAIRS", pairs_path.to_str().unwrap()),
    );
    let err = stderr(&o);
    assert!(o.status.success(), "pipeline failed: {err}");
    let out = tmp.path().join("pipe");

    // job.json records what the stages read: the scored JSONL, the manifest, its members'
    // files and the SFT stage's model.
    let inputs: Vec<String> = json(&out.join("job.json"))["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["url"].as_str().unwrap().to_string())
        .collect();
    for want in [
        format!("file://{}", data.display()),
        format!("file://{}/reward/ensemble.json", out.display()),
        format!("file://{}/reward/member-1/model.safetensors", out.display()),
        format!("file://{}/sft/model/model.safetensors", out.display()),
    ] {
        assert!(inputs.contains(&want), "{want} not in {inputs:?}");
    }

    // The manifest: two members, their accuracies and normalisation statistics.
    let manifest = json(&out.join("reward/ensemble.json"));
    let members = manifest["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{manifest}");
    assert_eq!(manifest["label_noise"], 0.25);
    let (mut norm_mean, mut norm_std) = (vec![], vec![]);
    for (k, m) in members.iter().enumerate() {
        assert_eq!(m["path"], format!("member-{k}"));
        for key in [
            "train_accuracy",
            "eval_accuracy",
            "train_accuracy_clean",
            "eval_accuracy_clean",
        ] {
            let a = f(&m[key]);
            assert!((0.0..=1.0).contains(&a), "member {k} {key} = {a}");
        }
        assert_eq!(m["norm"]["samples"], 32, "8 prompts × 4 samples");
        norm_mean.push(f(&m["norm"]["mean"]));
        norm_std.push(f(&m["norm"]["std"]));
        assert!(norm_std[k] > 0.0);
        let config = json(&out.join(format!("reward/member-{k}/config.json")));
        assert_eq!(config["architectures"][0], "LlamaForSequenceClassification");
    }
    assert_ne!(norm_mean[0], norm_mean[1], "members differ by seed");

    // bon.csv: scorers × n grid.
    let csv = std::fs::read_to_string(out.join("bon/bon.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("scorer,n,kl_bon,proxy,gold"));
    let rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    let scorers = ["mean", "wco", "uwo", "lsc", "member:0", "member:1"];
    let ns = [1, 2, 4, 8, 16];
    assert_eq!(rows.len(), scorers.len() * ns.len(), "{csv}");
    let gold_at_1: Vec<f64> = rows
        .iter()
        .filter(|r| r[1] == "1")
        .map(|r| r[4].parse().unwrap())
        .collect();
    for g in &gold_at_1 {
        // best-of-1 is one uniform draw: the pool's mean gold, whatever the scorer
        assert!((g - gold_at_1[0]).abs() < 1e-9, "{csv}");
    }
    for (s, scorer) in scorers.iter().enumerate() {
        let block = &rows[s * ns.len()..(s + 1) * ns.len()];
        let mut last_proxy = f64::NEG_INFINITY;
        for (row, n) in block.iter().zip(ns) {
            assert_eq!(
                (row[0].as_str(), row[1].parse::<usize>().unwrap()),
                (*scorer, n)
            );
            let kl: f64 = row[2].parse().unwrap();
            let want = (n as f64).ln() - (n as f64 - 1.0) / n as f64;
            assert!((kl - want).abs() < 1e-12, "kl_bon({n}) = {kl}");
            let proxy: f64 = row[3].parse().unwrap();
            assert!(
                proxy >= last_proxy - 1e-9,
                "{scorer}: proxy fell at n = {n}: {csv}"
            );
            last_proxy = proxy;
        }
        let first_proxy: f64 = block[0][3].parse().unwrap();
        assert!(
            last_proxy > first_proxy,
            "{scorer}: best-of-16 beats best-of-1: {csv}"
        );
    }

    // Scores: each row recomputed from its raw member scores and the manifest's statistics.
    let summary = json(&out.join("score/summary.json"));
    assert_eq!(summary["rows"], 24);
    let mut parts: Vec<_> = std::fs::read_dir(out.join("score/scores"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    parts.sort();
    assert_eq!(parts.len(), 3, "24 rows in shards of 10");
    let mut sums = [0.0; 6];
    let mut row_ids = vec![];
    for part in &parts {
        for line in std::fs::read_to_string(part).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            row_ids.push(v["row"].as_u64().unwrap());
            let raw: Vec<f64> = v["raw"].as_array().unwrap().iter().map(f).collect();
            let z: Vec<f64> = (0..2)
                .map(|k| (raw[k] - norm_mean[k]) / norm_std[k])
                .collect();
            let var = mean(&z.iter().map(|x| (x - mean(&z)).powi(2)).collect::<Vec<_>>());
            let scores = &v["scores"];
            let want = [
                ("mean", mean(&z)),
                ("wco", z[0].min(z[1])),
                ("uwo", mean(&z) - 0.5 * var),
                ("member:0", z[0]),
                ("member:1", z[1]),
            ];
            for (name, w) in want {
                assert!((f(&scores[name]) - w).abs() < 1e-9, "{name}: {v}");
            }
            assert!((f(&v["variance"]) - var).abs() < 1e-9);
            let lsc = f(&scores["lsc"]);
            assert!(lsc < 0.0 && lsc.is_finite(), "Σ log σ(·) < 0: {v}");
            for (s, name) in scorers.iter().enumerate() {
                sums[s] += f(&scores[*name]);
            }
        }
    }
    assert_eq!(row_ids, (0..24).collect::<Vec<u64>>());
    for (s, name) in scorers.iter().enumerate() {
        assert!(
            (f(&summary["mean"][*name]) - sums[s] / 24.0).abs() < 1e-9,
            "{name}: {summary}"
        );
    }

    // Pairs: both completions scored; the chosen one's raw scores are the single row's (same
    // prompt, same completion); prefers_chosen and the summary's accuracy follow from the scores.
    let single_raw: Vec<Vec<f64>> = parts
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| {
                    let v: Value = serde_json::from_str(l).unwrap();
                    v["raw"].as_array().unwrap().iter().map(f).collect()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let pair_summary = json(&out.join("score_pairs/summary.json"));
    assert_eq!(pair_summary["rows"], 12, "{pair_summary}");
    assert_eq!(pair_summary["pairs"], 12, "{pair_summary}");
    assert_eq!(pair_summary["completions"], 24, "{pair_summary}");
    let mut prefers = [0.0; 6];
    let mut pair_lines = 0;
    let mut pair_parts: Vec<_> = std::fs::read_dir(out.join("score_pairs/scores"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pair_parts.sort();
    for part in &pair_parts {
        for line in std::fs::read_to_string(part).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let i = v["row"].as_u64().unwrap() as usize;
            let chosen_raw: Vec<f64> = v["chosen"]["raw"]
                .as_array()
                .unwrap()
                .iter()
                .map(f)
                .collect();
            for k in 0..2 {
                assert!(
                    (chosen_raw[k] - single_raw[2 * i][k]).abs() < 1e-4,
                    "pair {i} member {k}: {v} vs {:?}",
                    single_raw[2 * i]
                );
            }
            for (s, name) in scorers.iter().enumerate().filter(|(_, n)| **n != "lsc") {
                let c = f(&v["chosen"]["scores"][*name]);
                let r = f(&v["rejected"]["scores"][*name]);
                assert_eq!(v["prefers_chosen"][*name], c > r, "{name}: {v}");
                prefers[s] += if c > r {
                    1.0
                } else if c == r {
                    0.5
                } else {
                    0.0
                };
            }
            pair_lines += 1;
        }
    }
    assert_eq!(pair_lines, 12);
    for (s, name) in scorers.iter().enumerate().filter(|(_, n)| **n != "lsc") {
        assert!(
            (f(&pair_summary["accuracy"][*name]) - prefers[s] / 12.0).abs() < 1e-12,
            "{name}: {pair_summary}"
        );
    }
    assert!(
        pair_summary["accuracy"].get("lsc").is_none(),
        "no reference, no lsc"
    );

    // A shared-backbone ensemble (scored with one forward pass for both heads; that the
    // backbone stays frozen and the pass equals each member alone is checked in the worker's
    // `reward::shared_heads` tests): one raw score per member.
    let shared = json(&out.join("reward_shared/ensemble.json"));
    assert_eq!(shared["shared_backbone"], true, "{shared}");
    let lines = std::fs::read_to_string(out.join("score_shared/scores/part-00000.jsonl")).unwrap();
    let mut differ = false;
    for line in lines.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let raw: Vec<f64> = v["raw"].as_array().unwrap().iter().map(f).collect();
        assert_eq!(raw.len(), 2, "{v}");
        assert!(
            (f(&v["scores"]["member:1"]) - raw[1]).abs() < 1e-12,
            "normalize = none: {v}"
        );
        differ |= raw[0] != raw[1];
    }
    assert_eq!(lines.lines().count(), 24);
    assert!(differ, "two heads, two sets of scores: {lines}");

    // Self-play against the manifest's ensemble logs each member and the variance.
    let mut metrics = String::new();
    for e in std::fs::read_dir(out.join("selfplay/metrics")).unwrap() {
        metrics.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
    }
    for key in [
        "ensemble/member_0",
        "ensemble/member_1",
        "ensemble/variance",
    ] {
        assert!(metrics.contains(key), "{key} missing: {metrics}");
    }

    bad_inputs(tmp.path(), &out);
}

/// Each bad input fails the job with an error naming what is wrong, and writes no scores.
fn bad_inputs(tmp: &Path, pipe: &Path) {
    let manifest = pipe.join("reward/ensemble.json");
    let score = |name: &str, ensemble: &Path, data: &Path| {
        let o = local(
            tmp,
            name,
            &format!(
                "[job]\nkind = \"score\"\noutput = \"OUT\"\n[score]\nensemble = \"{}\"\n\
                 data = \"{}\"\nnormalize = \"none\"\n",
                ensemble.display(),
                data.display()
            ),
        );
        assert!(!o.status.success(), "{name} succeeded");
        assert!(
            !tmp.join(name).join("summary.json").exists(),
            "{name} wrote a summary"
        );
        stderr(&o)
    };

    // A malformed row: file:line.
    let bad = tmp.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\": \"<s> 1 2 3 4 <sep>\", \"completion\": \"1 2\"}\n{\"prompt\": \"x\"}\n",
    )
    .unwrap();
    let err = score("malformed", &manifest, &bad);
    assert!(
        err.contains(&format!("{}:2", bad.display())) && err.contains("completion"),
        "{err}"
    );

    // A file mixing single completions and pairs: file:line of the first row of the other form.
    let mixed = tmp.join("mixed.jsonl");
    std::fs::write(
        &mixed,
        "{\"prompt\": \"<s> 1 2 3 4 <sep>\", \"completion\": \"1 2\"}\n\
         {\"prompt\": \"<s> 1 2 3 4 <sep>\", \"chosen\": \"1 2\", \"rejected\": \"3\"}\n",
    )
    .unwrap();
    let err = score("mixed", &manifest, &mixed);
    assert!(
        err.contains(&format!("{}:2", mixed.display())) && err.contains("one form per file"),
        "{err}"
    );

    // A manifest naming a missing member.
    let data = repo_root().join("examples/goodhart-completions.jsonl");
    let missing = tmp.join("missing");
    std::fs::create_dir_all(&missing).unwrap();
    let mut m = json(&manifest);
    m["members"][0]["path"] = Value::from(pipe.join("reward/member-0").to_str().unwrap());
    m["members"][1]["path"] = Value::from(pipe.join("reward/member-9").to_str().unwrap());
    std::fs::write(missing.join("ensemble.json"), m.to_string()).unwrap();
    let err = score("no_member", &missing.join("ensemble.json"), &data);
    assert!(
        err.contains("member 1") && err.contains("no config.json"),
        "{err}"
    );

    // Members with different tokenizers.
    let other = tmp.join("other");
    copy_dir(&pipe.join("reward/member-1"), &other.join("member-1"));
    copy_dir(&pipe.join("reward/member-0"), &other.join("member-0"));
    let tok = other.join("member-1/tokenizer.json");
    let text = std::fs::read_to_string(&tok)
        .unwrap()
        .replace("<sep>", "<SEP>");
    std::fs::write(&tok, text).unwrap();
    std::fs::write(other.join("ensemble.json"), json(&manifest).to_string()).unwrap();
    let err = score("tokenizers", &other.join("ensemble.json"), &data);
    assert!(err.contains("tokenizer.json differs"), "{err}");

    // An aggregate that does not exist: refused by the config, before anything runs.
    let o = local(
        tmp,
        "aggregate",
        &format!(
            "[job]\nkind = \"selfplay\"\noutput = \"OUT\"\n[selfplay]\nalgorithm = \"ipo_md\"\n\
             policy = \"tiny\"\nreference = \"tiny\"\n[selfplay.preference]\nsource = \"ensemble\"\n\
             ensemble = \"{}\"\naggregate = \"median\"\n",
            manifest.display()
        ),
    );
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("selfplay.preference.aggregate") && err.contains("unknown aggregate `median`"),
        "{err}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
