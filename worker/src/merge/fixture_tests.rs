//! Parity with independent implementations, from committed fixtures under
//! `worker/tests/fixtures/merge/`:
//! - `scripts/merge_reference.py` (numpy, written from docs/algorithms.md §5): PCB, TIES, DARE
//!   given the script's masks, task arithmetic (`inputs.safetensors`, `outputs.safetensors`,
//!   `cases.json`);
//! - `scripts/mergekit_fixtures.sh` (mergekit itself): TIES (`mergekit_ties/`).
//!
//! Every method runs through [`merge_in_memory_chunked`] with tiny chunks (16 elements: every
//! tensor but the smallest crosses chunk boundaries and, in per-tensor scope, takes the radix
//! rounds) and with the default chunk (per-tensor units merged locally).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::dare::{self, L1Partial, Scale};
use super::*;
use crate::io::dtype::decode_f32;
use crate::io::safetensors::parse_header;
use crate::io::Dtype;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/merge")
}

/// A safetensors file's tensors: F32 as f32 values, U8 as 0.0/1.0.
fn load(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    let header = parse_header(
        &path.display().to_string(),
        &bytes[8..8 + n as usize],
        8 + n,
        Some(bytes.len() as u64),
    )
    .unwrap();
    header
        .tensors
        .into_iter()
        .map(|(name, info)| {
            let data = &bytes[info.start as usize..(info.start + info.len) as usize];
            let mut v = Vec::new();
            match info.dtype {
                Dtype::U8 => v.extend(data.iter().map(|&b| b as f32)),
                dtype => decode_f32(dtype, data, &mut v),
            }
            (name, v)
        })
        .collect()
}

/// Tensors under `prefix/` with the prefix removed.
fn under(all: &BTreeMap<String, Vec<f32>>, prefix: &str) -> BTreeMap<String, Vec<f32>> {
    all.iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(&format!("{prefix}/"))
                .map(|name| (name.to_string(), v.clone()))
        })
        .collect()
}

struct Fixture {
    base: BTreeMap<String, Vec<f32>>,
    models: Vec<BTreeMap<String, Vec<f32>>>,
    outputs: BTreeMap<String, Vec<f32>>,
    cases: Vec<Value>,
}

fn numpy_fixture() -> Fixture {
    let dir = fixtures();
    let inputs = load(&dir.join("inputs.safetensors"));
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let n = doc["models"].as_u64().unwrap() as usize;
    Fixture {
        base: under(&inputs, "base"),
        models: (0..n)
            .map(|i| under(&inputs, &format!("model{i}")))
            .collect(),
        outputs: load(&dir.join("outputs.safetensors")),
        cases: doc["cases"].as_array().unwrap().clone(),
    }
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}
fn f32s(v: &Value) -> Vec<f32> {
    f64s(v).into_iter().map(|x| x as f32).collect()
}
fn scope(v: &Value) -> Scope {
    match v.as_str().unwrap() {
        "global" => Scope::Global,
        "per_tensor" => Scope::PerTensor,
        s => panic!("scope {s}"),
    }
}
fn kept(case: &Value) -> BTreeMap<String, Vec<u64>> {
    case["kept"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap())
                    .collect(),
            )
        })
        .collect()
}

/// |ours − reference| ≤ 1e-6·max(1, |reference|), element by element.
fn assert_close(case: &str, tensor: &str, ours: &[f32], reference: &[f32]) {
    assert_eq!(ours.len(), reference.len(), "{case} {tensor}");
    for (e, (a, b)) in ours.iter().zip(reference).enumerate() {
        let tol = 1e-6 * b.abs().max(1.0);
        assert!(
            (a - b).abs() <= tol,
            "{case} {tensor}[{e}]: ours {a}, reference {b}, diff {}",
            (a - b).abs()
        );
    }
}

fn method_of(case: &Value) -> Option<Method> {
    Some(match case["method"].as_str().unwrap() {
        "pcb" => Method::Pcb(Pcb {
            scope: scope(&case["scope"]),
            keep_ratio: case["keep_ratio"].as_f64().unwrap(),
            clip_ratio: case["clip_ratio"].as_f64().unwrap(),
            inter: match case["inter"].as_str().unwrap() {
                "sum_raw" => Inter::SumRaw,
                _ => Inter::Pairwise,
            },
            lambda: case["lam"].as_f64().unwrap() as f32,
            lambdas: f32s(&case["lambdas"]),
        }),
        "ties" => Method::Ties(Ties {
            scope: scope(&case["scope"]),
            density: f64s(&case["density"]),
            weights: f32s(&case["weights"]),
            normalize: case["normalize"].as_bool().unwrap(),
            lambda: case["lam"].as_f64().unwrap() as f32,
        }),
        "task_arithmetic" => Method::TaskArithmetic(TaskArithmetic {
            weights: f32s(&case["weights"]),
            lambda: case["lam"].as_f64().unwrap() as f32,
        }),
        _ => return None,
    })
}

/// Runs every numpy case of `method` through the driver at two chunk sizes; returns how many.
fn check_driver_cases(method: &str) -> usize {
    let fx = numpy_fixture();
    let mut count = 0;
    for case in fx.cases.iter().filter(|c| c["method"] == method) {
        let id = case["id"].as_str().unwrap();
        let m = method_of(case).unwrap();
        for chunk in [16, DEFAULT_CHUNK_ELEMS] {
            let merged = merge_in_memory_chunked(&m, &fx.base, &fx.models, chunk).unwrap();
            for (name, ours) in &merged.tensors {
                assert_close(
                    &format!("{id} (chunk {chunk})"),
                    name,
                    ours,
                    &fx.outputs[&format!("{id}/{name}")],
                );
            }
            assert_eq!(
                merged.kept,
                kept(case),
                "{id} (chunk {chunk}): kept entries per tensor and model"
            );
        }
        count += 1;
    }
    count
}

/// PCB to 1e-6 against the numpy `PCB_merge` for r ∈ {0.05, 0.1, 0.2, 0.5} × c ∈ {0.0001, 0.01}
/// × {global, per_tensor} × {sum_raw, pairwise}, plus λ/λ_i, with the same kept entries
/// (S_i > 0) per tensor and task. The inputs include exact ties in |τ|, an all-zero task vector
/// (hi = lo) and tensors too small to keep anything per tensor (t = M).
#[test]
fn pcb_matches_numpy_reference() {
    assert_eq!(check_driver_cases("pcb"), 4 * 2 * 2 * 2 + 2);
}

/// TIES against the numpy reference (ties at the threshold → lower flat index; global and per
/// tensor; normalised or not; density ≥ 1 keeps all).
#[test]
fn ties_matches_numpy_reference() {
    assert_eq!(check_driver_cases("ties"), 6);
}

#[test]
fn task_arithmetic_matches_numpy_reference() {
    assert_eq!(check_driver_cases("task_arithmetic"), 1);
}

/// DARE given the script's masks: rescale inv_density | l1 | none × dare_linear | dare_ties
/// (normalised or not), chunk by chunk (16 elements), l1 partials added in chunk order.
#[test]
fn dare_matches_numpy_reference_given_mask() {
    let fx = numpy_fixture();
    let n = fx.models.len();
    let mut count = 0;
    for case in fx.cases.iter().filter(|c| c["method"] == "dare") {
        let id = case["id"].as_str().unwrap();
        let p = Dare {
            density: f64s(&case["density"]),
            weights: f32s(&case["weights"]),
            rescale: match case["rescale"].as_str().unwrap() {
                "inv_density" => Rescale::InvDensity,
                "l1" => Rescale::L1,
                _ => Rescale::None,
            },
            seed: 0,
            lambda: case["lam"].as_f64().unwrap() as f32,
            ties: case["ties_normalize"].as_bool(),
        };
        for (t, (name, base)) in fx.base.iter().enumerate() {
            let masks: Vec<Vec<bool>> = (0..n)
                .map(|i| {
                    fx.outputs[&format!("mask{i}/{name}")]
                        .iter()
                        .map(|&m| m != 0.0)
                        .collect()
                })
                .collect();
            let ranges: Vec<(usize, usize)> = (0..base.len())
                .step_by(16)
                .map(|s| (s, (s + 16).min(base.len())))
                .collect();
            let mut norms = vec![L1Partial::default(); n];
            for &(s, e) in &ranges {
                let models_buf: Vec<&[f32]> = fx.models.iter().map(|m| &m[name][s..e]).collect();
                let chunk = Chunk {
                    tensor: name,
                    tensor_index: t as u64,
                    start: s as u64,
                    base: &base[s..e],
                    models: &models_buf,
                };
                let m: Vec<&[bool]> = masks.iter().map(|m| &m[s..e]).collect();
                for (a, b) in norms.iter_mut().zip(dare::l1_partials(&chunk, &m)) {
                    a.add(&b);
                }
            }
            let scales: Vec<Scale> = (0..n)
                .map(|i| Scale::direct(&p, i).unwrap_or_else(|| Scale::l1(name, i, &norms[i])))
                .collect();
            let mut out = vec![0.0f32; base.len()];
            let mut kept_here = vec![0u64; n];
            for &(s, e) in &ranges {
                let models_buf: Vec<&[f32]> = fx.models.iter().map(|m| &m[name][s..e]).collect();
                let chunk = Chunk {
                    tensor: name,
                    tensor_index: t as u64,
                    start: s as u64,
                    base: &base[s..e],
                    models: &models_buf,
                };
                let m: Vec<&[bool]> = masks.iter().map(|m| &m[s..e]).collect();
                let k = dare::dare_chunk(&p, &scales, &m, &chunk, &mut out[s..e]);
                kept_here.iter_mut().zip(k).for_each(|(a, b)| *a += b);
            }
            assert_close(id, name, &out, &fx.outputs[&format!("{id}/{name}")]);
            assert_eq!(kept_here, kept(case)[name], "{id} {name}");
        }
        count += 1;
    }
    assert_eq!(count, 9);
}

/// TIES against mergekit itself (`scripts/mergekit_fixtures.sh`: mergekit's `ties` on a tiny
/// f32 Llama-shaped model, per-model density and weight, normalize on and off, lambda) to 1e-6.
#[test]
fn ties_matches_mergekit() {
    let dir = fixtures().join("mergekit_ties");
    let inputs = load(&dir.join("inputs.safetensors"));
    let outputs = load(&dir.join("outputs.safetensors"));
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let n = doc["models"].as_u64().unwrap() as usize;
    let base = under(&inputs, "base");
    let models: Vec<_> = (0..n)
        .map(|i| under(&inputs, &format!("model{i}")))
        .collect();
    let cases = doc["cases"].as_array().unwrap();
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let m = Method::Ties(Ties {
            scope: Scope::PerTensor,
            density: f64s(&case["density"]),
            weights: f32s(&case["weights"]),
            normalize: case["normalize"].as_bool().unwrap(),
            lambda: case["lambda"].as_f64().unwrap() as f32,
        });
        for chunk in [16, DEFAULT_CHUNK_ELEMS] {
            let merged = merge_in_memory_chunked(&m, &base, &models, chunk).unwrap();
            assert_eq!(merged.tensors.len(), base.len());
            for (name, ours) in &merged.tensors {
                assert_close(
                    &format!("mergekit {id} (chunk {chunk})"),
                    name,
                    ours,
                    &outputs[&format!("{id}/{name}")],
                );
            }
        }
    }
    assert_eq!(cases.len(), 4);
}
