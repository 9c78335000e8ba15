//! Checkpoints over the S3 protocol for real (docs/checkpoints.md): an s3s-fs server on loopback
//! (`common::s3`), credentials and endpoint from the environment. Save with retention, list,
//! verify, a torn directory deleted at resume, resume bit-identical, the create-only manifest,
//! and `mirrorplay export` from the S3 checkpoint (and its refusal of a corrupt one).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use candle_core::{Device, Tensor};
use common::s3::*;
use common::*;
use mirrorplay_worker::checkpoint::{
    latest_valid, state::config_hash, CheckpointOptions, Checkpointer, Retention,
};
use mirrorplay_worker::io::Location;
use mirrorplay_worker::model::{init_random, ModelConfig};
use mirrorplay_worker::optim::{AdamW, AdamWConfig, Decay, Gradients, Params, Schedule};

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn weights(params: &Params) -> BTreeMap<String, Vec<u32>> {
    params
        .iter()
        .map(|(n, v)| (n.clone(), bits(v.as_tensor())))
        .collect()
}

fn schedule() -> Schedule {
    Schedule {
        lr: 1e-2,
        warmup_steps: 0,
        total_steps: 10,
        decay: Decay::Constant,
    }
}

fn fake_step(opt: &mut AdamW, params: &Params) {
    let grads = params
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().affine(0.5, 0.01).unwrap()))
        .collect();
    opt.step(params, &Gradients::from_map(grads)).unwrap();
}

/// The step directories that hold objects, as the S3 API lists them (s3s-fs may leave empty
/// directories on its disk after deletes; S3 has no directories).
async fn steps_listed(output: &Location) -> Vec<String> {
    let mut v: Vec<String> = output
        .join("checkpoints")
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|(rel, _)| rel.split_once('/').map(|(d, _)| d.to_string()))
        .collect();
    v.dedup();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_save_verify_resume_retain_and_export_over_s3() {
    let root = tempfile::tempdir().unwrap();
    let bucket = root.path().join("ckpt");
    std::fs::create_dir_all(&bucket).unwrap();
    let addr = start_s3(root.path());
    let endpoint = format!("http://{addr}");
    let env = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
    ];
    for (k, v) in env {
        std::env::set_var(k, v); // this file's only test: nothing else reads the environment
    }
    let output = Location::parse("s3://ckpt/run").unwrap();

    // Save steps 1..=4 with keep_last = 2.
    let model = init_random(&ModelConfig::tiny(32), 7, true, &Device::Cpu).unwrap();
    let params = model.vars().unwrap().clone();
    let mut opt = AdamW::new(&params, AdamWConfig::default(), schedule()).unwrap();
    let aux: BTreeMap<String, Bytes> = [(
        "generation_config.json".to_string(),
        Bytes::from_static(b"{\"eos_token_id\": 2}\n"),
    )]
    .into();
    let options = CheckpointOptions {
        every: 1,
        total_steps: 4,
        retention: Retention {
            keep_last: 2,
            keep_every: 0,
        },
        config_hash: config_hash(b"s3 test"),
        world_size: 1,
        timeout: Some(Duration::from_secs(60)),
    };
    let mut ckpt = Checkpointer::new(&output, options);
    let mut saved = BTreeMap::new();
    for step in 1..=4u64 {
        fake_step(&mut opt, &params);
        assert!(ckpt.maybe_save(step, &model, &aux, &opt).await.unwrap());
        saved.insert(step, weights(&params));
    }
    assert_eq!(ckpt.finish().await.unwrap(), Some(4));

    // List: retention deleted steps 1 and 2 (through the S3 API).
    assert_eq!(steps_listed(&output).await, ["step-000003", "step-000004"]);
    let listed = output.join("checkpoints/step-000004").list().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "config.json",
            "generation_config.json",
            "manifest.json",
            "model.safetensors",
            "optimizer.safetensors",
            "state.json"
        ]
    );

    // A torn newer directory (no manifest) is deleted; step 4 verifies and resumes exactly.
    output
        .join("checkpoints/step-000005/model.safetensors")
        .put(b"partial".to_vec())
        .await
        .unwrap();
    let point = latest_valid(&output).await.unwrap().expect("a checkpoint");
    assert_eq!(point.step, 4);
    assert_eq!(steps_listed(&output).await, ["step-000003", "step-000004"]);
    point.manifest.verify(&point.dir).await.unwrap();
    point.check_config(&config_hash(b"s3 test")).unwrap();
    let fresh = init_random(&ModelConfig::tiny(32), 8, true, &Device::Cpu).unwrap();
    let fresh_params = fresh.vars().unwrap().clone();
    point.load_weights(&fresh_params).await.unwrap();
    assert_eq!(weights(&fresh_params), saved[&4]);
    let restored = point
        .load_optimizer(&fresh_params, AdamWConfig::default(), schedule())
        .await
        .unwrap();
    let state =
        |o: &AdamW| -> Vec<Vec<u32>> { o.state_tensors().iter().map(|(_, t)| bits(t)).collect() };
    assert_eq!(state(&restored), state(&opt));

    // The manifest is create-only on S3 too (If-None-Match: *).
    assert!(!point
        .dir
        .join("manifest.json")
        .put_create(b"{}".to_vec())
        .await
        .unwrap());

    // Export from S3 to a local directory: bf16, sharded.
    let out = root.path().join("exported");
    let o = std::process::Command::new(mirrorplay())
        .args([
            "export",
            "--checkpoint",
            "s3://ckpt/run/checkpoints/step-000004",
            "--out",
            out.to_str().unwrap(),
            "--dtype",
            "bf16",
            "--max-shard-size",
            "100KB",
        ])
        .envs(env)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("model.safetensors.index.json").is_file());
    assert!(out.join("generation_config.json").is_file());
    assert!(!out.join("optimizer.safetensors").exists() && !out.join("state.json").exists());
    assert_eq!(dtypes_of(&out), ["BF16".to_string()].into());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    let exported = read_model(&out);
    assert_eq!(exported.len(), saved[&4].len());
    for (name, want) in &saved[&4] {
        let (_, got) = &exported[name];
        for (g, w) in got.iter().zip(want) {
            let w = f32::from_bits(*w);
            assert!(
                (g - w).abs() <= w.abs() / 128.0 + 1e-30,
                "{name}: {g} vs {w}"
            );
        }
    }

    // A corrupt checkpoint is refused.
    let model_file = bucket.join("run/checkpoints/step-000003/model.safetensors");
    let mut bytes = std::fs::read(&model_file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&model_file, bytes).unwrap();
    let o = std::process::Command::new(mirrorplay())
        .args([
            "export",
            "--checkpoint",
            "s3://ckpt/run/checkpoints/step-000003",
            "--out",
            root.path().join("refused").to_str().unwrap(),
        ])
        .envs(env)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not verify"), "{}", stderr(&o));
}
