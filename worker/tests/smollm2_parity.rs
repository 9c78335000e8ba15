//! A real GGUF against transformers: SmolLM2-135M-Instruct Q4_1 loaded by `Pretrained::load`
//! (tokenizer, weights, config from the GGUF alone) must tokenise the fixture's rendered chat
//! text to transformers' ids, give next-token log-probs within 1e-3 of transformers' over its
//! top 50, and decode the same 20 greedy tokens (fixture from `scripts/smollm2_fixtures.py`);
//! its chat template must render the fixture's messages to the same ids as transformers'
//! `apply_chat_template`; and the model exported as an HF directory (f32, one file; bf16 in
//! shards) must load back with bit-identical logits (bf16: the bf16-rounded weights).
//!
//! Needs the file: `MIRRORPLAY_SMOLLM2_GGUF=$(bash scripts/fetch_smollm2.sh) cargo test -p
//! mirrorplay-worker --test smollm2_parity`. Without the variable the test says it is skipped
//! and passes; with the variable naming a missing file it fails.

use std::path::Path;

use candle_core::Device;
use mirrorplay_worker::io::Dtype;
use mirrorplay_worker::model::{log_softmax, ChatMessage, KvCache, Pretrained, SaveOptions};
use mirrorplay_worker::sample::{generate, GenerateConfig, RowKey, SamplingParams, TokenRules};
use serde_json::Value;
use sha2::{Digest, Sha256};

const LOGPROB_TOLERANCE: f32 = 1e-3;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of ids")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

/// The GGUF named by `MIRRORPLAY_SMOLLM2_GGUF` (None, after saying so, when it is unset; a
/// named file that does not exist fails the test).
fn gguf_path() -> Option<String> {
    let Ok(path) = std::env::var("MIRRORPLAY_SMOLLM2_GGUF") else {
        eprintln!("skipped: set MIRRORPLAY_SMOLLM2_GGUF=$(bash scripts/fetch_smollm2.sh) to run");
        return None;
    };
    assert!(
        Path::new(&path).is_file(),
        "MIRRORPLAY_SMOLLM2_GGUF={path}: no such file"
    );
    Some(path)
}

#[tokio::test]
async fn smollm2_gguf_matches_transformers() {
    let Some(path) = gguf_path() else { return };
    let fixture_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2/parity.json");
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(&fixture_path).unwrap()).unwrap();
    let sha = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
    assert_eq!(
        sha, fixture["gguf_sha256"],
        "{path} is not the GGUF the fixture was made from"
    );
    let p = Pretrained::load(&path, false, &Device::Cpu).await.unwrap();
    let tokenizer = p.tokenizer.as_ref().expect("the GGUF has a tokenizer");
    let eos = ids(&fixture["eos_token_ids"]);
    assert_eq!(p.eos_token_ids, eos);
    let max_new_tokens = fixture["max_new_tokens"].as_u64().unwrap() as usize;
    for (n, case) in fixture["cases"].as_array().unwrap().iter().enumerate() {
        let prompt = ids(&case["ids"]);
        let encoded = tokenizer.encode(case["text"].as_str().unwrap()).unwrap();
        assert_eq!(
            encoded, prompt,
            "case {n}: token ids of the rendered chat text"
        );
        let messages: Vec<ChatMessage> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        assert_eq!(
            tokenizer.encode_chat(&messages, true).unwrap(),
            prompt,
            "case {n}: our chat template's ids vs transformers' apply_chat_template"
        );

        let mut cache = KvCache::new();
        let hidden = p
            .model
            .forward_hidden(
                std::slice::from_ref(&prompt),
                &[vec![true; prompt.len()]],
                &mut cache,
            )
            .unwrap();
        let last = hidden.narrow(1, prompt.len() - 1, 1).unwrap();
        let logp = log_softmax(&p.model.lm_logits(&last).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = case["top_logprobs"].as_array().unwrap();
        let mut worst = 0f32;
        for (id, w) in ids(&case["top_ids"]).into_iter().zip(want) {
            worst = worst.max((logp[id as usize] - w.as_f64().unwrap() as f32).abs());
        }
        let greedy = generate(
            &p.model,
            &[prompt],
            &[RowKey {
                prompt: 0,
                sample: 0,
            }],
            &GenerateConfig {
                params: SamplingParams {
                    temperature: 0.0,
                    top_k: 0,
                    top_p: 1.0,
                },
                rules: TokenRules {
                    eos_token_ids: eos.clone(),
                    forbidden_token_ids: vec![],
                    min_new_tokens: 0,
                    max_new_tokens,
                    eos_at_limit: false,
                },
                seed: 0,
                step: 0,
            },
        )
        .unwrap();
        let tokens = &greedy.tokens[0];
        let want_tokens = ids(&case["greedy"]);
        let same = tokens
            .iter()
            .zip(&want_tokens)
            .take_while(|(a, b)| a == b)
            .count();
        println!(
            "case {n}: max |Δ log-prob| over the top {} = {worst:.2e}; \
             greedy tokens matching: {same}/{}",
            want.len(),
            want_tokens.len()
        );
        assert!(
            worst <= LOGPROB_TOLERANCE,
            "case {n}: log-probs differ from transformers by {worst}"
        );
        assert_eq!(tokens, &want_tokens, "case {n}: greedy tokens");
    }
}

/// Logits of the last position of `ids`.
fn last_logits(p: &Pretrained, ids: &[u32]) -> Vec<f32> {
    p.model
        .logits(&[ids.to_vec()], &[vec![true; ids.len()]])
        .unwrap()
        .narrow(1, ids.len() - 1, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// GGUF → `save` → load: the f32 directory gives the same logits bit for bit; a bf16 save is
/// sharded with an index, bf16 on disk, and loads as exactly the bf16 rounding of the weights.
#[tokio::test]
async fn smollm2_gguf_exports_to_hf_directories_that_load_back() {
    let Some(path) = gguf_path() else { return };
    let gguf = Pretrained::load(&path, false, &Device::Cpu).await.unwrap();
    let ids = gguf
        .tokenizer
        .as_ref()
        .unwrap()
        .encode("The quick brown fox jumps over")
        .unwrap();
    let want = last_logits(&gguf, &ids);
    let dir = tempfile::tempdir().unwrap();

    let f32_dir = dir.path().join("f32");
    let f32_dir = f32_dir.to_str().unwrap();
    assert_eq!(gguf.source_dtype, Dtype::F32, "Q4_1 weights save as f32");
    gguf.save(f32_dir, &SaveOptions::new(Dtype::F32))
        .await
        .unwrap();
    let back = Pretrained::load(f32_dir, false, &Device::Cpu)
        .await
        .unwrap();
    assert_eq!(
        last_logits(&back, &ids),
        want,
        "f32 export: identical logits"
    );
    assert_eq!(
        back.tokenizer
            .as_ref()
            .unwrap()
            .encode("The quick brown fox jumps over")
            .unwrap(),
        ids
    );
    assert!(back.tokenizer.as_ref().unwrap().chat_template().is_some());

    let bf16_dir = dir.path().join("bf16");
    let bf16_dir = bf16_dir.to_str().unwrap();
    let options = SaveOptions {
        dtype: Dtype::BF16,
        max_shard_size: 100 << 20,
    };
    gguf.save(bf16_dir, &options).await.unwrap();
    assert!(Path::new(bf16_dir)
        .join("model.safetensors.index.json")
        .is_file());
    let back = Pretrained::load(bf16_dir, false, &Device::Cpu)
        .await
        .unwrap();
    assert_eq!(back.source_dtype, Dtype::BF16);
    for (name, t) in gguf.model.tensors() {
        let rounded: Vec<f32> = t
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(|x| half::bf16::from_f32(x).to_f32())
            .collect();
        let loaded = back.model.tensors()[name]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            rounded == loaded,
            "{name}: not the bf16 rounding of the GGUF weights"
        );
    }
}
