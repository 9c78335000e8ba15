//! Data-parallel training on the local cluster with real worker processes and the TCP ring:
//! W = 1, 2 and 3 ranks train to the same parameters and per-step losses (a global batch that
//! 3 does not divide, micro-batches of uneven size), and a gang survives a rank that is
//! SIGKILLed and a rank that stops answering (SIGSTOP).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;

/// A 10-step training config: batch 8 (ranks of W = 3 take 3, 3 and 2 rows), grad_accum 2.
fn config(kind: &str, algorithm: &str, out: &Path, world: u32) -> String {
    let common = format!(
        "world_size = {world}\nsteps = 10\neval_every = 5\neval_prompts = 10\ngrad_accum = 2\n"
    );
    let table = match kind {
        "sft" => format!(
            "[sft]\ninit = \"tiny\"\ntask = \"goodhart_digits\"\nbatch_size = 8\n{common}[sft.optimizer]\nlr = 3e-3\n"
        ),
        // The default learning rate: AdamW's m/√v turns round-off in near-zero gradient
        // coordinates into whole steps of ±lr, which a large lr makes visible at 1e-5.
        _ => format!(
            "[selfplay]\nalgorithm = \"{algorithm}\"\nkl_coef = 0.05\npolicy = \"tiny\"\nreference = \"tiny\"\ntask = \"goodhart_digits\"\nbatch_prompts = 8\n{common}"
        ),
    };
    format!(
        "[job]\nkind = \"{kind}\"\noutput = \"{}\"\nseed = 11\noverwrite = true\n{table}",
        out.display()
    )
}

/// Per-step train (loss, grad_norm) and the eval lines of a finished run.
fn metrics(out: &Path) -> (BTreeMap<u64, [f64; 2]>, Vec<serde_json::Value>) {
    let mut losses = BTreeMap::new();
    let mut evals = vec![];
    for entry in std::fs::read_dir(out.join("metrics")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["split"] == "train" {
                let value = |k: &str| v[k].as_f64().unwrap();
                losses.insert(
                    v["step"].as_u64().unwrap(),
                    [value("loss"), value("grad_norm")],
                );
            } else {
                v.as_object_mut().unwrap().remove("time");
                evals.push(v);
            }
        }
    }
    (losses, evals)
}

fn run_local(dir: &Path, kind: &str, algorithm: &str, world: u32) -> std::path::PathBuf {
    let out = dir.join(format!("{kind}-{algorithm}-w{world}"));
    let cfg = dir.join(format!("{kind}-{algorithm}-w{world}.toml"));
    std::fs::write(&cfg, config(kind, algorithm, &out, world)).unwrap();
    let o = run(&[
        "local",
        cfg.to_str().unwrap(),
        "--workers",
        &world.to_string(),
    ]);
    assert!(o.status.success(), "W = {world}: {}", stderr(&o));
    if world > 1 {
        assert!(
            stderr(&o).contains(&format!("gang of {world} ranks")),
            "{}",
            stderr(&o)
        );
    }
    out
}

/// ‖a − b‖ / ‖b‖ per tensor.
fn relative_differences(
    a: &BTreeMap<String, (Vec<u64>, Vec<f32>)>,
    b: &BTreeMap<String, (Vec<u64>, Vec<f32>)>,
) -> Vec<(String, f64)> {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    b.iter()
        .map(|(name, (_, want))| {
            let got = &a[name].1;
            let (mut diff, mut norm) = (0.0f64, 0.0f64);
            for (x, y) in got.iter().zip(want) {
                diff += (*x as f64 - *y as f64).powi(2);
                norm += (*y as f64).powi(2);
            }
            (name.clone(), diff.sqrt() / norm.sqrt().max(1e-30))
        })
        .collect()
}

fn assert_world_sizes_agree(kind: &str, algorithm: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let single = run_local(tmp.path(), kind, algorithm, 1);
    let want_model = read_model(&single.join("model"));
    let (want_losses, want_evals) = metrics(&single);
    assert_eq!(want_losses.len(), 10);
    for world in [2, 3] {
        let out = run_local(tmp.path(), kind, algorithm, world);
        for (name, rel) in relative_differences(&read_model(&out.join("model")), &want_model) {
            assert!(
                rel <= 1e-5,
                "{kind} {algorithm} W = {world}: `{name}` differs from W = 1 by {rel:e} (relative)"
            );
        }
        let (losses, evals) = metrics(&out);
        assert_eq!(
            losses.keys().collect::<Vec<_>>(),
            want_losses.keys().collect::<Vec<_>>()
        );
        for (step, want) in &want_losses {
            for (i, key) in ["loss", "grad_norm"].iter().enumerate() {
                let (got, want) = (losses[step][i], want[i]);
                assert!(
                    (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{kind} {algorithm} W = {world} step {step}: {key} {got} vs {want} at W = 1"
                );
            }
        }
        // Held-out evaluation is split across the ranks and reduced: the same figures.
        assert_eq!(evals.len(), want_evals.len());
        for (got, want) in evals.iter().zip(&want_evals) {
            for key in ["eval/gold", "eval/win_rate"] {
                if let Some(w) = want[key].as_f64() {
                    let g = got[key].as_f64().unwrap();
                    assert!((g - w).abs() <= 1e-9, "{key} {got} vs {want}");
                }
            }
        }
    }
}

#[test]
fn ipo_md_trains_the_same_on_one_two_and_three_ranks() {
    assert_world_sizes_agree("selfplay", "ipo_md");
}

#[test]
fn nash_md_trains_the_same_on_one_two_and_three_ranks() {
    assert_world_sizes_agree("selfplay", "nash_md");
}

#[test]
fn sft_trains_the_same_on_one_two_and_three_ranks() {
    assert_world_sizes_agree("sft", "");
}

#[test]
fn a_world_size_beyond_the_local_workers_is_a_config_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, config("sft", "", &tmp.path().join("out"), 3)).unwrap();
    let o = run(&["local", cfg.to_str().unwrap(), "--workers", "2"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("world_size = 3 needs at least 3 workers"));
}

/// Steps of attempt `attempt`'s train lines.
fn train_steps(out: &Path, attempt: u64) -> Vec<u64> {
    let mut steps = vec![];
    for entry in std::fs::read_dir(out.join("metrics")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["attempt"] == attempt && v["split"] == "train" {
                steps.push(v["step"].as_u64().unwrap());
            }
        }
    }
    steps.sort();
    steps
}

fn gang(url: &str, job: &str) -> serde_json::Value {
    status_json(url, job)["gangs"][0].clone()
}

#[test]
fn a_gang_waits_for_its_workers_then_survives_a_killed_and_a_stopped_rank() {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let _coordinator = spawn_coordinator(tmp.path(), &url);
    let out = tmp.path().join("out");
    let cfg = tmp.path().join("selfplay.toml");
    let steps = 150;
    std::fs::write(
        &cfg,
        format!(
            "[job]\nkind = \"selfplay\"\noutput = \"{}\"\nseed = 4\n[selfplay]\nalgorithm = \"nash_md\"\npolicy = \"tiny\"\nreference = \"tiny\"\ntask = \"goodhart_digits\"\nbatch_prompts = 6\nsteps = {steps}\neval_every = {steps}\neval_prompts = 6\nworld_size = 3\nmin_world_size = 2\ncollective_timeout_s = 4\n",
            out.display()
        ),
    )
    .unwrap();
    let mut workers = vec![spawn_worker(&url, "a", None), spawn_worker(&url, "b", None)];
    let job = submit_config(&url, &cfg, &[]);
    // Two workers for a gang of three: it waits, holding none of them.
    wait_until("the waiting gang", Duration::from_secs(30), || {
        gang(&url, &job)["waiting"] == "waiting for 3 workers, 2 free"
    });
    assert_eq!(status_json(&url, &job)["progress"]["tasks_running"], 0);
    workers.push(spawn_worker(&url, "c", None));
    workers.push(spawn_worker(&url, "d", None));
    wait_until("training under way", Duration::from_secs(60), || {
        let s = status_json(&url, &job);
        s["progress"]["fraction"].as_f64().unwrap_or(0.0) > 0.03
    });
    let g = gang(&url, &job);
    assert_eq!(g["attempt"], 1);
    let ranks: Vec<String> = g["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ranks.len(), 3, "{g}");
    let status_text =
        String::from_utf8(run(&["status", &job, "--coordinator", &url]).stdout).unwrap();
    assert!(
        status_text.contains(&format!("0→{}", ranks[0])),
        "{status_text}"
    );

    // SIGKILL rank 1: the others see the ring break, the gang re-forms as epoch 2 (with the
    // idle fourth worker) well within the lease plus the collective timeout.
    let index = |name: &str| {
        ["a", "b", "c", "d"]
            .iter()
            .position(|n| *n == name)
            .unwrap()
    };
    let killed = index(&ranks[1]);
    workers[killed].0.kill().unwrap();
    workers[killed].0.wait().unwrap();
    let t0 = Instant::now();
    wait_until("epoch 2", Duration::from_secs(15), || {
        let g = gang(&url, &job);
        g["attempt"] == 2 && g["workers"].as_array().is_some_and(|w| !w.is_empty())
    });
    let reformed = t0.elapsed();
    let g = gang(&url, &job);
    assert!(
        g["last_restart"].as_str().unwrap().contains(&ranks[1])
            || g["last_restart"].as_str().unwrap().contains("rank on"),
        "{g}"
    );
    wait_until("epoch 2 under way", Duration::from_secs(60), || {
        status_json(&url, &job)["progress"]["fraction"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.03
    });

    // SIGSTOP a rank of epoch 2: it stops heartbeating and answering on the ring; its lease
    // lapses, the survivors are cancelled through their heartbeat (or time out in the
    // collective) and a gang of the min_world_size = 2 live workers finishes the job.
    let stopped_name = gang(&url, &job)["workers"][0].as_str().unwrap().to_string();
    let stopped = index(&stopped_name);
    workers[stopped].signal(libc::SIGSTOP);
    let t1 = Instant::now();
    wait_until("epoch 3", Duration::from_secs(15), || {
        let g = gang(&url, &job);
        g["attempt"] == 3 && g["workers"].as_array().is_some_and(|w| !w.is_empty())
    });
    let reformed_after_stop = t1.elapsed();
    assert!(
        !gang(&url, &job)["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w == stopped_name.as_str()),
        "the stopped worker is not in the new gang"
    );
    let watched = run(&["watch", &job, "--coordinator", &url]);
    let log = stderr(&watched);
    assert!(watched.status.success(), "{log}");
    assert!(log.contains("re-issued as attempt 3"), "{log}");
    assert!(log.contains("none committed yet: from step 0"), "{log}");
    assert_eq!(train_steps(&out, 3), (1..=steps).collect::<Vec<_>>());
    assert!(out.join("model/model.safetensors").exists());
    // Lease 1 s + collective timeout 4 s bound how long any member may hang.
    for (what, t) in [("SIGKILL", reformed), ("SIGSTOP", reformed_after_stop)] {
        assert!(
            t < Duration::from_secs(5) + Duration::from_secs(3),
            "{what}: re-formed after {t:?}"
        );
    }
}
