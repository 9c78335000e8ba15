//! GGUF loading on small synthetic files written here with candle's GGUF writer (a 2-layer
//! llama, hidden 256 so the K-quants fit): every tensor type, Q/K rows permuted the llama.cpp
//! way in the file, loaded values compared bit for bit with quantising the HF weights directly
//! (row-blocked quantisation commutes with a row permutation, so this also checks the
//! un-permutation), the config from metadata, tied and untied heads, the byte-level tokenizer,
//! and the errors; plus the vocabulary check of `Pretrained::load` for HF directories.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value as Meta};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::gguf_tensors::{gguf_name, hf_name};
use super::*;
use crate::rng::{Purpose, StreamKey};

const VOCAB: usize = 12;
const HIDDEN: usize = 256;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const FFN: usize = 256;

/// A tiny GGUF: metadata, tensors as written (Q/K permuted), and the expected loaded tensors.
struct Tiny {
    meta: Vec<(String, Meta)>,
    tensors: Vec<(String, QTensor)>,
    expected: BTreeMap<String, Tensor>,
}

fn strings(items: &[&str]) -> Meta {
    Meta::Array(items.iter().map(|s| Meta::String(s.to_string())).collect())
}

/// llama.cpp's converter `permute`: HF row h·d + s·d/2 + j goes to GGUF row h·d + 2j + s.
fn permute_llama_cpp(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let (d, half) = (rows / heads, rows / heads / 2);
    let mut out = vec![f32::NAN; rows * cols];
    for h in 0..heads {
        for s in 0..2 {
            for j in 0..half {
                let (hf, gguf) = (h * d + s * half + j, h * d + 2 * j + s);
                out[gguf * cols..(gguf + 1) * cols].copy_from_slice(&w[hf * cols..(hf + 1) * cols]);
            }
        }
    }
    out
}

fn tiny(untied: bool) -> Tiny {
    use GgmlDType::*;
    let meta: Vec<(String, Meta)> = vec![
        ("general.architecture".into(), Meta::String("llama".into())),
        ("llama.embedding_length".into(), Meta::U32(HIDDEN as u32)),
        ("llama.block_count".into(), Meta::U32(2)),
        ("llama.feed_forward_length".into(), Meta::U32(FFN as u32)),
        ("llama.attention.head_count".into(), Meta::U32(HEADS as u32)),
        (
            "llama.attention.head_count_kv".into(),
            Meta::U32(KV_HEADS as u32),
        ),
        ("llama.rope.freq_base".into(), Meta::F32(500000.0)),
        ("llama.rope.dimension_count".into(), Meta::U32(64)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Meta::F32(1e-6),
        ),
        ("llama.context_length".into(), Meta::U32(128)),
        ("tokenizer.ggml.model".into(), Meta::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Meta::String("smollm".into())),
        (
            "tokenizer.ggml.tokens".into(),
            strings(&[
                "<|endoftext|>",
                "<s>",
                "</s>",
                "a",
                "b",
                "ab",
                "Ġ",
                "Ġab",
                " c",
                "c",
                "<think>",
                "<pad>",
            ]),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Meta::Array(
                [3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 4, 3]
                    .into_iter()
                    .map(Meta::I32)
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.merges".into(),
            strings(&["a b", "Ġ ab", "Ġ c"]),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Meta::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Meta::U32(2)),
        ("tokenizer.ggml.unknown_token_id".into(), Meta::U32(0)),
        ("tokenizer.ggml.padding_token_id".into(), Meta::U32(11)),
        ("tokenizer.ggml.add_bos_token".into(), Meta::Bool(true)),
        (
            "tokenizer.chat_template".into(),
            Meta::String("{{ messages[0]['content'] }}".into()),
        ),
    ];
    // (GGUF name, rows, cols, type): every supported type, Q and K under four of them.
    let mut specs: Vec<(String, usize, usize, GgmlDType)> = vec![
        ("token_embd.weight".into(), VOCAB, HIDDEN, Q8_0),
        ("output_norm.weight".into(), 1, HIDDEN, F32),
    ];
    if untied {
        specs.push(("output.weight".into(), VOCAB, HIDDEN, Q6K));
    }
    let (q, kv) = (HIDDEN, HIDDEN / HEADS * KV_HEADS);
    let layer_types = [
        [Q4_0, Q4_1, Q4K, F16, BF16, F32, Q6K],
        [Q4K, Q6K, Q8_0, Q4_1, Q4_0, F16, F32],
    ];
    for (l, t) in layer_types.iter().enumerate() {
        for (name, rows, cols, ty) in [
            ("attn_norm", 1, HIDDEN, F32),
            ("ffn_norm", 1, HIDDEN, F32),
            ("attn_q", q, HIDDEN, t[0]),
            ("attn_k", kv, HIDDEN, t[1]),
            ("attn_v", kv, HIDDEN, t[2]),
            ("attn_output", HIDDEN, q, t[3]),
            ("ffn_gate", FFN, HIDDEN, t[4]),
            ("ffn_up", FFN, HIDDEN, t[5]),
            ("ffn_down", HIDDEN, FFN, t[6]),
        ] {
            specs.push((format!("blk.{l}.{name}.weight"), rows, cols, ty));
        }
    }
    let mut stream = StreamKey::new(11, 0, 0, 0, Purpose::Init).stream();
    let mut tensors = Vec::new();
    let mut expected = BTreeMap::new();
    for (name, rows, cols, ty) in specs {
        let norm = name.ends_with("norm.weight");
        let w: Vec<f32> = (0..rows * cols)
            .map(|_| {
                (if norm {
                    1.0 + 0.1 * stream.normal()
                } else {
                    0.5 * stream.normal()
                }) as f32
            })
            .collect();
        let shape: Vec<usize> = if norm { vec![cols] } else { vec![rows, cols] };
        let hf = Tensor::from_vec(w.clone(), shape.clone(), &Device::Cpu).unwrap();
        let reference = QTensor::quantize(&hf, ty)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        expected.insert(hf_name(&name).unwrap(), reference);
        let stored = match name.rsplit('.').nth(1) {
            Some("attn_q") => permute_llama_cpp(&w, rows, cols, HEADS),
            Some("attn_k") => permute_llama_cpp(&w, rows, cols, KV_HEADS),
            _ => w,
        };
        let stored = Tensor::from_vec(stored, shape, &Device::Cpu).unwrap();
        tensors.push((name, QTensor::quantize(&stored, ty).unwrap()));
    }
    Tiny {
        meta,
        tensors,
        expected,
    }
}

impl Tiny {
    fn set(&mut self, key: &str, value: Meta) {
        self.meta.retain(|(k, _)| k != key);
        self.meta.push((key.into(), value));
    }

    fn write(&self, dir: &Path, file: &str) -> String {
        let path = dir.join(file);
        let mut f = std::fs::File::create(&path).unwrap();
        let meta: Vec<(&str, &Meta)> = self.meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> =
            self.tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        gguf_file::write(&mut f, &meta, &tensors).unwrap();
        path.to_str().unwrap().to_string()
    }
}

async fn load_err(path: &str) -> String {
    Pretrained::load(path, false, &Device::Cpu)
        .await
        .unwrap_err()
        .to_string()
}

#[test]
fn names_map_both_ways() {
    assert_eq!(
        hf_name("blk.12.attn_k.weight").unwrap(),
        "model.layers.12.self_attn.k_proj.weight"
    );
    assert_eq!(hf_name("output.weight").unwrap(), "lm_head.weight");
    assert_eq!(
        gguf_name("model.layers.3.mlp.down_proj.weight").unwrap(),
        "blk.3.ffn_down.weight"
    );
    assert_eq!(
        gguf_name("model.embed_tokens.weight").unwrap(),
        "token_embd.weight"
    );
    for bad in [
        "blk.01.attn_q.weight",
        "blk.x.attn_q.weight",
        "blk.0.attn_q.bias",
        "rope_freqs.weight",
    ] {
        assert_eq!(hf_name(bad), None, "{bad}");
    }
}

#[tokio::test]
async fn loads_dequantised_unpermuted_weights_config_and_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    for untied in [false, true] {
        let t = tiny(untied);
        // An upper-case extension is a GGUF file too.
        let path = t.write(dir.path(), if untied { "untied.GGUF" } else { "tied.gguf" });
        let p = Pretrained::load(&path, true, &Device::Cpu).await.unwrap();
        let c = p.model.config();
        assert_eq!(
            (
                c.vocab_size,
                c.hidden_size,
                c.intermediate_size,
                c.num_hidden_layers
            ),
            (VOCAB, HIDDEN, FFN, 2)
        );
        assert_eq!(
            (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
            (HEADS, KV_HEADS, 64)
        );
        assert_eq!((c.rope_theta, c.rms_norm_eps), (500000.0, 1e-6f32 as f64));
        assert_eq!(
            (c.max_position_embeddings, c.tie_word_embeddings),
            (128, !untied)
        );
        assert_eq!(
            (c.bos_token_id, c.eos_token_ids.clone(), c.pad_token_id),
            (Some(1), vec![2], Some(11))
        );
        assert_eq!(c.raw["architectures"][0], "LlamaForCausalLM");
        assert_eq!(
            (p.eos_token_ids.clone(), p.pad_token_id),
            (vec![2], Some(11))
        );
        assert!(p.model.vars().is_some());
        let names: Vec<&String> = p.model.tensors().keys().collect();
        assert_eq!(names, t.expected.keys().collect::<Vec<_>>());
        for (name, want) in &t.expected {
            let got = &p.model.tensors()[name];
            assert_eq!(got.dims(), want.dims(), "{name}");
            let (got, want) = (
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert!(
                got == want,
                "{name}: loaded values differ from the HF weights quantised directly"
            );
        }
        let logits = p.model.logits(&[vec![1, 5, 7]], &[vec![true; 3]]).unwrap();
        assert_eq!(logits.dims(), &[1, 3, VOCAB]);

        let tok = p.tokenizer.as_ref().unwrap();
        assert_eq!(tok.vocab_size(), VOCAB);
        // "ab", " ab", " c" by the merges; "<think>" (user-defined) and "</s>" (control) whole.
        assert_eq!(
            tok.encode("ab ab c<think></s>").unwrap(),
            vec![5, 7, 8, 10, 2]
        );
        assert_eq!(tok.decode(&[5, 7, 8, 10, 2]).unwrap(), "ab ab c<think>");
        assert_eq!(
            tok.token_to_id("Ġc"),
            Some(8),
            "a token with a space is respelled"
        );
        assert_eq!(tok.special_id("pad_token"), Some(11));
        let config: serde_json::Value =
            serde_json::from_slice(&p.aux_files["tokenizer_config.json"]).unwrap();
        assert_eq!(config["bos_token"], "<s>");
        assert_eq!(config["unk_token"], "<|endoftext|>");
        assert_eq!(config["add_bos_token"], true);
        assert_eq!(config["chat_template"], "{{ messages[0]['content'] }}");
        let raw = tokenizers::Tokenizer::from_bytes(&p.aux_files["tokenizer.json"]).unwrap();
        let with_bos = raw.encode("ab", true).unwrap();
        assert_eq!(with_bos.get_ids(), &[1, 5], "add_bos_token puts <s> first");
        let generation: serde_json::Value =
            serde_json::from_slice(&p.aux_files["generation_config.json"]).unwrap();
        assert_eq!(generation["eos_token_id"], 2);
    }
}

#[tokio::test]
async fn rejects_what_it_cannot_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = tiny(false);
    t.set("general.architecture", Meta::String("falcon".into()));
    let path = t.write(dir.path(), "falcon.gguf");
    let err = load_err(&path).await;
    assert!(
        err.contains("falcon.gguf")
            && err.contains("architecture")
            && err.contains("falcon")
            && err.contains("supported: llama"),
        "{err}"
    );

    // Types are checked before any tensor is read: the file is cut short, yet the type error
    // comes.
    let mut t = tiny(false);
    let i = t
        .tensors
        .iter()
        .position(|(n, _)| n == "blk.1.ffn_up.weight")
        .unwrap();
    let w = Tensor::zeros((FFN, HIDDEN), candle_core::DType::F32, &Device::Cpu).unwrap();
    t.tensors[i].1 = QTensor::quantize(&w, GgmlDType::Q5K).unwrap();
    let path = t.write(dir.path(), "q5k.gguf");
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let err = load_err(&path).await;
    assert!(
        err.contains("q5k.gguf") && err.contains("blk.1.ffn_up.weight") && err.contains("Q5_K"),
        "{err}"
    );

    let mut t = tiny(true);
    t.tensors.retain(|(n, _)| n != "blk.1.ffn_up.weight");
    let err = load_err(&t.write(dir.path(), "missing.gguf")).await;
    assert!(
        err.contains("missing.gguf")
            && err.contains("blk.1.ffn_up.weight (model.layers.1.mlp.up_proj.weight)` is missing"),
        "{err}"
    );

    let mut t = tiny(false);
    let tokens: Vec<String> = (0..VOCAB + 3).map(|i| format!("t{i}")).collect();
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    t.set("tokenizer.ggml.tokens", strings(&tokens));
    t.set(
        "tokenizer.ggml.token_type",
        Meta::Array(vec![Meta::I32(1); VOCAB + 3]),
    );
    t.set("tokenizer.ggml.merges", strings(&[]));
    let err = load_err(&t.write(dir.path(), "big_vocab.gguf")).await;
    assert!(
        err.contains("big_vocab.gguf") && err.contains("15 tokens") && err.contains("only 12 rows"),
        "{err}"
    );

    let mut t = tiny(false);
    t.set("tokenizer.ggml.model", Meta::String("llama".into()));
    let err = load_err(&t.write(dir.path(), "spm.gguf")).await;
    assert!(
        err.contains("spm.gguf") && err.contains("tokenizer.ggml.model") && err.contains("llama"),
        "{err}"
    );

    // A type candle cannot read (IQ4_XS = 23) is named with its tensor too.
    let t = tiny(false);
    let path = t.write(dir.path(), "iq4.gguf");
    let mut bytes = std::fs::read(&path).unwrap();
    let name = b"blk.0.attn_v.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 4 + 2 * 8;
    assert_eq!(bytes[at..at + 4], 12u32.to_le_bytes(), "Q4_K's type id");
    bytes[at..at + 4].copy_from_slice(&23u32.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let err = load_err(&path).await;
    assert!(
        err.contains("iq4.gguf") && err.contains("blk.0.attn_v.weight") && err.contains("IQ4_XS"),
        "{err}"
    );

    std::fs::write(dir.path().join("junk.gguf"), b"not a gguf file at all").unwrap();
    let err = load_err(dir.path().join("junk.gguf").to_str().unwrap()).await;
    assert!(
        err.contains("junk.gguf") && err.contains("not a readable GGUF file"),
        "{err}"
    );
}

#[tokio::test]
async fn hf_directory_with_a_tokenizer_larger_than_the_embedding_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = ModelConfig::tiny(8);
    let tokenizer = Tokenizer::tiny(&["a", "b", "c", "d", "e"]).unwrap(); // 9 tokens
    let model = init_random(&config, 1, false, &Device::Cpu).unwrap();
    let path = dir.path().join("m");
    let path = path.to_str().unwrap();
    Pretrained::from_parts(model, Some(tokenizer))
        .unwrap()
        .save(path, &crate::model::SaveOptions::default())
        .await
        .unwrap();
    let err = load_err(path).await;
    assert!(
        err.contains("tokenizer.json") && err.contains("9 tokens") && err.contains("only 8 rows"),
        "{err}"
    );
}
