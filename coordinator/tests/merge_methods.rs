//! PCB, TIES and DARE through the whole system: the coordinator's statistics rounds and the
//! workers' streamed chunks on a real local cluster, with tiny chunks so that units cross chunk
//! boundaries. The output must equal, bit for bit, the in-memory reference driver (itself
//! checked against the numpy reference and mergekit in `worker/src/merge/fixture_tests.rs`),
//! and be byte-identical for 1 and 3 workers.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use mirrorplay_worker::merge::{self, Method};

fn flat(model: &BTreeMap<String, (Vec<u64>, Vec<f32>)>) -> merge::Tensors {
    model
        .iter()
        .map(|(k, (_, v))| (k.clone(), v.clone()))
        .collect()
}

/// Writes a merge config `dir/NAME.toml` of `[job]` output `dir/out` plus the `[merge]` keys.
fn write_merge_config(dir: &std::path::Path, name: &str, merge_toml: &str) -> std::path::PathBuf {
    let config = dir.join(format!("{name}.toml"));
    let out = dir.join("out");
    let job = format!(
        "[job]\nkind = \"merge\"\noutput = \"{}\"\nseed = 7\n",
        out.display()
    );
    std::fs::write(&config, format!("{job}[merge]\n{merge_toml}\n")).unwrap();
    config
}

/// `mirrorplay local CONFIG --workers N` writing to `out`, with `chunk_elements`-element
/// ranges; panics with `label` and the stderr on failure.
fn run_local_merge(
    config: &std::path::Path,
    workers: &str,
    out: &std::path::Path,
    chunk_elements: &str,
    label: &str,
) {
    let o = run_env(
        &[
            "local",
            config.to_str().unwrap(),
            "--workers",
            workers,
            "--set",
            &format!("job.output={}", out.display()),
        ],
        &[("MIRRORPLAY_MERGE_CHUNK_ELEMENTS", chunk_elements)],
    );
    assert!(
        o.status.success(),
        "{label} with {workers} workers: {}",
        stderr(&o)
    );
}

/// Runs `method_toml` (the [merge] keys after base/models) with 1 and 3 workers and compares
/// with the reference.
fn check(name: &str, method_toml: &str, method: Method) {
    let tmp = tempfile::tempdir().unwrap();
    let ex = repo_root().join("examples");
    let config = write_merge_config(
        tmp.path(),
        name,
        &format!(
            "base = \"{ex}/base\"\nmodels = [\"{ex}/task-a\", \"{ex}/task-b\"]\nmax_shard_size = \"24KB\"\n{method_toml}",
            ex = ex.display()
        ),
    );
    let mut outputs = Vec::new();
    for workers in ["1", "3"] {
        let out = tmp.path().join(format!("w{workers}"));
        run_local_merge(&config, workers, &out, "300", name);
        outputs.push((files_of(&out.join("model")), read_model(&out.join("model"))));
    }
    assert!(
        outputs[0].0 == outputs[1].0,
        "{name}: 1 and 3 workers wrote different bytes"
    );
    let base = flat(&read_model(&ex.join("base")));
    let models = vec![
        flat(&read_model(&ex.join("task-a"))),
        flat(&read_model(&ex.join("task-b"))),
    ];
    let want = merge::merge_in_memory_chunked(&method, &base, &models, 300).unwrap();
    let got = flat(&outputs[0].1);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.tensors.keys().collect::<Vec<_>>()
    );
    for (tensor, values) in &want.tensors {
        let g = &got[tensor];
        let same = g
            .iter()
            .zip(values)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same,
            "{name}: tensor {tensor} differs from the in-memory reference"
        );
    }
    // The merge is not the task-arithmetic result (the method did something).
    let ta = expected_example_merge();
    assert!(
        ta.iter()
            .any(|(k, (_, v))| v.iter().zip(&got[k]).any(|(a, b)| a != b)),
        "{name} equals task arithmetic"
    );
}

#[test]
fn pcb_global_sum_raw() {
    let method = Method::Pcb(merge::Pcb {
        scope: merge::Scope::Global,
        keep_ratio: 0.2,
        clip_ratio: 0.01,
        inter: merge::Inter::SumRaw,
        lambda: 1.0,
        lambdas: vec![1.0, 1.0],
    });
    check(
        "pcb-global",
        "method = \"pcb\"\nkeep_ratio = 0.2\nclip_ratio = 0.01",
        method,
    );
}

#[test]
fn pcb_per_tensor_pairwise() {
    let method = Method::Pcb(merge::Pcb {
        scope: merge::Scope::PerTensor,
        keep_ratio: 0.1,
        clip_ratio: 0.0001,
        inter: merge::Inter::Pairwise,
        lambda: 0.8,
        lambdas: vec![1.0, 0.5],
    });
    check(
        "pcb-per-tensor",
        "method = \"pcb\"\nscope = \"per_tensor\"\nkeep_ratio = 0.1\nclip_ratio = 0.0001\ninter = \"pairwise\"\nlambda = 0.8\nlambdas = [1.0, 0.5]",
        method,
    );
}

#[test]
fn ties_per_tensor_and_global() {
    let per_tensor = Method::Ties(merge::Ties {
        scope: merge::Scope::PerTensor,
        density: vec![0.3, 0.5],
        weights: vec![1.0, 0.7],
        normalize: true,
        lambda: 1.0,
    });
    check(
        "ties",
        "method = \"ties\"\ndensity = [0.3, 0.5]\nweights = [1.0, 0.7]",
        per_tensor,
    );
    let global = Method::Ties(merge::Ties {
        scope: merge::Scope::Global,
        density: vec![0.2, 0.2],
        weights: vec![1.0, 1.0],
        normalize: false,
        lambda: 1.0,
    });
    check(
        "ties-global",
        "method = \"ties\"\nscope = \"global\"\ndensity = 0.2\nnormalize = false",
        global,
    );
}

#[test]
fn dare_linear_l1_and_dare_ties() {
    let linear = Method::Dare(merge::Dare {
        density: vec![0.5, 0.5],
        weights: vec![1.0, 1.0],
        rescale: merge::Rescale::L1,
        seed: 7,
        lambda: 1.0,
        ties: None,
    });
    check(
        "dare-linear",
        "method = \"dare_linear\"\ndensity = 0.5\nrescale = \"l1\"",
        linear,
    );
    let ties = Method::Dare(merge::Dare {
        density: vec![0.4, 0.6],
        weights: vec![1.0, 1.0],
        rescale: merge::Rescale::InvDensity,
        seed: 11,
        lambda: 1.0,
        ties: Some(true),
    });
    check(
        "dare-ties",
        "method = \"dare_ties\"\ndensity = [0.4, 0.6]\nseed = 11\nnormalize = true",
        ties,
    );
}

/// f16 and bf16 inputs (read through the object store and decoded; f32 in a local file takes a
/// direct positioned-read path instead) merge like the in-memory reference on the decoded
/// values, and the output keeps the inputs' dtype: PCB global over random models, 2 workers.
#[test]
fn half_precision_inputs_merge_like_the_reference_and_keep_their_dtype() {
    let method = Method::Pcb(merge::Pcb {
        scope: merge::Scope::Global,
        keep_ratio: 0.2,
        clip_ratio: 0.01,
        inter: merge::Inter::SumRaw,
        lambda: 1.0,
        lambdas: vec![1.0; 3],
    });
    for dtype in ["BF16", "F16"] {
        let tmp = tempfile::tempdir().unwrap();
        let models = tmp.path().join("models");
        let o = run(&[
            "example-models",
            models.to_str().unwrap(),
            "--random-size",
            "64KiB",
            "--random-dtype",
            dtype,
        ]);
        assert!(o.status.success(), "{dtype}: {}", stderr(&o));
        let config = write_merge_config(
            tmp.path(),
            "pcb",
            &format!(
                "method = \"pcb\"\nbase = \"{m}/base\"\nmodels = [\"{m}/m1\", \"{m}/m2\", \"{m}/m3\"]\nkeep_ratio = 0.2\nclip_ratio = 0.01",
                m = models.display()
            ),
        );
        run_local_merge(&config, "2", &tmp.path().join("out"), "1000", dtype);
        let out = tmp.path().join("out/model");
        assert_eq!(dtypes_of(&out), BTreeSet::from([dtype.to_string()]));

        let input = |name: &str| flat(&read_model(&models.join(name)));
        let inputs = vec![input("m1"), input("m2"), input("m3")];
        let want = merge::merge_in_memory_chunked(&method, &input("base"), &inputs, 1000).unwrap();
        let round = |x: f32| match dtype {
            "BF16" => half::bf16::from_f32(x).to_f32(),
            _ => half::f16::from_f32(x).to_f32(),
        };
        let got = flat(&read_model(&out));
        assert_eq!(got.len(), want.tensors.len());
        for (tensor, values) in &want.tensors {
            assert_eq!(got[tensor].len(), values.len());
            for (i, (g, w)) in got[tensor].iter().zip(values).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    round(*w).to_bits(),
                    "{dtype} {tensor}[{i}]: got {g}, reference {w}"
                );
            }
        }
        // The merge moved the base (PCB kept some entries of every model).
        assert!(
            want.kept.values().flatten().all(|&k| k > 0),
            "{:?}",
            want.kept
        );
    }
}
