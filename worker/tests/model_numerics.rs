//! The decoder against transformers (fixtures from `scripts/make_model_fixtures.py`), the
//! load → save → load round trip, and the loader's error messages.
//!
//! With `MIRRORPLAY_SAVED_MODELS=DIR`, `logits_match_transformers` also saves every fixture it
//! loaded under DIR/<variant>/, for the script's `--check-saved DIR` (transformers loads them).

use std::path::{Path, PathBuf};

use candle_core::Device;
use mirrorplay_worker::model::{init_random, ModelConfig, Pretrained, SaveOptions, Tokenizer};
use serde_json::Value;

const VARIANTS: [&str; 5] = [
    "llama_mha_untied",
    "llama_gqa_tied",
    "llama3_rope",
    "qwen2_bias",
    "llama_seqcls",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn rows<T: Copy>(v: &Value, f: impl Fn(&Value) -> T) -> Vec<Vec<T>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(&f).collect())
        .collect()
}

/// Logits of the fixture's inputs: [b][t][v] for an LM, [b][1][labels] for a classifier.
fn run(p: &Pretrained, expected: &Value) -> Vec<Vec<Vec<f32>>> {
    let ids = rows(&expected["input_ids"], |x| x.as_u64().unwrap() as u32);
    let valid = rows(&expected["attention_mask"], |x| x.as_u64().unwrap() == 1);
    if expected["architecture"]
        .as_str()
        .unwrap()
        .ends_with("Classification")
    {
        let s = p
            .model
            .classify(&ids, &valid)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        s.into_iter().map(|r| vec![r]).collect()
    } else {
        p.model
            .logits(&ids, &valid)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap()
    }
}

fn read_expected(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("expected.json")).unwrap())
        .unwrap()
}

#[tokio::test]
async fn logits_match_transformers() {
    let save_to = std::env::var("MIRRORPLAY_SAVED_MODELS").ok();
    for name in VARIANTS {
        let expected = read_expected(name);
        let p = Pretrained::load(fixture(name).to_str().unwrap(), false, &Device::Cpu)
            .await
            .unwrap();
        let got = run(&p, &expected);
        let is_cls = expected["architecture"]
            .as_str()
            .unwrap()
            .ends_with("Classification");
        let mask = rows(&expected["attention_mask"], |x| x.as_u64().unwrap() == 1);
        let want = expected["logits"].as_array().unwrap();
        let mut worst = 0f64;
        for (b, row) in got.iter().enumerate() {
            for (t, logits) in row.iter().enumerate() {
                if !is_cls && !mask[b][t] {
                    continue;
                }
                let w = if is_cls { &want[b] } else { &want[b][t] };
                for (v, &x) in logits.iter().enumerate() {
                    worst = worst.max((x as f64 - w[v].as_f64().unwrap()).abs());
                }
            }
        }
        eprintln!("{name}: max |logit − transformers| = {worst:.2e}");
        assert!(worst < 1e-4, "{name}: max |logit − transformers| = {worst}");
        if let Some(dir) = &save_to {
            p.save(&format!("{dir}/{name}"), &SaveOptions::new(p.source_dtype))
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn load_save_load_gives_identical_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for name in VARIANTS {
        let expected = read_expected(name);
        let a = Pretrained::load(fixture(name).to_str().unwrap(), false, &Device::Cpu)
            .await
            .unwrap();
        let out = tmp.path().join(name);
        let saved = a
            .save(out.to_str().unwrap(), &SaveOptions::new(a.source_dtype))
            .await
            .unwrap();
        assert!(saved
            .iter()
            .any(|s| s.path == "model.safetensors" && s.sha256.len() == 64));
        // loaded back by URL this time, as trainable
        let url = format!("file://{}", out.display());
        let b = Pretrained::load(&url, true, &Device::Cpu).await.unwrap();
        assert!(b.model.vars().is_some());
        assert_eq!(run(&a, &expected), run(&b, &expected), "{name}");
        assert_eq!(
            a.model.config().tensor_shapes(),
            b.model.config().tensor_shapes()
        );
        assert_eq!(a.eos_token_ids, b.eos_token_ids);
    }
    // a tiny model made in code, with its tokenizer
    let tok = Tokenizer::tiny(&["a", "b", "c", "d"]).unwrap();
    let model = init_random(&ModelConfig::tiny(tok.vocab_size()), 11, true, &Device::Cpu).unwrap();
    let p = Pretrained::from_parts(model, Some(tok)).unwrap();
    let dir = tmp.path().join("tiny");
    p.save(dir.to_str().unwrap(), &SaveOptions::default())
        .await
        .unwrap();
    let q = Pretrained::load(dir.to_str().unwrap(), false, &Device::Cpu)
        .await
        .unwrap();
    let ids = vec![vec![1, 4, 5, 6, 7]];
    let valid = vec![vec![true; 5]];
    let la = p
        .model
        .logits(&ids, &valid)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    let lb = q
        .model
        .logits(&ids, &valid)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    assert_eq!(la, lb);
    assert_eq!(
        q.tokenizer.as_ref().unwrap().encode("a d").unwrap(),
        vec![4, 7]
    );
    assert_eq!(
        (q.eos_token_ids.clone(), q.pad_token_id),
        (vec![2], Some(0))
    );
}

async fn load_err(dir: &Path) -> String {
    Pretrained::load(dir.to_str().unwrap(), false, &Device::Cpu)
        .await
        .unwrap_err()
        .to_string()
}

#[tokio::test]
async fn loader_errors_name_the_tensor_and_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixture("llama_gqa_tied").join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("llama_gqa_tied").join("config.json")).unwrap(),
    )
    .unwrap();
    let write = |c: &Value| std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    let mut c = config.clone();
    c["attention_bias"] = Value::Bool(true);
    write(&c);
    let err = load_err(&dir).await;
    assert!(
        err.contains("tensor `model.layers.0.self_attn.k_proj.bias` is missing")
            && err.contains("file://"),
        "{err}"
    );
    let mut c = config.clone();
    c["intermediate_size"] = serde_json::json!(30);
    write(&c);
    let err = load_err(&dir).await;
    assert!(
        err.contains(
            "tensor `model.layers.0.mlp.down_proj.weight` has shape [16, 32], expected [16, 30]"
        ),
        "{err}"
    );
    let mut c = config.clone();
    c["model_type"] = serde_json::json!("gemma");
    write(&c);
    let err = load_err(&dir).await;
    assert!(
        err.contains("config.json: unsupported model_type: gemma"),
        "{err}"
    );
    let mut c = config.clone();
    c["tie_word_embeddings"] = Value::Bool(false);
    write(&c);
    assert!(load_err(&dir)
        .await
        .contains("tensor `lm_head.weight` is missing"));
}

#[tokio::test]
async fn loads_sharded_bf16_directories() {
    use candle_core::DType;
    use mirrorplay_worker::io::dtype::encode_f32;
    use mirrorplay_worker::io::safetensors::{pt_metadata, TensorLayout};
    use mirrorplay_worker::io::writer::write_safetensors;
    use mirrorplay_worker::io::{Dtype, Location};
    use mirrorplay_worker::model::Model;

    let src = Pretrained::load(fixture("qwen2_bias").to_str().unwrap(), false, &Device::Cpu)
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = Location::parse(tmp.path().to_str().unwrap()).unwrap();
    let names: Vec<&String> = src.model.tensors().keys().collect();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [first, second].iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let mut tensors = Vec::new();
        for name in part.iter() {
            let t = &src.model.tensors()[*name];
            let mut bytes = Vec::new();
            encode_f32(
                Dtype::BF16,
                &t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                &mut bytes,
            );
            let shape = t.dims().iter().map(|&d| d as u64).collect();
            tensors.push((
                TensorLayout {
                    name: name.to_string(),
                    dtype: Dtype::BF16,
                    shape,
                },
                bytes,
            ));
            weight_map.insert(name.to_string(), Value::String(file.clone()));
        }
        write_safetensors(&dir.join(&file), &tensors, &pt_metadata())
            .await
            .unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    dir.join("model.safetensors.index.json")
        .put(index.to_string().into_bytes())
        .await
        .unwrap();
    std::fs::copy(
        fixture("qwen2_bias").join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let sharded = Pretrained::load(tmp.path().to_str().unwrap(), false, &Device::Cpu)
        .await
        .unwrap();
    // the same weights rounded to bf16 in memory give bit-identical logits
    let rounded = src
        .model
        .tensors()
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.to_dtype(DType::BF16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap(),
            )
        })
        .collect();
    let rounded = Model::new(src.model.config().clone(), rounded, false).unwrap();
    let ids = vec![vec![1, 5, 9, 13]];
    let valid = vec![vec![true; 4]];
    assert_eq!(
        sharded
            .model
            .logits(&ids, &valid)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap(),
        rounded
            .logits(&ids, &valid)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap()
    );
}
