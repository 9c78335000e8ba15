//! `mirrorplay export --model` through the binary: a bf16 model re-written in its own dtype
//! (default) sharded, then as f32 in one file and from the sharded copy as f16, each read back
//! with the independent reader of `common` and compared with the source's values; and the usage
//! errors (both or neither of --model/--checkpoint, a bad --dtype) exit 2.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::Device;
use common::*;
use mirrorplay_worker::io::Dtype;
use mirrorplay_worker::model::{init_random, ModelConfig, Pretrained, SaveOptions, Tokenizer};

fn config_dtype(dir: &Path) -> String {
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    config["torch_dtype"].as_str().unwrap().to_string()
}

fn files_of(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

#[tokio::test]
async fn export_model_rewrites_dtype_and_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let tok = Tokenizer::tiny(&["a", "b", "c", "d"]).unwrap();
    let model = init_random(&ModelConfig::tiny(tok.vocab_size()), 3, false, &Device::Cpu).unwrap();
    let p = Pretrained::from_parts(model, Some(tok)).unwrap();
    p.save(src.to_str().unwrap(), &SaveOptions::new(Dtype::BF16))
        .await
        .unwrap();
    let source = read_model(&src);
    let s = |p: &Path| p.to_str().unwrap().to_string();

    // Default dtype: the source's (bf16); 40 KB files.
    let sharded = tmp.path().join("sharded");
    let o = run(&[
        "export",
        "--model",
        &s(&src),
        "--out",
        &s(&sharded),
        "--max-shard-size",
        "40KB",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("written as BF16"), "{}", stderr(&o));
    let files = files_of(&sharded);
    let shards = files.iter().filter(|f| f.contains("-of-")).count();
    assert!(shards >= 3, "{files:?}");
    for f in [
        "config.json",
        "tokenizer.json",
        "model.safetensors.index.json",
    ] {
        assert!(files.contains(f), "{f} missing: {files:?}");
    }
    assert!(!files.contains("model.safetensors"));
    assert_eq!(dtypes_of(&sharded), ["BF16".to_string()].into());
    assert_eq!(config_dtype(&sharded), "bfloat16");
    assert_eq!(read_model(&sharded), source, "bf16 → bf16 is exact");
    assert_eq!(
        std::fs::read(src.join("tokenizer.json")).unwrap(),
        std::fs::read(sharded.join("tokenizer.json")).unwrap()
    );

    // --dtype f32: one file, the same values.
    let f32_dir = tmp.path().join("f32");
    let o = run(&[
        "export",
        "--model",
        &s(&src),
        "--out",
        &s(&f32_dir),
        "--dtype",
        "f32",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(f32_dir.join("model.safetensors").is_file());
    assert!(!f32_dir.join("model.safetensors.index.json").exists());
    assert_eq!(dtypes_of(&f32_dir), ["F32".to_string()].into());
    assert_eq!(config_dtype(&f32_dir), "float32");
    assert_eq!(read_model(&f32_dir), source);

    // From the sharded copy to f16: each value is the f16 rounding of the source's.
    let f16_dir = tmp.path().join("f16");
    let o = run(&[
        "export",
        "--model",
        &s(&sharded),
        "--out",
        &s(&f16_dir),
        "--dtype",
        "F16",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(dtypes_of(&f16_dir), ["F16".to_string()].into());
    assert_eq!(config_dtype(&f16_dir), "float16");
    let got = read_model(&f16_dir);
    for (name, (shape, values)) in &source {
        let want: Vec<f32> = values
            .iter()
            .map(|v| half::f16::from_f32(*v).to_f32())
            .collect();
        assert_eq!(got[name], (shape.clone(), want), "{name}");
    }
}

#[test]
fn export_needs_exactly_one_source_and_a_known_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let out = out.to_str().unwrap();
    let both = run(&[
        "export",
        "--model",
        "examples/base",
        "--checkpoint",
        "x",
        "--out",
        out,
    ]);
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));
    assert!(
        stderr(&both).contains("cannot be used with"),
        "{}",
        stderr(&both)
    );
    let neither = run(&["export", "--out", out]);
    assert_eq!(neither.status.code(), Some(2), "{}", stderr(&neither));
    let err = stderr(&neither);
    assert!(
        err.contains("--checkpoint") && err.contains("--model") && err.contains("required"),
        "{err}"
    );
    let bad = run(&[
        "export",
        "--model",
        "examples/base",
        "--out",
        out,
        "--dtype",
        "int8",
    ]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("--dtype `int8`"), "{}", stderr(&bad));
    let missing = tmp.path().join("no-such-model");
    let o = run(&["export", "--model", missing.to_str().unwrap(), "--out", out]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no-such-model") && stderr(&o).contains("not found"),
        "{}",
        stderr(&o)
    );
    assert!(!Path::new(out).exists());
}
