//! Tests of `save`: a bf16 sharded save read back by an independent header reader and by
//! `Pretrained::load` (values checked against round-to-nearest-even computed here from the bits),
//! f32 single-file saves byte-identical to the whole-file writer, and refused dtypes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::Value;

use super::save::{save_model, SaveOptions};
use super::{init_random, ModelConfig, Pretrained, Tokenizer};
use crate::io::dtype::encode_f32;
use crate::io::safetensors::{pt_metadata, TensorLayout};
use crate::io::writer::write_safetensors;
use crate::io::{Dtype, Location};

fn tiny() -> Pretrained {
    let tok = Tokenizer::tiny(&["a", "b", "c", "d"]).unwrap();
    let model = init_random(&ModelConfig::tiny(tok.vocab_size()), 5, false, &Device::Cpu).unwrap();
    Pretrained::from_parts(model, Some(tok)).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// bf16 by round-to-nearest-even on the bits (finite inputs), independent of `half`.
fn bf16_rne(x: f32) -> f32 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1));
    f32::from_bits(rounded & 0xFFFF_0000)
}

/// bf16 by truncation: what a wrong conversion would give.
fn bf16_trunc(x: f32) -> f32 {
    f32::from_bits(x.to_bits() & 0xFFFF_0000)
}

/// A safetensors file's header JSON, read without the io module.
fn header_of(path: &Path) -> serde_json::Map<String, Value> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + n]).unwrap()
}

fn json_file(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[tokio::test]
async fn a_bf16_sharded_save_loads_back_as_the_bf16_rounded_values() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tiny();
    let dir = tmp.path().join("bf16");
    let max = 40_000;
    let options = SaveOptions {
        dtype: Dtype::BF16,
        max_shard_size: max,
    };
    let saved = p.save(dir.to_str().unwrap(), &options).await.unwrap();
    let tensors = p.model.tensors();
    let names: BTreeSet<&str> = tensors.keys().map(String::as_str).collect();

    // Several files named as transformers names them, and an index covering every tensor once.
    let index = json_file(&dir.join("model.safetensors.index.json"));
    let weight_map = index["weight_map"].as_object().unwrap();
    let files: BTreeSet<&str> = weight_map.values().map(|v| v.as_str().unwrap()).collect();
    let n = files.len();
    assert!(n >= 3, "{n} files");
    let expected_files: BTreeSet<String> = (1..=n)
        .map(|k| format!("model-{k:05}-of-{n:05}.safetensors"))
        .collect();
    assert_eq!(
        files.iter().map(|f| f.to_string()).collect::<BTreeSet<_>>(),
        expected_files
    );
    assert!(!dir.join("model.safetensors").exists());
    assert_eq!(
        weight_map
            .keys()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        names
    );
    let mut seen = BTreeMap::new();
    for file in &files {
        let header = header_of(&dir.join(file));
        assert_eq!(header["__metadata__"]["format"], "pt");
        let mut bytes = 0;
        for (name, entry) in header.iter().filter(|(k, _)| *k != "__metadata__") {
            assert_eq!(entry["dtype"], "BF16", "{file}: {name}");
            assert_eq!(weight_map[name], *file, "{name}");
            assert!(seen.insert(name.clone(), *file).is_none(), "{name} twice");
            let offsets = entry["data_offsets"].as_array().unwrap();
            bytes += offsets[1].as_u64().unwrap() - offsets[0].as_u64().unwrap();
        }
        let tensors_here = header.len() - 1;
        assert!(bytes <= max || tensors_here == 1, "{file}: {bytes} bytes");
    }
    assert_eq!(seen.len(), names.len());
    let total: u64 = tensors.values().map(|t| t.elem_count() as u64 * 2).sum();
    assert_eq!(index["metadata"]["total_size"], total);
    assert_eq!(
        json_file(&dir.join("config.json"))["torch_dtype"],
        "bfloat16"
    );
    assert!(dir.join("tokenizer.json").is_file());
    let paths: Vec<&str> = saved.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths[0], "config.json");
    assert_eq!(*paths.last().unwrap(), "model.safetensors.index.json");
    for s in &saved {
        let bytes = std::fs::read(dir.join(&s.path)).unwrap();
        assert_eq!(s.size, bytes.len() as u64, "{}", s.path);
    }

    // Loaded back: the bf16 rounding of every value, to the bit, and the dtype remembered.
    let q = Pretrained::load(dir.to_str().unwrap(), false, &Device::Cpu)
        .await
        .unwrap();
    assert_eq!(q.source_dtype, Dtype::BF16);
    let mut rounded_differently = 0;
    for (name, t) in tensors {
        let want = values(t);
        let got = values(&q.model.tensors()[name]);
        for (w, g) in want.iter().zip(&got) {
            assert_eq!(
                half::bf16::from_f32(*w).to_f32().to_bits(),
                bf16_rne(*w).to_bits()
            );
            assert_eq!(
                g.to_bits(),
                bf16_rne(*w).to_bits(),
                "{name}: {w} saved as {g}"
            );
            rounded_differently += usize::from(bf16_trunc(*w) != bf16_rne(*w));
        }
    }
    assert!(rounded_differently > 1000, "{rounded_differently}");

    // Saved again from the bf16 model, in its own dtype: the same bytes.
    let again = tmp.path().join("again");
    let options = SaveOptions {
        dtype: q.source_dtype,
        max_shard_size: max,
    };
    q.save(again.to_str().unwrap(), &options).await.unwrap();
    for file in &files {
        assert_eq!(
            std::fs::read(dir.join(file)).unwrap(),
            std::fs::read(again.join(file)).unwrap(),
            "{file}"
        );
    }
}

#[tokio::test]
async fn an_f32_save_is_one_file_written_as_before() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tiny();
    let dir = tmp.path().join("f32");
    let saved = p
        .save(dir.to_str().unwrap(), &SaveOptions::default())
        .await
        .unwrap();
    assert_eq!(
        saved.iter().map(|s| s.path.as_str()).collect::<Vec<_>>(),
        [
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "model.safetensors"
        ]
    );
    assert!(!dir.join("model.safetensors.index.json").exists());
    assert_eq!(
        json_file(&dir.join("config.json"))["torch_dtype"],
        "float32"
    );
    // The whole-file writer on the f32 tensors in name order gives the same bytes.
    let reference = tmp.path().join("reference.safetensors");
    let tensors: Vec<(TensorLayout, Vec<u8>)> = p
        .model
        .tensors()
        .iter()
        .map(|(name, t)| {
            let mut bytes = Vec::new();
            encode_f32(Dtype::F32, &values(t), &mut bytes);
            let shape = t.dims().iter().map(|&d| d as u64).collect();
            let layout = TensorLayout {
                name: name.clone(),
                dtype: Dtype::F32,
                shape,
            };
            (layout, bytes)
        })
        .collect();
    let loc = Location::parse(reference.to_str().unwrap()).unwrap();
    write_safetensors(&loc, &tensors, &pt_metadata())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        std::fs::read(&reference).unwrap()
    );
    let q = Pretrained::load(dir.to_str().unwrap(), false, &Device::Cpu)
        .await
        .unwrap();
    assert_eq!(q.source_dtype, Dtype::F32);
    for (name, t) in p.model.tensors() {
        let bits = |t: &Tensor| values(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(t), bits(&q.model.tensors()[name]), "{name}");
    }
}

#[tokio::test]
async fn f16_saves_say_float16_and_other_dtypes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tiny();
    let dir = tmp.path().join("f16");
    p.save(dir.to_str().unwrap(), &SaveOptions::new(Dtype::F16))
        .await
        .unwrap();
    assert_eq!(
        json_file(&dir.join("config.json"))["torch_dtype"],
        "float16"
    );
    let header = header_of(&dir.join("model.safetensors"));
    assert!(header
        .iter()
        .all(|(k, e)| k == "__metadata__" || e["dtype"] == "F16"));
    let q = Pretrained::load(dir.to_str().unwrap(), false, &Device::Cpu)
        .await
        .unwrap();
    assert_eq!(q.source_dtype, Dtype::F16);
    let name = "model.layers.0.mlp.up_proj.weight";
    let want: Vec<f32> = values(&p.model.tensors()[name])
        .iter()
        .map(|v| half::f16::from_f32(*v).to_f32())
        .collect();
    assert_eq!(values(&q.model.tensors()[name]), want);

    let bad = tmp.path().join("i8");
    let err = save_model(
        &p.model,
        &p.aux_files,
        bad.to_str().unwrap(),
        &SaveOptions::new(Dtype::I8),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("unsupported dtype to save in: I8"), "{err}");
    assert!(!bad.exists());
}

#[test]
fn config_dtype_keys_follow_transformers() {
    use super::save::set_config_dtype;
    let mut v = serde_json::json!({"dtype": "float32"});
    set_config_dtype(&mut v, Dtype::BF16);
    assert_eq!(v, serde_json::json!({"dtype": "bfloat16"}));
    let mut v = serde_json::json!({"torch_dtype": "float32", "dtype": "float32"});
    set_config_dtype(&mut v, Dtype::F16);
    assert_eq!(
        v,
        serde_json::json!({"torch_dtype": "float16", "dtype": "float16"})
    );
    let mut v = serde_json::json!({});
    set_config_dtype(&mut v, Dtype::F32);
    assert_eq!(v, serde_json::json!({"torch_dtype": "float32"}));
}
