//! Checkpoint tests on temporary directories: manifest round trip and verification failures,
//! save → resume bit-identical, torn directories, create-only commits, retention, metrics across
//! attempts, and a failure-injecting store (errors and stalls on puts, parts and completes).

use crate::test_support::bits;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use candle_core::{Device, Tensor};
use object_store::local::LocalFileSystem;

use super::attempts::{merge_attempts, part_name, MetricLine};
use super::fault::{FaultCounter, FaultMode, FaultOp, FaultSpec, FaultStore};
use super::*;
use crate::model::{init_random, ModelConfig, Pretrained};
use crate::optim::{AdamW, AdamWConfig, Decay, Gradients, Params, Schedule};

fn loc(dir: &std::path::Path) -> Location {
    Location::parse(dir.to_str().unwrap()).unwrap()
}

fn schedule() -> Schedule {
    Schedule {
        lr: 1e-2,
        warmup_steps: 1,
        total_steps: 100,
        decay: Decay::Linear,
    }
}

/// A tiny trainable model, its AdamW after `steps` steps, and the aux files.
struct Run {
    model: crate::model::Model,
    params: Params,
    opt: AdamW,
    aux: BTreeMap<String, Bytes>,
}

impl Run {
    fn new(seed: u64) -> Run {
        let model = init_random(&ModelConfig::tiny(32), seed, true, &Device::Cpu).unwrap();
        let params = model.vars().unwrap().clone();
        let opt = AdamW::new(&params, AdamWConfig::default(), schedule()).unwrap();
        let mut aux = BTreeMap::new();
        aux.insert(
            "generation_config.json".to_string(),
            Bytes::from_static(b"{\"eos_token_id\": 2}\n"),
        );
        Run {
            model,
            params,
            opt,
            aux,
        }
    }

    /// One step with gradients that depend on the weights and the step.
    fn step(&mut self) {
        let k = self.opt.steps_taken() as f64;
        let grads: BTreeMap<String, Tensor> = self
            .params
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    v.as_tensor().affine(0.3, 0.01 * (k + 1.0)).unwrap(),
                )
            })
            .collect();
        self.opt
            .step(&self.params, &Gradients::from_map(grads))
            .unwrap();
    }

    fn weights(&self) -> BTreeMap<String, Vec<u32>> {
        self.params
            .iter()
            .map(|(n, v)| (n.clone(), bits(v.as_tensor())))
            .collect()
    }

    fn opt_state(&self) -> Vec<(String, Vec<u32>)> {
        self.opt
            .state_tensors()
            .iter()
            .map(|(n, t)| (n.clone(), bits(t)))
            .collect()
    }
}

fn options(every: u64, total: u64, retention: Retention) -> CheckpointOptions {
    CheckpointOptions {
        every,
        total_steps: total,
        retention,
        config_hash: state::config_hash(b"test config"),
        world_size: 1,
        timeout: Some(Duration::from_secs(30)),
    }
}

/// Trains `run` to `to` steps, checkpointing as `ckpt` says; waits for the last one.
async fn train(run: &mut Run, ckpt: &mut Checkpointer, to: u64) -> Result<()> {
    while run.opt.steps_taken() < to {
        run.step();
        let step = run.opt.steps_taken();
        ckpt.maybe_save(step, &run.model, &run.aux, &run.opt)
            .await?;
    }
    ckpt.wait().await?;
    Ok(())
}

async fn steps_on_disk(output: &Location) -> Vec<u64> {
    list_steps(&checkpoints_root(output))
        .await
        .unwrap()
        .into_keys()
        .collect()
}

#[test]
fn step_directory_names() {
    assert_eq!(step_dir_name(42), "step-000042");
    assert_eq!(step_dir_name(1_234_567), "step-1234567");
    assert_eq!(parse_step_dir("step-000042"), Some(42));
    assert_eq!(parse_step_dir("step-1234567"), Some(1_234_567));
    for bad in ["step-42", "step-00004x", "steps-000042", "step-"] {
        assert_eq!(parse_step_dir(bad), None, "{bad}");
    }
}

#[test]
fn manifest_round_trips_and_parse_errors_name_the_field() {
    let m = Manifest::new(
        7,
        vec![
            ManifestObject {
                path: "state.json".into(),
                size: 3,
                sha256: "ab".repeat(32),
            },
            ManifestObject {
                path: "config.json".into(),
                size: 10,
                sha256: "0f".repeat(32),
            },
        ],
    );
    let json = m.to_json();
    let back = Manifest::parse(&json, "x/manifest.json").unwrap();
    assert_eq!(back, m);
    assert_eq!(back.objects[0].path, "config.json"); // sorted
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["format_version"], 1);
    assert_eq!(v["step"], 7);

    let cases: [(&str, &str); 7] = [
        ("not json", "(document)"),
        (
            r#"{"format_version":2,"step":1,"objects":[]}"#,
            "format_version",
        ),
        (r#"{"format_version":1,"objects":[]}"#, "`step`"),
        (r#"{"format_version":1,"step":1,"objects":{}}"#, "`objects`"),
        (
            r#"{"format_version":1,"step":1,"objects":[{"path":"a","size":1,"sha256":"zz"}]}"#,
            "objects[0].sha256",
        ),
        (
            r#"{"format_version":1,"step":1,"objects":[{"path":"a","size":1,"sha256":"00"},{"path":"../b","size":1,"sha256":"00"}]}"#,
            "objects[0].sha256", // the first bad field is reported
        ),
        (
            r#"{"format_version":1,"step":1,"objects":[{"path":"manifest.json","size":-1,"sha256":"00"}]}"#,
            "objects[0].path",
        ),
    ];
    for (text, field) in cases {
        let err = Manifest::parse(text.as_bytes(), "s3://b/step-000001/manifest.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("s3://b/step-000001/manifest.json") && err.contains(field),
            "{text}: {err}"
        );
    }
    let hex = "a".repeat(64);
    let dup = format!(
        r#"{{"format_version":1,"step":1,"objects":[{{"path":"a","size":1,"sha256":"{hex}"}},{{"path":"a","size":1,"sha256":"{hex}"}}]}}"#
    );
    let err = Manifest::parse(dup.as_bytes(), "m")
        .unwrap_err()
        .to_string();
    assert!(err.contains("listed twice"), "{err}");
}

#[tokio::test]
async fn verification_fails_on_size_hash_and_missing_objects() {
    use sha2::Digest;
    let tmp = tempfile::tempdir().unwrap();
    let dir = loc(tmp.path());
    let object = |path: &str, bytes: &[u8]| ManifestObject {
        path: path.into(),
        size: bytes.len() as u64,
        sha256: hex::encode(sha2::Sha256::digest(bytes)),
    };
    dir.join("a.bin").put(b"hello".to_vec()).await.unwrap();
    dir.join("sub/b.bin").put(b"world!".to_vec()).await.unwrap();
    let good = Manifest::new(
        3,
        vec![object("a.bin", b"hello"), object("sub/b.bin", b"world!")],
    );
    good.verify(&dir).await.unwrap();

    let check = |m: Manifest, want: &'static str, name: &'static str| {
        let dir = dir.clone();
        async move {
            let err = m.verify(&dir).await.unwrap_err();
            assert!(err.is_torn(), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(want) && msg.contains(name), "{msg}");
        }
    };
    let mut size = good.clone();
    size.objects[0].size = 6;
    check(size, "5 bytes, the manifest says 6", "a.bin").await;
    let mut sha = good.clone();
    sha.objects[1].sha256 = "0".repeat(64);
    check(sha, "SHA-256", "sub/b.bin").await;
    let mut missing = good.clone();
    missing.objects.push(object("c.bin", b"x"));
    check(missing, "missing", "c.bin").await;
    // Same size, different bytes.
    dir.join("a.bin").put(b"HELLO".to_vec()).await.unwrap();
    check(good, "SHA-256", "a.bin").await;
}

#[tokio::test]
async fn save_then_resume_is_bit_identical_and_the_step_dir_is_a_model_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let output = loc(tmp.path());
    let mut run = Run::new(1);
    let mut ckpt = Checkpointer::new(&output, options(2, 4, Retention::default()));
    let committed = ckpt.committed();
    train(&mut run, &mut ckpt, 2).await.unwrap();
    assert_eq!(*committed.borrow(), Some(2));
    let (weights, opt_state) = (run.weights(), run.opt_state());
    // The run goes on; the checkpoint must hold step 2's values.
    train(&mut run, &mut ckpt, 3).await.unwrap();
    assert_eq!(ckpt.finish().await.unwrap(), Some(2));

    let point = latest_valid(&output).await.unwrap().expect("a checkpoint");
    assert_eq!(point.step, 2);
    assert_eq!(point.state.data_cursor, 2);
    assert_eq!(point.state.world_size, 1);
    assert_eq!(point.state.model_dtype.as_deref(), Some("float32"));
    point
        .check_config(&state::config_hash(b"test config"))
        .unwrap();
    assert!(point.check_config("other").is_err());
    let paths: Vec<&str> = point
        .manifest
        .objects
        .iter()
        .map(|o| o.path.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "optimizer.safetensors",
            "state.json"
        ]
    );

    // A fresh run (other random weights) resumes to exactly step 2's state ...
    let mut resumed = Run::new(99);
    point.load_weights(&resumed.params).await.unwrap();
    resumed.opt = point
        .load_optimizer(&resumed.params, AdamWConfig::default(), schedule())
        .await
        .unwrap();
    assert_eq!(resumed.weights(), weights);
    assert_eq!(resumed.opt_state(), opt_state);
    // ... and continues bit-identically.
    let mut straight = Run::new(1);
    for _ in 0..3 {
        straight.step();
    }
    resumed.step();
    assert_eq!(resumed.weights(), straight.weights());
    assert_eq!(resumed.opt_state(), straight.opt_state());

    // The step directory loads as a Hugging Face model directory.
    let p = Pretrained::load(point.model_url(), false, &Device::Cpu)
        .await
        .unwrap();
    assert_eq!(
        bits(&p.model.tensors()["model.norm.weight"]),
        weights["model.norm.weight"]
    );
    assert!(p.aux_files.contains_key("generation_config.json"));
}

#[tokio::test]
async fn torn_newer_directories_are_deleted_and_the_previous_step_found() {
    let tmp = tempfile::tempdir().unwrap();
    let output = loc(tmp.path());
    let mut run = Run::new(2);
    let mut ckpt = Checkpointer::new(&output, options(2, 6, Retention::default()));
    train(&mut run, &mut ckpt, 4).await.unwrap();
    let root = checkpoints_root(&output);
    // step 4 committed but then corrupted; step 6 never committed (no manifest).
    root.join("step-000004/model.safetensors")
        .put(b"garbage".to_vec())
        .await
        .unwrap();
    root.join("step-000006/config.json")
        .put(b"{}".to_vec())
        .await
        .unwrap();
    assert_eq!(steps_on_disk(&output).await, [2, 4, 6]);
    let point = latest_valid(&output).await.unwrap().unwrap();
    assert_eq!(point.step, 2);
    assert_eq!(steps_on_disk(&output).await, [2]);
    // Nothing valid at all: None, and everything torn is gone.
    root.join("step-000002/state.json")
        .put(b"{}".to_vec())
        .await
        .unwrap();
    assert!(latest_valid(&output).await.unwrap().is_none());
    assert!(steps_on_disk(&output).await.is_empty());
}

#[tokio::test]
async fn a_committed_step_is_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let output = loc(tmp.path());
    let mut run = Run::new(3);
    let mut ckpt = Checkpointer::new(&output, options(1, 1, Retention::default()));
    train(&mut run, &mut ckpt, 1).await.unwrap();
    let before = latest_valid(&output).await.unwrap().unwrap().manifest;

    // Another writer (a second attempt that did not resume) saves step 1 again.
    let mut other = Run::new(4);
    other.step();
    let mut again = Checkpointer::new(&output, options(1, 1, Retention::default()));
    again
        .save(1, &other.model, &other.aux, &other.opt)
        .await
        .unwrap();
    let err = again.wait().await.unwrap_err();
    assert!(
        matches!(err, CheckpointError::AlreadyCommitted { step: 1, .. }),
        "{err}"
    );
    let after = latest_valid(&output).await.unwrap().unwrap();
    assert_eq!(after.manifest, before);
    // The create-only put itself refuses a second manifest.
    let manifest = checkpoints_root(&output).join("step-000001/manifest.json");
    assert!(!manifest.put_create(b"{}".to_vec()).await.unwrap());
}

#[test]
fn retention_rules() {
    let r = Retention {
        keep_last: 2,
        keep_every: 4,
    };
    assert_eq!(r.to_delete(&[1, 2, 3, 4, 5, 6, 7]), [1, 2, 3, 5]);
    assert_eq!(r.to_delete(&[6, 7]), Vec::<u64>::new());
    let all = Retention::default();
    assert!(all.to_delete(&[1, 2, 3]).is_empty());
    let one = Retention {
        keep_last: 1,
        keep_every: 0,
    };
    assert_eq!(one.to_delete(&[3, 9]), [3]); // the newest is always kept
}

#[tokio::test]
async fn retention_keeps_exactly_the_expected_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let output = loc(tmp.path());
    let mut run = Run::new(5);
    let retention = Retention {
        keep_last: 2,
        keep_every: 4,
    };
    let mut ckpt = Checkpointer::new(&output, options(1, 7, retention));
    for to in 1..=7u64 {
        train(&mut run, &mut ckpt, to).await.unwrap();
        let on_disk = steps_on_disk(&output).await;
        // Retention runs after each commit: the two newest and multiples of 4 remain.
        let want: Vec<u64> = (1..=to).filter(|s| *s + 2 > to || s % 4 == 0).collect();
        assert_eq!(on_disk, want, "after step {to}");
    }
    // An uncommitted directory older than a new commit is removed too.
    checkpoints_root(&output)
        .join("step-000005/x")
        .put(b"x".to_vec())
        .await
        .unwrap();
    let mut ckpt = Checkpointer::new(&output, options(1, 8, retention));
    train(&mut run, &mut ckpt, 8).await.unwrap();
    assert_eq!(steps_on_disk(&output).await, [4, 7, 8]);
}

#[test]
fn metrics_across_attempts_form_one_series() {
    assert_eq!(part_name(2, 13), "part-a002-000013.jsonl");
    let l = |split: &str, step: u64, attempt: u32| {
        let text =
            format!(r#"{{"step":{step},"split":"{split}","attempt":{attempt},"loss":{attempt}}}"#);
        MetricLine::parse(&text, "m:1").unwrap()
    };
    // Attempt 0 ran to step 7 (eval at 0 and 5) and died; the checkpoint was step 4. Attempt 1
    // resumed at 4 (logs eval at 4, train from 5) and died at 6; attempt 2 resumed at 4 again.
    let mut lines = vec![l("eval", 0, 0), l("eval", 5, 0)];
    lines.extend((1..=7).map(|s| l("train", s, 0)));
    lines.push(l("eval", 4, 1));
    lines.extend((5..=6).map(|s| l("train", s, 1)));
    lines.push(l("eval", 4, 2));
    lines.push(l("train", 5, 2));
    let merged = merge_attempts(lines);
    let got: Vec<(String, u64, u32)> = merged
        .iter()
        .map(|m| (m.split.clone(), m.step, m.attempt))
        .collect();
    let want: Vec<(String, u64, u32)> = vec![
        ("eval".into(), 0, 0),
        ("train".into(), 1, 0),
        ("train".into(), 2, 0),
        ("train".into(), 3, 0),
        ("eval".into(), 4, 2),
        ("train".into(), 4, 0),
        ("train".into(), 5, 2),
    ];
    assert_eq!(got, want);
    let err = MetricLine::parse(r#"{"step":1,"split":"train"}"#, "part-a000-000000.jsonl:3")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("part-a000-000000.jsonl:3") && err.contains("`attempt`"),
        "{err}"
    );
}

// ---- failure injection ----

/// For every kind of operation and fault: step 2 fails, nothing of it looks valid, and resume
/// finds step 1.
#[tokio::test]
async fn injected_failures_never_leave_a_valid_looking_step() {
    // nth is 1-based, counted from when the fault is armed (after step 1's checkpoint).
    let cases = [
        (FaultOp::Put, FaultMode::Error, 1),
        (FaultOp::Put, FaultMode::Error, 4), // the manifest (after 3 small files)
        (FaultOp::Put, FaultMode::Stall, 2),
        (FaultOp::Part, FaultMode::Error, 1),
        (FaultOp::Part, FaultMode::Stall, 1),
        (FaultOp::Complete, FaultMode::Error, 2),
        (FaultOp::Complete, FaultMode::Stall, 1),
    ];
    for (op, kind, nth) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let counter = FaultCounter::new(0);
        let store = FaultStore::new(
            Arc::new(LocalFileSystem::new_with_prefix(tmp.path()).unwrap()),
            FaultSpec {
                op,
                nth,
                mode: kind,
                times: 1,
                anywhere: false,
            },
            counter.clone(),
        );
        let output = Location::from_store(Arc::new(store), "out", "failing://test/out");
        let mut run = Run::new(6);
        let mut opts = options(
            1,
            2,
            Retention {
                keep_last: 1,
                keep_every: 0,
            },
        );
        opts.timeout = Some(Duration::from_millis(500));
        let mut ckpt = Checkpointer::new(&output, opts);
        train(&mut run, &mut ckpt, 1).await.unwrap();
        counter.arm(nth);
        let err = train(&mut run, &mut ckpt, 2).await.unwrap_err();
        let msg = err.to_string();
        match kind {
            FaultMode::Error => assert!(msg.contains("injected failure"), "{op:?}: {msg}"),
            _ => assert!(
                matches!(err, CheckpointError::Timeout { step: 2, .. }),
                "{op:?}: {msg}"
            ),
        }
        counter.disarm();
        let dir2 = checkpoints_root(&output).join("step-000002");
        assert!(
            Manifest::read(&dir2).await.unwrap().is_none(),
            "{op:?} {kind:?}: a manifest was written"
        );
        let point = latest_valid(&output).await.unwrap().unwrap();
        assert_eq!(point.step, 1, "{op:?} {kind:?}");
        assert_eq!(steps_on_disk(&output).await, [1], "{op:?} {kind:?}");
        // Retention never ran: step 1 survives a failed step 2 with keep_last = 1.
        point.manifest.verify(&point.dir).await.unwrap();
    }
}

/// A write that fails after another writer committed the same step (a stale attempt whose
/// store stalled while a re-issued attempt checkpointed) leaves that commit alone: only
/// retention deletes committed steps.
#[tokio::test]
async fn a_failed_write_never_deletes_another_writers_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let stalling = FaultStore::new(
        Arc::new(LocalFileSystem::new_with_prefix(tmp.path()).unwrap()),
        FaultSpec {
            op: FaultOp::Part,
            nth: 1,
            mode: FaultMode::Stall,
            times: 1,
            anywhere: false,
        },
        FaultCounter::new(1),
    );
    let stale_out = Location::from_store(Arc::new(stalling), "out", "failing://test/out");
    let mut stale = Run::new(5);
    stale.step();
    let mut opts = options(1, 1, Retention::default());
    opts.timeout = Some(Duration::from_millis(1500));
    let mut stale_ckpt = Checkpointer::new(&stale_out, opts);
    stale_ckpt
        .save(1, &stale.model, &stale.aux, &stale.opt)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // stalled on its first part

    let output = loc(&tmp.path().join("out"));
    let mut fresh = Run::new(5);
    fresh.step();
    let mut ckpt = Checkpointer::new(&output, options(1, 1, Retention::default()));
    ckpt.save(1, &fresh.model, &fresh.aux, &fresh.opt)
        .await
        .unwrap();
    assert_eq!(ckpt.wait().await.unwrap().unwrap().step, 1);

    let err = stale_ckpt.wait().await.unwrap_err();
    assert!(
        matches!(err, CheckpointError::Timeout { step: 1, .. }),
        "{err}"
    );
    let point = latest_valid(&output).await.unwrap().unwrap();
    assert_eq!(point.step, 1);
    point.manifest.verify(&point.dir).await.unwrap();
}
