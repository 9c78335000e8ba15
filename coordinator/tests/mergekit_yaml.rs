//! mergekit YAML configs, end to end: `mirrorplay local merge.yml` on mergekit's own TIES
//! fixtures (inputs and mergekit 0.1.5's outputs, made by `scripts/mergekit_fixtures.sh`) must
//! reproduce mergekit's merged tensors to 1e-6; `convert mergekit` prints TOML that runs to the
//! same bytes; unsupported mergekit features are refused with exit 2 naming the key.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

type Model = BTreeMap<String, (Vec<u64>, Vec<f32>)>;

fn fixture_dir() -> std::path::PathBuf {
    repo_root().join("worker/tests/fixtures/merge/mergekit_ties")
}

/// Writes one f32 safetensors file (names sorted) plus a config.json: a model directory.
fn write_model(dir: &Path, tensors: &Model) {
    std::fs::create_dir_all(dir).unwrap();
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, (shape, values)) in tensors {
        let start = data.len();
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&data);
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8,
 "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2,
 "num_key_value_heads": 2, "vocab_size": 16, "max_position_embeddings": 64,
 "rms_norm_eps": 1e-6, "tie_word_embeddings": false, "torch_dtype": "float32"}"#,
    )
    .unwrap();
}

/// The tensors under `prefix/` of a fixture file, with the prefix removed.
fn with_prefix(all: &Model, prefix: &str) -> Model {
    all.iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(&format!("{prefix}/"))
                .map(|n| (n.to_string(), v.clone()))
        })
        .collect()
}

/// Writes the fixture's base + 3 models under `dir` (relative names, as a user's YAML has).
fn write_inputs(dir: &Path) {
    let inputs = read_model(&fixture_dir().join("inputs.safetensors"));
    write_model(&dir.join("base"), &with_prefix(&inputs, "base"));
    for i in 0..3 {
        let name = format!("model{i}");
        write_model(&dir.join(&name), &with_prefix(&inputs, &name));
    }
}

/// The mergekit YAML of one fixture case, in mergekit's documented block style.
fn case_yaml(case: &serde_json::Value) -> String {
    let mut y = String::from("merge_method: ties\nbase_model: base\nmodels:\n");
    for i in 0..3 {
        y.push_str(&format!(
            "  - model: model{i}\n    parameters:\n      density: {}\n      weight: {}\n",
            case["density"][i], case["weights"][i]
        ));
    }
    y.push_str(&format!(
        "parameters:\n  normalize: {}\n  lambda: {}\n  int8_mask: true\ndtype: float32\n",
        case["normalize"], case["lambda"]
    ));
    y
}

#[test]
fn mergekit_yaml_ties_reproduces_mergekit() {
    let tmp = tempfile::tempdir().unwrap();
    write_inputs(tmp.path());
    let cases: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture_dir().join("cases.json")).unwrap()).unwrap();
    let expected = read_model(&fixture_dir().join("outputs.safetensors"));
    let cases = cases["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let yaml = tmp.path().join(format!("{id}.yml"));
        std::fs::write(&yaml, case_yaml(case)).unwrap();
        let out = tmp.path().join(format!("out-{id}"));
        let o = run_in(
            tmp.path(),
            &[
                "local",
                yaml.to_str().unwrap(),
                "--workers",
                "2",
                "--set",
                &format!("job.output={}", out.display()),
            ],
        );
        assert!(o.status.success(), "{id}: {}", stderr(&o));
        let got = read_model(&out.join("model"));
        let want = with_prefix(&expected, id);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{id}"
        );
        let mut worst = 0f32;
        for (name, (shape, values)) in &want {
            assert_eq!(&got[name].0, shape, "{id}: {name} shape");
            for (a, b) in got[name].1.iter().zip(values) {
                worst = worst.max((a - b).abs());
            }
        }
        assert!(worst <= 1e-6, "{id}: max |mirrorplay − mergekit| = {worst}");
    }
}

#[test]
fn converted_toml_runs_to_the_same_bytes_as_the_yaml() {
    let tmp = tempfile::tempdir().unwrap();
    write_inputs(tmp.path());
    let yaml = tmp.path().join("dare.yaml");
    std::fs::write(
        &yaml,
        "# a DARE-TIES merge as mergekit's README writes one\n\
         models:\n  - model: base\n  - model: model0\n    parameters: {density: 0.6, weight: 0.5}\n\
         \x20 - model: model1\n    parameters: {density: 0.6, weight: 0.3}\n\
         \x20 - model: model2\n    parameters:\n      weight: 0.2\n\
         merge_method: dare_ties\nbase_model: base\n\
         parameters:\n  density: 0.6\n  normalize: true\ndtype: bfloat16\n",
    )
    .unwrap();
    let converted = run_in(tmp.path(), &["convert", "mergekit", "dare.yaml"]);
    assert!(converted.status.success(), "{}", stderr(&converted));
    let toml_text = String::from_utf8(converted.stdout).unwrap();
    // The mapping, key by key: base dropped from the models, the top-level density fills the
    // model without one, rescale defaults to mergekit's L1 for DARE, dtype is explained.
    for want in [
        "method = \"dare_ties\"",
        "models = [\"model0\", \"model1\", \"model2\"]",
        "weights = [0.5, 0.3, 0.2]",
        "density = 0.6",
        "rescale = \"l1\"",
        "normalize = true",
        "output = \"dare-merged\"",
        "mergekit dtype = bfloat16: not mapped",
    ] {
        assert!(
            toml_text.contains(want),
            "missing `{want}` in:\n{toml_text}"
        );
    }
    let toml = tmp.path().join("dare.toml");
    std::fs::write(&toml, &toml_text).unwrap();
    let mut bytes = Vec::new();
    for config in ["dare.yaml", "dare.toml"] {
        let out = tmp.path().join(format!("out-{config}"));
        let o = run_in(
            tmp.path(),
            &[
                "local",
                config,
                "--set",
                &format!("job.output={}", out.display()),
            ],
        );
        assert!(o.status.success(), "{config}: {}", stderr(&o));
        bytes.push(files_of(&out.join("model")));
    }
    assert!(bytes[0] == bytes[1], "YAML and converted TOML differ");
    // And not a no-op: the merge moved the base.
    let base = read_model(&tmp.path().join("base"));
    let merged = read_model(&tmp.path().join("out-dare.yaml/model"));
    assert!(base.iter().any(|(k, (_, v))| v != &merged[k].1));
}

#[test]
fn unsupported_mergekit_features_are_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let head = "base_model: base\nmodels:\n  - model: a\n    parameters:\n      weight: 1.0\n";
    let cases = [
        (
            "merge_method: slerp\nbase_model: base\nmodels: [{model: a}]\n",
            "`merge_method`",
            "slerp",
        ),
        (
            "merge_method: ties\nslices:\n  - sources: []\n",
            "`slices`",
            "not supported",
        ),
        (
            "merge_method: ties\nbase_model: base\nmodels:\n  - model: a\n    parameters:\n      weight: [0, 0.5, 1]\n",
            "`models[0].parameters.weight`",
            "layer-gradient",
        ),
        (
            "merge_method: ties\nbase_model: base\nmodels:\n  - model: a\n    parameters:\n      density: 0.5\n",
            "`models[0].parameters.weight`",
            "requires a weight",
        ),
        (
            "merge_method: ties\nbase_model: base\nmodels:\n  - model: a+lora\n    parameters: {weight: 1}\n",
            "`models[0].model`",
            "LoRA",
        ),
        (
            &format!("merge_method: ties\n{head}parameters:\n  gamma: 0.1\n"),
            "`parameters.gamma`",
            "no parameter",
        ),
        (
            &format!("merge_method: ties\n{head}parameters:\n  rescale: true\n"),
            "`parameters.rescale`",
            "rescale",
        ),
        (
            // Past conversion, the TOML reader's range check names the converted key.
            &format!("merge_method: dare_linear\n{head}parameters:\n  density: 1.5\n"),
            "`merge.density`",
            "as converted by",
        ),
        (
            "merge_method: ties\nbase_model: [unclosed\n",
            "bad.yml:",
            "not valid YAML",
        ),
    ];
    for (i, (yaml, key, words)) in cases.iter().enumerate() {
        let path = tmp.path().join("bad.yml");
        std::fs::write(&path, yaml).unwrap();
        let o = run_in(tmp.path(), &["validate", "bad.yml"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "case {i}: {err}");
        assert!(
            err.contains(key) && err.contains(words),
            "case {i}: expected {key} and `{words}` in: {err}"
        );
    }
}
