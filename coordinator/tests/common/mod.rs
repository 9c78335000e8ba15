//! Helpers for the integration tests: the binaries, the repository root, and an independent
//! safetensors reader (a few lines of JSON + byte decoding, deliberately not the io module).

#![allow(dead_code)]

pub mod cluster;
pub mod http;
pub mod openmetrics;
pub mod s3;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn mirrorplay() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mirrorplay"))
}

/// The worker binary next to `mirrorplay`. `cargo test --workspace` builds it with everything
/// else; when only this package's tests are built it may be missing, and is built here.
pub fn worker_bin() -> PathBuf {
    let bin = mirrorplay().parent().unwrap().join("mirrorplay-worker");
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        if bin.is_file() {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "-p",
                "mirrorplay-worker",
                "--bin",
                "mirrorplay-worker",
            ])
            .current_dir(repo_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building mirrorplay-worker failed");
    });
    bin
}

/// Runs `mirrorplay ARGS` in the repository root.
pub fn run(args: &[&str]) -> Output {
    run_env(args, &[])
}

pub fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_in_env(&repo_root(), args, env)
}

/// Runs `mirrorplay ARGS` in `dir` (relative paths in configs resolve against it).
pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    run_in_env(dir, args, &[])
}

fn run_in_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let worker = worker_bin();
    let mut cmd = Command::new(mirrorplay());
    cmd.args(args)
        .current_dir(dir)
        .env("MIRRORPLAY_WORKER_BIN", worker);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run mirrorplay")
}

/// Removes the worker-log directory `mirrorplay local` keeps after a failed job (named on its
/// stderr as `worker logs kept in DIR`), so that failing runs leave nothing behind.
pub fn remove_kept_logs(o: &Output) {
    let err = stderr(o);
    if let Some(dir) = err
        .lines()
        .find_map(|l| l.strip_prefix("worker logs kept in "))
    {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Tensors of a model directory (single file or sharded index) or file, decoded to f32.
/// Writes a safetensors file holding only tensor `name` of `examples/base` (f32): a "model"
/// that is valid on its own but lacks the base's other tensors.
pub fn write_one_tensor_of_base(path: &Path, name: &str) {
    let base = read_model(&repo_root().join("examples/base"));
    let (shape, values) = &base[name];
    let mut header = serde_json::json!({name: {"dtype": "F32", "shape": shape, "data_offsets": [0, values.len() * 4]}}).to_string();
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    values
        .iter()
        .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
    std::fs::write(path, bytes).unwrap();
}

pub fn read_model(path: &Path) -> BTreeMap<String, (Vec<u64>, Vec<f32>)> {
    let files: Vec<PathBuf> = if path.is_file() {
        vec![path.to_path_buf()]
    } else if path.join("model.safetensors.index.json").exists() {
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(path.join("model.safetensors.index.json")).unwrap(),
        )
        .unwrap();
        let mut names: Vec<String> = index["weight_map"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        names.sort();
        names.dedup();
        names.into_iter().map(|n| path.join(n)).collect()
    } else {
        vec![path.join("model.safetensors")]
    };
    let mut out = BTreeMap::new();
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        for (name, entry) in header.as_object().unwrap() {
            if name == "__metadata__" {
                continue;
            }
            let shape: Vec<u64> = entry["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            let offsets: Vec<usize> = entry["data_offsets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let data = &bytes[8 + n + offsets[0]..8 + n + offsets[1]];
            let values = match entry["dtype"].as_str().unwrap() {
                "F32" => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                "F16" => data
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                "BF16" => data
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                other => panic!("test reader handles F32, F16 and BF16, not {other}"),
            };
            out.insert(name.clone(), (shape, values));
        }
    }
    out
}

/// The dtypes of the tensors in every `.safetensors` file under `dir`.
pub fn dtypes_of(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "safetensors") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        for (name, e) in header.as_object().unwrap() {
            if name != "__metadata__" {
                out.insert(e["dtype"].as_str().unwrap().to_string());
            }
        }
    }
    out
}

/// Task arithmetic computed directly: base + lambda * sum_i w_i (m_i - base).
pub fn task_arithmetic(
    base: &Path,
    models: &[&Path],
    weights: &[f32],
    lambda: f32,
) -> BTreeMap<String, (Vec<u64>, Vec<f32>)> {
    let base = read_model(base);
    let models: Vec<_> = models.iter().map(|m| read_model(m)).collect();
    base.iter()
        .map(|(name, (shape, b))| {
            let values = (0..b.len())
                .map(|i| {
                    b[i] + lambda
                        * models
                            .iter()
                            .zip(weights)
                            .map(|(m, w)| w * (m[name].1[i] - b[i]))
                            .sum::<f32>()
                })
                .collect();
            (name.clone(), (shape.clone(), values))
        })
        .collect()
}

/// The example merge of `configs/merge-task-arithmetic.toml`, computed directly.
pub fn expected_example_merge() -> BTreeMap<String, (Vec<u64>, Vec<f32>)> {
    let ex = repo_root().join("examples");
    task_arithmetic(
        &ex.join("base"),
        &[&ex.join("task-a"), &ex.join("task-b")],
        &[1.0, 1.0],
        1.0,
    )
}

pub fn assert_models_close(
    got: &BTreeMap<String, (Vec<u64>, Vec<f32>)>,
    want: &BTreeMap<String, (Vec<u64>, Vec<f32>)>,
    tol: f32,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (name, (shape, values)) in want {
        let (gs, gv) = &got[name];
        assert_eq!(gs, shape, "shape of {name}");
        for (i, (a, b)) in gv.iter().zip(values).enumerate() {
            assert!((a - b).abs() <= tol, "{name}[{i}]: got {a}, want {b}");
        }
    }
}

/// Every file under `dir`, relative path → bytes.
pub fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            out.insert(
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(&p).unwrap(),
            );
        }
    }
    out
}
